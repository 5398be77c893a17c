"""The alpha x temperature study: its plan, its reference numbers, a smoke run, resume, report."""

import pandas as pd
import pytest

from studies import alpha_temperature as study
from tests.conftest import REPO


def test_plan_is_scratch_then_the_grid_without_and_with_t_squared():
    for profile in study.PROFILES.values():
        cells = study.plan(profile)
        names = [c.name for c in cells]
        grid = len(profile.alphas) * len(profile.temperatures)
        assert len(names) == len(set(names)) == 1 + 2 * grid
        assert cells[0].name == "scratch" and cells[0].alpha == 0
        assert sum(not c.t_squared for c in cells[1:]) == grid
    paper = study.PROFILES["paper"]
    assert len(study.plan(paper)) == 91 <= paper.stack_size  # one stack per seed on the GPU
    assert paper.seeds >= 3 and paper.student.epochs == 100 and paper.student.lr == 0.1
    assert study.cell_name(0.5, 2.5, False) == "a0.5_T2.5_no_t2"


def test_seed_study_numbers_are_data_with_sources():
    reference = pd.read_csv(study.REFERENCE).set_index("cell")
    assert reference["source"].str.contains("seed study").all()
    assert reference.loc["teacher", "value"] == 0.9154 and reference.loc["a0.9_T5", "value"] == 0.6257


def test_smoke_study_runs_resumes_and_reports(fake_cifar10, tmp_path, capsys):
    study.main(["--profile", "smoke", "--device", "cpu"])
    path = tmp_path / "results" / study.STUDY / "smoke.csv"
    rows = pd.read_csv(path)
    expected = ["teacher"] + [c.name for c in study.plan(study.PROFILES["smoke"])]
    assert rows["cell"].tolist() == expected
    students = rows[rows["role"] == "student"]
    assert (students["stacked_with"] == 3).all()  # smoke trains its 9 students as 3 stacks
    assert (rows["train_n"] == 512).all() and (rows["test_n"] == 256).all()  # of 600 and 300
    for column in ("test_accuracy", "test_agreement", "params", "flops_per_image", "wall_s",
                   "hardware", "git_commit"):
        assert students[column].notna().all(), column
    assert students["test_accuracy"].between(0, 1).all()
    assert (students["params"] == 432 + 32 + 2304 + 32 + 10240 + 10).all()  # the 2-layer CNN
    teacher = rows.set_index("cell").loc["teacher"]
    assert teacher["train_s"] > 0 and teacher["augment"] == "crop4+flip"  # its own, not the
    assert (students["augment"] == "none").all()                          # students' setting
    assert teacher["final_train_loss"] > 0  # one epoch: too short for a plateau measure
    assert "train_loss_plateau" in rows.columns and pd.isna(teacher["train_loss_plateau"])

    # a second seed reuses the teacher (no new teacher row) and adds only seed 1's cells
    study.main(["--profile", "smoke", "--device", "cpu", "--seeds", "2"])
    rows2 = pd.read_csv(path)
    assert (rows2["cell"] == "teacher").sum() == 1
    assert len(rows2) == len(rows) + len(expected) - 1
    pd.testing.assert_frame_equal(rows2.iloc[:len(rows)], rows, check_dtype=False)
    # nothing left: a rerun adds no rows
    study.main(["--profile", "smoke", "--device", "cpu", "--seeds", "2"])
    assert len(pd.read_csv(path)) == len(rows2)

    capsys.readouterr()
    study.main(["--profile", "smoke", "--report"])
    out = capsys.readouterr().out
    assert "| teacher test accuracy % | 91.54 |" in out and "with T²" in out
    assert "(2 seeds)" in out


def test_report_without_results_is_a_clear_error(fake_cifar10):
    from kd.errors import ConfigError

    with pytest.raises(ConfigError, match="no smoke results"):
        study.main(["--profile", "smoke", "--report"])


def test_full_profile_uses_all_the_data_and_five_seeds_within_the_claims_cells():
    full, claims = study.PROFILES["full"], pd.read_csv(REPO / "studies" / "claims.csv")
    assert full.train_limit is None and full.test_limit is None and full.seeds >= 5
    names = {c.name for c in study.plan(full)}
    # every cell the alpha_temperature claims read is planned
    assert {"scratch", "a0.9_T5_no_t2", "a0.9_T1_no_t2", "a0.9_T50_t2", "a0.9_T50_no_t2"} <= names
    assert (claims["study"] == study.STUDY).sum() == 3
    assert full.teacher.epochs > study.PROFILES["quick"].teacher.epochs
