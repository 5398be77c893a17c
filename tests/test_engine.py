import dataclasses
import math
import os

import pytest
import torch
from torch import nn

from kd import data
from kd.errors import ConfigError
from kd.experiment.cli import with_compile
from kd.models import MLP
from kd.train import engine
from kd.train.distill import CrossEntropy, Distill
from kd.train.engine import TrainConfig
from tests.closeness import assert_states_close


def toy_split(n=96, seed=0):
    """Images whose label is encoded in which row is bright: learnable by a small MLP."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    images = torch.randint(0, 30, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    images[torch.arange(n), 0, 2 * labels, :] = 255
    return data.Split(images, labels, (0.2,), (0.3,), num_classes=4)


def train_once(seed, config=TrainConfig(epochs=3, batch_size=16, lr=0.05), **kwargs):
    engine.seed_everything(seed)
    model = MLP(64, (16,), 4, **kwargs)
    result = engine.fit(model, toy_split(), CrossEntropy(), config, seed=seed,
                        eval_sets={"test": toy_split(seed=1)})
    return model, result


def test_cpu_run_repeats_exactly_for_a_seed():
    a, ra = train_once(7)
    b, rb = train_once(7)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert ra.history == rb.history
    c, _ = train_once(8)
    assert not torch.equal(a.classifier.weight, c.classifier.weight)


def test_training_learns_and_history_has_every_epoch():
    _, result = train_once(0, TrainConfig(epochs=8, batch_size=16, lr=0.1))
    assert [h["epoch"] for h in result.history] == list(range(1, 9))
    assert result.final["test_accuracy"] > 0.9
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.final["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine ends at 0


def test_checkpoints_at_chosen_epochs():
    engine.seed_everything(0)
    model = MLP(64, (16,), 4)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    result = engine.fit(model, toy_split(), CrossEntropy(),
                        TrainConfig(epochs=3, batch_size=16, lr=0.05, checkpoint_epochs=(0, 2)),
                        seed=0)
    assert sorted(result.checkpoints) == [0, 2]
    for k, v in initial.items():
        assert torch.equal(result.checkpoints[0][k], v)
    assert not torch.equal(result.checkpoints[2]["classifier.weight"], model.classifier.weight)


def test_max_norm_constraint_holds_after_training():
    model, _ = train_once(0, TrainConfig(epochs=2, batch_size=16, lr=0.5), max_norm=0.5)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            assert module.weight.norm(dim=1).max().item() <= 0.5 + 1e-5


class CountingTeacher(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = MLP(64, (8,), 4, hidden_dropout=0.5)
        self.calls = 0
        self.train_mode_calls = 0
        self.grad_enabled_calls = 0

    def forward(self, x):
        self.calls += 1
        self.train_mode_calls += self.training
        self.grad_enabled_calls += torch.is_grad_enabled()
        return self.net(x)


@pytest.mark.parametrize("augmented", [False, True])
def test_teacher_runs_in_eval_mode_without_grad_and_is_cached_when_not_augmented(augmented):
    teacher = CountingTeacher()
    objective = Distill(teacher, temperature=4.0, alpha=0.9)
    engine.seed_everything(0)
    student = MLP(64, (16,), 4)
    split = toy_split(96)
    config = TrainConfig(epochs=3, batch_size=16, lr=0.05)
    augment = data.RandomTranslate(1) if augmented else None
    engine.fit(student, split, objective, config, seed=0, augment=augment)
    steps = 3 * math.ceil(96 / 16)
    if augmented:
        assert teacher.calls == steps and objective.cached_logits is None
    else:
        assert teacher.calls == 1  # one forward of the whole transfer set, in bind()
        assert objective.cached_logits.shape == (96, 4)
    assert teacher.train_mode_calls == 0 and teacher.grad_enabled_calls == 0
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_cached_and_live_teacher_give_the_same_training():
    def run(cache):
        engine.seed_everything(0)
        teacher = MLP(64, (8,), 4)
        objective = Distill(teacher, temperature=2.0, alpha=0.5)
        engine.seed_everything(1)
        student = MLP(64, (16,), 4)
        if not cache:  # make bind() skip the cache, as it does for augmented data
            objective.bind = lambda train, augmented: None
        engine.fit(student, toy_split(), objective, TrainConfig(epochs=2, batch_size=16, lr=0.05),
                   seed=0)
        return student.state_dict()
    # the cached logits come from predict() in batches, the live ones batch by batch
    assert_states_close(run(False), run(True), steps=2 * 6)  # 96 images, batches of 16


def test_distill_logs_both_terms():
    engine.seed_everything(0)
    objective = Distill(MLP(64, (8,), 4), temperature=4.0, alpha=0.9)
    result = engine.fit(MLP(64, (16,), 4), toy_split(), objective,
                        TrainConfig(epochs=1, batch_size=16, lr=0.05), seed=0)
    record = result.final
    assert record["train_loss"] == pytest.approx(0.1 * record["train_ce"] + 0.9 * record["train_kd"],
                                                 rel=1e-5)


def test_distill_rejects_bad_arguments_up_front():
    with pytest.raises(ValueError, match="temperature"):
        Distill(MLP(4, (2,), 2), temperature=0.0, alpha=0.5)
    with pytest.raises(ValueError, match="alpha"):
        Distill(MLP(4, (2,), 2), temperature=1.0, alpha=2.0)


@pytest.mark.parametrize("schedule,at,expected", [
    ("constant", 5.0, 1.0), ("cosine", 0.0, 1.0), ("cosine", 5.0, 0.5), ("cosine", 10.0, 0.0),
    ("linear", 2.5, 0.75), ("step", 3.9, 1.0), ("step", 4.0, 0.1), ("step", 8.0, 0.01)])
def test_schedules(schedule, at, expected):
    config = TrainConfig(epochs=10, schedule=schedule, milestones=(4, 8))
    assert engine.lr_multiplier(at, config) == pytest.approx(expected, abs=1e-9)


def test_warmup_ramps_linearly():
    config = TrainConfig(epochs=10, schedule="constant", warmup_epochs=2)
    assert engine.lr_multiplier(1.0, config) == pytest.approx(0.5)
    assert engine.lr_multiplier(3.0, config) == pytest.approx(1.0)


@pytest.mark.parametrize("kwargs,match", [
    ({"optimizer": "lbfgs"}, "unknown optimizer"), ({"schedule": "wavy"}, "unknown schedule"),
    ({"lr": 0.0}, "lr > 0"), ({"batch_size": 0}, "batch_size")])
def test_bad_train_config_raises(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kwargs)


def test_device_resolution():
    assert engine.resolve_device("cpu").type == "cpu"
    with pytest.raises(ConfigError, match="unknown device"):
        engine.resolve_device("gpu-please")
    if not torch.cuda.is_available():
        assert engine.resolve_device("auto").type == "cpu"
        with pytest.raises(ConfigError, match="CUDA is not available"):
            engine.resolve_device("cuda")


def test_a_cuda_index_beyond_the_machines_gpus_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert engine.resolve_device("cuda:1") == torch.device("cuda:1")
    assert engine.resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(ConfigError, match=r"'cuda:7' requested but this machine has 2 CUDA "
                                          r"device\(s\): cuda:0 to cuda:1"):
        engine.resolve_device("cuda:7")


def test_mlp_validates_and_names_its_layers():
    model = MLP(784, (30, 30), 10, input_dropout=0.2, hidden_dropout=0.5, max_norm=3.0)
    assert [n for n, _ in model.named_children()] == [
        "flatten", "input_dropout", "hidden1", "hidden2", "classifier"]
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    with pytest.raises(ConfigError):
        MLP(10, (0,), 2)
    with pytest.raises(ConfigError):
        MLP(10, (4,), 2, hidden_dropout=1.0)


def test_precomputed_transfer_logits_are_used_and_checked():
    teacher = CountingTeacher()
    split = toy_split(96)
    logits = torch.randn(96, 4, generator=torch.Generator().manual_seed(0))
    objective = Distill(teacher, temperature=2.0, alpha=0.5, transfer_logits=logits)
    engine.fit(MLP(64, (16,), 4), split, objective, TrainConfig(epochs=1, batch_size=16, lr=0.05),
               seed=0)
    assert teacher.calls == 0 and torch.equal(objective.cached_logits, logits)
    short = Distill(teacher, temperature=2.0, alpha=0.5, transfer_logits=logits[:10])
    with pytest.raises(ConfigError, match="10 rows for a transfer set of 96"):
        short.bind(split, augmented=False)


def test_compiled_forward_trains_like_eager():
    config = TrainConfig(epochs=1, batch_size=16, lr=0.05)
    eager, _ = train_once(3, config)
    compiled, _ = train_once(3, dataclasses.replace(config, compile=True))
    assert_states_close(compiled.state_dict(), eager.state_dict(), steps=6)  # 96 / 16


def test_compile_flag_reaches_every_train_config_of_a_profile():
    from studies.alpha_temperature import PROFILES

    profile = with_compile(PROFILES["smoke"], True)
    assert profile.teacher.compile and profile.student.compile
    assert with_compile(PROFILES["smoke"], False) is PROFILES["smoke"]
    from studies.cifar_zoo import ZOO_PROFILES  # a profile with one config, of another class

    assert with_compile(ZOO_PROFILES["smoke"], True).config.compile


def test_a_diverging_loss_stops_training_naming_the_epoch_and_term():
    config = TrainConfig(epochs=3, batch_size=16, lr=1e30, schedule="constant")
    with pytest.raises(engine.NonFiniteLossError, match=r"toy: .*'loss' is not finite at epoch 1"):
        engine.seed_everything(0)
        engine.fit(MLP(64, (16,), 4), toy_split(), CrossEntropy(), config, seed=0, desc="toy")


def test_precision_auto_follows_the_hardware_and_unknown_names_are_refused(monkeypatch):
    cpu = torch.device("cpu")
    assert engine.resolve_precision("fp32", cpu) == "fp32"
    assert engine.resolve_precision("bf16", cpu) == "bf16"
    # native bf16: measured per model when it trains (kd.train.precision); emulated: fp32 at once
    for native, expected in ((True, "auto"), (False, "fp32")):
        monkeypatch.setattr(engine, "native_bf16", lambda device: native)
        assert engine.resolve_precision("auto", cpu) == expected
    with pytest.raises(ConfigError, match="unknown precision 'fp16'"):
        engine.resolve_precision("fp16", cpu)
    with pytest.raises(ConfigError, match="unknown precision"):
        TrainConfig(precision="fp16")
    assert TrainConfig(precision="auto").precision == "auto"  # made concrete when it trains


def test_bf16_training_repeats_exactly_and_stays_near_fp32():
    config = TrainConfig(epochs=1, batch_size=32, lr=0.05)
    bf16 = dataclasses.replace(config, precision="bf16")
    (a, ra), (b, rb) = train_once(3, bf16), train_once(3, bf16)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert ra.history == rb.history
    fp32, _ = train_once(3, config)
    assert a.classifier.weight.dtype == torch.float32  # autocast: the weights stay fp32
    drift = (a.classifier.weight - fp32.classifier.weight).norm() / fp32.classifier.weight.norm()
    assert 0 < drift < 0.05  # bf16 rounds differently (8 bits of mantissa), but trains alike


def test_compile_backend_avoids_inductor_on_scalar_cpu_kernels(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("KD_COMPILE_BACKEND", raising=False)
    for capability, backend in (("AVX2", "inductor"), ("AVX512", "inductor"),
                                ("DEFAULT", "aot_eager")):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
        assert engine.compile_backend(cpu) == backend
        folder = os.environ.get("TORCHINDUCTOR_CACHE_DIR", "")
        # inductor's kernels go to a folder of this capability's own
        assert folder.endswith(f"_{capability.lower()}") == (backend == "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/mine")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    engine.compile_backend(cpu)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/somewhere/mine"  # the user's folder wins
    monkeypatch.setenv("KD_COMPILE_BACKEND", "eager")
    assert engine.compile_backend(cpu) == "eager"


def test_weights_blown_up_by_the_last_step_are_caught_too():
    """One batch an epoch: the loss of that step is finite, the update it makes is not."""
    config = TrainConfig(epochs=1, batch_size=96, lr=float("inf"), schedule="constant")
    with pytest.raises(engine.NonFiniteLossError, match="toy: the weights are not finite after "
                                                         "epoch 1"):
        engine.fit(MLP(64, (16,), 4), toy_split(), CrossEntropy(), config, seed=0, desc="toy")
