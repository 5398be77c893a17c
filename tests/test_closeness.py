"""The tolerance of tests/closeness.py: loose enough for rounding, tight enough for a bug."""

import dataclasses

import pytest
import torch

from kd.methods import build_method
from kd.train import engine
from tests.closeness import assert_errors_close, assert_states_close, relative_distance
from tests.test_methods import CONFIG, student, tiny_cifar


def test_relative_distance_is_norm_wise():
    b = torch.tensor([3.0, 4.0, 0.0])
    assert relative_distance(b + torch.tensor([0.0, 0.0, 0.5]), b) == pytest.approx(0.1)
    assert relative_distance(torch.zeros(2), torch.zeros(2)) == 0.0


def test_integer_buffers_must_be_equal_and_budget_grows_with_steps():
    state = {"w": torch.ones(100), "num_batches_tracked": torch.tensor(3)}
    near = {"w": torch.ones(100) * (1 + 2.5e-4), "num_batches_tracked": torch.tensor(3)}
    assert_states_close(near, state, steps=3)
    with pytest.raises(AssertionError, match="state: relative distance"):
        assert_states_close(near, state, steps=2)
    with pytest.raises(AssertionError, match="num_batches_tracked"):
        assert_states_close({**near, "num_batches_tracked": torch.tensor(4)}, state, steps=3)


def test_a_learning_rate_one_percent_off_fails_the_budget():
    """The mutual-learning run of the looped-vs-vectorized test, once with lr 1 % higher."""
    def trained(config):
        method = build_method("mutual", student(), None, peers=[student(seed=5)])
        engine.fit(method.model, tiny_cifar(), method, config, seed=0)
        return method.trained_student(method.model).state_dict()

    reference = trained(CONFIG)
    assert_states_close(trained(CONFIG), reference, steps=3)  # the same path: distance 0
    with pytest.raises(AssertionError, match="relative distance"):
        assert_states_close(trained(dataclasses.replace(CONFIG, lr=CONFIG.lr * 1.01)),
                            reference, steps=3)


def test_error_counts_may_differ_by_one_flip_per_hundred_examples():
    assert_errors_close(10, 11, n=48)
    assert_errors_close(10, 13, n=300)
    with pytest.raises(AssertionError):
        assert_errors_close(10, 12, n=48)
