import pytest
import torch
import torch.nn.functional as F

from kd import data
from kd.errors import ConfigError
from kd.methods.schemes import MutualLearning, RandomTeacher, born_again
from kd.train import engine
from kd.train.batched import StackedModels
from kd.train.distill import Distill
from kd.train.engine import TrainConfig
from tests.test_batched import student, teacher, tiny_cifar

CONFIG = TrainConfig(epochs=1, batch_size=16, lr=0.05)


def test_mutual_learning_loss_matches_the_formula_by_hand():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 4, generator=g)
    y = torch.arange(5) % 4
    loss, terms = MutualLearning()(lambda x: logits, data.Batch(torch.zeros(5, 2), y,
                                                                 torch.arange(5)))
    for k in range(3):
        ce = F.cross_entropy(logits[k], y)
        kl = sum(F.kl_div(F.log_softmax(logits[k], 1), F.log_softmax(logits[j], 1),
                          reduction="batchmean", log_target=True) for j in range(3) if j != k) / 2
        assert float(terms["ce"][k]) == pytest.approx(float(ce), rel=1e-5)
        assert float(terms["kl"][k]) == pytest.approx(float(kl), rel=1e-5)
        assert float(loss[k]) == pytest.approx(float(ce + kl), rel=1e-5)


def test_mutual_learning_peers_are_fixed_targets():
    """Student k's KL term sends no gradient into its peers' logits."""
    logits = torch.randn(2, 4, 3, requires_grad=True)
    _, terms = MutualLearning()(lambda x: logits, data.Batch(torch.zeros(4, 1),
                                                              torch.zeros(4).long(),
                                                              torch.arange(4)))
    terms["kl"][0].backward()
    assert logits.grad[1].abs().sum() == 0 and logits.grad[0].abs().sum() > 0


def test_mutual_learning_trains_a_stack_and_needs_one():
    stack = StackedModels([student(1), student(2)])
    history = engine.fit(stack, tiny_cifar(), MutualLearning(), CONFIG, seed=0).history
    assert len(history[0]["train_kl"]) == 2 and all(v >= 0 for v in history[0]["train_kl"])
    with pytest.raises(ConfigError, match="at least 2 students"):
        engine.fit(student(1), tiny_cifar(), MutualLearning(), CONFIG, seed=0)


def test_random_teacher_draws_each_member_and_repeats_for_a_seed():
    teachers = [teacher(), student(3), student(4)]
    a, b = (RandomTeacher(teachers, torch.Generator().manual_seed(7)) for _ in range(2))
    x = torch.randn(2, 3, 32, 32)
    choices_a, choices_b = [], []
    for _ in range(30):
        out = a(x)
        torch.testing.assert_close(out, teachers[a.last_choice](x))
        choices_a.append(a.last_choice)
        b(x)
        choices_b.append(b.last_choice)
    assert choices_a == choices_b and set(choices_a) == {0, 1, 2}
    # it teaches through Distill like any teacher, asked anew on each batch
    drawn = []
    a.register_forward_hook(lambda module, inputs, output: drawn.append(module.last_choice))
    engine.fit(student(5), tiny_cifar(), Distill(a, 4.0, 0.9, cache_logits=False), CONFIG,
               seed=0)
    assert len(drawn) == 3  # 48 images in batches of 16: one draw per step, none cached
    with pytest.raises(ConfigError):
        RandomTeacher([])


def test_born_again_generations_learn_from_the_previous_one():
    first_teacher = teacher()
    generations = born_again(first_teacher, lambda: student(0), 2, tiny_cifar(), CONFIG,
                             eval_sets={"test": tiny_cifar(seed=1)})
    assert len(generations) == 2
    (gen1, history1), (gen2, _) = generations
    assert "train_kd" in history1[0] and "test_accuracy" in history1[0]
    assert not torch.equal(gen1.classifier.weight, gen2.classifier.weight)
    with pytest.raises(ConfigError, match="at least one generation"):
        born_again(first_teacher, lambda: student(0), 0, tiny_cifar(), CONFIG)
