"""The registered schemes (mutual, born-again, multi-teacher) and the quantized student:
hand-computed losses, seeded draws, and what ``trained_student`` hands back."""

import math

import pytest
import torch
import torch.nn.functional as F

from kd.methods import build_method
from kd.methods.mutual import reinitialized
from kd.models.cifar import CifarResNet
from tests.closeness import assert_states_close
from tests.test_methods import one_batch, student, teacher, tiny_cifar


def hinton_by_hand(s_logits, t_logits, y, T, alpha):
    kl = F.kl_div(F.log_softmax(s_logits / T, 1), F.softmax(t_logits / T, 1),
                  reduction="batchmean")
    return (1 - alpha) * F.cross_entropy(s_logits, y) + alpha * T * T * kl


def other_teacher():
    torch.manual_seed(7)
    return CifarResNet(8).eval()


def test_multi_teacher_distills_the_mean_of_the_teachers_tempered_softmaxes():
    """You et al. (2017): the target is (1/m) Σ softmax(z_k / T), by hand."""
    s, teachers = student(), [teacher(), other_teacher()]
    s.eval()
    method = build_method("multi_teacher", s, teachers, temperature=4.0, alpha=0.9)
    batch = one_batch(tiny_cifar())
    loss, _ = method(s, batch)
    with torch.no_grad():
        target = (F.softmax(teachers[0](batch.x) / 4, 1) + F.softmax(teachers[1](batch.x) / 4, 1)) / 2
        logits = s(batch.x)
    kl = F.kl_div(F.log_softmax(logits / 4, 1), target, reduction="batchmean")
    expected = 0.1 * F.cross_entropy(logits, batch.y) + 0.9 * 16 * kl
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_multi_teacher_logmean_tempers_the_mean_of_the_plain_softmaxes():
    s, teachers = student(), [teacher(), other_teacher()]
    s.eval()
    method = build_method("multi_teacher_logmean", s, teachers)
    batch = one_batch(tiny_cifar())
    loss, _ = method(s, batch)
    with torch.no_grad():
        mean = (F.softmax(teachers[0](batch.x), 1) + F.softmax(teachers[1](batch.x), 1)) / 2
    expected = hinton_by_hand(s(batch.x), mean.log(), batch.y, 4.0, 0.9)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    at_one = [build_method(name, s, teachers, temperature=1.0)(s, batch)[0].item()
              for name in ("multi_teacher", "multi_teacher_logmean")]
    assert at_one[0] == pytest.approx(at_one[1], rel=1e-5)  # at T = 1 the targets agree


def test_the_two_ensemble_targets_differ_for_confident_members():
    """Members sure of different classes: (1/2)(softmax(z1/4) + softmax(z2/4)) against
    softmax(log((softmax(z1) + softmax(z2))/2) / 4), worked out for z1 = (8, 0, 0), z2 = (0, 8, 0)."""
    from kd.models import Ensemble

    class Fixed(torch.nn.Module):
        def __init__(self, z):
            super().__init__()
            self.z = torch.tensor([z])

        def forward(self, x):
            return self.z

    members = [Fixed([8.0, 0.0, 0.0]), Fixed([0.0, 8.0, 0.0])]
    tempered = F.softmax(Ensemble(members, temperature=4.0)(None) / 4, 1)
    e2 = math.exp(2)  # softmax((8, 0, 0) / 4) = (e², 1, 1) / (e² + 2)
    assert tempered[0].tolist() == pytest.approx([(e2 + 1) / 2 / (e2 + 2)] * 2 + [1 / (e2 + 2)])
    logmean = F.softmax(Ensemble(members)(None) / 4, 1)
    p = [(math.exp(8) + 1) / 2 / (math.exp(8) + 2)] * 2 + [1 / (math.exp(8) + 2)]
    q = [v ** 0.25 for v in p]
    assert logmean[0].tolist() == pytest.approx([v / sum(q) for v in q])
    assert tempered[0, 2] > logmean[0, 2] + 0.03  # the paper's target keeps more of class 3


def test_random_teacher_draws_one_teacher_per_step_repeatably():
    s, teachers = student(), [teacher(), other_teacher()]
    s.eval()
    batch = one_batch(tiny_cifar())
    with torch.no_grad():
        by_teacher = [hinton_by_hand(s(batch.x), t(batch.x), batch.y, 4.0, 0.9).item()
                      for t in teachers]
    draws = []
    for _ in range(2):
        method = build_method("random_teacher", s, teachers, seed=3)
        method.bind(tiny_cifar(), augmented=False)
        assert method.cached_logits is None  # a new teacher each step: nothing cached
        losses = [method(s, batch)[0].item() for _ in range(12)]
        draws.append(losses)
    assert draws[0] == draws[1]
    matched = [min(range(2), key=lambda k: abs(by_teacher[k] - loss)) for loss in draws[0]]
    assert set(matched) == {0, 1}
    assert all(loss == pytest.approx(by_teacher[k], rel=1e-5) for loss, k in zip(draws[0], matched))


def test_born_again_defaults_to_the_soft_targets_alone_at_t1():
    s, t = student(), other_teacher()
    s.eval()
    method = build_method("born_again", s, t)
    batch = one_batch(tiny_cifar())
    loss, _ = method(s, batch)
    with torch.no_grad():
        target = F.softmax(t(batch.x), 1)
    expected = F.kl_div(F.log_softmax(s(batch.x), 1), target, reduction="batchmean")
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_quantized_on_labels_is_the_cross_entropy_of_the_quantized_student():
    method = build_method("quantized", student(), None, weight_bits=2)
    model = method.model.eval()
    conv = model.conv1 if hasattr(model, "conv1") else next(
        m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    levels = [w.unique().numel() for w in conv.weight]  # 2 bits: {-1, 0, 1} x scale
    assert max(levels) <= 3
    batch = one_batch(tiny_cifar())
    loss, terms = method(model, batch)
    assert set(terms) == {"ce"}
    assert loss.item() == pytest.approx(F.cross_entropy(model(batch.x), batch.y).item())
    distilled = build_method("quantized", student(), teacher(), weight_bits=8)
    assert set(distilled(distilled.model.eval(), batch)[1]) == {"ce", "kd"}


def test_mutual_default_peer_is_a_seeded_reinitialization_and_the_student_comes_back_first():
    s = student()
    state = torch.random.get_rng_state()
    a, b, c = reinitialized(s, 1), reinitialized(s, 1), reinitialized(s, 2)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global stream is untouched
    w = lambda m: m.conv1.weight if hasattr(m, "conv1") else next(m.parameters())
    assert torch.equal(w(a), w(b)) and not torch.equal(w(a), w(c))
    assert not torch.equal(w(a), w(s))
    method = build_method("mutual", s, None)
    assert len(method.model) == 2
    back = method.trained_student(method.model)
    assert all(torch.equal(v, s.state_dict()[k]) for k, v in back.state_dict().items())
    assert back is not s


def test_mutual_learning_looped_and_vectorized_give_the_same_losses_and_weights():
    from kd.train import engine
    from tests.test_methods import CONFIG

    results = []
    for vectorized in (False, True):
        peer = student(seed=5)
        method = build_method("mutual", student(), None, peers=[peer], vectorized=vectorized)
        history = engine.fit(method.model, tiny_cifar(), method, CONFIG, seed=0).history
        results.append((history[-1]["train_loss"], method.trained_student(method.model)))
    (loss_a, a), (loss_b, b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-4)
    assert_states_close(b.state_dict(), a.state_dict(), steps=3)  # 48 images, batches of 16
