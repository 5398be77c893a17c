import math

import pytest
import torch

from kd import metrics

LOGITS = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0], [4.0, 0.0, 0.0]])
LABELS = torch.tensor([0, 2, 2, 1])  # predictions 0, 1, 2, 0: rows 1 and 3 are wrong


def test_errors_accuracy_and_per_class_errors_by_hand():
    assert metrics.error_count(LOGITS, LABELS) == 2
    assert metrics.accuracy(LOGITS, LABELS) == 0.5
    assert metrics.per_class_errors(LOGITS, LABELS).tolist() == [0, 1, 1]
    assert metrics.per_class_errors(LOGITS, LABELS, num_classes=5).tolist() == [0, 1, 1, 0, 0]


def test_agreement_counts_matching_argmax():
    teacher = torch.tensor([[0.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    # student predicts 0, 1, 2, 0; teacher predicts 1, 1, 2, 1
    assert metrics.agreement(LOGITS, teacher) == 0.5
    assert metrics.agreement(LOGITS, LOGITS) == 1.0


def test_predictive_kl_by_hand():
    teacher = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0]])
    student = torch.zeros(2, 2)
    expected = (0.25 * math.log(0.5) + 0.75 * math.log(1.5) + 0.0) / 2
    assert metrics.predictive_kl(teacher, student) == pytest.approx(expected, abs=1e-6)
    assert metrics.predictive_kl(teacher, teacher) == pytest.approx(0.0, abs=1e-7)


def test_ece_by_hand():
    # Two predictions at confidence 3/4, one right and one wrong: one bin, |1/2 - 3/4| = 1/4.
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    assert metrics.expected_calibration_error(logits, torch.tensor([1, 0])) == pytest.approx(0.25)
    # Add a confident correct prediction (p = 0.99) in another bin: (2/3)(1/4) + (1/3)(0.01).
    logits = torch.cat([logits, torch.tensor([[0.0, math.log(99.0)]])])
    expected = 2 / 3 * 0.25 + 1 / 3 * 0.01
    assert metrics.expected_calibration_error(logits, torch.tensor([1, 0, 1])) == pytest.approx(
        expected, abs=1e-6)


def test_shift_logits_changes_only_the_chosen_classes_and_copies():
    shifted = metrics.shift_logits(LOGITS, [1, 2], -1.5)
    torch.testing.assert_close(shifted[:, 0], LOGITS[:, 0])
    torch.testing.assert_close(shifted[:, 1:], LOGITS[:, 1:] - 1.5)
    assert LOGITS[0, 1] == 1.0  # input untouched


def test_fit_logit_shift_finds_the_smallest_shift_that_fixes_the_class():
    # 3s score 1.05 on class 3 and 3.0 on class 5: they need a shift above 1.95.
    # Others score 5.0 on their class and 0 on class 3: a shift of 5 or more breaks them.
    n = 40
    labels = torch.tensor([3] * 10 + [c for c in range(10) if c != 3] * 3 + [0, 1, 2])
    logits = torch.zeros(n, 10)
    for i, y in enumerate(labels.tolist()):
        if y == 3:
            logits[i, 3], logits[i, 5] = 1.05, 3.0
        else:
            logits[i, y] = 5.0
    shift = metrics.fit_logit_shift(logits, labels, [3])
    assert shift == pytest.approx(2.0, abs=1e-4)
    assert metrics.error_count(metrics.shift_logits(logits, [3], shift), labels) == 0
    assert metrics.error_count(logits, labels) == 10


def test_fit_logit_shift_prefers_no_shift_when_nothing_helps():
    assert metrics.fit_logit_shift(LOGITS[[0, 2]], LABELS[[0, 2]], [1]) == 0.0


def test_fit_logit_shift_needs_classes():
    with pytest.raises(ValueError, match="at least one class"):
        metrics.fit_logit_shift(LOGITS, LABELS, [])


def test_loss_plateau_is_the_relative_drop_over_the_last_tenth():
    # 20 epochs: windows of 2; previous mean (1.2 + 1.0) / 2 = 1.1, last (1.0 + 0.8) / 2 = 0.9
    losses = [5.0] * 16 + [1.2, 1.0, 1.0, 0.8]
    assert metrics.loss_plateau(losses) == pytest.approx((1.1 - 0.9) / 0.9)
    assert metrics.loss_plateau([0.5] * 30) == 0.0  # flat: plateaued
    assert metrics.loss_plateau([0.5] * 30) < metrics.PLATEAU_DROP
    assert metrics.loss_plateau([1.0, 0.5]) == pytest.approx(1.0)  # one epoch a window
    assert metrics.loss_plateau([1.0]) is None and metrics.loss_plateau([]) is None
    assert metrics.loss_plateau([[1.0, 9.0], [0.5, 9.0]]) == pytest.approx(1.0)  # a stack
