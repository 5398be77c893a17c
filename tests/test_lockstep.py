"""Students trained in lockstep (kd.train.engine.fit_lockstep) share each teacher's pass
(kd.train.teacher_pass) and end where their one-at-a-time runs end."""

import dataclasses

import pandas as pd
import pytest
import torch

from kd.data.cifar import RandomCropFlip
from kd.errors import ConfigError
from kd.methods import build_method
from kd.methods.schemes import RandomTeacher
from kd.models.cifar import CifarResNet
from kd.train import engine
from kd.train.engine import TrainConfig
from kd.train.taps import TappedForward
from kd.train.teacher_pass import sharing, teacher_forward
from studies import method_zoo
from tests.closeness import assert_states_close
from tests.test_batched import tiny_cifar

CONFIG = TrainConfig(epochs=2, batch_size=16, lr=0.05, momentum=0.9, weight_decay=5e-4,
                     schedule="cosine")


def counted_teacher(seed=99):
    """A ResNet-8 in eval mode that counts its forward passes (each ends at ``fc``)."""
    torch.manual_seed(seed)
    model = CifarResNet(8).eval()
    model.passes = 0
    model.fc.register_forward_hook(lambda *_: setattr(model, "passes", model.passes + 1))
    return model


def test_inside_sharing_one_pass_answers_every_caller_of_a_batch():
    teacher = counted_teacher()
    x, other = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    first, second = (TappedForward(teacher, paths, "teacher")
                     for paths in (["layer1"], ["layer2", "layer3"]))
    with torch.no_grad():
        alone = [first(x), second(x), teacher(x)]
        teacher.passes = 0
        with sharing():
            got = [teacher_forward(teacher, x, first), teacher_forward(teacher, x, second),
                   teacher_forward(teacher, x)]
            assert teacher.passes == 2  # the union grew once: layer1, then layer2 and layer3
            again = [teacher_forward(teacher, other, t) for t in (first, second, None)]
            assert teacher.passes == 3  # a new batch: one pass for all three
            x.mul_(1.0)  # changed in place: not the same input any more
            teacher_forward(teacher, x)
            assert teacher.passes == 4
        for (logits, features), (want_logits, want_features) in zip(got[:2], alone[:2]):
            torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-6)
            for f, w in zip(features, want_features):
                torch.testing.assert_close(f, w, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got[2][0], alone[2], rtol=1e-5, atol=1e-6)
        assert got[2][1] == [] and [len(f) for _, f in again] == [1, 2, 0]
        teacher.passes = 0
        for t in (first, second, None):  # outside sharing: every call is its own pass
            teacher_forward(teacher, x, t)
        assert teacher.passes == 3


def test_nested_taps_and_random_teachers_are_never_answered_from_another_pass():
    teacher = counted_teacher()
    x = torch.randn(2, 3, 32, 32)
    outer = TappedForward(teacher, ["layer1"], "teacher")
    inner = TappedForward(teacher, ["layer1.0"], "teacher")
    chooser = RandomTeacher([counted_teacher(1), counted_teacher(2)],
                            torch.Generator().manual_seed(0))
    with torch.no_grad(), sharing():
        teacher_forward(teacher, x, outer)
        _, (feature,) = teacher_forward(teacher, x, inner)  # its own pass, not the union's
        assert teacher.passes == 2
        torch.testing.assert_close(feature, inner(x)[1][0])
        picks = [teacher_forward(chooser, x) and chooser.last_choice for _ in range(8)]
    assert len(set(picks)) == 2  # a draw per call: RandomTeacher is never kept
    # each member ran once for this batch, however often it was drawn
    assert [t.passes for t in chooser.teachers] == [1, 1]


def new_runs(teacher, methods):
    runs = []
    for i, name in enumerate(methods):
        torch.manual_seed(10 + i)
        method = build_method(name, CifarResNet(8), teacher)
        runs.append((engine.prepare_model(method.model, torch.device("cpu")), method))
    return runs


def test_lockstep_gives_each_student_its_own_runs_weights_with_one_teacher_pass_a_step():
    train, teacher = tiny_cifar(48), counted_teacher()
    methods = ["kd", "fitnets", "at", "rkd"]
    alone = []
    runs = new_runs(teacher, methods)
    teacher.passes = 0  # the feature methods probe their taps when built
    for model, method in runs:
        engine.fit(model, train, method, CONFIG, seed=3, augment=RandomCropFlip())
        alone.append(model.state_dict())
    steps = CONFIG.epochs * 3  # 48 images in batches of 16
    assert teacher.passes == len(methods) * steps
    models, objectives = zip(*new_runs(teacher, methods))
    teacher.passes = 0
    results = engine.fit_lockstep(list(models), train, list(objectives), CONFIG, seed=3,
                                  augment=RandomCropFlip())
    # one pass a step, plus two while the union of taps grows (fitnets, then at; rkd's embedding)
    assert steps < teacher.passes <= steps + 3
    for model, state in zip(models, alone):
        assert_states_close(model.state_dict(), state, steps)
    assert [len(r.history) for r in results] == [CONFIG.epochs] * len(methods)
    assert len({r.wall_s for r in results}) == 1
    with pytest.raises(ConfigError, match="one objective per model"):
        engine.fit_lockstep(list(models), train, list(objectives[:2]), CONFIG, seed=3)


def test_method_zoo_rows_are_the_same_in_lockstep_and_one_at_a_time(fake_cifar10, tmp_path,
                                                                     monkeypatch):
    pair = method_zoo.Pair("resnet8", "resnet8", ("kd", "at", "multi_teacher",
                                                  "random_teacher", "mutual"))
    smoke = dataclasses.replace(method_zoo.PROFILES["smoke"], pairs=(pair,),
                                student_candidates={})
    rows = {}
    for lockstep in (False, True):
        monkeypatch.setitem(method_zoo.PROFILES, "smoke",
                            dataclasses.replace(smoke, lockstep=lockstep))
        monkeypatch.setenv("KD_CACHE", str(tmp_path / f"cache-{lockstep}"))
        results = tmp_path / f"results-{lockstep}"
        method_zoo.main(["--profile", "smoke", "--device", "cpu", "--results", str(results)])
        rows[lockstep] = pd.read_csv(results / "method_zoo" / "smoke.csv").set_index("cell")
    together, alone = rows[True], rows[False]
    assert together.index.tolist() == alone.index.tolist()
    in_lockstep = together["lockstep_with"].dropna()
    assert sorted(in_lockstep.index) == sorted(f"{pair.name}/{m}" for m in
                                               ("kd", "at", "multi_teacher", "random_teacher"))
    assert (in_lockstep == 4).all() and "lockstep_with" not in alone.columns
    # 128 test images: rounding may flip a prediction or two, not more
    for column in ("test_accuracy", "test_agreement"):
        assert (together[column] - alone[column]).abs().max() <= 2 / 128


def test_the_estimate_counts_a_lockstep_step_with_one_teacher_pass(monkeypatch):
    """The smoke profile (no augmentation): KD-like cells read cached logits, while the five
    feature and relation methods run the ResNet-8 teacher live; in lockstep it runs once."""
    from kd.experiment import estimate

    jobs = {}
    for lockstep in (False, True):
        monkeypatch.setitem(method_zoo.PROFILES, "smoke", dataclasses.replace(
            method_zoo.PROFILES["smoke"], lockstep=lockstep, student_candidates={}))
        result = estimate.run_study("method_zoo", "smoke", precision="fp32")
        jobs[lockstep] = {j.label: j for j in result.jobs}
    ops = {lockstep: {label: job.phases[0].step.ops for label, job in found.items()}
           for lockstep, found in jobs.items()}
    # 11: kd, 5 feature and relation methods, 3 multi-teacher, quantized/w4 and
    # label_smoothing (its teacher sets epsilon once: no live pass)
    label = "resnet8->resnet8/11 students in lockstep"
    assert label in ops[True] and not any("lockstep" in k for k in ops[False])
    assert jobs[True][label].runs == 1 and jobs[True][label].model.startswith("11 in lockstep: ")
    members = [k for k in ops[False] if k.startswith("resnet8->resnet8/") and k not in ops[True]]
    assert len(members) == 11
    alone = sum(ops[False][k] for k in members)
    teacher = engine.prepare_model(CifarResNet(8), torch.device("cpu")).eval()
    with torch.no_grad(), estimate.OpCounter() as counter:
        teacher(torch.zeros(2, 3, 32, 32).to(memory_format=torch.channels_last))
    # five live passes become one (random_teacher's draw may be the main teacher's too)
    assert 4 * counter.ops <= alone - ops[True][label] <= 6 * counter.ops


def test_a_diverged_lockstep_falls_back_to_one_student_at_a_time(fake_cifar10, tmp_path,
                                                                   monkeypatch, capsys):
    import kd.experiment.cache
    from kd.errors import NonFiniteLossError

    def diverge(*args, **kwargs):
        raise NonFiniteLossError("at: training loss term 'loss' is not finite at epoch 1")

    monkeypatch.setattr(kd.experiment.cache, "fit_lockstep", diverge)
    pair = method_zoo.Pair("resnet8", "resnet8", ("kd", "at"))
    monkeypatch.setitem(method_zoo.PROFILES, "smoke", dataclasses.replace(
        method_zoo.PROFILES["smoke"], pairs=(pair,), student_candidates={}))
    method_zoo.main(["--profile", "smoke", "--device", "cpu"])
    out = capsys.readouterr().out
    assert out.count("the lockstep stopped") == 1  # tried once for the pair and seed
    rows = pd.read_csv(tmp_path / "results" / "method_zoo" / "smoke.csv").set_index("cell")
    assert rows.index.tolist() == [c.name for c in method_zoo.plan(method_zoo.PROFILES["smoke"])]
    assert "lockstep_with" not in rows.columns and rows["test_accuracy"].notna().all()
