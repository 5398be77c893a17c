"""Rows of one model agree across capacity_gap's and early_stopping's tables (studies.zoo_rows)."""

import pandas as pd
import pytest

from studies import zoo_rows
from tests.conftest import REPO


def row(cell, role, model, accuracy, teacher_accuracy=None, seed=0, **extra):
    return {"cell": cell, "seed": seed, "role": role, "model": model,
            "test_accuracy": accuracy, "teacher_accuracy": teacher_accuracy, **extra}


def hand_tables(final_checkpoint=0.85):
    """A teacher, its assistant and their students; early stopping's checkpoints of the teacher
    at 17 and at its last epoch, 60 (that one capacity gap's teacher)."""
    cg = pd.DataFrame([
        row("teacher/resnet14", "teacher", "resnet14", 0.85),
        row("kd/resnet14/resnet8", "kd", "resnet8", 0.80, 0.85),
        row("ta/resnet14/resnet10", "ta", "resnet10", 0.83, 0.85),
        row("kd/resnet14/resnet10/resnet8", "ta_kd", "resnet8", 0.81, 0.83)])
    es = pd.DataFrame([
        row("teacher/resnet14@17", "teacher_checkpoint", "resnet14", 0.70, run_epochs=60),
        row("teacher/resnet14@60", "teacher_checkpoint", "resnet14", final_checkpoint,
            run_epochs=60),
        row("kd/resnet14@17/resnet8", "kd", "resnet8", 0.78, 0.70, run_epochs=60),
        row("kd/resnet14@60/resnet8", "kd", "resnet8", 0.80, final_checkpoint, run_epochs=60),
        row("eskd/resnet14/resnet8", "eskd", "resnet8", 0.79, final_checkpoint, run_epochs=60)])
    return {"capacity_gap": cg, "early_stopping": es}


def test_teacher_cells_by_hand():
    assert zoo_rows.teacher_cell("kd/resnet14/resnet8") == "teacher/resnet14"
    assert zoo_rows.teacher_cell("kd/resnet14@17/resnet8") == "teacher/resnet14@17"
    assert zoo_rows.teacher_cell("eskd/resnet14/resnet8") == "teacher/resnet14"
    assert zoo_rows.teacher_cell("ta/resnet32/resnet14") == "teacher/resnet32"
    assert zoo_rows.teacher_cell("kd/resnet32/resnet14/resnet8") == "ta/resnet32/resnet14"


def test_the_last_checkpoint_is_named_as_the_finished_teacher():
    names = list(zoo_rows.canonical(hand_tables()["early_stopping"])["cell"])
    assert names == ["teacher/resnet14@17", "teacher/resnet14", "kd/resnet14@17/resnet8",
                     "kd/resnet14/resnet8", "eskd/resnet14/resnet8"]
    cg = hand_tables()["capacity_gap"]  # no checkpoints: left as it is
    pd.testing.assert_frame_equal(zoo_rows.canonical(cg), cg)


def test_agreeing_rows_give_nothing_and_a_retrained_teacher_is_named():
    assert zoo_rows.disagreements(hand_tables()).empty
    assert zoo_rows.disagreements(hand_tables(0.85 + 4e-4)).empty  # 4 images: a tie flipped
    # the teacher retrained otherwise: early stopping's last checkpoint and its students' record
    # of it are another model than capacity gap's teacher of the same name
    found = zoo_rows.disagreements(hand_tables(0.86))
    assert list(zip(found["what"], found["cell"], found["source"], found["other_source"])) == [
        ("one model, two rows", "teacher/resnet14", "capacity_gap", "early_stopping"),
        ("a student's teacher", "kd/resnet14/resnet8", "teacher/resnet14 in the tables",
         "early_stopping"),
        ("a student's teacher", "eskd/resnet14/resnet8", "teacher/resnet14 in the tables",
         "early_stopping")]
    assert found["accuracy"].tolist() == [0.85] * 3 and found["other"].tolist() == [0.86] * 3


def test_a_students_record_of_its_assistant_is_checked():
    tables = hand_tables()
    tables["capacity_gap"].loc[3, "teacher_accuracy"] = 0.84  # the assistant scored 0.83
    found = zoo_rows.disagreements(tables)
    assert list(zip(found["cell"], found["accuracy"], found["other"])) == [
        ("kd/resnet14/resnet10/resnet8", 0.83, 0.84)]
    assert zoo_rows.disagreements({"capacity_gap": pd.DataFrame(),
                                   "early_stopping": pd.DataFrame()}).empty


def test_the_command_exits_1_with_a_line_per_disagreement(tmp_path, capsys):
    for study, rows in hand_tables(0.86).items():
        (tmp_path / study).mkdir()
        rows.assign(study=study, profile="large").to_csv(tmp_path / study / "large.csv",
                                                         index=False)
    with pytest.raises(SystemExit) as exit:
        zoo_rows.main(["--results", str(tmp_path)])
    assert exit.value.code == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("large: one model, two rows: teacher/resnet14 seed 0: 0.8500 "
                      "(capacity_gap) against 0.8600 (early_stopping)")
    assert out[-1] == "3 disagreement(s) among the rows of one model"


def test_the_committed_rows_of_every_model_agree():
    """A model lost with the cache and retrained otherwise would show here first."""
    tables = zoo_rows.profile_tables(REPO / "results")
    assert {"quick", "full", "large"} <= set(tables)
    for name, profile in tables.items():
        found = zoo_rows.disagreements(profile)
        assert found.empty, (name, found.to_dict("records"))


def test_recording_the_runs_progress_warns_of_rows_that_disagree(tmp_path, capsys,
                                                                   monkeypatch):
    """`zoo_progress --record`, run before rows are committed, names what zoo_rows finds."""
    from studies import zoo_progress
    from tests.test_large_zoo import hand_progress

    monkeypatch.setattr(zoo_progress, "progress", lambda *a, **k: hand_progress())
    for study, rows in hand_tables(0.86).items():
        (tmp_path / study).mkdir()
        rows.assign(study=study, profile="large").to_csv(tmp_path / study / "large.csv",
                                                         index=False)
    zoo_progress.main(["--record", "--results", str(tmp_path)])
    out = capsys.readouterr().out
    assert "large: one model, two rows: teacher/resnet14 seed 0" in out
    assert "warning: the rows above describe two models under one name" in out
    (tmp_path / "early_stopping" / "large.csv").unlink()  # agreeing rows: no warning
    zoo_progress.main(["--record", "--results", str(tmp_path)])
    assert "warning" not in capsys.readouterr().out


def test_only_the_zoo_profiles_are_read_not_the_tables_beside_them(tmp_path):
    """A profile's failures table (other columns) sits beside its rows: it is no profile."""
    for study, rows in hand_tables().items():
        (tmp_path / study).mkdir()
        rows.assign(study=study, profile="large").to_csv(tmp_path / study / "large.csv",
                                                         index=False)
    (tmp_path / "capacity_gap" / "large_failures.csv").write_text(
        "study,profile,cell,seed,error\ncapacity_gap,large,kd/x/y,0,nan loss\n")
    assert list(zoo_rows.profile_tables(tmp_path)) == ["large"]
