import math

import pytest
import torch
import torch.nn.functional as F

from kd.losses import distillation_loss, distillation_terms, kd_loss

LN3 = math.log(3.0)
# p = softmax([0, ln 3]) = [1/4, 3/4] against q = [1/2, 1/2]:
# KL(p || q) = 1/4 ln(1/2) + 3/4 ln(3/2), worked out by hand.
KL_QUARTER = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)


def test_kl_constant_is_what_we_worked_out():
    assert KL_QUARTER == pytest.approx(0.1308120, abs=1e-7)


def test_kd_loss_golden_value_at_temperature_1():
    student, teacher = torch.zeros(1, 2), torch.tensor([[0.0, LN3]])
    assert kd_loss(student, teacher, 1.0).item() == pytest.approx(KL_QUARTER, abs=1e-6)


def test_kd_loss_golden_value_at_temperature_2_includes_t_squared():
    # At T = 2 the teacher [0, 2 ln 3] softens to the same p; the loss is 2^2 times the KL.
    student, teacher = torch.zeros(1, 2), torch.tensor([[0.0, 2 * LN3]])
    assert kd_loss(student, teacher, 2.0).item() == pytest.approx(4 * KL_QUARTER, abs=1e-6)
    assert kd_loss(student, teacher, 2.0).item() == pytest.approx(0.5232481, abs=1e-6)


def test_kd_loss_averages_over_the_batch():
    student = torch.zeros(2, 2)
    teacher = torch.tensor([[0.0, LN3], [0.0, 0.0]])  # second row: KL = 0
    assert kd_loss(student, teacher, 1.0).item() == pytest.approx(KL_QUARTER / 2, abs=1e-6)


def test_kd_loss_is_zero_for_equal_logits_and_positive_otherwise():
    logits = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    assert kd_loss(logits, logits.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(logits, logits.flip(1), 4.0).item() > 0.01


@pytest.mark.parametrize("temperature", [1.0, 3.0, 20.0])
def test_gradient_of_soft_term_is_t_times_q_minus_p_over_n(temperature):
    """Hinton et al. eq. 2: dC/dz_i = (1/T)(q_i - p_i); times T^2 and averaged over N."""
    g = torch.Generator().manual_seed(1)
    student = torch.randn(4, 6, generator=g, requires_grad=True)
    teacher = torch.randn(4, 6, generator=g)
    kd_loss(student, teacher, temperature).backward()
    q = F.softmax(student.detach() / temperature, 1)
    p = F.softmax(teacher / temperature, 1)
    expected = temperature * (q - p) / 4
    torch.testing.assert_close(student.grad, expected, atol=1e-6, rtol=1e-5)


def test_teacher_logits_get_no_gradient():
    student = torch.randn(3, 4, requires_grad=True)
    teacher = torch.randn(3, 4, requires_grad=True)
    kd_loss(student, teacher, 2.0).backward()
    assert teacher.grad is None and student.grad is not None


def test_distillation_loss_golden_value():
    # Uniform student s = [0, 0]: CE(s, y=1) = ln 2; kd against t = [0, ln 3] at T=1 is KL_QUARTER.
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[0.0, LN3]])
    y = torch.tensor([1])
    ce = math.log(2.0)
    loss = distillation_loss(student, teacher, y, temperature=1.0, alpha=0.25)
    assert loss.item() == pytest.approx(0.75 * ce + 0.25 * KL_QUARTER, abs=1e-6)


def test_distillation_loss_endpoints():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    y = torch.tensor([0, 1, 2, 1, 0])
    ce = F.cross_entropy(s, y)
    assert distillation_loss(s, t, y, 4.0, 0.0).item() == pytest.approx(ce.item(), rel=1e-6)
    assert distillation_loss(s, t, y, 4.0, 1.0).item() == pytest.approx(
        kd_loss(s, t, 4.0).item(), rel=1e-6)
    ce_term, kd_term = distillation_terms(s, t, y, 4.0, 0.3)
    assert distillation_loss(s, t, y, 4.0, 0.3).item() == pytest.approx(
        (0.7 * ce_term + 0.3 * kd_term).item(), rel=1e-6)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan")])
def test_non_positive_temperature_raises(temperature):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), temperature)


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_outside_unit_interval_raises(alpha):
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long),
                          2.0, alpha)


@pytest.mark.parametrize("student,teacher", [((2, 3), (2, 4)), ((2, 3), (3, 3)), ((6,), (6,))])
def test_mismatched_logit_shapes_raise(student, teacher):
    with pytest.raises(ValueError, match="logits"):
        kd_loss(torch.zeros(student), torch.zeros(teacher), 2.0)


def test_mismatched_targets_raise():
    with pytest.raises(ValueError, match="targets"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3, dtype=torch.long),
                          2.0, 0.5)
