"""The verdict rule on hand-made numbers (every verdict reached), the measures on hand-made rows,
and the scorecard end to end (command line and notebook) on small hand-made result tables."""

import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kd.experiment import verdict as v
from studies import scorecard as sc
from tests.conftest import REPO

T_975 = {2: 4.302652729911275, 1: 12.706204736174707}  # t(0.975, df) from tables


def interval(mean, low, high, n=5):
    return v.Interval(n, mean, low, high)


# ----------------------------------------------------------------------------------------------
# kd.experiment.verdict

def test_t_interval_by_hand():
    got = v.t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1
    half = T_975[2] * 1 / math.sqrt(3)
    assert (got.n, got.mean) == (3, 2.0)
    assert got.low == pytest.approx(2 - half) and got.high == pytest.approx(2 + half)
    two = v.t_interval([0.0, 2.0, float("nan")])  # NaN dropped; mean 1, sd sqrt(2)
    assert two.n == 2 and two.high == pytest.approx(1 + T_975[1] * math.sqrt(2) / math.sqrt(2))
    one = v.t_interval([4.0])
    assert (one.n, one.mean, one.known) == (1, 4.0, False)
    assert v.t_interval([]).n == 0 and math.isnan(v.t_interval([]).mean)
    same = v.t_interval([3.0, 3.0, 3.0])  # no spread: a point interval
    assert (same.low, same.high) == (3.0, 3.0)


@pytest.mark.parametrize("direction, reference, margin, low, high, expected", [
    (">", 0, 1.0, 0.2, 3.0, "reproduced"),
    (">", 0, 1.0, 0.2, 0.5, "reproduced"),        # above zero but inside the margin: reproduced
    (">", 0, 1.0, -3.0, -0.2, "contradicted"),
    (">", 0, 1.0, -0.5, 0.6, "absent"),           # inside (-1, 1) and straddling 0
    (">", 0, 1.0, -0.5, 1.6, "inconclusive"),     # straddles 0, leaves the margin
    (">", 0, None, -0.5, 0.6, "inconclusive"),    # no margin stated: never absent
    ("<", 0, 1.0, -3.0, -0.2, "reproduced"),
    ("<", 0, 1.0, 0.2, 3.0, "contradicted"),
    ("<", 0, 1.0, -0.9, 0.9, "absent"),
    ("<", 36, None, 5.0, 20.0, "reproduced"),     # a threshold: below 36
    (">", 99, None, 97.0, 98.5, "contradicted"),  # a threshold: not above 99
    ("=", 13.2, 3.3, 11.0, 15.0, "reproduced"),
    ("=", 13.2, 3.3, 17.0, 19.0, "contradicted"),
    ("=", 13.2, 3.3, 2.0, 9.0, "contradicted"),
    ("=", 13.2, 3.3, 15.0, 18.0, "inconclusive"),
    ("report", 0, None, 1.0, 2.0, "report"),
])
def test_rule_reaches_each_verdict(direction, reference, margin, low, high, expected):
    assert v.rule(interval((low + high) / 2, low, high), direction, reference, margin) == expected


def test_rule_refuses_unknown_direction_and_level_without_tolerance():
    with pytest.raises(ValueError, match="direction"):
        v.rule(interval(0, -1, 1), ">=")
    with pytest.raises(ValueError, match="tolerance"):
        v.rule(interval(0, -1, 1), "=", 0.0, None)


def test_decide_not_run_seed_count_and_preconditions():
    strong = v.t_interval([5.0, 5.1, 4.9])
    assert v.decide(v.t_interval([]), ">") == "not run"
    assert v.decide(v.t_interval([5.0, 5.2]), ">") == "inconclusive"  # 2 seeds, whatever
    assert v.decide(v.t_interval([5.0]), ">") == "inconclusive"
    assert v.decide(strong, ">") == "reproduced"
    assert v.decide(strong, "<") == "contradicted"
    assert v.decide(v.t_interval([0.1, -0.1, 0.05]), ">", 0, 0.5) == "absent"
    # a precondition whose mean is <= 0: not met, even on 2 seeds
    assert v.decide(v.t_interval([5.0, 5.2]), ">",
                    precondition=v.t_interval([-1.0, -2.0])) == "precondition not met"
    # met (interval above 0 on 3 seeds): the rule decides
    assert v.decide(strong, ">", precondition=v.t_interval([1.0, 1.2, 0.9])) == "reproduced"
    # above 0 on average but not shown: at best inconclusive
    assert v.decide(strong, ">", precondition=v.t_interval([1.0, -0.5, 2.0])) == "inconclusive"
    assert v.decide(strong, ">", precondition=v.t_interval([])) == "not run"
    assert v.decide(strong, "report") == "report"
    assert v.precondition_status(v.t_interval([1.0, 1.2, 0.9])) == "met"
    assert v.precondition_status(v.t_interval([1.0, 2.0])) == "unsure"


def test_accuracy_step_of_shared_models_by_hand():
    """Teachers at 70, 75 and 76 % on 10,000 test images: steps +5 and +1 points; the second's
    half-width 1.959964 * sqrt((0.75 * 0.25 + 0.76 * 0.24) / 10000) = 1.19204 points."""
    got = v.accuracy_step([0.70, 0.75, 0.76], 10_000)
    assert (got.n, got.basis) == (1, "test images")
    assert got.mean == pytest.approx(1.0)
    assert got.low == pytest.approx(1 - 1.19204, abs=1e-4)  # the smaller step's bounds
    assert got.high == pytest.approx(1 + 1.19204, abs=1e-4)
    assert v.precondition_status(got) == "unsure"  # one model per size: no seed count asked
    assert v.precondition_status(v.accuracy_step([0.70, 0.75, 0.76], 100_000)) == "met"
    assert v.precondition_status(v.accuracy_step([0.70, 0.75, 0.74], 100_000)) == "not met"
    assert v.accuracy_step([0.7], 10_000).n == 0  # one teacher: nothing to order


# ----------------------------------------------------------------------------------------------
# hand-made result tables

def table(study, profile, cells, seeds=(0, 1, 2), commit="abc123"):
    """Rows for every (cell, seed): ``cells`` maps a cell to its columns, each a value or a
    function of the seed."""
    rows = []
    for cell, columns in cells.items():
        for seed in seeds:
            row = {"study": study, "profile": profile, "cell": cell, "seed": seed}
            row.update({k: (f(seed) if callable(f) else f) for k, f in columns.items()})
            row.update(git_commit=commit, hardware="test CPU")
            rows.append(row)
    return pd.DataFrame(rows)


def write(root: Path, frame: pd.DataFrame) -> None:
    study, profile = frame["study"].iloc[0], frame["profile"].iloc[0]
    (root / study).mkdir(parents=True, exist_ok=True)
    frame.to_csv(root / study / f"{profile}.csv", index=False)


def zoo_table(profile="quick", seeds=(0, 1, 2), gain=lambda s: 0.03 + 0.001 * s):
    pair = "resnet14->resnet8"
    return table("method_zoo", profile, {
        f"{pair}/scratch": {"pair": pair, "test_accuracy": lambda s: 0.5 + 0.01 * s},
        f"{pair}/kd": {"pair": pair, "test_accuracy": lambda s: 0.5 + 0.01 * s + gain(s)},
        f"{pair}/fitnets": {"pair": pair, "test_accuracy": lambda s: 0.5 + 0.01 * s - 0.02},
    }, seeds)


def capacity_table(teacher_acc):
    """Plain family: teachers 4, 6, 8 layers with the given accuracies, one assistant."""
    cells = {}
    for (arch, params), acc in zip((("plain_cnn4", 10), ("plain_cnn6", 20), ("plain_cnn8", 30)),
                                   teacher_acc):
        cells[f"teacher/{arch}"] = {"family": "plain", "role": "teacher", "model": arch,
                                    "params": params, "test_accuracy": acc}
        cells[f"kd/{arch}/plain_cnn2"] = {"family": "plain", "role": "kd", "model": "plain_cnn2",
                                          "teacher": arch, "params": 5,
                                          "test_accuracy": 0.5 + params / 1000}
    cells["scratch/plain_cnn2"] = {"family": "plain", "role": "scratch", "model": "plain_cnn2",
                                   "params": 5, "test_accuracy": 0.5}
    cells["kd/plain_cnn8/plain_cnn6/plain_cnn2"] = {"family": "plain", "role": "ta_kd",
                                                    "model": "plain_cnn2", "params": 5,
                                                    "test_accuracy": lambda s: 0.54 + 0.001 * s}
    return table("capacity_gap", "quick", cells, seeds=(0, 1))


def test_measures_on_hand_made_rows():
    hinton = sc.Rows(table("hinton_mnist", "quick", {
        "30x2/hard": {"test_errors": 400},
        **{f"30x2/T{t:g}": {"test_errors": e} for t, e in
           ((1, 330), (2, 310), (3, 300), (4, 290), (5, 320), (20, 500))},
        "no_3": {"shifted_class_errors": 100, "shifted_class_n": 1000,
                 "shifted_class_errors_shift_paper": 10, "test_error_pct_shift_paper": 12.0},
    }, seeds=(0,)))
    # below the band: mean(330, 310) = 320; above: mean(320, 500) = 410; inside: 295
    assert sc.evaluate("hinton_band_advantage:30,2.5,4", hinton).tolist() == [25.0]
    assert sc.evaluate("hinton_spread_above:30,4", hinton).tolist() == [210.0]
    assert sc.evaluate("hinton_distill_gain:30,20", hinton).tolist() == [-100.0]
    assert sc.evaluate("hinton_class_accuracy:no_3", hinton).tolist() == [90.0]
    assert sc.evaluate("hinton_recovered:no_3", hinton).tolist() == [90.0]
    assert sc.evaluate("hinton_spread_above:800,8", hinton).empty  # not run: no such cells

    capacity = sc.Rows(capacity_table([0.60, 0.63, 0.59]))
    # teachers ordered by params: steps +3 and -4 points, so the smallest step is -4
    assert sc.evaluate("cg_teacher_rise:plain", capacity).round(6).tolist() == [-4.0, -4.0]
    assert sc.evaluate("cg_top_step:plain", capacity).round(6).tolist() == [1.0, 1.0]
    assert sc.evaluate("cg_ta_gain:plain", capacity).round(6).tolist() == [1.0, 1.1]

    # one teacher per architecture (seed 0) shared by the seeds: counted once, not per seed
    shared = capacity_table([0.60, 0.63, 0.66]).assign(teacher_seed=0, test_n=10_000)
    per_seed = sc.evaluate("cg_teacher_rise:plain", sc.Rows(shared.assign(teacher_seed=None)))
    assert per_seed.round(6).tolist() == [3.0, 3.0]  # the same numbers as two seeds would be
    rise = sc.evaluate("cg_teacher_rise:plain", sc.Rows(shared))
    assert isinstance(rise, v.Interval) and (rise.n, rise.basis) == (1, "test images")
    assert rise.mean == pytest.approx(3.0) and 0 < rise.low < 3.0 < rise.high

    early = sc.Rows(table("early_stopping", "quick", {
        **{f"kd/plain_cnn4@{e}/plain_cnn2": {"role": "kd", "teacher": "plain_cnn4",
                                             "schedule": "step (5, 8)", "epochs": 10,
                                             "test_accuracy": 0.5 + e / 100}
           for e in (2, 4, 6, 10)},
        "eskd/plain_cnn4/plain_cnn2": {"role": "eskd", "teacher": "plain_cnn4",
                                       "test_accuracy": 0.62},
    }, seeds=(0,)))
    # the latest checkpoint at or before the first drop (epoch 5) is epoch 4: 54 - 60 %
    assert sc.evaluate("es_early_teacher_gain", early).round(6).tolist() == [-6.0]
    assert sc.evaluate("es_eskd_gain", early).round(6).tolist() == [2.0]

    fidelity = sc.Rows(table("fidelity", "quick", {
        "ensemble/m1": {"role": "student", "model_key": "a", "test_accuracy": 0.50,
                        "test_agreement": 0.80},
        "augment/crop_flip": {"role": "student", "model_key": "a", "test_accuracy": 0.50,
                              "test_agreement": 0.80},
        "augment/mixup": {"role": "student", "model_key": "b", "test_accuracy": 0.52,
                          "test_agreement": 0.70},
        "epochs/x4": {"role": "student", "model_key": "c", "test_accuracy": 0.55,
                      "test_agreement": 0.90},
        "mnist/student": {"role": "student", "model_key": "d", "test_accuracy": 0.1,
                          "test_agreement": 0.99},
    }, seeds=(0,)))
    # distinct CIFAR students a, b, c: pairs (a,b) discordant, (a,c), (b,c) concordant
    assert sc.evaluate("fid_discordance", fidelity).round(6).tolist() == [pytest.approx(100 / 3)]


def test_a_shared_teachers_precondition_is_scored_on_the_test_set():
    claims = sc.read_claims(sc.CLAIMS)
    claims = claims[claims["id"] == "cg-falls-plain"]
    shared = capacity_table([0.60, 0.63, 0.66]).assign(teacher_seed=0, test_n=10_000)
    row = sc.score(claims, {("capacity_gap", "full"): shared}).iloc[0]
    assert (row.precondition_n, row.precondition_basis, row.precondition_status) == (
        1, "test images", "met")
    assert row.precondition_effect == pytest.approx(3.0)
    assert row.verdict == "inconclusive"  # the claim itself has 2 seeds of students
    quick = sc.score(claims, {("capacity_gap", "quick"): capacity_table([0.60, 0.63, 0.66])})
    assert quick.iloc[0].precondition_basis == "seeds" and quick.iloc[0].precondition_n == 2


def test_every_claim_names_a_registered_measure():
    claims = sc.read_claims(sc.CLAIMS)
    assert claims["id"].is_unique
    for spec in [*claims["measure"], *claims["precondition_measure"].dropna()]:
        assert sc.evaluate(spec, sc.Rows(None)).empty, spec  # no rows: not run
    assert set(claims["direction"]) <= set(v.DIRECTIONS)
    levels = claims[claims["direction"] == "="]
    assert levels["margin"].notna().all()
    # a changed rule names the claim it supersedes, which stays in the table
    assert set(claims["supersedes"].dropna()) <= set(claims["id"])


def test_each_teacher_assistant_claim_reads_its_own_chain():
    pair = "resnet14->plain_cnn6"
    rows = sc.Rows(table("method_zoo", "full", {
        f"{pair}/kd": {"pair": pair, "test_accuracy": lambda s: 0.60 + 0.01 * s},
        f"{pair}/kd_via_resnet8": {"pair": pair, "test_accuracy": lambda s: 0.58 + 0.01 * s},
        f"{pair}/kd_via_resnet8/teacher_data": {"pair": pair,
                                                "test_accuracy": lambda s: 0.61 + 0.02 * s},
    }))
    # the students'-data chain alone: -2 points a seed, whatever the teacher-data chain does
    assert sc.evaluate("mz_ta_chain", rows).round(6).tolist() == [-2.0, -2.0, -2.0]
    assert sc.evaluate("mz_ta_chain:teacher_data", rows).round(6).tolist() == [1.0, 2.0, 3.0]
    only_old = sc.Rows(rows.frame[~rows.frame["cell"].str.endswith("/teacher_data")])
    assert sc.evaluate("mz_ta_chain:teacher_data", only_old).empty  # not run
    claims = sc.read_claims(sc.CLAIMS).set_index("id")
    assert claims.loc["mz-ta-chain-teacher-data", "supersedes"] == "mz-ta-chain"
    assert claims.loc["mz-ta-chain-teacher-data", "planned_in"] == "full"


SOME_CLAIMS = ("hin-distill-800", "cg-falls-plain", "mz-gain-kd", "mz-gain-fitnets", "mz-gain-sp",
               "mz-vs-kd-fitnets")


@pytest.fixture
def some_claims(tmp_path, monkeypatch):
    """$KD_CLAIMS: a few rows of the real claims table (a short figure draws faster)."""
    claims = pd.read_csv(sc.CLAIMS)
    path = tmp_path / "claims.csv"
    claims[claims["id"].isin(SOME_CLAIMS)].to_csv(path, index=False)
    monkeypatch.setenv("KD_CLAIMS", str(path))
    return path


def test_scorecard_end_to_end(some_claims):
    root = Path(os.environ["KD_RESULTS"])
    write(root, zoo_table("quick"))
    write(root, zoo_table("paper", seeds=(0, 1)))
    write(root, capacity_table([0.60, 0.63, 0.59]))
    assert sc.run_main(sc.main, []) == 0
    card = pd.read_csv(root / "scorecard.csv")
    claims = sc.read_claims()
    assert len(claims) == len(SOME_CLAIMS) and len(card) == 3 * len(claims)
    # large before its rows: each claim waiting for them or cut by the budget (sc.BUDGET_RUNS)
    assert list(dict.fromkeys(card["profile"])) == ["paper", "large", "quick"]
    got = card.set_index(["claim", "profile"])
    assert got.loc[("hin-distill-800", "large"), "verdict"] == "cut"
    assert got.loc[("cg-falls-plain", "large"), "verdict"] == "cut"  # the plain family is cut
    kd = got.loc[("mz-gain-kd", "quick")]
    assert kd["verdict"] == "reproduced" and kd["n_seeds"] == 3
    assert kd["effect"] == pytest.approx(3.1) and kd["git_commits"] == "abc123"
    assert got.loc[("mz-gain-kd", "paper"), "verdict"] == "inconclusive"  # 2 seeds
    assert got.loc[("mz-vs-kd-fitnets", "quick"), "verdict"] == "reproduced"  # 5 points below
    assert got.loc[("mz-gain-fitnets", "quick"), "verdict"] == "contradicted"
    assert got.loc[("mz-gain-sp", "quick"), "verdict"] == "not run"
    assert got.loc[("hin-distill-800", "quick"), "verdict"] == "not run"  # no hinton table
    falls = got.loc[("cg-falls-plain", "quick")]
    assert falls["verdict"] == "precondition not met"
    assert falls["precondition_effect"] == pytest.approx(-4.0)
    assert falls["precondition_status"] == "not met"
    assert (Path(os.environ["KD_FIGURES"]) / sc.FIGURE).stat().st_size > 10_000
    text = sc.markdown(sc.score(claims, sc.find_tables(root, claims["study"].unique())), claims)
    assert "| `mz-gain-kd` |" in text and "**reproduced**, 3 seeds" in text
    # the paper's own value and the paper profile's verdict are two columns
    header = text.splitlines()[0]
    assert header.startswith("| claim | what it says | test | paper's value |")
    assert "| paper |" in header and "| quick |" in header


def test_absent_and_empty_results(tmp_path, capsys):
    root = Path(os.environ["KD_RESULTS"])
    assert sc.run_main(sc.main, []) == 2  # nothing to score
    assert "no study results" in capsys.readouterr().err
    # KD's gain: within ±0.1 point of zero, straddling it, on 4 seeds: a measured null
    write(root, zoo_table("quick", seeds=(0, 1, 2, 3),
                          gain=lambda s: [0.0005, -0.0004, 0.0003, -0.0002][s]))
    claims = sc.read_claims(sc.CLAIMS)
    card = sc.score(claims, sc.find_tables(root, claims["study"].unique()))
    assert card.set_index("claim").loc["mz-gain-kd", "verdict"] == "absent"


def test_scorecard_notebook_draws_from_hand_made_results(some_claims):
    from tests.test_notebooks import execute

    write(Path(os.environ["KD_RESULTS"]), zoo_table("quick"))
    execute(REPO / "notebooks" / "scorecard.ipynb")
    assert (Path(os.environ["KD_FIGURES"]) / sc.FIGURE).stat().st_size > 10_000


def test_tables_beside_a_profile_are_not_profiles(tmp_path):
    import pandas as pd

    folder = tmp_path / "method_zoo"
    folder.mkdir()
    row = {"study": "method_zoo", "cell": "a", "seed": 0}
    pd.DataFrame([{**row, "profile": "quick"}]).to_csv(folder / "quick.csv", index=False)
    for side in ("quick_failures", "quick_selection"):
        pd.DataFrame([{**row, "profile": "quick"}]).to_csv(folder / f"{side}.csv", index=False)
    assert list(sc.find_tables(tmp_path, ["method_zoo"])) == [("method_zoo", "quick")]


def test_a_claim_its_profile_never_plans_is_not_planned_not_not_run(tmp_path):
    claims = sc.read_claims(sc.CLAIMS)
    chain = claims[claims["id"].isin(["mz-ta-chain", "mz-gain-sp"])].copy()
    # the ResNet families: at full since their CPU-sized family (students on 10,000 images),
    # at large since issue 28 (all the images, teachers per seed)
    assert claims.set_index("id").loc["cg-ta-resnet", "planned_in"].split() == [
        "full", "large", "paper"]
    assert chain.set_index("id").loc["mz-ta-chain", "planned_in"].split() == ["full", "paper"]
    tables = {("method_zoo", p): zoo_table(p) for p in ("paper", "quick")}
    card = sc.score(chain, tables).set_index(["claim", "profile"])["verdict"]
    assert card[("mz-ta-chain", "quick")] == "not planned"  # quick has no assistant, by design
    assert card[("mz-ta-chain", "paper")] == "not run"  # planned there: its rows are missing
    assert card[("mz-gain-sp", "quick")] == "not run"  # planned everywhere (empty planned_in)
    # rows that exist anyway are scored as usual, wherever the claim was planned
    pair = "resnet14->resnet8"
    extra = table("method_zoo", "quick", {
        f"{pair}/kd_via_resnet8": {"pair": pair, "test_accuracy": lambda s: 0.58 + 0.012 * s}})
    tables[("method_zoo", "quick")] = pd.concat([tables[("method_zoo", "quick")], extra])
    card = sc.score(chain, tables).set_index(["claim", "profile"])
    assert card.loc[("mz-ta-chain", "quick"), "verdict"] == "reproduced"  # +5.0, +5.1, +5.2
    assert card.loc[("mz-ta-chain", "quick"), "effect"] == pytest.approx(5.1)
    text = sc.markdown(sc.score(chain, {("method_zoo", "quick"): zoo_table()}), chain)
    assert "not planned (only at full, paper)" in text
    # a claims table written before the column still reads: every profile planned
    claims.drop(columns="planned_in").to_csv(tmp_path / "old.csv", index=False)
    assert set(sc.read_claims(tmp_path / "old.csv")["planned_in"]) == {""}
    claims.assign(planned_in="paper ful").to_csv(tmp_path / "typo.csv", index=False)
    with pytest.raises(sc.ConfigError, match=r"unknown profiles in planned_in .*\['ful'\]"):
        sc.read_claims(tmp_path / "typo.csv")


# ----------------------------------------------------------------------------------------------
# Size, regime and many claims (docs/scorecard_rules.md)

from studies import regime as rg  # noqa: E402
from studies import scorecard_figures as sf  # noqa: E402


@pytest.mark.parametrize("verdict, n, paper, same_data, tol, expected", [
    ("reproduced", 5, 1.5, True, None, "agrees"),          # inside [1, 2]
    ("reproduced", 5, 1.0, True, None, "agrees"),          # on the edge counts as inside
    ("reproduced", 5, 2.4, True, 0.5, "agrees"),           # outside, within the tolerance
    ("reproduced", 5, 2.6, True, 0.5, "differs"),          # beyond the tolerance
    ("contradicted", 5, 0.5, True, None, "differs"),       # outside, no tolerance (empty = 0)
    ("inconclusive", 5, 1.5, True, None, "agrees"),        # any interval the sign rule reached
    ("reproduced", 5, 1.5, False, None, "other data set"),
    ("reproduced", 5, math.nan, True, None, "no paper value"),
    ("reproduced", 5, None, False, None, "no paper value"),  # checked before the data set
    ("not run", 0, 1.5, True, None, "not tested"),
    ("not planned", 0, 1.5, True, None, "not tested"),
    ("precondition not met", 5, 1.5, True, None, "not tested"),
    ("report", 5, 1.5, True, None, "not tested"),
    ("inconclusive", 2, 1.5, True, None, "not tested"),    # below 3 seeds
])
def test_size_rule_on_hand_made_cases(verdict, n, paper, same_data, tol, expected):
    assert v.size(interval(1.5, 1.0, 2.0, n=n), verdict, paper, same_data, tol) == expected


def test_one_sided_p_values_by_hand():
    got = v.t_interval([1.0, 2.0, 3.0])  # mean 2, se 1/sqrt(3): t = 2·sqrt(3) on 2 df
    t = 2 * math.sqrt(3)
    by_hand = 0.5 * (1 - t / math.sqrt(t * t + 2))  # P(T ≥ t), t with 2 df, closed form
    assert by_hand == pytest.approx(0.0370900, abs=1e-7)
    p, against = v.one_sided_p(got, ">", 0.0)
    assert p == pytest.approx(by_hand) and against == pytest.approx(1 - by_hand)
    assert v.one_sided_p(got, "<", 0.0) == pytest.approx((1 - by_hand, by_hand))
    assert v.two_sided_p(p, against) == pytest.approx(2 * by_hand)
    # a level 2 ± 3: t = ±3·sqrt(3) on either side, the same p twice (TOST)
    t = 3 * math.sqrt(3)
    tost = 0.5 * (1 - t / math.sqrt(t * t + 2))
    p, against = v.one_sided_p(got, "=", 2.0, 3.0)
    assert p == pytest.approx(tost) and against == pytest.approx(1 - tost)
    assert v.rule(got, "=", 2.0, 3.0) == "reproduced" and p < 0.025
    assert all(math.isnan(x) for x in v.one_sided_p(got, "report"))
    assert all(math.isnan(x) for x in v.one_sided_p(v.t_interval([1.0]), ">"))
    assert v.one_sided_p(v.t_interval([3.0, 3.0, 3.0]), ">", 0.0) == (0.0, 1.0)  # no spread
    with pytest.raises(ValueError, match="tolerance"):
        v.one_sided_p(got, "=", 2.0)


def test_the_two_sided_p_decides_exactly_as_the_interval():
    """reproduced or contradicted ⇔ p_two < 0.05; reproduced ⇔ the claim's own p < 0.025."""
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(400):
        values = rng.normal(rng.normal(0, 1), rng.uniform(0.2, 2), size=rng.integers(3, 8))
        direction = rng.choice([">", "<", "="])
        margin = 0.5 if direction == "=" else None
        got = v.t_interval(values)
        verdict = v.rule(got, direction, 0.0, margin)
        p, against = v.one_sided_p(got, direction, 0.0, margin)
        seen.add(verdict)
        assert (v.two_sided_p(p, against) < 0.05) == (verdict in ("reproduced", "contradicted"))
        assert (p < 0.025) == (verdict == "reproduced")
    assert {"reproduced", "contradicted", "inconclusive"} <= seen


def test_benjamini_hochberg_by_hand():
    # sorted p·m/rank: 0.04, 0.04, 0.04, 0.5
    assert v.adjust([0.01, 0.02, 0.03, 0.5]) == pytest.approx([0.04, 0.04, 0.04, 0.5])
    # 0.01·4/1 = 0.04; 0.03·4/2 = 0.06 and 0.04·4/3 = 0.0533 -> both 0.0533 (step-up minimum)
    assert v.adjust([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.5])
    assert v.corrected("reproduced", 0.0533) == v.AFTER_CORRECTION
    assert v.corrected("contradicted", 0.04) == "contradicted"
    assert v.corrected("absent", 0.9) == "absent"  # a measured null is not corrected
    assert v.corrected("inconclusive", 0.9) == "inconclusive"


def test_correction_is_per_profile():
    frame = pd.DataFrame({"profile": ["full", "full", "full", "full", "quick", "quick"],
                          "verdict": ["reproduced", "contradicted", "reproduced", "inconclusive",
                                      "reproduced", "not run"],
                          "p_two_sided": [0.01, 0.04, 0.03, 0.5, 0.04, math.nan]})
    got = sc.correct(frame.copy())
    assert got["p_adjusted"].iloc[:4].tolist() == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.5])
    assert got["p_adjusted"].iloc[4] == pytest.approx(0.04)  # alone in its profile's family
    assert got["verdict_adjusted"].tolist() == [
        "reproduced", v.AFTER_CORRECTION, v.AFTER_CORRECTION, "inconclusive", "reproduced",
        "not run"]
    counts = sc.expected_false_calls(got)
    assert counts.loc["full"].tolist() == pytest.approx([4, 0.2, 2])
    assert counts.loc["quick"].tolist() == pytest.approx([1, 0.05, 0])


def capacity_rows(student_n=10_000, scratch=0.60):
    return table("capacity_gap", "full", {
        "teacher/plain_cnn8": {"role": "teacher", "model": "plain_cnn8", "dataset": "cifar10",
                               "train_n": 50_000, "epochs": 25, "test_accuracy": 0.83},
        "scratch/plain_cnn2": {"role": "scratch", "model": "plain_cnn2", "dataset": "cifar10",
                               "train_n": student_n, "epochs": 25, "test_accuracy": scratch},
        "kd/plain_cnn8/plain_cnn2": {"role": "kd", "model": "plain_cnn2", "teacher": "plain_cnn8",
                                     "dataset": "cifar10", "train_n": student_n, "epochs": 25,
                                     "teacher_accuracy": 0.83,
                                     "test_accuracy": lambda s: 0.62 + 0.01 * s}})


def test_regime_values_from_hand_made_rows():
    got = rg.ours(capacity_rows(), {"kd/plain_cnn8/plain_cnn2"}, "capacity_gap")
    assert got == pytest.approx({"dataset": "CIFAR-10", "student_train_n": 10_000,
                                 "teacher_train_n": 50_000, "epochs": "25",
                                 "teacher_acc": 83.0, "scratch_acc": 60.0})
    # Hinton: no role, no train_n, errors instead of accuracies
    hinton = table("hinton_mnist", "full", {
        "teacher": {"model": "big", "transfer_n": 60_000, "epochs": 150, "test_errors": 70,
                    "test_n": 10_000},
        "800x2/hard": {"model": "small", "transfer_n": 60_000, "epochs": 20,
                       "test_errors": lambda s: 140 + 10 * s, "test_n": 10_000},
        "800x2/T20": {"model": "small", "transfer_n": 60_000, "epochs": 20, "test_errors": 100,
                      "test_n": 10_000}})
    got = rg.ours(hinton, {"800x2/hard", "800x2/T20"}, "hinton_mnist")
    assert got == pytest.approx({"dataset": "MNIST", "student_train_n": 60_000,
                                 "teacher_train_n": 60_000, "epochs": "20",
                                 "teacher_acc": 99.3, "scratch_acc": 98.5})
    assert rg.ours(hinton, set(), "hinton_mnist")["dataset"] == ""  # nothing read: no regime


def test_regime_label_on_hand_made_values():
    paper = {"dataset": "CIFAR-10", "student_train_n": math.nan, "teacher_train_n": math.nan,
             "teacher_acc": 84.0, "scratch_acc": 70.16}
    ours = {"dataset": "CIFAR-10", "student_train_n": 50_000, "teacher_train_n": 50_000,
            "teacher_acc": 83.0, "scratch_acc": 68.5}
    assert rg.label(ours, paper) == (rg.PAPER, "")
    assert rg.label(ours | {"student_train_n": 10_000, "teacher_acc": 76.6}, paper) == (
        rg.REDUCED, "students on 10,000 of 50,000 images; teacher 7.4 points below")
    assert rg.label(ours | {"scratch_acc": 72.5}, paper) == (
        rg.REDUCED, "scratch student 2.3 points above")
    label, reason = rg.label(ours, paper | {"teacher_acc": math.nan})
    assert label == rg.UNKNOWN and "teacher accuracy is not recorded" in reason
    # another data set: reduced, whatever is missing; accuracies are not compared across sets
    assert rg.label(ours, paper | {"dataset": "ImageNet", "teacher_acc": math.nan}) == (
        rg.REDUCED, "other data set (ImageNet)")
    # a subset by design (Hinton's transfer set without 3s) and a paper's own smaller teacher set
    few = ours | {"student_train_n": 53_869, "teacher_train_n": 200}
    assert rg.label(few, paper | {"teacher_train_n": 200}, "transfer set without 3s") == (
        rg.PAPER, "")
    assert rg.label(ours | {"dataset": ""}, paper) == ("", "")  # no rows at that profile


def test_regimes_reference_covers_every_claim():
    claims = sc.read_claims(sc.CLAIMS)
    regimes = rg.read_regimes()
    assert set(claims["paper_regime"]) <= set(regimes.index)
    assert regimes["source"].notna().all()
    assert set(claims["paper_dataset"]) - {""} <= {"MNIST", "CIFAR-10", "CIFAR-100", "ImageNet"}
    tolerances = claims.dropna(subset=["size_tolerance"])  # only '=' claims on the paper's level
    assert set(tolerances["id"]) == {"hin-78-level", "fid-teacher-init"}
    assert (tolerances["size_tolerance"] == tolerances["margin"]).all()


def test_committed_scorecard_keeps_its_sign_verdicts():
    """Regenerated from the committed results, every sign verdict equals the committed one, and
    the new columns are there."""
    committed = pd.read_csv(REPO / "results" / "scorecard.csv")
    claims = sc.read_claims(sc.CLAIMS)
    # as the command line writes it: large's rows cut to the seeds its rule reads
    card = sc.score(claims, sc.read_tables(REPO / "results", claims["study"].unique()),
                    extra_profiles=sc.BUDGET_RUNS)
    assert card[["claim", "profile"]].values.tolist() == \
        committed[["claim", "profile"]].values.tolist()
    assert card["verdict"].tolist() == committed["verdict"].tolist()
    new = ["size_verdict", "size_tolerance", "p_value", "p_adjusted", "verdict_adjusted",
           *rg.COLUMNS]
    assert set(new) <= set(committed.columns)
    assert set(card["size_verdict"]) <= set(v.SIZE_VERDICTS)
    decided = card.dropna(subset=["p_two_sided"])
    assert ((decided["p_two_sided"] < 0.05) >= decided["verdict"].isin(
        ["reproduced", "contradicted"])).all()  # every call clears the uncorrected level


def hand_made_scorecard():
    rows = []
    for claim, study in (("a-1", "alpha"), ("a-2", "alpha"), ("b-1", "beta")):
        for profile, verdict, size, reg in (("full", "reproduced", "agrees", "reduced regime"),
                                            ("quick", "inconclusive", "not tested", "")):
            rows.append({"claim": claim, "study": study, "profile": profile, "n_seeds": 5,
                         "effect": 1.0, "ci_low": 0.5, "ci_high": 1.5, "unit": "points",
                         "reference": 0.0, "margin": 0.3, "paper_value": 1.2,
                         "verdict": verdict, "verdict_adjusted": verdict, "size_verdict": size,
                         "regime": reg, "regime_reason": "", "p_two_sided": 0.01})
    return pd.DataFrame(rows)


def test_matrix_and_study_figures_are_written(tmp_path):
    from PIL import Image

    card = hand_made_scorecard()
    paths = sc.draw(card, tmp_path)
    assert [p.name for p in paths] == [
        "scorecard_matrix.png", "scorecard_alpha.png", "scorecard_beta.png"]
    for path in paths:
        assert path.stat().st_size > 10_000, path
    width, height = Image.open(paths[0]).size
    assert width <= 1600 and height <= 1200  # a laptop screen
    title = sf.calls_title(sc.expected_false_calls(card))
    assert "full: 0.15 of 3 decided, 0 changed by BH" in title
    assert sf.matrix_profiles(card) == ["quick", "full", "large", "paper"]


def test_study_verdicts_reads_the_scorecard(tmp_path, capsys):
    path = tmp_path / "scorecard.csv"
    assert sc.study_verdicts("alpha", path).empty and "make scorecard" in capsys.readouterr().out
    card = hand_made_scorecard()
    card.loc[card["claim"] == "a-2", "n_seeds"] = 0  # not run: left out
    card.to_csv(path, index=False)
    got = sc.study_verdicts("alpha", path)
    assert got["claim"].tolist() == ["a-1", "a-1"]
    assert {"verdict", "size_verdict", "regime", "verdict_adjusted"} <= set(got.columns)


def test_a_claims_table_without_the_size_columns_still_scores(tmp_path):
    claims = pd.read_csv(sc.CLAIMS)
    old = claims[claims["id"] == "mz-gain-kd"].drop(
        columns=["paper_dataset", "size_tolerance", "paper_regime"])
    old.to_csv(tmp_path / "old.csv", index=False)
    read = sc.read_claims(tmp_path / "old.csv")
    card = sc.score(read, {("method_zoo", "quick"): zoo_table()}).iloc[0]
    assert card["verdict"] == "reproduced"
    assert card["size_verdict"] == "other data set"  # no paper data set recorded: no match
    assert card["regime"] == rg.UNKNOWN  # nothing recorded of the paper's regime


# ----------------------------------------------------------------------------------------------
# The claims that the large profile decides (issue 28): per family, and against the control

LARGE_CLAIMS = ("es-eskd-beats-full-plain", "es-eskd-beats-full-resnet", "es-early-teacher-plain",
                "es-early-teacher-resnet", "mz-kd-vs-control", "mz-fitnets-vs-control",
                "mz-at-vs-control", "mz-random-teacher-vs-control")


def two_family_checkpoints(profile="quick", seeds=(0, 1)):
    """Early stopping, two families. Plain: students of plain_cnn4@2/@4/@10 at 52/54/60 %, ESKD
    62 %. ResNet: students of resnet14@4/@10 at 70/66 %, ESKD 65 % + 1 point per seed."""
    cells = {f"kd/plain_cnn4@{e}/plain_cnn2": {"family": "plain", "role": "kd",
                                               "teacher": "plain_cnn4", "test_accuracy": acc}
             for e, acc in ((2, 0.52), (4, 0.54), (10, 0.60))}
    cells |= {f"kd/resnet14@{e}/resnet8": {"family": "resnet", "role": "kd",
                                           "teacher": "resnet14", "test_accuracy": acc}
              for e, acc in ((4, 0.70), (10, 0.66))}
    cells["eskd/plain_cnn4/plain_cnn2"] = {"family": "plain", "role": "eskd",
                                           "teacher": "plain_cnn4", "test_accuracy": 0.62}
    cells["eskd/resnet14/resnet8"] = {"family": "resnet", "role": "eskd", "teacher": "resnet14",
                                      "test_accuracy": lambda s: 0.65 + 0.01 * s}
    frame = table("early_stopping", profile, cells, seeds)
    return frame.assign(schedule="step (5, 8)", epochs=10)


def test_early_stopping_measures_split_by_family():
    rows = sc.Rows(two_family_checkpoints())
    # ESKD - final checkpoint's student: plain 62 - 60 = +2; resnet 65 - 66 = -1, then 0
    assert sc.evaluate("es_eskd_gain:plain", rows).round(6).tolist() == [2.0, 2.0]
    assert sc.evaluate("es_eskd_gain:resnet", rows).round(6).tolist() == [-1.0, 0.0]
    assert sc.evaluate("es_eskd_gain", rows).round(6).tolist() == [0.5, 1.0]  # pooled, unchanged
    # latest checkpoint at or before the first drop (epoch 5) - final: plain 54 - 60, resnet 70 - 66
    assert sc.evaluate("es_early_teacher_gain:plain", rows).round(6).tolist() == [-6.0, -6.0]
    assert sc.evaluate("es_early_teacher_gain:resnet", rows).round(6).tolist() == [4.0, 4.0]
    assert sc.evaluate("es_early_teacher_gain", rows).round(6).tolist() == [-1.0, -1.0]
    assert sc.evaluate("es_eskd_gain:wide", rows).empty  # no such family: not run
    # the pooled claims' own specs read the same numbers as before the family argument existed
    claims = sc.read_claims(sc.CLAIMS).set_index("id")
    assert claims.loc["es-eskd-beats-full", "measure"] == "es_eskd_gain"
    assert claims.loc["es-early-teacher", "measure"] == "es_early_teacher_gain"


def zoo_with_control(profile="large", seeds=(0, 1, 2)):
    """Two pairs. resnet14->resnet8: kd = control + 1 + 0.1 per seed points, fitnets = control
    - 4 points. resnet14->plain_cnn6: kd = control + 2 points; no fitnets cell there."""
    one, two = "resnet14->resnet8", "resnet14->plain_cnn6"
    return table("method_zoo", profile, {
        f"{one}/{sc.CONTROL}": {"pair": one, "test_accuracy": lambda s: 0.52 + 0.01 * s},
        f"{one}/kd": {"pair": one, "test_accuracy": lambda s: 0.53 + 0.011 * s},
        f"{one}/fitnets": {"pair": one, "test_accuracy": lambda s: 0.48 + 0.01 * s},
        f"{two}/{sc.CONTROL}": {"pair": two, "test_accuracy": 0.58},
        f"{two}/kd": {"pair": two, "test_accuracy": 0.60},
    }, seeds)


def test_minus_control_on_hand_made_rows():
    from studies import method_zoo as mz

    rows = sc.Rows(zoo_with_control())
    # kd: mean over both pairs of (1 + 0.1 s, 2) = 1.5, 1.55, 1.6
    assert sc.evaluate("mz_minus_control:kd", rows).round(6).tolist() == [1.5, 1.55, 1.6]
    assert sc.evaluate("mz_minus_control:fitnets", rows).round(6).tolist() == [-4.0] * 3
    assert sc.evaluate("mz_minus_control:random_teacher", rows).empty  # no such cells: not run
    no_control = sc.Rows(rows.frame[~rows.frame["cell"].str.endswith(f"/{sc.CONTROL}")])
    assert sc.evaluate("mz_minus_control:kd", no_control).empty
    # the control's cells are named as method_zoo names any method's: <teacher>-><student>/<method>
    pair = mz.Pair("resnet14", "resnet8", ("kd", sc.CONTROL))
    names = [c.name for c in mz.pair_cells(pair, mz.PROFILES["full"])]
    assert names == ["resnet14->resnet8/scratch", "resnet14->resnet8/kd",
                     "resnet14->resnet8/label_smoothing"]


def test_large_claims_are_written_for_large_only():
    claims = sc.read_claims(sc.CLAIMS).set_index("id")
    new = claims.loc[list(LARGE_CLAIMS)]
    assert (new["planned_in"] == "large").all()
    assert (new["direction"] == ">").all() and (new["reference"] == 0).all()
    for family_claim in LARGE_CLAIMS[:4]:  # same test as the pooled claim, one family each
        pooled = claims.loc[claims.loc[family_claim, "supersedes"]]
        family = family_claim.rsplit("-", 1)[1]
        assert claims.loc[family_claim, "measure"] == f"{pooled['measure']}:{family}"
        for column in ("direction", "reference", "margin", "unit", "paper_dataset",
                       "paper_regime"):
            assert claims.loc[family_claim, column] == pooled[column], column
        assert claims.loc[family_claim, "paper_value"] == pooled["paper_value"] or (
            math.isnan(pooled["paper_value"]))
    control = new.loc[list(LARGE_CLAIMS[4:])]
    assert (control["margin"] == 0.5).all() and control["paper_value"].isna().all()
    assert control["measure"].tolist() == [f"mz_minus_control:{m}" for m in
                                           ("kd", "fitnets", "at", "random_teacher")]


def test_large_claims_are_not_planned_elsewhere_even_with_rows():
    """At the profiles that ran (quick, full) every new claim reads not planned, with no numbers.
    The per-family claims do so even where the rows their measures read exist: they supersede
    pooled claims whose rows there were seen before they were written. The control claims read
    not planned where the control was not run (their rows would be scored, as any claim's:
    nothing of them was seen). At large the same rows are scored."""
    claims = sc.read_claims(sc.CLAIMS)
    new = claims[claims["id"].isin(LARGE_CLAIMS)]
    tables = {("early_stopping", p): two_family_checkpoints(p, seeds=(0, 1, 2))
              for p in ("quick", "full", "large")}
    zoo = zoo_with_control("full")
    without_control = zoo[~zoo["cell"].str.endswith(f"/{sc.CONTROL}")]
    tables |= {("method_zoo", p): without_control.assign(profile=p) for p in ("quick", "full")}
    tables[("method_zoo", "large")] = zoo_with_control("large")
    card = sc.score(new, tables).set_index(["claim", "profile"])
    for claim in LARGE_CLAIMS:
        for profile in ("full", "quick"):
            row = card.loc[(claim, profile)]
            assert (row["verdict"], row["n_seeds"], row["size_verdict"]) == (
                "not planned", 0, "not tested"), (claim, profile)
    large = card.xs("large", level="profile")
    assert large.loc["es-eskd-beats-full-plain", "verdict"] == "reproduced"  # +2 every seed
    assert large.loc["es-eskd-beats-full-plain", "effect"] == pytest.approx(2.0)
    assert large.loc["es-eskd-beats-full-resnet", "effect"] == pytest.approx(0.0)
    # -1, 0, +1 points: 0 ± 2.48, wider than the margin 0.8 on either side
    assert large.loc["es-eskd-beats-full-resnet", "verdict"] == "inconclusive"
    assert large.loc["mz-kd-vs-control", "verdict"] == "reproduced"
    assert large.loc["mz-fitnets-vs-control", "verdict"] == "contradicted"
    # planned, rows missing: the method zoo is cut from large by its budget (sc.BUDGET_RUNS)
    assert large.loc["mz-at-vs-control", "verdict"] == "cut"


def test_large_claims_leave_every_existing_verdict_as_it_was():
    """Scored on the committed results, the table with the new rows gives the existing claims
    exactly the rows the table without them gives, and every new row is not planned there."""
    claims = sc.read_claims(sc.CLAIMS)
    tables = sc.find_tables(REPO / "results", claims["study"].unique())
    with_new = sc.score(claims, tables)
    without = sc.score(claims[~claims["id"].isin(LARGE_CLAIMS)], tables)
    old = with_new[~with_new["claim"].isin(LARGE_CLAIMS)].reset_index(drop=True)
    pd.testing.assert_frame_equal(old, without)
    new = with_new[with_new["claim"].isin(LARGE_CLAIMS)]
    assert set(new.loc[new["profile"] != "large", "verdict"]) == {"not planned"}


def test_claims_the_budget_leaves_out_read_cut_and_the_rest_wait(monkeypatch):
    """``cut`` where large's budget runs neither the claim's study nor its family (the measure's
    argument); ``not run`` for a claim still to come; not planned and verdicts from rows first."""
    monkeypatch.setattr(sc, "BUDGET_RUNS", {"large": {"capacity_gap": ("resnet",)}})
    claim = lambda study, measure, planned_in="": pd.Series(
        {"study": study, "measure": measure, "planned_in": planned_in})
    resnet, plain = claim("capacity_gap", "cg_ta_gain:resnet"), claim("capacity_gap",
                                                                        "cg_ta_gain:plain")
    pooled, other = claim("capacity_gap", "cg_pooled"), claim("fidelity", "fid_gap")
    assert [sc.cut_at(c, "large") for c in (resnet, plain, pooled, other)] == [
        False, True, False, True]
    assert not sc.cut_at(other, "full") and not sc.cut_at(plain, "paper")
    assert sc.planned_verdict("not run", plain, "large") == "cut"
    assert sc.planned_verdict("not run", resnet, "large") == "not run"
    assert sc.planned_verdict("reproduced", plain, "large") == "reproduced"  # rows stand
    assert sc.planned_verdict("not run", claim("fidelity", "fid_gap", "full"),
                              "large") == "not planned"
    card = sc.score(sc.read_claims(sc.CLAIMS).head(3), {}, extra_profiles=sc.BUDGET_RUNS)
    assert set(card["profile"]) == {"large"}  # listed before any of its rows exist
    assert v.size(v.t_interval([]), "cut", 1.0, True) == "not tested"


def test_the_budget_runs_what_make_large_runs():
    """sc.BUDGET_RUNS names the studies of the Makefile's large loop, and the families their
    large plans hold (a claim of another family reads cut)."""
    from studies import capacity_gap, early_stopping

    loop = re.search(r"for study in ([\w ]+); do", (REPO / "Makefile").read_text().split(
        "\nlarge:", 1)[1]).group(1).split()
    assert sorted(loop) == sorted(sc.BUDGET_RUNS["large"])
    for study in (capacity_gap, early_stopping):
        name = study.__name__.rsplit(".", 1)[1]
        assert sc.BUDGET_RUNS["large"][name] == tuple(f.name for f in study.FAMILIES["large"])
