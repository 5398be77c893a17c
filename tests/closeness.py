"""Comparing two float paths that should agree up to rounding (stacked vs looped, compiled vs
eager, cached vs live teacher) with tolerances that hold on any CPU and thread count.

Two such paths differ only in kernel choice or summation order, so each step adds a relative
rounding error of order ``n · eps`` to every weight (``n`` the length of the sums involved) and
training carries it forward. How large depends on the CPU's kernels (AVX512, AVX2 or scalar,
``ATEN_CPU_CAPABILITY``) and on the thread count, and single entries near zero can differ in
relative terms by far more than the tensor as a whole. So weights are compared norm-wise, with
a budget that grows with the number of optimizer steps:

    ‖a − b‖₂ ≤ STEP_BUDGET · steps · (‖b‖₂ + tiny)

Measured (tests/test_closeness.py repeats the first and the last): looped against vectorized
mutual learning, 3 steps, drift 4.5e-7 to 7.0e-7 here under this CPU's AVX512 kernels, AVX2 and
scalar ones, with 1 and 2 threads; another machine of the same kind saw single entries differ by
2e-5 (too much for an element-wise rtol 1e-3, atol 1e-5), which norm-wise stays far below
STEP_BUDGET = 1e-4 per step. A learning rate 1 % off moves some tensors by 2 to 8 % in those 3
steps: 100 times the budget, so a wrong gradient or weight cannot pass.
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
    """Every float tensor of two state dicts within the norm-wise budget for ``steps`` steps;
    integer buffers (batch norm's step counters) equal."""
    assert actual.keys() == expected.keys()
    bound = STEP_BUDGET * max(steps, 1)
    for name, value in expected.items():
        other = actual[name]
        assert other.shape == value.shape, name
        if not value.is_floating_point():
            assert torch.equal(other, value), name
            continue
        distance = relative_distance(other, value)
        assert distance <= bound, f"{name}: relative distance {distance:.2e} > {bound:.2e}"


def assert_errors_close(actual: int, expected: int, n: int) -> None:
    """Test-error counts of two float paths: a prediction whose top two logits tie to within
    rounding may flip, so allow one flip per 100 examples (at least one)."""
    assert abs(actual - expected) <= max(1, math.ceil(n / 100)), (actual, expected)
