"""The generated documentation (studies/docs.py): the committed study pages and the README's
verdict block are exactly what the committed CSVs give, and the verdict table renders hand-made
scorecards, with and without the columns a later scorecard adds, as worked out by hand."""

import math

import pandas as pd
import pytest

from kd.experiment.cli import run_main
from kd.errors import ConfigError
from kd.experiment import verdict as rule
from studies import docs
from tests.conftest import REPO


def test_committed_docs_are_what_the_csvs_give(tmp_path):
    """`make docs` into a temporary folder writes, byte for byte, the committed docs/<study>.md,
    docs/speed.md and README.md: regenerating them changes nothing."""
    written = docs.generate(REPO, tmp_path, REPO / "results", REPO / "studies" / "claims.csv")
    assert sorted(p.name for p in written) == sorted([*(f"{s}.md" for s in docs.STUDIES),
                                                      "README.md", "speed.md", "recipe.md"])
    for path in written:
        committed = REPO / path.relative_to(tmp_path)
        assert path.read_bytes() == committed.read_bytes(), (
            f"{committed} is not what `make docs` writes from the CSVs: run `make docs`")
    again = docs.generate(REPO, tmp_path / "again", REPO / "results",
                          REPO / "studies" / "claims.csv")
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in written]


def test_readme_keeps_its_markers_and_stays_short():
    readme = (REPO / "README.md").read_text()
    for marker in (docs.BEGIN, docs.END, "<!-- example:begin -->", "<!-- example:end -->"):
        assert readme.count(marker) == 1, marker
    assert readme.index("## Two commands") < readme.index("## Use the library") \
        < readme.index(docs.BEGIN)
    assert len(readme.splitlines()) <= 300


# ----------------------------------------------------------------------------------------------
# The verdict table on hand-made scorecards

CLAIMS = pd.DataFrame({
    "id": ["a-gain", "a-null", "b-level"],
    "study": ["alpha", "alpha", "beta"],
    "claim": ["A gains.", "Nothing happens here.",
              "A very long claim whose text runs on well past the width the table allows for it."],
})


def scorecard(**extra) -> pd.DataFrame:
    rows = pd.DataFrame({
        "claim": ["a-gain", "a-gain", "a-null", "b-level", "b-level"],
        "study": ["alpha", "alpha", "alpha", "beta", "beta"],
        "profile": ["quick", "full", "full", "full", "paper"],
        "verdict": ["inconclusive", "reproduced", "absent", "contradicted", "not planned"],
    })
    return rows.assign(**extra)


def table_rows(text: str) -> list[list[str]]:
    lines = text.splitlines()[2:]  # below the header and its rule
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


def test_verdict_table_without_the_new_columns():
    rows = table_rows(docs.verdict_table(scorecard(), CLAIMS))
    assert [r[0] for r in rows] == ["`a-gain`", "`a-null`", "`b-level`"]  # claims.csv's order
    assert rows[0][1] == "[alpha](docs/alpha.md)"
    # sign verdict, then size and regime: "–" while the scorecard lacks those columns
    assert rows[0][3:] == ["✔ – –", "·", "·"]  # full, large (no rows), paper (no row)
    assert rows[1][3:] == ["~ – –", "·", "·"]
    assert rows[2][3:] == ["✘ – –", "·", "○"]  # not planned: the sign alone
    assert rows[0][2] == "A gains"  # the final full stop dropped


def test_verdict_table_with_the_new_columns():
    reduced = "reduced regime"
    card = scorecard(size_verdict=["", "agrees", "", "other data set", ""],
                     regime=[reduced, "paper regime", reduced, reduced, ""],
                     p_value=[0.3, 0.001, 0.6, 0.01, float("nan")])
    rows = table_rows(docs.verdict_table(card, CLAIMS))
    assert rows[0][3] == "✔ = P"
    assert rows[1][3] == "~ – R"  # no paper value: no size verdict
    assert rows[2][3] == "✘ d R"
    # Every value the scorecard writes, "not tested" included (a report, or fewer than 3 seeds):
    # it is no size verdict, never "differs".
    assert {v: docs.size_symbol(v) for v in rule.SIZE_VERDICTS} == {
        "agrees": "=", "differs": "≠", "other data set": "d",
        "no paper value": docs.DASH, "not tested": docs.DASH}
    assert docs.size_symbol(float("nan")) == docs.DASH
    assert docs.size_symbol("disagrees") == "?"  # not a scorecard value: shown as unknown
    assert [docs.regime_symbol(v) for v in ("paper regime", "reduced regime", "unknown", "paper")] \
        == ["P", "R", "u", "?"]


def test_a_report_without_a_size_verdict_shows_no_size_symbol():
    card = scorecard(size_verdict=["not tested"] * 5, regime=["reduced regime"] * 5,
                     p_value=[float("nan")] * 5)
    card["verdict"] = "report"
    rows = table_rows(docs.verdict_table(card, CLAIMS))
    assert {row[3] for row in rows} == {"r – R"}


def test_shortened_claims_fit_and_end_at_a_word():
    short = docs.shorten(CLAIMS["claim"][2], width=40)
    assert len(short) <= 40 and short.endswith("…")
    assert short == "A very long claim whose text runs on…"
    assert docs.shorten("Short.", width=40) == "Short"


def test_counts_per_profile_in_a_fixed_order():
    lines = docs.status_counts(scorecard(), ["quick", "full", "large", "paper"])
    assert lines == ["- `quick`: 1 inconclusive.",
                     "- `full`: 1 reproduced, 1 contradicted, 1 absent.",
                     "- `large`: not run.",
                     "- `paper`: 1 not planned."]
    sized = docs.status_counts(scorecard(size_verdict=["", "agrees", "", "differs", ""]), ["full"])
    assert sized == ["- `full`: 1 reproduced, 1 contradicted, 1 absent; size: 1 agrees, "
                     "1 differs."]


def test_wrong_calls_expected_by_chance():
    assert docs.DASH in docs.chance_lines(scorecard(), ["full"])[0]  # no p-values yet
    card = pd.concat([scorecard()] * 8, ignore_index=True)  # 24 full rows, 8 quick rows
    card["p_two_sided"] = 0.01  # the corrected family: the claims with this p
    card.loc[card["profile"] == "quick", "p_two_sided"] = [0.01] * 6 + [float("nan")] * 2
    card["verdict_adjusted"] = card["verdict"].where(card.index != 1, "inconclusive")
    lines = {line.split("`")[1]: line for line in docs.chance_lines(card, ["quick", "full"])}
    # 0.05 x 24 = 1.2 at full; 0.05 x 6 = 0.3 at quick; one full verdict changed
    assert lines["full"] == ("- `full`: 24 claims decided on 3 or more seeds, each at 95 %: 1.2 "
                             "wrong calls expected by chance alone; 1 verdict(s) change under "
                             "the Benjamini-Hochberg correction (`verdict_adjusted`).")
    assert "6 claims decided" in lines["quick"] and ": 0.3 wrong calls" in lines["quick"]
    assert "0 verdict(s)" in lines["quick"] and len(lines) == 2


def test_the_block_replaces_only_what_is_between_the_markers():
    readme = f"intro\n{docs.BEGIN}\nold table\n{docs.END}\noutro\n"
    block = f"{docs.BEGIN}\nnew\n{docs.END}"
    assert docs.replace_block(readme, block) == f"intro\n{block}\noutro\n"
    with pytest.raises(ConfigError):
        docs.replace_block("no markers here", block)
    with pytest.raises(ConfigError):
        docs.replace_block(f"{docs.END}\n{docs.BEGIN}\n", block)


def test_absent_verdicts_state_the_claims_own_margin():
    rows = pd.DataFrame({"claim": ["m"], "verdict": ["absent"], "ci_low": [-0.43],
                         "ci_high": [0.75], "reference": [0.0], "margin": [0.84],
                         "unit": ["points"]})
    assert docs.absent_lines(rows)[0] == ("- `m` is absent: its interval [-0.43, 0.75] lies "
                                          "inside 0.00 ± 0.84 points, the claim's margin "
                                          "(`studies/claims.csv`).")


def test_regime_table_reads_images_epochs_and_the_plateau_check_from_the_rows():
    rows = pd.DataFrame({
        "cell": ["teacher", "scratch", "kd"], "role": ["teacher", "student", "student"],
        "model": ["resnet8", "cnn2", "cnn2"], "train_n": [50000, 8000, 8000],
        "epochs": [40, 15, 15], "train_loss_plateau": [0.0685, math.nan, math.nan]})
    lines = docs.model_table(rows, "alpha_temperature").splitlines()[2:]
    assert lines == ["| student | cnn2 | 2 | cifar10 | 8,000 | 15 | – |",
                     "| teacher | resnet8 | 1 | cifar10 | 50,000 | 40 | 0.0685; plateaued "
                     "(< 0.05): 0 of 1 |"]


def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys):
    """No scorecard, or a README without the markers: one line naming the file, exit code 2,
    nothing written."""
    out = tmp_path / "out"
    code = run_main(docs.main, ["--results", str(tmp_path), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "scorecard.csv" in err
    assert not out.exists()
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (repo / "docs" / "intro").symlink_to(REPO / "docs" / "intro")
    (repo / "README.md").write_text("# no markers\n")
    code = run_main(docs.main, ["--repo", str(repo), "--results", str(REPO / "results"),
                                "--out", str(out)])
    assert code == 2 and "README.md needs one" in capsys.readouterr().err
    assert not out.exists()


def test_the_roofline_block_checks_issue_26s_targets_on_each_run(tmp_path):
    from studies import speed_docs

    assert "No roofline run" in speed_docs.speed_block(tmp_path)
    rows = []
    for model, fp32, bf16, auto, share in (("mlp 784-1200-1200-10", 100.0, 150.0, "bf16", 0.2),
                                           ("resnet20", 600.0, 1000.0, "bf16", 0.59),
                                           ("resnet32", 400.0, 300.0, "fp32", 0.30)):
        for precision, rate in (("fp32", fp32), ("bf16", bf16)):
            rows.append({"seed": 0, "model": model, "precision": precision, "images_per_s": rate,
                         "share_of_bf16_matmul": share, "matmul_gflops_per_s": 100.0,
                         "auto": auto, "bf16_speedup_measured": bf16 / fp32,
                         "hardware": "CPU (2 cores, 2 threads)", "batch_size": 128, "batches": 6,
                         "torch": "2.x", "git_commit": "abc", "finished_at": "2026-12-05T00",
                         "amx": False})
    (tmp_path / "bench").mkdir()
    pd.DataFrame(rows).to_csv(tmp_path / "bench" / "roofline.csv", index=False)
    block = speed_docs.speed_block(tmp_path)
    assert "| resnet20 | 600 (59%) | 1,000 (59%) | 1.67x | bf16 (1.67x) | 1.00x |" in block
    # auto picked fp32 for resnet32: 400 images/s against bf16's 300 = 1.33x the flags' choice
    assert "| resnet32 | 400 (30%) | 300 (30%) | 0.75x | fp32 (0.75x) | 1.33x |" in block
    assert "missed (resnet20 59%, resnet32 30%)" in block
    assert "No model slower under `auto` than under fp32: met." in block
    assert "resnet20 1.00x, resnet32 1.33x (missed)." in block


def test_verdict_changes_name_each_changed_claim_with_both_intervals():
    """full -> large: a changed verdict is listed with both intervals; an unchanged one, one not
    run at large and one without a full verdict are not; a per-family claim planned for large
    is compared with the pooled claim it supersedes."""
    from studies.docs import changes_lines, verdict_changes

    claims = pd.DataFrame({
        "id": ["a", "b", "c", "pooled", "per-family", "new"],
        "study": ["s"] * 6,
        "supersedes": [None, None, None, None, "pooled", None]})
    row = lambda claim, profile, verdict, effect: {
        "claim": claim, "study": "s", "profile": profile, "verdict": verdict, "effect": effect,
        "ci_low": effect - 1, "ci_high": effect + 1, "unit": "points"}
    scorecard = pd.DataFrame([
        row("a", "full", "reproduced", 6.58), row("a", "large", "contradicted", -0.5),
        row("b", "full", "reproduced", 2.0), row("b", "large", "reproduced", 1.0),
        row("c", "full", "reproduced", 2.0), row("c", "large", "not run", float("nan")),
        row("pooled", "full", "absent", 0.1), row("per-family", "large", "reproduced", 0.54),
        row("new", "large", "reproduced", 3.0)])
    changes = verdict_changes(scorecard, claims)
    assert changes["claim"].tolist() == ["`a`", "`per-family` (supersedes `pooled`)"]
    assert changes["full"].tolist() == ["reproduced: 6.58 [5.58, 7.58]",
                                        "absent: 0.10 [-0.90, 1.10]"]
    assert changes["large"].tolist() == ["contradicted: -0.50 [-1.50, 0.50]",
                                         "reproduced: 0.54 [-0.46, 1.54]"]
    assert changes_lines(scorecard[scorecard["claim"] == "b"], claims) == [
        "No verdict changed from `full` to `large`."]
    no_large = scorecard[scorecard["profile"] != "large"]
    assert changes_lines(no_large, claims) == ["No claim has a `large` verdict yet."]
    # large's rows before its results: claims waiting (not run) or cut by its budget
    waiting = pd.concat([no_large, pd.DataFrame([
        row("a", "large", "not run", float("nan")), row("b", "large", "cut", float("nan"))])])
    assert changes_lines(waiting, claims) == ["No claim has a `large` verdict yet."]
    assert changes_lines(waiting[waiting["claim"] != "a"], claims) == [
        "Cut from `large` by its budget: no `large` verdicts."]
    from studies.docs import change_count_line, verdict_cell
    assert change_count_line(waiting, claims).endswith(
        "no claim has a `large` verdict yet (`large` verdicts read the first 3 seeds to complete "
        "every cell of both studies, [rules, 5](docs/scorecard_rules.md): none is yet).")
    cut = waiting[(waiting["claim"] == "b") & (waiting["profile"] == "large")]
    assert verdict_cell(next(cut.itertuples())) == "✂"


def test_a_verdict_on_fewer_seeds_than_a_decision_needs_is_not_yet_a_change():
    """large lands seed by seed: after its first seed every claim reads inconclusive (fewer
    than MIN_SEEDS seeds). That is not a change from full; the lines say how many wait."""
    from kd.experiment.verdict import MIN_SEEDS
    from studies.docs import change_count_line, changes_lines, verdict_changes

    assert MIN_SEEDS == 3
    claims = pd.DataFrame({"id": ["a", "b"], "study": ["s"] * 2, "supersedes": [None] * 2})
    row = lambda claim, profile, verdict, n: {
        "claim": claim, "study": "s", "profile": profile, "verdict": verdict, "effect": 1.0,
        "ci_low": 0.5, "ci_high": 1.5, "unit": "points", "n_seeds": n}
    full = [row("a", "full", "reproduced", 5), row("b", "full", "reproduced", 5)]
    one_seed = pd.DataFrame(full + [row("a", "large", "inconclusive", 1),
                                    row("b", "large", "precondition not met", 1)])
    assert verdict_changes(one_seed, claims).empty
    assert changes_lines(one_seed, claims) == [
        "No `large` verdict on 3 or more seeds yet: 2 claim(s) have rows of fewer seeds, read "
        "inconclusive until the later seeds land."]
    assert change_count_line(one_seed, claims) == (
        "- From `full` to `large`: not compared yet: 2 claim(s) have `large` rows on fewer than "
        "3 seeds (inconclusive until the later seeds land; `large` verdicts read the first 3 "
        "seeds to complete every cell of both studies, [rules, 5](docs/scorecard_rules.md)).")
    # one claim decided on three seeds, the other still on two
    mixed = pd.DataFrame(full + [row("a", "large", "inconclusive", 3),
                                 row("b", "large", "inconclusive", 2)])
    assert verdict_changes(mixed, claims)["claim"].tolist() == ["`a`"]
    lines = changes_lines(mixed, claims)
    assert lines[-1] == ("1 claim(s) have `large` rows on fewer than 3 seeds, read inconclusive "
                         "until the later seeds land: not compared yet.") and lines[-2] == ""
    assert change_count_line(mixed, claims) == (
        "- From `full` to `large`: 1 sign verdict(s) changed, each named with both intervals on "
        "its study page; 1 more on fewer than 3 seeds so far (inconclusive until the later seeds "
        "land), not compared yet.")
    same = mixed.assign(verdict=["reproduced", "reproduced", "reproduced", "inconclusive"])
    assert changes_lines(same, claims) == [
        "No verdict changed from `full` to `large` among the claims decided on enough seeds. 1 "
        "claim(s) have `large` rows on fewer than 3 seeds, read inconclusive until the later "
        "seeds land: not compared yet."]


def test_training_minutes_count_each_trained_model_once_by_hand():
    """A teacher shared by two seeds (rows at seeds 0 and 1, teacher_seed 0), two students of
    their own, and two checkpoints of one teacher run (their run's time once): 100 + 10 + 20
    + 50 s = 3.0 min, where the rows' train_s alone would add to 230 s."""
    rows = pd.DataFrame({
        "cell": ["teacher/r32", "teacher/r32", "kd/r32/r8", "kd/r32/r8", "teacher/r14@7",
                 "teacher/r14@13"],
        "role": ["teacher", "teacher", "kd", "kd", "teacher_checkpoint", "teacher_checkpoint"],
        "model": ["r32", "r32", "r8", "r8", "r14", "r14"],
        "seed": [0, 1, 0, 1, 0, 0], "teacher_seed": [0, 0, 0, 0, 0, 0],
        "train_s": [100.0, 100.0, 10.0, 20.0, None, None],
        "run_train_s": [None, None, None, None, 50.0, 50.0]})
    assert docs.training_minutes(rows) == pytest.approx(3.0)
    # each seed its own teacher (large): both count
    own = rows.assign(teacher_seed=rows["seed"])
    assert docs.training_minutes(own) == pytest.approx(280 / 60)
    # a table that names its models by key: one per key, whatever the cells say
    keyed = rows.drop(columns="run_train_s").assign(model_key=["a", "a", "b", "c", "d", "d"])
    assert docs.training_minutes(keyed) == pytest.approx(130 / 60)
    assert docs.training_minutes(rows.drop(columns="train_s")) is None


def test_rows_of_two_precisions_or_machines_say_which_seed_ran_where():
    """A long run resumed on another CPU: the regime names each seed's precision and machine;
    rows of one precision on one machine add no line."""
    rows = pd.DataFrame({"seed": [0, 0, 1, 1], "precision": ["bf16", "bf16", "fp32", "bf16"],
                         "hardware": ["CPU X", "CPU X", "CPU Y", "CPU X"]})
    assert docs.machine_by_seed(rows) == [
        "- by seed: seed 0: 2 rows in bf16 on CPU X; seed 1: 1 row in bf16 on CPU X; "
        "seed 1: 1 row in fp32 on CPU Y"]
    assert docs.machine_by_seed(rows.iloc[:2]) == []
