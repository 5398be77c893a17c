"""Quantization-aware training of a student: fake-quantized weights and activations.

:func:`quantize_student` makes a model compute as an integer model would, while it still trains
in floating point (the straight-through estimator of torch's ``fake_quantize_*`` ops passes the
gradient through the rounding):

* every ``Conv2d`` and ``Linear`` weight is rounded, in each forward pass, to ``weight_bits``
  signed levels per output channel, symmetric around 0: scale_c = max |w_c| / (2^(b−1) − 1),
  ŵ = scale_c · clamp(round(w / scale_c), −(2^(b−1) − 1), 2^(b−1) − 1);
* every ``ReLU`` output is rounded to ``activation_bits`` unsigned levels of one scale,
  r / (2^b − 1): in training r is the batch's max(x), and a running range follows it,
  r ← (1 − m) · r + m · max(x) (m = 0.01, the first batch sets it); in eval mode the running
  range is frozen and used, as integer inference would, so an image's prediction does not
  depend on which images share its batch.

Weights are quantized through a ``torch.nn.utils.parametrize`` parametrization, so the stored
parameter stays the float "shadow" weight the optimizer updates; no model needs editing. Each
ReLU becomes a :class:`FakeQuantizedReLU` in place (its class is swapped, as parametrize swaps
the layers'; each gains the buffers of its running range), so ``torch.compile`` sees the
quantization in the module types it guards on. The scales are computed from the tensors, not
learned, with tensor ops only: nothing is read back to the host, so a compiled forward pass is
one graph.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from kd.errors import ConfigError


class FakeQuantizedWeight(nn.Module):
    """A parametrization: the weight as a symmetric per-output-channel ``bits``-bit tensor."""

    def __init__(self, bits: int):
        super().__init__()
        self.levels = 2 ** (bits - 1) - 1

    def forward(self, weight: Tensor) -> Tensor:
        reduce = tuple(range(1, weight.dim()))
        scale = weight.detach().abs().amax(dim=reduce).float().clamp_min(1e-12) / self.levels
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -self.levels,
                                                      self.levels)


def fake_quantize_activation(output: Tensor, bits: int, top: Tensor | None = None) -> Tensor:
    """Unsigned ``bits``-bit fake quantization of a non-negative tensor with the range ``top``
    (default: its own max): scale = top / (2^b − 1), x̂ = scale · clamp(round(x / scale), 0,
    2^b − 1)."""
    levels = 2 ** bits - 1
    # a 0-d tensor scale stays on the device (float() would wait for the device every call)
    top = output.detach().amax() if top is None else top
    scale = top.clamp_min(1e-12).float() / levels
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_tensor_affine(output, scale, zero, 0, levels)


RANGE_MOMENTUM = 0.01  # as torch.ao's moving-average observers


class FakeQuantizedReLU(nn.ReLU):
    """A ReLU whose output is fake-quantized to ``bits`` unsigned levels
    (:func:`fake_quantize_activation`): with the batch's range in training, while a running
    range (buffer ``running_max``) follows it; with the frozen running range in eval mode.
    :func:`quantize_student` turns a model's ReLUs into these in place."""

    def __init__(self, bits: int = 8, inplace: bool = False):
        super().__init__(inplace)
        self.bits = bits
        self.add_range_buffers()

    def add_range_buffers(self) -> None:
        self.register_buffer("running_max", torch.zeros(()))
        self.register_buffer("range_seen", torch.zeros((), dtype=torch.bool))

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        top = out.detach().amax().float()
        if not self.training:  # the frozen range (the batch's, before any was observed)
            return fake_quantize_activation(out, self.bits,
                                            torch.where(self.range_seen, self.running_max, top))
        with torch.no_grad():  # tensor ops only: no host sync, one compiled graph
            moved = torch.lerp(self.running_max, top, RANGE_MOMENTUM)
            self.running_max.copy_(torch.where(self.range_seen, moved, top))
            self.range_seen.fill_(True)
        return fake_quantize_activation(out, self.bits, top)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bits={self.bits}".lstrip(", ")


def quantize_student(model: nn.Module, weight_bits: int = 8,
                     activation_bits: int | None = 8) -> nn.Module:
    """Fake-quantize ``model`` in place (see the module docstring) and return it.

    activation_bits: None leaves activations in floating point (weight-only quantization).
    """
    if not 2 <= weight_bits <= 16 or (activation_bits is not None
                                      and not 2 <= activation_bits <= 16):
        raise ConfigError(f"bits must be in 2..16, got weights {weight_bits} and activations "
                          f"{activation_bits}")
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not layers:
        raise ConfigError("quantize_student found no Conv2d or Linear layer to quantize")
    for layer in layers:
        parametrize.register_parametrization(layer, "weight", FakeQuantizedWeight(weight_bits))
    if activation_bits is not None:
        for relu in (m for m in model.modules() if type(m) in (nn.ReLU, FakeQuantizedReLU)):
            if type(relu) is nn.ReLU:
                relu.__class__ = FakeQuantizedReLU
                relu.add_range_buffers()
            relu.bits = activation_bits
    return model


__all__ = ["quantize_student", "FakeQuantizedWeight", "FakeQuantizedReLU",
           "fake_quantize_activation"]
