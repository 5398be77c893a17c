"""Comparing two float paths that should agree up to rounding (stacked vs looped, compiled vs
eager, cached vs live teacher) with tolerances that hold on any CPU and thread count.

Two such paths differ only in kernel choice or summation order, so each step adds a relative
rounding error of order ``n · eps`` to every weight (``n`` the length of the sums involved) and
training carries it forward. How large depends on the CPU's kernels (AVX512, AVX2 or scalar,
``ATEN_CPU_CAPABILITY``) and on the thread count, and single entries near zero can differ in
relative terms by far more than the tensor as a whole. So weights are compared norm-wise, with
a budget that grows with the number of optimizer steps, over the whole state at once (every
float tensor, flattened into one vector):

    ‖a − b‖₂ ≤ STEP_BUDGET · steps · (‖b‖₂ + tiny)

Why the whole state and not tensor by tensor: a tensor that starts at zero (batch norm's biases)
is, after a few steps, nothing but its updates, and rounding amplified by training is a fixed
share of the update, not of the weight. Measured on two machines (tests/test_closeness.py
repeats the run): looped against vectorized mutual learning, 3 steps of 16 images.
- AMD EPYC Zen 2 (AVX2, AVX2 and scalar kernels, 1 and 2 threads): drift 4.5e-7 to 7.0e-7 per
  tensor.
- AMD EPYC with AVX512 (oneDNN's AVX512 kernels, 2 threads): 1.0e-5 for the whole state, but
  up to 3.5e-4 for single batch-norm biases of norm 0.01 (a per-tensor budget of 3e-4 failed
  there); with ONEDNN_MAX_CPU_ISA=AVX2 on the same machine, 2.4e-8.
A learning rate 1 % off moves the whole state by 9e-4 in those 3 steps (single tensors by 2e-5
to 3e-2): three times the budget of 3e-4, so a wrong gradient or weight cannot pass, while the
largest rounding drift seen is 29 times below it.
"""

from __future__ import annotations

import math

import torch

STEP_BUDGET = 1e-4


def relative_distance(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """‖a − b‖₂ / ‖b‖₂ (0 for two zero tensors); integer tensors compare as floats."""
    actual, expected = actual.detach().double(), expected.detach().double()
    scale = expected.norm().item()
    return (actual - expected).norm().item() / max(scale, 1e-12)


def assert_states_close(actual: dict, expected: dict, steps: int) -> None:
    """Two state dicts with the same keys and shapes, integer buffers (batch norm's step counters)
    equal, and their float tensors as one vector within the budget for ``steps`` steps."""
    assert actual.keys() == expected.keys()
    floats = []
    for name, value in expected.items():
        other = actual[name]
        assert other.shape == value.shape, name
        if value.is_floating_point():
            floats.append(name)
        else:
            assert torch.equal(other, value), name
    if not floats:
        return
    flat = lambda state: torch.cat([state[name].detach().double().flatten() for name in floats])
    distance = relative_distance(flat(actual), flat(expected))
    bound = STEP_BUDGET * max(steps, 1)
    worst = max(floats, key=lambda name: relative_distance(actual[name], expected[name]))
    assert distance <= bound, (f"state: relative distance {distance:.2e} > {bound:.2e} "
                               f"(furthest tensor: {worst})")


def assert_errors_close(actual: int, expected: int, n: int) -> None:
    """Test-error counts of two float paths: a prediction whose top two logits tie to within
    rounding may flip, so allow one flip per 100 examples (at least one)."""
    assert abs(actual - expected) <= max(1, math.ceil(n / 100)), (actual, expected)
