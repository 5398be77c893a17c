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
parameter stays the float "shadow" weight the optimizer updates; no model needs editing. The
scales are recomputed from the current tensors (dynamic ranges), not learned.
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
    """Unsigned ``bits``-bit fake quantization of a non-negative tensor, one scale per call."""
    levels = 2 ** bits - 1
    scale = float(output.detach().amax().clamp_min(1e-12)) / levels
    return torch.fake_quantize_per_tensor_affine(output, scale, 0, 0, levels)


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
        for relu in (m for m in model.modules() if isinstance(m, nn.ReLU)):
            relu.register_forward_hook(
                lambda module, inputs, output: fake_quantize_activation(output, activation_bits))
    return model


__all__ = ["quantize_student", "FakeQuantizedWeight", "fake_quantize_activation"]
