"""Quantization-aware training of a student: fake-quantized weights and activations.

:func:`quantize_student` makes a model compute as an integer model would, while it still trains
in floating point (the straight-through estimator of torch's ``fake_quantize_*`` ops passes the
gradient through the rounding):

* every ``Conv2d`` and ``Linear`` weight is rounded, in each forward pass, to ``weight_bits``
  signed levels per output channel, symmetric around 0: scale_c = max |w_c| / (2^(b−1) − 1),
  ŵ = scale_c · clamp(round(w / scale_c), −(2^(b−1) − 1), 2^(b−1) − 1);
* every ``ReLU`` output is rounded to ``activation_bits`` unsigned levels of one scale per
  batch, max(x) / (2^b − 1).

Weights are quantized through a ``torch.nn.utils.parametrize`` parametrization, so the stored
parameter stays the float "shadow" weight the optimizer updates; no model needs editing. Each
ReLU becomes a :class:`FakeQuantizedReLU` in place (its class is swapped, as parametrize swaps
the layers'; the state dict is unchanged), so ``torch.compile`` sees the quantization in the
module types it guards on. The scales are recomputed from the current tensors (dynamic ranges),
not learned, with tensor ops only: nothing is read back to the host, so a compiled forward
pass is one graph.
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


def fake_quantize_activation(output: Tensor, bits: int) -> Tensor:
    """Unsigned ``bits``-bit fake quantization of a non-negative tensor, one scale per call:
    scale = max(x) / (2^b − 1), x̂ = scale · clamp(round(x / scale), 0, 2^b − 1)."""
    levels = 2 ** bits - 1
    # a 0-d tensor scale stays on the device (float() would wait for the device every call)
    scale = output.detach().amax().clamp_min(1e-12).float() / levels
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_tensor_affine(output, scale, zero, 0, levels)


class FakeQuantizedReLU(nn.ReLU):
    """A ReLU whose output is fake-quantized to ``bits`` unsigned levels
    (:func:`fake_quantize_activation`); :func:`quantize_student` turns a model's ReLUs into these
    in place."""

    def __init__(self, bits: int = 8, inplace: bool = False):
        super().__init__(inplace)
        self.bits = bits

    def forward(self, x: Tensor) -> Tensor:
        return fake_quantize_activation(super().forward(x), self.bits)

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
            relu.__class__, relu.bits = FakeQuantizedReLU, activation_bits
    return model


__all__ = ["quantize_student", "FakeQuantizedWeight", "FakeQuantizedReLU",
           "fake_quantize_activation"]
