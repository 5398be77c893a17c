"""The Hinton MNIST study end to end: smoke run, resume after a kill, command-line failures."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from kd import data
from studies import hinton_mnist
from tests.conftest import REPO, kill_after_rows


def smoke_rows(results: Path) -> pd.DataFrame:
    return pd.read_csv(results / "hinton_mnist" / "smoke.csv")


def test_plan_covers_every_cell_once():
    cells = hinton_mnist.plan(hinton_mnist.PROFILES["quick"])
    names = [c.name for c in cells]
    assert len(names) == len(set(names)) == 1 + 3 * 11 + 2
    assert names[0] == "teacher" and "800x2/T20" in names and "30x2/hard" in names
    assert {"no_3", "only_7_8"} <= set(names)


def test_paper_numbers_are_data_with_sources():
    reference = pd.read_csv(hinton_mnist.REFERENCE)
    assert reference["source"].str.contains("Hinton").all()
    assert hinton_mnist.paper_shifts() == {"no_3": 3.5, "only_7_8": -7.6}
    value = lambda q, c: reference.query("quantity == @q and cell == @c")["value"].item()
    assert value("test_errors", "teacher") == 67 and value("test_errors", "800x2/T20") == 74


def test_smoke_study_runs_end_to_end(mnist_root, tmp_path):
    results = tmp_path / "results"
    hinton_mnist.main(["--profile", "smoke", "--device", "cpu"])
    rows = smoke_rows(results)
    expected = [c.name for c in hinton_mnist.plan(hinton_mnist.PROFILES["smoke"])]
    assert rows["cell"].tolist() == expected
    assert (rows["profile"] == "smoke").all() and (rows["seed"] == 0).all()
    for column in ("test_errors", "wall_s", "device", "hardware", "torch", "git_commit"):
        assert rows[column].notna().all(), column
    assert (rows["test_n"] == 1000).all()  # smoke keeps the first 1,000 test images
    assert rows["test_errors"].between(0, rows["test_n"]).all()
    distilled = rows[rows["temperature"].notna()]
    assert (distilled["alpha"] == 0.9).all()
    assert distilled["test_agreement"].between(0, 1).all()
    no3 = rows.set_index("cell").loc["no_3"]
    assert no3["shift_paper"] == 3.5 and no3["transfer_n"] < rows.set_index("cell").loc[
        "teacher", "transfer_n"]
    assert no3["shifted_class_errors"] <= no3["shifted_class_n"]
    only78 = rows.set_index("cell").loc["only_7_8"]
    assert only78["shift_paper"] == -7.6
    # The fitted shift is never worse on the training data than no shift; test errors count.
    assert {"shift_fitted", "test_errors_shift_fitted", "shifted_class_errors_shift_paper"} <= set(
        rows.columns)
    # A second run finds everything done and adds nothing.
    hinton_mnist.main(["--profile", "smoke", "--device", "cpu"])
    assert len(smoke_rows(results)) == len(rows)


def run_cli(*args, env=None, **kwargs):
    return subprocess.run([sys.executable, "-m", "studies.hinton_mnist", *args], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, **(env or {})},
                          **kwargs)


def test_help_lists_the_profiles():
    done = run_cli("--help")
    assert done.returncode == 0 and "smoke" in done.stdout and "--seeds" in done.stdout


def test_missing_data_root_gives_one_clear_line_and_exit_2(tmp_path):
    done = run_cli("--profile", "smoke", "--device", "cpu", env={"KD_DATA": str(tmp_path / "no")})
    assert done.returncode == 2
    assert done.stderr.startswith("error: MNIST not found") and "KD_DATA" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "results" / "hinton_mnist" / "smoke.csv").exists()


@pytest.mark.parametrize("args,message", [
    (["--device", "tpu"], "unknown device"), (["--seeds", "0"], "positive integer"),
    (["--profile", "huge"], "invalid choice"), (["--precision", "fp16"], "invalid choice")])
def test_bad_arguments_exit_2_without_traceback(args, message):
    done = run_cli(*args)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_killed_study_resumes_without_lost_or_duplicate_rows(mnist_root, tmp_path):
    results = tmp_path / "results" / "hinton_mnist" / "smoke.csv"
    kill_after_rows([sys.executable, "-m", "studies.hinton_mnist", "--profile", "smoke",
                     "--device", "cpu"], results, rows=2, timeout=120)
    partial = pd.read_csv(results)
    assert 2 <= len(partial)
    done = run_cli("--profile", "smoke", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    rows = pd.read_csv(results)
    expected = [c.name for c in hinton_mnist.plan(hinton_mnist.PROFILES["smoke"])]
    assert sorted(rows["cell"]) == sorted(expected)
    assert not rows.duplicated(["cell", "seed"]).any()
    # rows written before the kill are kept as they were
    pd.testing.assert_frame_equal(rows.iloc[:len(partial)][partial.columns], partial,
                                  check_dtype=False)


def test_transfer_sets_match_the_class_filters():
    labels = torch.arange(40) % 10
    split = data.Split(torch.zeros(40, 1, 2, 2, dtype=torch.uint8), labels, (0.0,), (1.0,))
    no3 = split.subset(hinton_mnist.TRANSFER_SETS["no_3"].keep(split))
    assert torch.equal(no3.labels, split.without_classes([3]).labels) and len(no3) == 36
    only = split.subset(hinton_mnist.TRANSFER_SETS["only_7_8"].keep(split))
    assert torch.equal(only.labels, split.only_classes([7, 8]).labels) and len(only) == 8
    assert hinton_mnist.TRANSFER_SETS["all"].keep(split).all()


def test_diverging_cells_are_recorded_as_failed_and_retried_by_a_rerun(fake_mnist, tmp_path,
                                                                       monkeypatch, capsys):
    """Students trained at an infinite learning rate blow up: no row of numbers, a failure row naming cell, epoch
    and term, the other cells (the teacher) go on; a rerun with a sane profile retries them."""
    import dataclasses

    smoke = hinton_mnist.PROFILES["smoke"]
    diverging = dataclasses.replace(smoke, student=dataclasses.replace(
        smoke.student, optimizer="sgd", lr=float("inf"), schedule="constant"))
    monkeypatch.setitem(hinton_mnist.PROFILES, "smoke", diverging)
    assert run_main_code(["--profile", "smoke", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "FAILED" in err and "is not finite at epoch 1" in err
    folder = tmp_path / "results" / "hinton_mnist"
    rows, failures = pd.read_csv(folder / "smoke.csv"), pd.read_csv(folder / "smoke_failures.csv")
    assert rows["cell"].tolist() == ["teacher"]
    cells = [c.name for c in hinton_mnist.plan(smoke)][1:]
    assert sorted(failures["cell"]) == sorted(cells)
    assert failures["error"].str.contains("training loss term '(?:loss|ce|kd)' is not finite at "
                                          "epoch 1|the weights are not finite after epoch 1").all()
    assert failures["error"].str.contains("30x2/T20|no_3").any()  # each names its cell
    assert run_main_code(["--profile", "smoke", "--report"]) == 0
    assert capsys.readouterr().out.count("FAILED (no row)") == len(cells)

    monkeypatch.setitem(hinton_mnist.PROFILES, "smoke", smoke)
    assert run_main_code(["--profile", "smoke", "--device", "cpu"]) == 0
    rows = pd.read_csv(folder / "smoke.csv")
    assert sorted(rows["cell"]) == sorted(["teacher", *cells]) and rows["precision"].eq("fp32").all()
    assert pd.read_csv(folder / "smoke_failures.csv").empty


def run_main_code(argv):
    from kd.experiment.cli import run_main

    return run_main(hinton_mnist.main, argv)


def test_precision_reaches_every_training_config_and_every_row(monkeypatch):
    from kd.experiment import cli
    from kd.train import engine

    seen = []
    monkeypatch.setattr(hinton_mnist, "run_cells", lambda *args, **kw: seen.append(kw))
    monkeypatch.setattr(engine, "native_bf16", lambda device: True)  # as on an AVX512_BF16 CPU
    command = cli.open_study(["--profile", "smoke", "--precision", "auto"], study="hinton_mnist",
                             description="", profiles=hinton_mnist.PROFILES, report=str)
    # native bf16: each model's precision is measured when it trains (kd.train.precision)
    assert command.precision == "auto"
    assert command.profile.teacher.precision == command.profile.student.precision == "auto"
    monkeypatch.setattr(engine, "native_bf16", lambda device: False)  # emulated: fp32 at once
    command = cli.open_study(["--profile", "smoke", "--precision", "auto"], study="hinton_mnist",
                             description="", profiles=hinton_mnist.PROFILES, report=str)
    assert command.profile.teacher.precision == command.profile.student.precision == "fp32"
    monkeypatch.delenv("KD_PRECISION")
    assert cli.study_parser("", ["smoke"]).parse_args([]).precision == "auto"
    monkeypatch.setattr(hinton_mnist, "Run", None)  # nothing is trained: run_cells is stubbed
    hinton_mnist.main(["--profile", "smoke", "--precision", "fp32", "--device", "cpu"])
    assert seen == [{"precision": "fp32"}]


def test_full_profile_shares_one_teacher_and_records_its_plateau(fake_mnist, tmp_path,
                                                                  monkeypatch):
    """The full profile's scheme on the smoke scale: seeds 0 and 1 distil from one teacher
    (seed 0), trained once; every row names that teacher seed; the teacher rows carry the final
    training loss and the plateau measure of kd.metrics.loss_plateau."""
    import dataclasses

    from kd.experiment.cache import ModelCache

    full = hinton_mnist.PROFILES["full"]
    assert full.shared_teacher and full.seeds >= 5 and full.widths == (800, 300, 30)
    assert full.teacher.epochs >= 100 and full.student.epochs > hinton_mnist.PROFILES[
        "quick"].student.epochs
    shared = dataclasses.replace(hinton_mnist.PROFILES["smoke"], shared_teacher=True,
                                 teacher=dataclasses.replace(full.teacher, epochs=2))
    monkeypatch.setitem(hinton_mnist.PROFILES, "smoke", shared)
    monkeypatch.setenv("KD_CACHE", str(tmp_path / "cache"))
    assert run_main_code(["--profile", "smoke", "--device", "cpu", "--seeds", "2"]) == 0
    rows = smoke_rows(tmp_path / "results")
    assert sorted(set(rows["seed"])) == [0, 1] and (rows["teacher_seed"] == 0).all()
    assert len(list((tmp_path / "cache" / "models").glob("*.pt"))) == 1  # one teacher
    teachers = rows[rows["cell"] == "teacher"]
    assert teachers["test_errors"].nunique() == 1  # the same model, evaluated per seed
    assert teachers["final_train_loss"].gt(0).all() and teachers["train_loss_plateau"].notna().all()
    students = rows[rows["temperature"] == 20.0]
    assert students.set_index("seed")["test_errors"].notna().all()
    entry = ModelCache().load(hinton_mnist.Run(shared, 1, torch.device("cpu"),
                                               ModelCache()).teacher_spec())
    assert len(entry["meta"]["train_loss_history"]) == 2


def test_stacked_students_give_the_rows_of_students_trained_alone(mnist_root, tmp_path,
                                                                 monkeypatch):
    """The paper profile's scheme on the smoke scale: the hard-label student and the distilled
    students of one width train as one stack (α = 0 for the hard one), and every row is the
    row of the same cell trained alone, up to rounding."""
    import dataclasses

    from tests.closeness import assert_errors_close

    def rows(stacked: bool) -> pd.DataFrame:
        profile = dataclasses.replace(hinton_mnist.PROFILES["smoke"], stack_students=stacked)
        monkeypatch.setitem(hinton_mnist.PROFILES, "smoke", profile)
        results = tmp_path / ("stacked" if stacked else "alone")
        hinton_mnist.main(["--profile", "smoke", "--device", "cpu", "--results", str(results)])
        return smoke_rows(results).set_index("cell")

    alone, stacked = rows(False), rows(True)
    assert stacked.index.equals(alone.index)
    width = hinton_mnist.PROFILES["smoke"].widths[0]
    group = [f"{width}x2/hard"] + [f"{width}x2/T{t:g}"
                                   for t in hinton_mnist.PROFILES["smoke"].temperatures]
    assert (stacked.loc[group, "stacked_with"] == len(group)).all()
    assert stacked.drop(index=group)["stacked_with"].isna().all()  # the teacher, transfer sets
    for cell in alone.index:
        assert_errors_close(stacked.loc[cell, "test_errors"], alone.loc[cell, "test_errors"],
                            int(alone.loc[cell, "test_n"]))
    assert pd.isna(stacked.loc[f"{width}x2/hard", "alpha"])  # its row says hard labels


def test_a_range_of_seeds_runs_those_seeds_alone(mnist_root, tmp_path):
    """``--seeds 1:2`` (how a profile's seeds are split between processes) trains seed 1's
    teacher and students and nothing of seed 0."""
    hinton_mnist.main(["--profile", "smoke", "--device", "cpu", "--seeds", "1:2"])
    rows = smoke_rows(tmp_path / "results")
    assert (rows["seed"] == 1).all()
    assert rows["cell"].tolist() == [c.name for c in hinton_mnist.plan(
        hinton_mnist.PROFILES["smoke"])]
