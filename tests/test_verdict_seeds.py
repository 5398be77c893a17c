"""Which seeds a `large` verdict reads (studies.verdict_seeds, docs/scorecard_rules.md 5): the
first 3 seeds to complete every planned cell of both studies, in the order their last row landed."""

from pathlib import Path

import pandas as pd
import pytest

from studies import scorecard as sc
from studies import verdict_seeds as vs

REPO = Path(__file__).resolve().parents[1]
PLANNED = {"capacity_gap": {"teacher/resnet14", "scratch/resnet8", "kd/resnet14/resnet8"},
           "early_stopping": {"scratch/resnet8", "kd/resnet14@60/resnet8",
                              "eskd/resnet14/resnet8"}}


def planned(study, profile):
    assert profile == "large"
    return PLANNED[study]


def rows(study, seed, hour, cells=None, gain=1.0):
    """A seed's rows of one study, each landed at ``hour`` o'clock: scratch and KD students at
    82 %, the ESKD student ``gain`` points above them."""
    cells = sorted(PLANNED[study] if cells is None else cells)
    return pd.DataFrame({
        "study": study, "profile": "large", "cell": cells, "seed": seed, "family": "resnet",
        "role": [c.split("/")[0] for c in cells],
        "teacher": [None if c.startswith(("teacher/", "scratch/")) else "resnet14" for c in cells],
        "test_accuracy": [0.82 + (gain / 100 if c.startswith("eskd/") else 0) for c in cells],
        "finished_at": f"2026-12-06T{hour:02d}:00:00+00:00"})


def tables(*parts):
    """``(study, seed, hour[, cells[, gain]])`` parts -> the study tables of the large profile."""
    frames = {}
    for study, *rest in parts:
        frames.setdefault(study, []).append(rows(study, *rest))
    return {(study, "large"): pd.concat(f, ignore_index=True) for study, f in frames.items()}


def both(seed, hour, gain=1.0, late=0):
    """A complete seed: its capacity gap rows at ``hour``, early stopping's ``late`` hours on."""
    return [("capacity_gap", seed, hour, None, gain),
            ("early_stopping", seed, hour + late, None, gain)]


def test_first_three_complete_seeds_in_the_order_their_last_row_landed():
    """Seed 0 lacks one early-stopping cell; seeds 1..4 complete at 05, 09, 07 and 11 o'clock
    (seed 3's capacity gap rows at 02 but its early stopping ones at 07). Read: 1, 3, 2."""
    part_way = PLANNED["early_stopping"] - {"eskd/resnet14/resnet8"}
    t = tables(("capacity_gap", 0, 1), ("early_stopping", 0, 1, part_way),
        *both(1, 5), *both(2, 9), *both(3, 2, late=5), *both(4, 11))
    assert vs.complete_seeds(t, "large", vs.RULES["large"], planned) == [1, 3, 2, 4]
    assert vs.verdict_seeds(t, "large", planned) == [1, 3, 2]
    assert vs.verdict_seeds(t, "full", planned) is None  # no rule: every seed
    cut = vs.restrict(t, planned)
    for study in ("capacity_gap", "early_stopping"):
        assert sorted(cut[(study, "large")]["seed"].unique()) == [1, 2, 3]
    assert len(t[("capacity_gap", "large")]) == 15  # the tables handed in are left whole


def test_a_seed_complete_in_one_study_only_is_not_complete():
    t = tables(*both(1, 3), ("capacity_gap", 2, 4))
    assert vs.complete_seeds(t, "large", vs.RULES["large"], planned) == [1]
    t.pop(("early_stopping", "large"))  # no early stopping table at all: nothing is complete
    assert vs.complete_seeds(t, "large", vs.RULES["large"], planned) == []


def test_ties_go_to_the_lower_seed():
    t = tables(*both(4, 6), *both(2, 6), *both(3, 6), *both(1, 6))
    assert vs.verdict_seeds(t, "large", planned) == [1, 2, 3]


def test_a_part_way_or_late_seed_decides_nothing():
    """ESKD gains 1.1, 1.2, 1.3 points over full KD at seeds 1-3; seed 0 (its early stopping
    scratch row missing) and seed 4 (complete after them) would pull the mean below zero. The
    verdict reads seeds 1-3 only, the same as scoring them alone."""
    claim = sc.read_claims(sc.CLAIMS).query("id == 'es-eskd-beats-full-resnet'")
    ruled = [*both(1, 2, 1.1), *both(2, 3, 1.2), *both(3, 4, 1.3)]
    whole = tables(*ruled, *both(4, 8, gain=-30), ("capacity_gap", 0, 1, None, -30),
                   ("early_stopping", 0, 1, PLANNED["early_stopping"] - {"scratch/resnet8"}, -30))
    card = sc.score(claim, vs.restrict(whole, planned)).set_index("profile").loc["large"]
    assert (card["seeds"], card["n_seeds"]) == ("1 2 3", 3)
    assert card["effect"] == pytest.approx(1.2)
    alone = sc.score(claim, tables(*ruled)).set_index("profile").loc["large"]
    assert (alone["seeds"], alone["effect"]) == ("1 2 3", card["effect"])
    unruled = sc.score(claim, whole).set_index("profile").loc["large"]
    assert unruled["seeds"] == "0 1 2 3 4" and unruled["effect"] < 0  # what the rule keeps out


def test_the_profile_plans_the_cells_a_complete_seed_needs():
    """The real plans: 9 capacity gap cells and 15 early stopping cells per seed."""
    assert len(vs.planned_cells("capacity_gap", "large")) == 9
    assert len(vs.planned_cells("early_stopping", "large")) == 15
    assert "ta/resnet32/resnet14" in vs.planned_cells("capacity_gap", "large")
    assert "eskd/resnet32/resnet8" in vs.planned_cells("early_stopping", "large")


def test_the_verdict_seeds_of_the_committed_large_rows_are_complete():
    """The verdict seeds of the committed rows are the first 3 seeds, in the order their last
    row landed (ties by seed), whose rows hold every planned cell of both studies, whatever
    the run's progress: a seed complete in one study only (as seed 0 was in capacity gap
    alone) is read by no verdict."""
    committed = sc.find_tables(REPO / "results", ["capacity_gap", "early_stopping"])
    both = pd.concat([committed[(study, "large")].assign(study=study)
                      for study in ("capacity_gap", "early_stopping")])
    both["seed"] = both["seed"].astype(int)
    landed = {}
    for seed, rows in both.groupby("seed"):
        if all(vs.planned_cells(study, "large") <= set(rows.loc[rows["study"] == study, "cell"])
               for study in ("capacity_gap", "early_stopping")):
            landed[seed] = pd.to_datetime(rows["finished_at"], utc=True).max()
    first = sorted(landed, key=lambda seed: (landed[seed], seed))[:3]
    assert vs.verdict_seeds(committed, "large") == first


def write(root, t):
    for (study, profile), frame in t.items():
        (root / study).mkdir(parents=True, exist_ok=True)
        frame.to_csv(root / study / f"{profile}.csv", index=False)


def test_a_report_reads_the_verdict_seeds_and_says_which(tmp_path):
    """--report, the study pages and the notebooks read what the verdicts read, with one line
    naming the seeds; the other study's table is found beside this one."""
    from kd.experiment.cli import report_text
    from kd.experiment.results import ResultsTable

    write(tmp_path, tables(("capacity_gap", 0, 1), *both(1, 2), *both(2, 3)))
    table = ResultsTable("capacity_gap", "large", tmp_path)
    rows, notes = vs.rows_read(table, table.read(), planned)
    assert sorted(rows["seed"].unique()) == [1, 2]
    assert notes == ["The `large` verdicts and this report read seed(s) 1, 2: they read the "
                     "first 3 seeds to complete every cell of capacity_gap and early_stopping "
                     "(docs/scorecard_rules.md, 5); rows here of seed(s) 0 are read by neither."]
    seen = []
    report = lambda frame: seen.append(sorted(frame["seed"].unique())) or "REPORT"
    select = lambda t, r: vs.rows_read(t, r, planned)
    assert report_text(table, report, select) == f"{notes[0]}\nREPORT" and seen == [[1, 2]]
    # no complete seed: the line alone, the report is not asked
    write(tmp_path, tables(("capacity_gap", 0, 1), ("early_stopping", 0, 1, {"scratch/resnet8"})))
    assert report_text(table, report, select).startswith(
        "The `large` verdicts and this report read no seed yet:") and len(seen) == 1
    # a profile or study without a rule: every row, no line
    full = ResultsTable("capacity_gap", "full", tmp_path)
    write(tmp_path, {("capacity_gap", "full"): rows.assign(profile="full")})
    assert vs.rows_read(full, full.read())[1] == [] and len(vs.rows_read(full, full.read())[0]) == 6
    assert report_text(full, report) == "REPORT" and seen[-1] == [1, 2]


def test_read_table_cuts_to_the_verdict_seeds(tmp_path, monkeypatch):
    monkeypatch.setattr(vs, "planned_cells", planned)
    write(tmp_path, tables(("capacity_gap", 0, 1), *both(3, 2)))
    assert vs.read_table("capacity_gap", "large", tmp_path)["seed"].unique().tolist() == [3]
    assert vs.read_table("early_stopping", "large", tmp_path)["seed"].unique().tolist() == [3]


def test_a_corrupt_table_beside_is_one_line(tmp_path):
    from kd.errors import CorruptFileError
    from kd.experiment.results import ResultsTable

    write(tmp_path, tables(*both(1, 2)))
    (tmp_path / "early_stopping" / "large.csv").write_bytes(b"\x00\xff garbage\n\"unclosed")
    table = ResultsTable("capacity_gap", "large", tmp_path)
    with pytest.raises(CorruptFileError, match="early_stopping/large.csv"):
        vs.rows_read(table, table.read(), planned)


def test_the_scorecard_command_and_notebook_read_the_same_cut_tables(tmp_path, monkeypatch):
    """`make scorecard` and notebooks/scorecard.ipynb both take their tables from
    ``sc.read_tables``: a part-way seed 0 is left out of large, other profiles are whole."""
    monkeypatch.setattr(vs, "planned_cells", planned)
    t = tables(("capacity_gap", 0, 1), *both(1, 2))
    t[("capacity_gap", "full")] = t[("capacity_gap", "large")].assign(profile="full")
    write(tmp_path, t)
    read = sc.read_tables(tmp_path, ["capacity_gap", "early_stopping"])
    assert sorted(read[("capacity_gap", "large")]["seed"].unique()) == [1]
    assert sorted(read[("capacity_gap", "full")]["seed"].unique()) == [0, 1]
    notebook = (REPO / "notebooks" / "scorecard.ipynb").read_text()
    assert "sc.read_tables(results" in notebook and "sc.find_tables(" not in notebook
