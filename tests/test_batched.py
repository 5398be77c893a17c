import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from kd import data
from kd.data.cifar import RandomCropFlip
from kd.errors import ConfigError
from kd.models import MLP
from kd.models.cifar import PlainCNN
from kd.train import engine
from kd.train.batched import GroupedModels, StackedModels
from kd.train.distill import CrossEntropy, Distill
from kd.train.engine import TrainConfig
from tests.closeness import assert_errors_close, assert_states_close

CONFIG = TrainConfig(epochs=2, batch_size=16, optimizer="sgd", lr=0.05, momentum=0.9,
                     weight_decay=5e-4, schedule="cosine")
SETTINGS = [dict(temperature=2.0, alpha=0.9, t_squared=True, seed=1),
            dict(temperature=10.0, alpha=0.5, t_squared=False, seed=2)]


def tiny_cifar(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = torch.randint(0, 60, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    images[torch.arange(n), labels % 3] += 120  # a learnable colour cue
    return data.Split(images, labels, (0.3, 0.3, 0.3), (0.25, 0.25, 0.25))


def student(seed):
    torch.manual_seed(seed)
    return PlainCNN(2)


def teacher():
    torch.manual_seed(99)
    return PlainCNN(4).eval()


def test_k2_stack_trains_exactly_like_two_sequential_runs():
    """Same init seeds, same data seed, live teacher on augmented batches, SGD with momentum and
    weight decay, batch norm: the stacked pair ends where the two separate runs end."""
    train, test = tiny_cifar(), tiny_cifar(seed=1)
    sequential = []
    for s in SETTINGS:
        model = student(s["seed"])
        objective = Distill(teacher(), s["temperature"], s["alpha"], t_squared=s["t_squared"])
        history = engine.fit(model, train, objective, CONFIG, seed=5, augment=RandomCropFlip(),
                             eval_sets={"test": test}).history
        sequential.append((model, history))

    stack = StackedModels([student(s["seed"]) for s in SETTINGS])
    objective = Distill(teacher(), [s["temperature"] for s in SETTINGS],
                        [s["alpha"] for s in SETTINGS],
                        t_squared=[s["t_squared"] for s in SETTINGS])
    history = engine.fit(stack, train, objective, CONFIG, seed=5, augment=RandomCropFlip(),
                         eval_sets={"test": test}).history

    steps = CONFIG.epochs * math.ceil(len(train) / CONFIG.batch_size)
    for k, (model, seq_history) in enumerate(sequential):
        assert_states_close(stack.state_dicts()[k], model.state_dict(), steps)
        for epoch, seq_record in zip(history, seq_history):
            assert_errors_close(epoch["test_errors"][k], seq_record["test_errors"], len(test))
            for key in ("train_loss", "train_ce", "train_kd"):
                assert epoch[key][k] == pytest.approx(seq_record[key], rel=1e-4)
    # the two students really did train differently (different α, T, init)
    assert not torch.allclose(sequential[0][0].classifier.weight,
                              sequential[1][0].classifier.weight)


def test_stacked_forward_and_unstack_round_trip():
    models = [student(1), student(2), student(3)]
    stack, separate = StackedModels(models), [student(1), student(2), student(3)]
    x = torch.randn(5, 3, 32, 32)
    # train mode: batch statistics, and each student's running statistics move with its own
    # (a grouped convolution against plain ones: equal up to rounding, one forward pass)
    assert_states_close({"train": stack.train()(x)},
                        {"train": torch.stack([m.train()(x) for m in separate])}, steps=1)
    # eval mode: the running statistics just updated
    assert_states_close({"eval": stack.eval()(x)},
                        {"eval": torch.stack([m.eval()(x) for m in separate])}, steps=1)
    copies = stack.unstack([student(7), student(8), student(9)])
    for original, copy in zip(separate, copies):
        assert_states_close(copy.state_dict(), original.state_dict(), steps=1)


def test_per_student_loss_matches_the_formula_by_hand():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 6, 5, generator=g), torch.randn(6, 5, generator=g)
    y = torch.arange(6) % 5
    temperatures, alphas, squared = [2.0, 5.0], [0.25, 0.75], [True, False]
    objective = Distill(MLP(4, (2,), 5), temperatures, alphas, t_squared=squared,
                        transfer_logits=t)
    objective.bind(data.Split(torch.zeros(6, 1, 2, 2, dtype=torch.uint8), y, (0.0,), (1.0,),
                              num_classes=5), augmented=False)
    batch = data.Batch(torch.zeros(6, 4), y, torch.arange(6))
    loss, terms = objective(lambda x: s, batch)
    for k in range(2):
        T, a = temperatures[k], alphas[k]
        p, log_q = F.softmax(t / T, 1), F.log_softmax(s[k] / T, 1)
        kl = float((p * (p.log() - log_q)).sum(1).mean())
        ce = float(-F.log_softmax(s[k], 1)[torch.arange(6), y].mean())
        weight = T * T if squared[k] else 1.0
        assert float(terms["ce"][k]) == pytest.approx(ce, rel=1e-5)
        assert float(terms["kd"][k]) == pytest.approx(weight * kl, rel=1e-5)
        assert float(loss[k]) == pytest.approx((1 - a) * ce + a * weight * kl, rel=1e-5)


def test_dropping_t_squared_divides_the_kd_gradient_by_t_squared():
    t = torch.randn(4, 3)
    grads = []
    for squared in (True, False):
        s = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
        objective = Distill(MLP(4, (2,), 3), 8.0, 1.0, t_squared=squared, transfer_logits=t)
        objective.bind(data.Split(torch.zeros(4, 1, 2, 2, dtype=torch.uint8),
                                  torch.zeros(4, dtype=torch.long), (0.0,), (1.0,), 3), False)
        loss, _ = objective(lambda x: s, data.Batch(torch.zeros(4, 4), torch.zeros(4).long(),
                                                     torch.arange(4)))
        loss.backward()
        grads.append(s.grad)
    torch.testing.assert_close(grads[0], 64.0 * grads[1])


def test_mismatches_fail_clearly():
    with pytest.raises(ConfigError, match="one architecture"):
        StackedModels([PlainCNN(2), PlainCNN(4)])
    with pytest.raises(ConfigError, match="at least one"):
        StackedModels([])
    with pytest.raises(ConfigError, match="alpha must be in"):
        Distill(MLP(4, (2,), 2), [1.0, 2.0], [0.5, 1.5])
    with pytest.raises(RuntimeError):  # three temperatures for two alphas
        Distill(MLP(4, (2,), 2), [1.0, 2.0, 3.0], [0.5, 0.5])
    stack = StackedModels([student(1), student(2)])
    objective = Distill(teacher(), [1.0, 2.0, 3.0], 0.5)  # 3 settings for 2 students
    with pytest.raises(ConfigError, match="do not fit"):
        engine.fit(stack, tiny_cifar(16), objective, CONFIG, seed=0)


def test_cross_entropy_stack_trains_each_student():
    stack = StackedModels([student(1), student(2)])
    result = engine.fit(stack, tiny_cifar(), CrossEntropy(), CONFIG, seed=0,
                        eval_sets={"test": tiny_cifar(seed=1)})
    record = result.final
    assert len(record["test_accuracy"]) == 2 and len(record["test_errors"]) == 2
    assert len(record["train_loss"]) == 2 and all(map(math.isfinite, record["train_loss"]))
    assert record["train_loss"][0] != record["train_loss"][1]


class OpaqueAugment:
    """An augmentation without draw and apply: member batches fall back to one stream each."""

    def __call__(self, images, generator):
        return RandomCropFlip()(images, generator)


@pytest.mark.parametrize("augment", [RandomCropFlip(), data.RandomTranslate(2), None,
                                     OpaqueAugment()], ids=["crop_flip", "translate", "none",
                                                            "opaque"])
def test_member_batches_are_each_seeds_own_batches_stacked(augment):
    """Batched for all members (draws per member, gathers and crops once) or one stream per
    member, each member's batch is exactly the batch its seed's run would draw."""
    train = tiny_cifar(n=40)
    generators = lambda: [torch.Generator().manual_seed(s) for s in (3, 4)]
    stacked = list(data.iterate_member_batches(train, 16, generators(), augment=augment))
    alone = [list(data.iterate_batches(train, 16, generator=g, augment=augment))
             for g in generators()]
    assert [b.x.shape for b in stacked] == [(2, 16, 3, 32, 32)] * 2 + [(2, 8, 3, 32, 32)]
    for step, batch in enumerate(stacked):
        for k in range(2):  # the same integer indexing and element-wise float ops: exactly equal
            assert torch.equal(batch.x[k], alone[k][step].x)
            assert torch.equal(batch.idx[k], alone[k][step].idx)
            assert torch.equal(batch.y[k], train.labels[batch.idx[k]])
    assert not torch.equal(stacked[0].idx[0], stacked[0].idx[1])  # two seeds, two orders


def own_teacher(seed, layers=4):
    torch.manual_seed(seed)
    return PlainCNN(layers).eval()


@pytest.mark.parametrize("augmented, teacher_layers", [(True, (4, 4)), (False, (4, 4)),
                                                       (True, (4, 2))])
def test_runs_of_different_seeds_and_teachers_stack_like_separate_runs(augmented, teacher_layers):
    """K runs that differ in seed (init, batch order, crop + flip draws) and in teacher (its
    weights, or its architecture too), trained as one stack (member k on its own batches, from
    its own teacher), end where the K separate runs end: live teachers on augmented batches, or
    their logits looked up by index."""
    train, test = tiny_cifar(), tiny_cifar(seed=1)
    seeds, teacher_seeds = (3, 4), (98, 99)
    augment = RandomCropFlip() if augmented else None
    separate = []
    for seed, t, layers in zip(seeds, teacher_seeds, teacher_layers):
        model = student(seed)
        history = engine.fit(model, train, Distill(own_teacher(t, layers), 4.0, 0.9), CONFIG,
                             seed=seed, augment=augment, eval_sets={"test": test}).history
        separate.append((model, history))

    own = [own_teacher(t, layers) for t, layers in zip(teacher_seeds, teacher_layers)]
    together = StackedModels if len(set(teacher_layers)) == 1 else GroupedModels
    teachers = together(own, input_ndim=4)
    transfer = None if augmented else engine.predict(teachers, train)
    assert transfer is None or transfer.shape == (2, len(train), 10)
    stack = StackedModels([student(s) for s in seeds], input_ndim=4)
    fitted = engine.fit(stack, train, Distill(teachers, 4.0, 0.9, transfer_logits=transfer),
                        dataclasses.replace(CONFIG, checkpoint_epochs=(1,)), seed=list(seeds),
                        augment=augment, eval_sets={"test": test})

    steps = CONFIG.epochs * math.ceil(len(train) / CONFIG.batch_size)
    for k, (model, history) in enumerate(separate):
        assert_states_close(stack.state_dicts()[k], model.state_dict(), steps)
        for epoch, alone in zip(fitted.history, history):
            assert_errors_close(epoch["test_errors"][k], alone["test_errors"], len(test))
            assert epoch["train_loss"][k] == pytest.approx(alone["train_loss"], rel=1e-4)
    # checkpoints of the stack split into the members' own state dicts
    members = stack.split_state(fitted.checkpoints[1])
    assert members[0].keys() == separate[0][0].state_dict().keys()
    assert not torch.equal(members[0]["classifier.weight"], members[1]["classifier.weight"])


def test_seed_lists_need_a_stack_with_member_inputs():
    train = tiny_cifar(n=16)
    for model in (student(1), StackedModels([student(1), student(2)]),
                  StackedModels([student(1), student(2)], input_ndim=4)):
        seeds = [1, 2, 3] if isinstance(model, StackedModels) and model.input_ndim else [1, 2]
        with pytest.raises(ConfigError, match="seeds train a StackedModels"):
            engine.fit(model, train, CrossEntropy(), CONFIG, seed=seeds)
    with pytest.raises(ConfigError, match="a stack of 2 models got batches for 3"):
        StackedModels([student(1), student(2)], input_ndim=4)(torch.zeros(3, 4, 3, 32, 32))


def test_grouped_models_answer_in_member_order_whatever_their_architectures():
    """Members of an architecture with enough of them run as one stack, the others alone; each
    member's logits come back in its own place, on its own batch or on a shared one."""
    layers = (4, 2, 4, 6, 4)
    models = [own_teacher(seed, n) for seed, n in enumerate(layers)]
    grouped = GroupedModels(models, input_ndim=4, stack_at_least=3).eval()
    assert sorted(map(sorted, grouped.groups)) == [[0, 2, 4], [1], [3]]
    assert sum(isinstance(part, StackedModels) for part in grouped.parts) == 1
    x = torch.randn(len(models), 6, 3, 32, 32)
    with torch.no_grad():
        own, shared = grouped(x), grouped(x[0])
        for k, model in enumerate(models):  # a vmapped and a plain forward round differently
            torch.testing.assert_close(own[k], model(x[k]), rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(shared[k], model(x[0]), rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="5 grouped models got batches for 2"):
        grouped(x[:2])


def test_stacked_batch_norm_inputs_go_to_fp32_on_cuda_only():
    """The CUDA work-around (PyTorch issue 184890) leaves CPU inputs as they are, so CPU runs are
    unchanged; on a GPU a stack with batch norm trains under bf16 autocast."""
    from kd.train.batched import batch_norm_input_in_fp32_on_cuda
    bn, x = torch.nn.BatchNorm2d(3), torch.ones(2, 3, 4, 4, dtype=torch.bfloat16)
    assert batch_norm_input_in_fp32_on_cuda(bn, (x,)) is None
    if not torch.cuda.is_available():
        return
    (cast,) = batch_norm_input_in_fp32_on_cuda(bn, (x.cuda(),))
    assert cast.dtype == torch.float32
    torch.manual_seed(0)
    stack = StackedModels([PlainCNN(2), PlainCNN(2)], input_ndim=4).cuda().train()
    images = torch.randn(2, 8, 3, 32, 32, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = stack(images)
    logits.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in stack.parameters())
