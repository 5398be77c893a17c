"""kd.experiment.estimate: the counts against hand-worked numbers, the estimate's arithmetic, and
the command on every study's smoke profile."""

import math
import os
import re

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import kd.models.cifar  # noqa: F401  (registers the CIFAR models)
from kd import data
from kd.data.cifar import RandomCropFlip
from kd.experiment import bench, estimate
from kd.experiment.estimate import Job, Phase, StepCost, Target, Tracer
from kd.models import MLP, build_model
from kd.train import distill, engine
from kd.train.batched import StackedModels
from kd.train.distill import CrossEntropy, Distill
from kd.train.engine import TrainConfig, torch_threads


@pytest.fixture(autouse=True)
def one_thread():
    """Steps of two images spend their time in thread hand-offs; one thread keeps them fast."""
    with torch_threads(1):
        yield


def measured(model, objective, split, augment=None, batch: int = 2, optimizer="sgd") -> StepCost:
    """One kind of step, measured as the estimator does (model on the CPU, fp32)."""
    config = TrainConfig(epochs=1, batch_size=128, optimizer=optimizer, lr=0.01)
    kind = ("test",)
    return Tracer(batch).step_cost(kind, engine.prepare_model(model, torch.device("cpu")), split,
                                   objective, config, 0, augment, 0, "test")


def mnist_like(n: int = 16) -> data.Split:
    return estimate.fake_split("mnist", True, n / 60_000)


def cifar_like(n: int = 16) -> data.Split:
    return estimate.fake_split("cifar10", True, n / 50_000)


def test_mlp_step_flops_counted_by_hand():
    # forward 2·(784·1200 + 1200·1200 + 1200·10) per image; backward twice that (gradients of
    # inputs and weights), less the first layer's input gradient (the images need none);
    # SGD, cross-entropy and the data path add no matrix products
    step = measured(MLP(784, (1200, 1200)), CrossEntropy(), mnist_like(200))
    forward = 2 * (784 * 1200 + 1200 * 1200 + 1200 * 10)
    assert step.flops_per_image == 3 * forward - 2 * 784 * 1200
    assert step.ops > 0 and step.finite
    # a distilled student with its teacher live adds the teacher's forward, and operators
    teacher = MLP(784, (1200, 1200))
    live = measured(MLP(784, (1200, 1200)), Distill(teacher, 4.0, 0.9), mnist_like(200),
                    augment=data.RandomTranslate(2))
    assert live.flops_per_image == 4 * forward - 2 * 784 * 1200
    assert live.ops > step.ops


def test_counts_agree_with_flop_counter_mode_and_grouped_convolutions_are_fixed():
    x = torch.randn(2, 3, 32, 32)
    model = build_model("resnet8")
    with estimate.OpCounter() as ours:
        model(x).sum().backward()
    with FlopCounterMode(display=False) as torchs:
        model(x).sum().backward()
    assert ours.flops == torchs.get_total_flops() and ours.ops > 50
    # K stacked students are K convolution groups under vmap: K times one student's FLOPs
    student = build_model("plain_cnn2")
    with estimate.OpCounter() as single:
        student(x).sum().backward()
    ops = []
    for k in (2, 3):
        students = StackedModels([build_model("plain_cnn2") for _ in range(k)])
        with estimate.OpCounter() as stacked:
            students(x).sum().backward()
        assert stacked.flops == k * single.flops
        ops.append(stacked.ops)
    assert ops[0] == ops[1]  # one pass for all K students: the operators do not grow with K


def test_operators_per_step_do_not_depend_on_the_batch():
    teacher = build_model("resnet8")
    costs = [measured(build_model("plain_cnn2"), Distill(teacher, 4.0, 0.9), cifar_like(32),
                      RandomCropFlip(), batch=batch) for batch in (2, 4)]
    assert costs[0].ops == costs[1].ops > 100
    assert costs[0].flops_per_image == pytest.approx(costs[1].flops_per_image)
    # a cached teacher (no augmentation) is not run in the step: fewer operators and FLOPs
    cached = measured(build_model("plain_cnn2"), Distill(teacher, 4.0, 0.9), cifar_like(32))
    assert cached.ops < costs[0].ops and cached.flops_per_image < costs[0].flops_per_image


def test_estimate_arithmetic_on_hand_made_numbers():
    target = Target(peak_tflops=100, mfu=0.5, op_overhead_us=10)  # 5e13 FLOP/s, 1e-5 s/op
    assert target.bounds(1e14, 1000) == (2.0, pytest.approx(0.01))
    step = StepCost(ops=2000, flops_per_image=1e9)
    job = Job("x", "m", runs=3, images=1000, batch_size=128, phases=(Phase(10, step),))
    assert job.steps_per_epoch == 8 and job.images_seen == 30_000
    assert job.flops == 3 * 10 * 1000 * 1e9 and job.ops == 3 * 10 * 8 * 2000
    flop_s, launch_s, est = job.seconds(target)
    assert flop_s == pytest.approx(3e13 / 5e13) and launch_s == pytest.approx(480_000 * 1e-5)
    assert est == launch_s  # 4.8 s of launches against 0.6 s of FLOPs
    # two phases (a KD term that stops after epoch 4): each at its own cost
    cheap = StepCost(ops=500, flops_per_image=2e11)
    two = Job("y", "m", 1, 1000, 128, (Phase(4, step), Phase(6, cheap)))
    assert two.epochs == 10 and two.ops == 4 * 8 * 2000 + 6 * 8 * 500
    assert two.flops == 4 * 1000 * 1e9 + 6 * 1000 * 2e11
    assert two.seconds(target)[2] == pytest.approx(max(two.flops / 5e13, two.ops * 1e-5))
    result = estimate.StudyEstimate("s", "p", [job, two])
    assert result.seconds(target) == pytest.approx(tuple(
        a + b for a, b in zip(job.seconds(target), two.seconds(target))))
    with pytest.raises(estimate.ConfigError):
        Target(mfu=0)
    assert [estimate.duration(s) for s in (0.25, 42, 600, 5 * 3600)] == [
        "250 ms", "42 s", "10.0 min", "5.0 h"]


def test_labels_group_the_runs_of_every_seed():
    assert estimate.job_label("teacher resnet110 seed 2") == "teacher resnet110"
    assert estimate.job_label("seed 0: 91 student(s)") == "91 student(s)"
    assert estimate.job_label("teacher 3") == "teacher"
    assert estimate.job_label("resnet56->resnet20/kd seed 1") == "resnet56->resnet20/kd"


def test_fake_data_has_the_real_sizes():
    train = estimate.fake_load("mnist", True)
    assert len(train) == 60_000 and train.images.shape[1:] == (1, 28, 28)
    assert len(train.without_classes([3])) == 54_000
    assert len(estimate.fake_load("cifar10", False)) == 10_000


SECTION = re.compile(r"^### (\w+) \[smoke\]: (\d+) cells, (\d+) training runs")


def test_task_estimate_prints_every_smoke_profile(capsys):
    saved = (engine.fit, engine.predict, distill.predict, data.load, os.environ.get("KD_CACHE"))
    bench.main(["--task", "estimate", "--profile", "smoke", "--peak-tflops", "500",
                "--op-overhead-us", "4"])
    out = capsys.readouterr().out
    assert "peak 500 TFLOP/s at MFU 0.4" in out and "4 us per operator" in out
    sections = [m.groups() for m in map(SECTION.match, out.splitlines()) if m]
    assert [s[0] for s in sections] == list(estimate.STUDIES)
    assert all(int(cells) > 0 and int(runs) > 0 for _, cells, runs in sections)
    assert out.count("| **total** |") == len(estimate.STUDIES)
    assert "| hinton_mnist | smoke |" in out and "warning" not in out
    # early-stopped KD (smoke: the KD term stops after epoch 1 of 2) is two phases
    assert re.search(r"\| 1 \+ 1 \| [\d,]+ \| [\d.]+ / [\d.]+ \| [\d,]+ / [\d,]+ \|", out)
    # the stand-ins are gone
    assert saved == (engine.fit, engine.predict, distill.predict, data.load,
                     os.environ.get("KD_CACHE"))


def test_study_runs_are_what_the_study_trains():
    """hinton_mnist's smoke profile: one teacher; per width, hard labels and each temperature;
    the two omitted-class students; all distilled from cached logits (no live teacher)."""
    result = estimate.run_study("hinton_mnist", "smoke", precision="fp32")
    train = [j for j in result.jobs if j.kind == "train"]
    assert result.cells == 6 and sum(j.runs for j in train) == 6
    assert [j.label for j in train] == ["teacher", "30x2/hard", "30x2/T1 (+1 alike)", "no_3",
                                        "only_7_8"]
    teacher, hard, soft = train[:3]
    assert teacher.images == 2000 and teacher.epochs == 1 and teacher.batch_size == 128
    assert soft.runs == 2 and soft.phases[0].step.flops_per_image == hard.phases[0].step.flops_per_image
    forward_30 = 2 * (784 * 30 + 30 * 30 + 30 * 10)
    assert hard.phases[0].step.flops_per_image == 3 * forward_30 - 2 * 784 * 30
    assert train[3].images == len(estimate.fake_split("mnist", True).head(2000).without_classes([3]))
    assert any(j.kind == "eval" for j in result.jobs)
    assert math.isfinite(result.seconds(Target())[2])
