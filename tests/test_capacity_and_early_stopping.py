"""The shared CIFAR zoo (teacher cache, checkpoints, TA chains), the KD stop epoch, and smoke runs
of the capacity-gap and early-stopping studies."""

import numpy as np
import pandas as pd
import pytest
import torch

import kd.experiment.cache
from kd.errors import ConfigError
from kd.experiment.cli import run_main
from kd.train import engine
from kd.train.distill import CrossEntropy, Distill
from kd.train.engine import TrainConfig
from studies import capacity_gap, early_stopping
from studies.cifar_zoo import ZOO_PROFILES, make_zoo
from tests.test_batched import student, teacher, tiny_cifar

CPU = torch.device("cpu")


@pytest.fixture
def fits(monkeypatch):
    """Counts the trainings the model cache starts (a hit starts none): one entry per model,
    ``lockstep: <desc>`` for each model of a lockstep."""
    calls = []
    real_fit, real_lockstep = kd.experiment.cache.fit, kd.experiment.cache.fit_lockstep

    def counting_fit(model, train, objective, config, **kwargs):
        calls.append(kwargs.get("desc"))
        return real_fit(model, train, objective, config, **kwargs)

    def counting_lockstep(models, train, objectives, config, **kwargs):
        calls.extend([f"lockstep: {kwargs.get('desc')}"] * len(models))
        return real_lockstep(models, train, objectives, config, **kwargs)

    monkeypatch.setattr(kd.experiment.cache, "fit", counting_fit)
    monkeypatch.setattr(kd.experiment.cache, "fit_lockstep", counting_lockstep)
    return calls


def test_zoo_teacher_cache_hit_miss_and_checkpoints(fake_cifar10, fits):
    zoo = make_zoo(ZOO_PROFILES["smoke"], "cifar10", CPU)
    first, _, checkpoints = zoo.teacher("plain_cnn4", seed=0)
    assert len(fits) == 1 and sorted(checkpoints) == [1, 2]
    again, _, _ = zoo.teacher("plain_cnn4", seed=0)  # hit: nothing trained
    assert len(fits) == 1 and again.key == first.key
    torch.testing.assert_close(again.test_logits, first.test_logits)
    zoo.teacher("plain_cnn4", seed=1)  # another seed: a miss
    assert len(fits) == 2
    other = make_zoo(ZOO_PROFILES["smoke"], "cifar10", CPU)
    other.teacher_checkpoints = (2,)  # other checkpoints: another key, a miss
    other.teacher("plain_cnn4", seed=0)
    assert len(fits) == 3
    # the epoch-1 checkpoint is a different model from the finished teacher
    early = zoo.from_checkpoint(first, checkpoints[1], 1)
    assert early.key == f"{first.key}@1"
    assert not torch.equal(early.test_logits, first.test_logits)
    final = zoo.from_checkpoint(first, checkpoints[2], 2)
    torch.testing.assert_close(final.test_logits, first.test_logits)
    assert final.key == first.key  # the last checkpoint is the finished teacher


def test_kd_term_stops_after_the_chosen_epoch():
    config = TrainConfig(epochs=3, batch_size=16, lr=0.05)
    calls = []
    live_teacher = teacher()
    live_teacher.register_forward_hook(lambda *args: calls.append(1))
    objective = Distill(live_teacher, 4.0, 0.9, kd_until_epoch=1)
    history = engine.fit(student(1), tiny_cifar(), objective, config, seed=0,
                         augment=lambda images, generator: images).history
    assert "train_kd" in history[0] and "train_kd" not in history[1]
    assert "train_kd" not in history[2]
    assert len(calls) == 3  # 48 images in batches of 16: one epoch of teacher passes only
    # stopped before the first epoch, distillation is training on labels, exactly
    stopped, plain = student(1), student(1)
    engine.fit(stopped, tiny_cifar(), Distill(teacher(), 4.0, 0.9, kd_until_epoch=0), config,
               seed=0)
    engine.fit(plain, tiny_cifar(), CrossEntropy(), config, seed=0)
    for (name, value), other in zip(stopped.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(value, other), name
    with pytest.raises(ConfigError, match="kd_until_epoch"):
        Distill(teacher(), 4.0, 0.9, kd_until_epoch=-1)


def test_capacity_gap_plan_puts_every_model_after_its_teachers():
    for families in capacity_gap.FAMILIES.values():
        cells = capacity_gap.plan(families)
        names = [c.name for c in cells]
        assert len(names) == len(set(names))
        seen = set()
        for cell in cells:
            for depth in range(len(cell.chain)):
                needed = (f"teacher/{cell.chain[0]}" if depth == 0 else
                          f"ta/{cell.chain[0]}/{cell.chain[1]}")
                assert needed in seen, (cell.name, needed)
            seen.add(cell.name)
    paper = {c.name for c in capacity_gap.plan(capacity_gap.FAMILIES["paper"])}
    reference = pd.read_csv(capacity_gap.REFERENCE)
    assert set(reference["cell"]) <= paper  # every paper number has a cell of ours
    assert reference["source"].str.contains("Mirzadeh").all()


def test_capacity_gap_smoke_trains_a_ta_chain(fake_cifar10, tmp_path, fits, capsys):
    capacity_gap.main(["--profile", "smoke", "--device", "cpu"])
    rows = pd.read_csv(tmp_path / "results" / "capacity_gap" / "smoke.csv").set_index("cell")
    expected = [c.name for c in capacity_gap.plan(capacity_gap.FAMILIES["smoke"])]
    assert rows.index.tolist() == expected and len(fits) == len(expected)
    chain = rows.loc["kd/plain_cnn6/plain_cnn4/plain_cnn2"]
    assert chain["chain"] == "plain_cnn6 > plain_cnn4 > plain_cnn2"
    assert chain["teacher"] == "plain_cnn4"  # taught by the assistant, not the teacher
    assert chain["teacher_accuracy"] == rows.loc["ta/plain_cnn6/plain_cnn4", "test_accuracy"]
    assert rows.loc["ta/plain_cnn6/plain_cnn4", "teacher"] == "plain_cnn6"
    assert rows["test_accuracy"].between(0, 1).all() and rows["wall_s"].notna().all()
    capacity_gap.main(["--profile", "smoke", "--report"])
    assert "| plain CNN: 10 -> TA 4 -> 2 | 73.51 | not run |" in capsys.readouterr().out

    # the early-stopping study reuses the teacher, the scratch student and the full-KD student
    before = len(fits)
    early_stopping.main(["--profile", "smoke", "--device", "cpu"])
    es = pd.read_csv(tmp_path / "results" / "early_stopping" / "smoke.csv").set_index("cell")
    assert es.index.tolist() == [c.name for c in early_stopping.plan(
        early_stopping.FAMILIES["smoke"], ZOO_PROFILES["smoke"].teacher_checkpoints)]
    assert len(fits) - before == 2  # the students from checkpoint 1 and with ESKD
    assert es.loc["eskd/plain_cnn4/plain_cnn2", "kd_until_epoch"] == 1
    assert es.loc["teacher/plain_cnn4@2", "test_accuracy"] == rows.loc[
        "teacher/plain_cnn4", "test_accuracy"]
    early = es.loc["teacher/plain_cnn4@1"]  # a checkpoint: its own epochs, the run's time apart
    assert early["epochs"] == 1 and pd.isna(early["train_s"]) and early["run_epochs"] == 2
    assert early["run_train_s"] == rows.loc["teacher/plain_cnn4", "train_s"]
    for ours, theirs in (("scratch/plain_cnn2", "scratch/plain_cnn2"),
                         ("kd/plain_cnn4@2/plain_cnn2", "kd/plain_cnn4/plain_cnn2")):
        assert es.loc[ours, "test_accuracy"] == rows.loc[theirs, "test_accuracy"]
    capsys.readouterr()
    early_stopping.main(["--profile", "smoke", "--report"])
    out = capsys.readouterr().out
    assert "early-stopped KD" in out and "| ImageNet, full KD from ResNet-50 | 30.95 |" in out
    own = 100 * es.loc["teacher/plain_cnn4@1", "test_accuracy"]  # one seed: no std
    student = 100 * es.loc["kd/plain_cnn4@1/plain_cnn2", "test_accuracy"]
    assert "| teacher | epoch 1 | epoch 2 |" in out
    assert f"| plain_cnn4 | {student:.2f} (1 seed) (teacher {own:.2f}) |" in out


def test_a_zoo_with_a_teacher_seed_shares_one_teacher_between_seeds(fake_cifar10, tmp_path,
                                                                     fits, monkeypatch):
    """The full profiles' scheme on the smoke scale: seeds 0 and 1 of capacity_gap distil from
    one teacher per architecture (seed 0); students and assistants are still trained per seed.
    Every row names the teacher seed; teacher rows carry their loss plateau."""
    import dataclasses

    shared = dataclasses.replace(ZOO_PROFILES["smoke"], teacher_seed=0)
    monkeypatch.setitem(ZOO_PROFILES, "smoke", shared)
    capacity_gap.main(["--profile", "smoke", "--device", "cpu", "--seeds", "2"])
    rows = pd.read_csv(tmp_path / "results" / "capacity_gap" / "smoke.csv")
    cells = capacity_gap.plan(capacity_gap.FAMILIES["smoke"])
    teachers = sum(c.role == "teacher" for c in cells)
    assert len(fits) == 2 * len(cells) - teachers  # the teachers trained once, the rest twice
    assert (rows["teacher_seed"] == 0).all()
    by_seed = rows[rows["role"] == "teacher"].pivot(index="cell", columns="seed",
                                                    values="test_accuracy")
    assert (by_seed[0] == by_seed[1]).all()  # the same teacher evaluated twice
    assert rows.loc[rows["role"] == "teacher", "train_loss_plateau"].notna().all()
    assert rows["final_train_loss"].gt(0).all()


@pytest.mark.parametrize("name", list(ZOO_PROFILES))
def test_every_zoo_profile_plans_both_studies_and_stops_kd_at_the_first_drop(name):
    import dataclasses

    from studies.recipe import BASE

    # large: resolved with stand-ins for its recipes (not chosen yet), a step schedule for the
    # students and a cosine one of other epochs for the teachers
    profile = ZOO_PROFILES[name].resolved(
        dataclasses.replace(BASE, epochs=20, schedule="step", milestones=(12, 16)),
        dataclasses.replace(BASE, epochs=50))
    assert capacity_gap.plan(capacity_gap.FAMILIES[name])
    assert early_stopping.plan(early_stopping.FAMILIES[name], profile.teacher_checkpoints)
    config, teacher = profile.config, profile.teacher_config or profile.config
    first_drop = config.milestones[0] if config.schedule == "step" else config.epochs // 2
    assert early_stopping.kd_stop_epoch(name, profile) == first_drop
    assert early_stopping.KD_STOP_EPOCH.get(name, first_drop) == first_drop
    # the early-teacher claim compares the latest checkpoint at or before the teacher's first
    # drop with the final one: both must be kept
    teacher_drop = teacher.milestones[0] if teacher.schedule == "step" else teacher.epochs // 2
    assert any(e <= teacher_drop for e in profile.teacher_checkpoints)
    assert profile.teacher_checkpoints[-1] == teacher.epochs


def test_full_zoo_profile_uses_all_the_data_shares_teachers_and_has_five_seeds():
    full = ZOO_PROFILES["full"]
    assert full.train_limit is None and full.test_limit is None
    assert full.teacher_seed == 0 and full.seeds >= 5
    assert full.config.epochs > ZOO_PROFILES["quick"].config.epochs


def test_stacked_training_gives_the_rows_of_one_at_a_time_training(fake_cifar10, tmp_path,
                                                                   fits, monkeypatch):
    """The paper profiles' scheme on the smoke scale: with ``stack_at_least`` every kind of model
    (teachers of both seeds; students of both seeds, each from its own teacher; the students of
    the assistants) trains as one stack before the cells are scored, and every row is the row of
    the same cell trained alone, up to rounding; checkpoint teachers too (early stopping)."""
    import dataclasses

    from tests.closeness import assert_errors_close

    def rows(study, stacked: bool, at_least: int = 2):
        profile = dataclasses.replace(ZOO_PROFILES["smoke"],
                                      stack_at_least=at_least if stacked else None)
        monkeypatch.setitem(ZOO_PROFILES, "smoke", profile)
        results = tmp_path / (f"stacked{at_least}" if stacked else "alone")
        monkeypatch.setenv("KD_CACHE", str(results / "cache"))
        study.main(["--profile", "smoke", "--device", "cpu", "--seeds", "2",
                    "--results", str(results)])
        frame = pd.read_csv(results / study.STUDY / "smoke.csv")
        return frame.set_index(["cell", "seed"]).sort_index()

    alone = rows(capacity_gap, stacked=False)
    trainings = len(fits)
    stacked = rows(capacity_gap, stacked=True)
    # one stack per kind: 2 teachers, scratch, 2 students of teachers, TA, student of the TA
    # one stack per kind: 2 teachers, scratch, the students of both teachers (one stack of 4,
    # their teachers of two architectures), the TA, the student of the TA
    assert len(fits) - trainings == 6
    from_teachers = stacked.index.get_level_values("cell").isin(
        ["kd/plain_cnn4/plain_cnn2", "kd/plain_cnn6/plain_cnn2"])
    assert stacked.index.equals(alone.index)
    assert (stacked["stacked_with"] == np.where(from_teachers, 4, 2)).all()
    for key in alone.index:
        assert_errors_close(round((1 - stacked.loc[key, "test_accuracy"]) * 300),
                            round((1 - alone.loc[key, "test_accuracy"]) * 300), 300)
    assert (stacked["teacher_seed"] == stacked.index.get_level_values("seed")).all()
    # kinds with fewer models than the profile's threshold train one at a time
    trainings = len(fits)
    assert "stacked_with" not in rows(capacity_gap, stacked=True, at_least=5).columns
    assert len(fits) - trainings == len(alone)  # one training per cell and seed

    trainings = len(fits)
    early = rows(early_stopping, stacked=True)  # reuses the stacked zoo's cache
    # new: the students of the epoch-1 checkpoints of both seeds, and the ESKD students
    assert len(fits) - trainings == 2
    assert early.loc[("kd/plain_cnn4@1/plain_cnn2", 1), "stacked_with"] == 2
    early_alone = rows(early_stopping, stacked=False)
    for key in early_alone.index:
        assert_errors_close(round((1 - early.loc[key, "test_accuracy"]) * 300),
                            round((1 - early_alone.loc[key, "test_accuracy"]) * 300), 300)


def test_a_family_of_students_on_a_subset_shares_teachers_and_assistants(fake_cifar10, tmp_path,
                                                                         fits, monkeypatch):
    """The full profiles' ResNet scheme on the smoke scale: teachers on all 600 training
    images, the family's students on 200 of them, the assistant on all 600 with the teachers'
    seed (one for both seeds); early stopping's students of the family on the same subset, so
    that its scratch and final-checkpoint students are capacity_gap's, from the cache."""
    import dataclasses

    from studies.cifar_zoo import Family

    family = Family("plain", "plain_cnn2", ("plain_cnn4", "plain_cnn6"),
                    (("plain_cnn6", "plain_cnn4"),), student_train_limit=200)
    monkeypatch.setitem(ZOO_PROFILES, "smoke", dataclasses.replace(
        ZOO_PROFILES["smoke"], train_limit=None, teacher_seed=0))
    monkeypatch.setitem(capacity_gap.FAMILIES, "smoke", (family,))
    monkeypatch.setitem(early_stopping.FAMILIES, "smoke", (
        dataclasses.replace(family, teachers=("plain_cnn4", "plain_cnn6"), assistants=()),))
    capacity_gap.main(["--profile", "smoke", "--device", "cpu", "--seeds", "2"])
    rows = pd.read_csv(tmp_path / "results" / "capacity_gap" / "smoke.csv")
    train_n = rows.groupby("role")["train_n"].unique().map(list).to_dict()
    assert train_n == {"teacher": [600], "ta": [600], "scratch": [200], "kd": [200],
                       "ta_kd": [200]}
    ta = rows[rows["role"] == "ta"].set_index("seed")["test_accuracy"]
    assert ta[0] == ta[1]  # one assistant, of the teachers' seed, for both seeds
    students = rows[rows["role"] == "kd"].pivot(index="cell", columns="seed",
                                                values="test_accuracy")
    assert (students[0] != students[1]).any()  # the students are per seed
    # 2 teachers and 1 assistant once; scratch, 2 students and 1 student of the assistant twice
    assert len(fits) == 2 + 1 + 2 * 4
    fits.clear()
    early_stopping.main(["--profile", "smoke", "--device", "cpu", "--seeds", "2"])
    es = pd.read_csv(tmp_path / "results" / "early_stopping" / "smoke.csv").set_index(
        ["cell", "seed"])
    assert set(es.loc[es["role"] != "teacher_checkpoint", "train_n"]) == {200}
    assert set(es.loc[es["role"] == "teacher_checkpoint", "train_n"]) == {600}
    cg = rows.set_index(["cell", "seed"])
    for seed in (0, 1):
        assert (es.loc[("scratch/plain_cnn2", seed), "test_accuracy"]
                == cg.loc[("scratch/plain_cnn2", seed), "test_accuracy"])
        assert (es.loc[("kd/plain_cnn6@2/plain_cnn2", seed), "test_accuracy"]
                == cg.loc[("kd/plain_cnn6/plain_cnn2", seed), "test_accuracy"])
    # per seed and teacher: the students of the first checkpoint and ESKD (the rest cached)
    assert len(fits) == 2 * 2 * 2


def test_students_on_a_subset_need_a_zoo_on_all_the_images(fake_cifar10):
    import dataclasses

    from studies.cifar_zoo import Family

    family = Family("plain", "plain_cnn2", ("plain_cnn4",), student_train_limit=100)
    zoo = make_zoo(ZOO_PROFILES["smoke"], "cifar10", CPU)  # 512 of the images
    with pytest.raises(ConfigError, match="student_train_limit needs a profile on all"):
        zoo.for_students(family)
    everything = make_zoo(dataclasses.replace(ZOO_PROFILES["smoke"], train_limit=None),
                          "cifar10", CPU)
    subset = everything.for_students(family)
    assert len(subset.train) == 100 and everything.for_students(family) is subset
    assert everything.for_students(dataclasses.replace(family, student_train_limit=None)) \
        is everything
    # a training planned in one zoo is refused by the other
    with pytest.raises(ValueError, match="planned on train_limit 100"):
        everything.fit(subset.student_training("plain_cnn2", 0, None))


def test_students_on_a_subset_train_in_stacks_in_their_own_zoo(fake_cifar10, tmp_path, capsys,
                                                              monkeypatch):
    """A stacking profile with a family of students on a subset: each stack is trained in the
    zoo its models were planned in (the subset's students are not refused by the zoo on all
    the images), and the cells then find every stacked model in the cache."""
    import dataclasses

    from studies.cifar_zoo import Family

    family = Family("plain", "plain_cnn2", ("plain_cnn4",), student_train_limit=200)
    monkeypatch.setitem(ZOO_PROFILES, "smoke", dataclasses.replace(
        ZOO_PROFILES["smoke"], train_limit=None, teacher_seed=0, stack_at_least=2))
    monkeypatch.setitem(capacity_gap.FAMILIES, "smoke", (family,))
    capacity_gap.main(["--profile", "smoke", "--device", "cpu", "--seeds", "2"])
    # level 0: the scratch students of both seeds (the shared teacher is one training, not a
    # stack); level 1: the KD students of both seeds
    assert "4 models trained in stacks" in capsys.readouterr().out
    rows = pd.read_csv(tmp_path / "results" / "capacity_gap" / "smoke.csv")
    assert rows.groupby("role")["train_n"].unique().map(list).to_dict() == {
        "teacher": [600], "scratch": [200], "kd": [200]}


def test_teachers_trained_elsewhere_are_cache_hits_and_rows_say_where_each_model_trained(
        fake_cifar10, tmp_path, fits, capsys, monkeypatch):
    from kd.experiment import cache
    from kd.experiment.results import hardware
    from studies import zoo_teachers

    teachers = zoo_teachers.teachers_of("smoke")
    assert teachers == ["plain_cnn4", "plain_cnn6"]  # capacity gap's (early stopping's among them)
    with monkeypatch.context() as patched:  # as on a lent GPU
        patched.setattr(cache, "trained_on", lambda train: "a lent GPU")
        zoo_teachers.main(["--profile", "smoke", "--device", "cpu", "--precision", "fp32"])
    assert len(fits) == 2 and "teacher plain_cnn4 seed 0" in capsys.readouterr().out
    capacity_gap.main(["--profile", "smoke", "--device", "cpu"])
    rows = pd.read_csv(tmp_path / "results" / "capacity_gap" / "smoke.csv").set_index("cell")
    cells = capacity_gap.plan(capacity_gap.FAMILIES["smoke"])
    trained_here = [c.name for c in cells if c.role != "teacher"]
    assert len(fits) == 2 + len(trained_here)  # the teachers are cache hits
    assert (rows.loc["teacher/plain_cnn6", "trained_on"] == "a lent GPU"
            and rows.loc["teacher/plain_cnn4", "trained_on"] == "a lent GPU")
    assert (rows.loc[trained_here, "trained_on"] == hardware("cpu")).all()

    assert run_main(zoo_teachers.main, ["--profile", "smoke", "--archs", "resnet8",
                                        "--precision", "fp32"]) == 2
    assert "not a teacher of profile smoke: resnet8" in capsys.readouterr().err


def test_rows_under_auto_name_the_precision_each_model_trained_in(fake_cifar10, tmp_path,
                                                                  monkeypatch):
    """A run under ``--precision auto`` that scores models an earlier process trained (here the
    teachers, in bf16) beside models it trains itself (measured faster in fp32 on this machine)
    records each row's own precision: not ``auto``, and not the latest training's choice."""
    from kd.train import precision
    from studies import zoo_teachers

    monkeypatch.setattr(engine, "native_bf16", lambda device: True)
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    monkeypatch.setattr(precision, "measure",
                        lambda model, x, y, **_: {"fp32": 100.0, "bf16": 50.0})
    zoo_teachers.main(["--profile", "smoke", "--device", "cpu", "--precision", "bf16"])
    precision._LAST.clear()  # a new process: it has chosen nothing yet
    for study in (capacity_gap, early_stopping):
        study.main(["--profile", "smoke", "--device", "cpu", "--precision", "auto"])
        rows = pd.read_csv(tmp_path / "results" / study.__name__.split(".")[-1] / "smoke.csv")
        of_teacher = rows["role"].isin(["teacher", "teacher_checkpoint"])
        assert of_teacher.any() and (~of_teacher).any()
        assert (rows.loc[of_teacher, "precision"] == "bf16").all()
        assert (rows.loc[~of_teacher, "precision"] == "fp32").all()
