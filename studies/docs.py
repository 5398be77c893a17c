"""The generated documentation: ``docs/<study>.md`` for every study and the README's verdict
table, from the CSVs alone (``results/<study>/<profile>.csv``, ``results/scorecard.csv``,
``studies/claims.csv``, ``studies/reference/*.csv``), so that no number in them is typed by hand.

Run ``python -m studies.docs`` (or ``make docs``). A study page is its hand-written design text
(``docs/intro/<study>.md``, no results in it) followed, per profile that has a results table, by
the regime of the run (data, training images, epochs, the teachers' plateau check, hardware,
seeds, wall time, commits: all read from the rows), the study's own ``--report`` text (the same
function the command line calls), its claims' verdicts from the scorecard and links to its
figures. The README's block between :data:`BEGIN` and :data:`END` is replaced by the compact
verdict table; the rest of the README is left as it is. The output is deterministic: running it
twice changes nothing (``tests/test_docs.py`` checks that the committed files are what it
writes).
"""

from __future__ import annotations

import argparse
import importlib
import math
import textwrap
from pathlib import Path

import pandas as pd

from kd.errors import ConfigError
from kd.experiment import verdict as rule
from kd.experiment.cli import OneLineErrorParser, report_text, run_main
from kd.experiment.results import ResultsTable, markdown_table
from kd.metrics import PLATEAU_DROP
from studies import regime, speed_docs, verdict_seeds
from studies.scorecard import CUT, NOT_PLANNED, SCORECARD, expected_false_calls, read_claims

STUDIES = ("hinton_mnist", "alpha_temperature", "capacity_gap", "early_stopping", "fidelity",
           "method_zoo")
PAGE_PROFILES = ("quick", "full", "large", "paper")  # the study pages, smallest first
TABLE_PROFILES = ("full", "large", "paper")  # the README's verdict table
BEGIN, END = "<!-- verdicts:begin -->", "<!-- verdicts:end -->"
DASH = "–"
# Scorecard columns that a later scorecard adds (size verdict, regime, multiplicity): shown as
# DASH while results/scorecard.csv lacks them.
NEW_COLUMNS = ("size_verdict", "regime", "regime_reason", "dataset", "paper_dataset",
               "student_train_n", "paper_student_train_n", "teacher_train_n",
               "paper_teacher_train_n", "epochs", "paper_epochs", "teacher_acc",
               "paper_teacher_acc", "scratch_acc", "paper_scratch_acc", "p_value", "p_two_sided", "p_adjusted",
               "verdict_adjusted")
SIGN = {"reproduced": "✔", "contradicted": "✘", "absent": "~", "inconclusive": "?",
        "precondition not met": "!", "not run": "·", NOT_PLANNED: "○", CUT: "✂", "report": "r"}
SIGN_ORDER = (*rule.VERDICTS, NOT_PLANNED, CUT)
# A study's data set where its rows have no `dataset` column (one data set per study).
STUDY_DATASET = {"hinton_mnist": "mnist", "alpha_temperature": "cifar10",
                 "method_zoo": "cifar10"}
CLAIM_WIDTH = 64  # characters of a claim's text in the README table


# ----------------------------------------------------------------------------------------------
# Small formatting helpers: one fixed format per kind of value, DASH for what is missing

def missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def text(value) -> str:
    return DASH if missing(value) else str(value)


def number(value, digits: int = 2) -> str:
    if missing(value):
        return DASH
    try:
        return f"{float(value):.{digits}f}"
    except ValueError:
        return str(value)


def count(value) -> str:
    """A count of images or epochs: ``50,000``; a string (several values) as it is."""
    if missing(value):
        return DASH
    try:
        return f"{int(float(value)):,}"
    except ValueError:
        return str(value)


def ours_paper(ours: str, paper: str) -> str:
    return f"{ours} / {paper}"


def shorten(claim: str, width: int = CLAIM_WIDTH) -> str:
    """``claim`` without its final full stop, cut at a word to at most ``width`` characters."""
    claim = claim.strip().rstrip(".")
    if len(claim) <= width:
        return claim
    return claim[:width - 1].rsplit(" ", 1)[0].rstrip(",;:") + "…"


def with_new_columns(scorecard: pd.DataFrame) -> pd.DataFrame:
    """``scorecard`` with every :data:`NEW_COLUMNS` column, empty where the CSV lacks it."""
    return scorecard.reindex(columns=[*scorecard.columns,
                                      *(c for c in NEW_COLUMNS if c not in scorecard.columns)])


# ----------------------------------------------------------------------------------------------
# The README's compact verdict table

# One symbol per value of ``kd.experiment.verdict.SIZE_VERDICTS``, matched whole: "not tested"
# once fell into a "not " substring test and read as "differs".
SIZE_SYMBOL = {"agrees": "=", "differs": "≠", "other data set": "d",
               "no paper value": DASH, "not tested": DASH}
REGIME_SYMBOL = {regime.PAPER: "P", regime.REDUCED: "R", regime.UNKNOWN: "u"}


def size_symbol(value) -> str:
    """``=`` the paper's value agrees with ours, ``≠`` it does not, ``d`` the paper used another
    data set, :data:`DASH` no size verdict (not tested, no paper value, or no column yet), ``?``
    a value the scorecard does not write."""
    if missing(value):
        return DASH
    return SIZE_SYMBOL.get(str(value).strip().lower(), "?")


def regime_symbol(value) -> str:
    """``P`` the paper's regime, ``R`` a reduced one (another data set included: its reason says
    so), ``u`` unknown (a value the regime rule needs is missing), :data:`DASH` none, ``?`` a
    value :mod:`studies.regime` does not write."""
    if missing(value):
        return DASH
    return REGIME_SYMBOL.get(str(value).strip().lower(), "?")


def verdict_cell(row) -> str:
    """One profile's cell of a claim: sign, size and regime symbols, or the sign alone where
    the claim did not run."""
    if row is None:
        return SIGN["not run"]
    sign = SIGN.get(row.verdict, "?")
    if row.verdict in ("not run", NOT_PLANNED, CUT):
        return sign
    return f"{sign} {size_symbol(row.size_verdict)} {regime_symbol(row.regime)}"


LEGEND = ("Each cell: the sign verdict, the size verdict and the regime. Sign: ✔ reproduced, "
          "✘ contradicted, ~ absent (a well-measured null), ? inconclusive, ! precondition not "
          "met, r reported without a claim, · not run, ○ not planned at that profile, ✂ cut "
          "from it by its budget (issue 28). Size: = the paper's value lies inside our interval "
          "(or its stated tolerance), ≠ it does not, d the paper used another data set. Regime: "
          "P the paper's, R reduced (another data set included), u unknown (a value the rule needs is missing; docs/scorecard_rules.md). "
          f"{DASH}: no value (no paper value, or not in `results/scorecard.csv` yet).")


def verdict_table(scorecard: pd.DataFrame, claims: pd.DataFrame,
                  profiles=TABLE_PROFILES, link: str = "docs/{study}.md") -> str:
    """One line per claim (in ``claims``' order): id, study, the claim shortened, and one cell
    per profile (:func:`verdict_cell`)."""
    scorecard = with_new_columns(scorecard)
    cells = {(r.claim, r.profile): r for r in scorecard.itertuples(index=False)}
    lines = []
    for claim in claims.itertuples(index=False):
        study = f"[{claim.study}]({link.format(study=claim.study)})"
        lines.append({"claim": f"`{claim.id}`", "study": study, "the claim": shorten(claim.claim),
                      **{p: verdict_cell(cells.get((claim.id, p))) for p in profiles}})
    frame = pd.DataFrame(lines, columns=["claim", "study", "the claim", *profiles])
    return "\n".join(markdown_table(frame))


def status_counts(scorecard: pd.DataFrame, profiles) -> list[str]:
    """One line per profile: how many claims have each sign verdict (and size verdict)."""
    scorecard = with_new_columns(scorecard)
    lines = []
    for profile in profiles:
        rows = scorecard[scorecard["profile"] == profile]
        if rows.empty:
            lines.append(f"- `{profile}`: not run.")
            continue
        signs = rows["verdict"].value_counts()
        order = [v for v in SIGN_ORDER if v in signs] + sorted(set(signs.index) - set(SIGN_ORDER))
        line = f"- `{profile}`: " + ", ".join(f"{signs[v]} {v}" for v in order)
        sizes = rows["size_verdict"].dropna().astype(str)
        sizes = sizes[sizes != ""].value_counts()
        if not sizes.empty:
            line += "; size: " + ", ".join(f"{sizes[v]} {v}" for v in sorted(sizes.index))
        lines.append(line + ".")
    return lines


def chance_lines(scorecard: pd.DataFrame, profiles) -> list[str]:
    """How many wrong calls chance alone would give at the rule's level, per profile, over the
    claims the scorecard's correction treats as one family (:func:`studies.scorecard.
    expected_false_calls`), and how many verdicts the correction changes."""
    if "p_two_sided" not in scorecard.columns:
        return [f"Wrong calls expected by chance: {DASH} (`results/scorecard.csv` has no "
                f"p-values yet)."]
    counts = expected_false_calls(with_new_columns(scorecard))
    lines = [f"- `{profile}`: {row.decided:.0f} claims decided on 3 or more seeds, each at "
             f"{rule.LEVEL * 100:g} %: {row.expected_false_calls:.1f} wrong calls expected by "
             f"chance alone; {row.changed_by_correction:.0f} verdict(s) change under the "
             f"Benjamini-Hochberg correction (`verdict_adjusted`)."
             for profile, row in counts.iterrows() if profile in profiles]
    return lines or [f"Wrong calls expected by chance: {DASH} (no claim has a p-value yet)."]


def scored(row) -> bool:
    return row is not None and row.verdict not in ("not run", NOT_PLANNED, CUT)


def interim(row) -> bool:
    """A verdict on fewer seeds than a decision needs (:data:`rule.MIN_SEEDS`): a run part-way,
    read inconclusive until its later seeds land, so not yet compared with another profile."""
    n = getattr(row, "n_seeds", None)
    return scored(row) and n is not None and not pd.isna(n) and n < rule.MIN_SEEDS


def verdict_counts(scorecard: pd.DataFrame, profile: str, claims: pd.DataFrame
                   ) -> tuple[int, int]:
    """How many of ``claims`` have a verdict at ``profile`` (not: not run, not planned, cut),
    and how many of those are :func:`interim`."""
    rows = list(rows_at(scorecard, profile, claims).itertuples(index=False))
    return sum(map(scored, rows)), sum(map(interim, rows))


def verdict_changes(scorecard: pd.DataFrame, claims: pd.DataFrame, before: str = "full",
                    after: str = "large") -> pd.DataFrame:
    """The claims whose sign verdict at ``after`` differs from that at ``before``, each with
    both intervals; an :func:`interim` verdict at ``after`` is not compared. A claim written
    for ``after`` that supersedes another (one per family where ``before`` pooled the families)
    is compared with the claim it supersedes."""
    cells = {(r.claim, r.profile): r for r in with_new_columns(scorecard).itertuples(index=False)}
    lines = []
    for claim in claims.itertuples(index=False):
        later = cells.get((claim.id, after))
        earlier_id = claim.id if scored(cells.get((claim.id, before))) else text(claim.supersedes)
        earlier = cells.get((earlier_id, before))
        if not (scored(later) and scored(earlier)) or interim(later) \
                or later.verdict == earlier.verdict:
            continue
        lines.append({"claim": f"`{claim.id}`" + (f" (supersedes `{earlier_id}`)"
                                                  if earlier_id != claim.id else ""),
                      before: f"{earlier.verdict}: "
                              f"{interval(earlier.effect, earlier.ci_low, earlier.ci_high)}",
                      after: f"{later.verdict}: "
                             f"{interval(later.effect, later.ci_low, later.ci_high)}",
                      "unit": text(later.unit)})
    return pd.DataFrame(lines, columns=["claim", before, after, "unit"])


def changes_lines(scorecard: pd.DataFrame, claims: pd.DataFrame, study: str | None = None,
                  before: str = "full", after: str = "large") -> list[str]:
    """A study's (or, with ``study`` None, every) claim whose verdict changed from ``before`` to
    ``after``, as a table, or one line saying there is none."""
    if study is not None:
        claims = claims[claims["study"] == study]
    changes = verdict_changes(scorecard, claims, before, after)
    verdicts = rows_at(scorecard, after, claims)["verdict"]
    if (verdicts == CUT).any() and verdicts.isin([CUT, NOT_PLANNED]).all():
        return [f"Cut from `{after}` by its budget: no `{after}` verdicts."]
    decided, waiting = verdict_counts(scorecard, after, claims)
    if not decided:
        return [f"No claim has a `{after}` verdict yet."]
    if waiting == decided:
        return [f"No `{after}` verdict on {rule.MIN_SEEDS} or more seeds yet: {waiting} claim(s) "
                f"have rows of fewer seeds, read inconclusive until the later seeds land."]
    note = ([f"{waiting} claim(s) have `{after}` rows on fewer than {rule.MIN_SEEDS} seeds, read "
             f"inconclusive until the later seeds land: not compared yet."] if waiting else [])
    if changes.empty:
        return [" ".join([f"No verdict changed from `{before}` to `{after}`"
                          + (" among the claims decided on enough seeds." if waiting else "."),
                          *note])]
    return markdown_table(changes) + ([""] + note if note else [])


def targets_line(large_rows: pd.DataFrame | None) -> str:
    """The large run's models against issue 28's accuracy targets (capacity gap's rows)."""
    from studies import recipe

    summary = recipe.target_summary(large_rows) if large_rows is not None else ""
    if not summary:
        return ("- `large` against issue 28's accuracy targets: no `large` rows yet; the "
                "recipes fall short on held-out images ([docs/recipe.md](docs/recipe.md)).")
    drops = large_rows["train_loss_plateau"].dropna() if "train_loss_plateau" in large_rows \
        else pd.Series(dtype=float)
    return (f"- `large` against issue 28's accuracy targets (final epoch, test set, mean over "
            f"seeds): {summary}; why: [docs/recipe.md](docs/recipe.md). Its training loss "
            f"plateaued (`kd.metrics.PLATEAU_DROP`) in {(drops < PLATEAU_DROP).sum()} of "
            f"{len(drops)} rows' models: the cosine recipes anneal to the last epoch.")


def progress_lines(progress: pd.DataFrame | None) -> list[str]:
    """How far ``make large`` has got, from its recorded progress (none recorded: no line)."""
    from studies import zoo_progress

    if progress is None or progress.empty:
        return []
    return [f"- `make large` so far (`python -m studies.zoo_progress --record`): "
            f"{zoo_progress.status_line(progress)}."]


def readme_block(scorecard: pd.DataFrame, claims: pd.DataFrame,
                 large_rows: pd.DataFrame | None = None,
                 progress: pd.DataFrame | None = None) -> str:
    """What goes between the README's markers (``large_rows``: capacity gap's, if any;
    ``progress``: the large run's recorded progress, if any)."""
    profiles = sorted(set(scorecard["profile"]) | set(TABLE_PROFILES),
                      key=lambda p: (PAGE_PROFILES.index(p) if p in PAGE_PROFILES
                                     else len(PAGE_PROFILES), p))
    return "\n".join([
        BEGIN,
        "<!-- generated by `make docs` (python -m studies.docs) from results/scorecard.csv and "
        "studies/claims.csv; do not edit by hand -->",
        "", textwrap.fill(LEGEND, 96), "", verdict_table(scorecard, claims), "",
        "Verdicts per profile (every claim, `quick` included):", "",
        *status_counts(scorecard, profiles), "", *chance_lines(scorecard, profiles),
        change_count_line(scorecard, claims), targets_line(large_rows),
        *progress_lines(progress), END])


def rows_at(scorecard: pd.DataFrame, profile: str, claims: pd.DataFrame) -> pd.DataFrame:
    return scorecard[(scorecard["profile"] == profile) & scorecard["claim"].isin(claims["id"])]


SEED_RULE = ("`large` verdicts read the first 3 seeds to complete every cell of both studies, "
             "[rules, 5](docs/scorecard_rules.md)")


def change_count_line(scorecard: pd.DataFrame, claims: pd.DataFrame) -> str:
    decided, waiting = verdict_counts(scorecard, "large", claims)
    if not decided:
        return (f"- From `full` to `large`: no claim has a `large` verdict yet ({SEED_RULE}: "
                f"none is yet).")
    changed = verdict_changes(scorecard, claims)
    if waiting == decided:
        return (f"- From `full` to `large`: not compared yet: {waiting} claim(s) have `large` "
                f"rows on fewer than {rule.MIN_SEEDS} seeds (inconclusive until the later seeds "
                f"land; {SEED_RULE}).")
    later = (f"; {waiting} more on fewer than {rule.MIN_SEEDS} seeds so far (inconclusive until "
             f"the later seeds land), not compared yet" if waiting else "")
    return (f"- From `full` to `large`: {len(changed)} sign verdict(s) changed, each named with "
            f"both intervals on its study page{later}.")


def replace_block(readme: str, block: str, begin: str = BEGIN, end: str = END,
                  name: str = "README.md") -> str:
    if readme.count(begin) != 1 or readme.count(end) != 1 or readme.index(begin) > readme.index(end):
        raise ConfigError(f"{name} needs one '{begin}' line and, after it, one '{end}' line")
    head, rest = readme.split(begin)
    return head + block + rest.split(end, 1)[1]


# ----------------------------------------------------------------------------------------------
# A study page

def row_roles(rows: pd.DataFrame) -> pd.Series:
    if "role" in rows:
        return rows["role"].astype(str)
    return rows["cell"].where(rows["cell"] == "teacher", "student")


def values(series: pd.Series, formatter=count) -> str:
    found = sorted(series.dropna().unique().tolist())
    return ", ".join(formatter(v) for v in found) if found else DASH


def plateau(series: pd.Series) -> str:
    """The teachers' relative drop of training loss over their last tenth of epochs, and how
    many plateaued (a drop below ``kd.metrics.PLATEAU_DROP``)."""
    found = series.dropna()
    if found.empty:
        return DASH
    flat = (found < PLATEAU_DROP).sum()
    spread = (f"{found.min():.4f}" if found.min() == found.max()
              else f"{found.min():.4f} to {found.max():.4f}")
    return f"{spread}; plateaued (< {PLATEAU_DROP:g}): {flat} of {len(found)}"


def model_table(rows: pd.DataFrame, study: str) -> str:
    """One line per role and model: rows, data set, training images, epochs, and for teachers
    whether their training loss plateaued."""
    frame = rows.assign(role_=row_roles(rows))
    if "dataset" not in frame:
        frame["dataset"] = STUDY_DATASET.get(study)
    images = "train_n" if "train_n" in frame else "transfer_n"
    drop = frame["train_loss_plateau"] if "train_loss_plateau" in frame else pd.Series(
        float("nan"), index=frame.index)
    if "run_train_loss_plateau" in frame:  # checkpoints: their run's plateau
        drop = drop.fillna(frame["run_train_loss_plateau"])
    frame["drop_"] = drop.where(frame["role_"].str.startswith("teacher"))
    # One teacher can have several rows (shared by the seeds, or one per checkpoint): its
    # plateau is counted once, per trained model.
    model_id = next(c for c in ("model_key", "teacher_seed", "seed", "cell") if c in frame)
    out = []
    for (role, model), group in frame.groupby(["role_", "model"], sort=True):
        trained = group.drop_duplicates(model_id)["drop_"]
        out.append([role, model, len(group), values(group["dataset"], str),
                    values(group[images]), values(group["epochs"]), plateau(trained)])
    if "teacher_train_n" in frame:  # teachers that are no rows of their own (method_zoo)
        teachers = frame.drop_duplicates(["teacher", "teacher_seed"])
        for teacher, group in teachers.groupby("teacher", sort=True):
            out.append(["teacher (from the students' rows)", teacher, len(group),
                        values(group["dataset"], str), values(group["teacher_train_n"]), DASH,
                        plateau(group.get("teacher_train_loss_plateau", pd.Series(dtype=float)))])
    table = pd.DataFrame(out, columns=["role", "model", "rows", "data", "training images",
                                       "epochs", "teachers: loss drop over the last tenth "
                                                 "(per trained model)"])
    return "\n".join(markdown_table(table))


def training_minutes(rows: pd.DataFrame) -> float | None:
    """Minutes the rows' models took to train (``train_s``, kept with each model when it
    trained), each trained model once: a teacher that a profile's seeds share has a row per
    seed (told apart by ``teacher_seed``), and early stopping's checkpoint rows share their
    run's ``run_train_s``. None for a table without ``train_s``."""
    if "train_s" not in rows:
        return None
    seconds, model = rows["train_s"], rows["cell"].astype(str)
    if "run_train_s" in rows:
        run = seconds.isna() & rows["run_train_s"].notna()
        seconds = seconds.fillna(rows["run_train_s"])
        model = model.where(~run, "run of " + rows["model"].astype(str))
    teacher = row_roles(rows).str.startswith("teacher")
    seed = rows["teacher_seed"].where(teacher, rows["seed"]) if "teacher_seed" in rows \
        else rows["seed"]
    identity = rows[["model_key"]] if "model_key" in rows else pd.DataFrame(
        {"model": model, "seed": seed})
    return float(seconds[~identity.duplicated()].sum() / 60)


def run_lines(rows: pd.DataFrame) -> list[str]:
    """Hardware, device and precision, seeds, wall time and commits of a table's rows."""
    minutes, trained = rows["wall_s"].sum() / 60, training_minutes(rows)
    wall = f"- wall time: {minutes:.1f} min of training and evaluation summed over the rows"
    if trained is not None:
        wall += (f"; the models' own training: {trained:.1f} min, each trained model once "
                 f"(its `train_s`, also where it trained before its row: for another study, "
                 f"in a lockstep pre-pass, or on another machine)")
    return [f"- seed values in the rows: {values(rows['seed'], lambda s: str(int(s)))}",
            f"- hardware: {values(rows['hardware'], str)}; device {values(rows['device'], str)}; "
            f"precision {values(rows['precision'], str)}; torch {values(rows['torch'], str)}",
            *machine_by_seed(rows), wall,
            f"- git commits: {values(rows['git_commit'].astype(str), str)}"]


def machine_by_seed(rows: pd.DataFrame) -> list[str]:
    """Where a table's rows ran in more than one precision or on more than one machine (a long
    run resumed on another CPU), which seed's rows ran where: one line, else none."""
    where = rows[["seed", "precision", "hardware"]].astype(str)
    if len(where[["precision", "hardware"]].drop_duplicates()) < 2:
        return []
    groups = where.groupby(["seed", "precision", "hardware"], sort=True).size()
    return ["- by seed: " + "; ".join(
        f"seed {seed}: {n} row{'s' if n > 1 else ''} in {precision} on {hardware}"
        for (seed, precision, hardware), n in groups.items())]


def claim_tables(scorecard: pd.DataFrame, study: str, profile: str) -> list[str]:
    """The study's claims at one profile: verdicts with intervals, then the regime each verdict
    was decided in against the paper's."""
    rows = with_new_columns(scorecard)
    rows = rows[(rows["study"] == study) & (rows["profile"] == profile)]
    if rows.empty:
        return ["No claim of this study is scored at this profile."]
    has_precondition = rows.get("precondition_status", pd.Series(dtype=object)).notna().any()
    verdicts, regimes = [], []
    for r in rows.itertuples(index=False):
        verdicts.append([f"`{r.claim}`", r.verdict, int(r.n_seeds),
                         interval(r.effect, r.ci_low, r.ci_high), text(r.unit),
                         number(r.margin), number(r.paper_value), text(r.size_verdict),
                         number(r.p_value, 4), number(r.p_adjusted, 4),
                         text(r.verdict_adjusted)]
                        + ([precondition(r)] if has_precondition else []))
        regimes.append([f"`{r.claim}`", ours_paper(text(r.dataset), text(r.paper_dataset)),
                        ours_paper(count(r.student_train_n), count(r.paper_student_train_n)),
                        ours_paper(count(r.teacher_train_n), count(r.paper_teacher_train_n)),
                        ours_paper(count(r.epochs), count(r.paper_epochs)),
                        ours_paper(number(r.teacher_acc), number(r.paper_teacher_acc)),
                        ours_paper(number(r.scratch_acc), number(r.paper_scratch_acc)),
                        text(r.regime), text(r.regime_reason)])
    verdicts = pd.DataFrame(verdicts, columns=[
        "claim", "verdict", "seeds", "effect [95 % interval]", "unit", "margin", "paper's value",
        "size", "p", "p adjusted", "adjusted verdict",
        *(["precondition [interval, basis]"] if has_precondition else [])])
    regimes = pd.DataFrame(regimes, columns=[
        "claim", "data (ours / paper)", "student images", "teacher images", "epochs",
        "teacher accuracy", "scratch accuracy", "regime", "why"])
    return [*markdown_table(verdicts), "", *absent_lines(rows), "The regime each verdict was "
            "decided in (ours / the paper's):", "", *markdown_table(regimes)]


def interval(mean, low, high) -> str:
    if missing(mean):
        return DASH
    return number(mean) if missing(low) else f"{number(mean)} [{number(low)}, {number(high)}]"


def precondition(r) -> str:
    """``met: 2.33 [1.27, 3.39], test images`` (the claim's precondition at this profile)."""
    if missing(r.precondition_status):
        return DASH
    if missing(r.precondition_effect):
        return str(r.precondition_status)
    value = interval(r.precondition_effect, r.precondition_ci_low, r.precondition_ci_high)
    return f"{r.precondition_status}: {value}, {text(r.precondition_basis)}"


def absent_lines(rows: pd.DataFrame) -> list[str]:
    """What an ``absent`` verdict means for each such claim, in its own margin."""
    lines = [f"- `{r.claim}` is absent: its interval [{number(r.ci_low)}, {number(r.ci_high)}] "
             f"lies inside {number(r.reference)} ± {number(r.margin)} {r.unit}, the claim's "
             f"margin (`studies/claims.csv`)." for r in rows.itertuples(index=False)
             if r.verdict == "absent"]
    return [*lines, ""] if lines else []


def claims_list(claims: pd.DataFrame, study: str) -> str:
    rows = claims[claims["study"] == study]
    test = {">": "> {r:g}", "<": "< {r:g}", "=": "{r:g} ± {m:g}", "report": "(reported)"}
    frame = pd.DataFrame(
        [[f"`{c.id}`", c.claim, f"{test[c.direction].format(r=c.reference, m=c.margin)} {c.unit}",
          number(c.margin), number(c.paper_value), text(c.paper_value_note), text(c.paper)]
         for c in rows.itertuples(index=False)],
        columns=["claim", "what it says", "test", "margin", "paper's value",
                 "paper's value and margin, why", "paper"])
    return "\n".join(markdown_table(frame))


def figures(study: str, figures_dir: Path) -> list[str]:
    names = sorted({p.name for pattern in (f"{study}.png", f"{study}_*.png")
                    for p in figures_dir.glob(pattern)} | {f"scorecard_{study}.png"})
    return [f"![{name[:-4]}](../figures/{name})" for name in names]


def profile_section(study: str, profile: str, results: Path, scorecard: pd.DataFrame) -> list[str]:
    table = ResultsTable(study, profile, results)
    rows = table.read_or_fail()
    module = importlib.import_module(f"studies.{study}")
    return [f"## Profile `{profile}` (`results/{study}/{profile}.csv`)", "",
            "### Regime", "", *run_lines(rows), "", model_table(rows, study), "",
            f"### Paper vs ours (`python -m studies.{study} --profile {profile} --report`)", "",
            report_text(table, module.report, verdict_seeds.rows_read), "",
            "### Claims (`results/scorecard.csv`)", "", *claim_tables(scorecard, study, profile),
            ""]


def study_page(study: str, repo: Path, results: Path, scorecard: pd.DataFrame,
               claims: pd.DataFrame) -> str:
    intro_path = repo / "docs" / "intro" / f"{study}.md"
    if not intro_path.is_file():
        raise ConfigError(f"no {intro_path}: each study page starts from its hand-written intro")
    intro = intro_path.read_text().strip()
    present = [p for p in PAGE_PROFILES if ResultsTable(study, p, results).path.exists()]
    lines = [f"# `{study}` (`studies/{study}.py`)", "",
             "<!-- generated by `make docs` (python -m studies.docs) from the CSVs and "
             f"docs/intro/{study}.md; do not edit by hand -->", "", intro, "",
             textwrap.fill(
             f"Profiles with results: {', '.join(f'`{p}`' for p in present) or 'none'}; "
             f"not run: {', '.join(f'`{p}`' for p in PAGE_PROFILES if p not in present) or 'none'}. "
             f"A teacher counts as trained to a plateau when its mean training loss over the "
             f"last tenth of its epochs is less than {PLATEAU_DROP * 100:g} % below that of the "
             f"tenth before (`kd.metrics.PLATEAU_DROP` = {PLATEAU_DROP:g}; the relative drop "
             f"is `train_loss_plateau` in its row, shown in the regime tables). Earlier readings "
             f"of these results, with the numbers of their time and the commits they came from, "
             f"are in [history](history.md).", 96), "",
             "## Claims (`studies/claims.csv`)", "", claims_list(claims, study), "",
             "## Verdicts that changed from `full` to `large`", "",
             *changes_lines(scorecard, claims, study), ""]
    for profile in present:
        lines += profile_section(study, profile, results, scorecard)
    lines += ["## Figures", "", *figures(study, repo / "figures"), ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Everything

def recipe_page(results: Path) -> str:
    """docs/recipe.md: the rule of :mod:`studies.recipe` (its docstring) and, per profile it
    has run, its ``--report`` text."""
    from studies import recipe

    lines = ["# The `large` profiles' training recipe (`studies/recipe.py`)", "",
             "<!-- generated by `make docs` from results/recipe/*.csv; do not edit by hand -->",
             "", *recipe.__doc__.strip().split("\n\n", 1)[1].rsplit("\n\n", 1)[0].splitlines(),
             "", f"Pinned in `LARGE_RECIPES`: {recipe.LARGE_RECIPES}.", ""]
    for name in recipe.PROFILES:
        path = results / "recipe" / f"{name}.csv"
        if name != "smoke" and path.exists():
            lines += ["```", recipe.report(pd.read_csv(path), recipe.PROFILES[name]), "```", ""]
    return "\n".join(lines)


def generate(repo: Path, out: Path, results: Path, claims_path: Path | None = None) -> list[Path]:
    """Write ``<out>/docs/<study>.md``, ``<out>/README.md`` (``<repo>/README.md`` with its
    verdict block regenerated) and ``<out>/docs/speed.md`` (its roofline block regenerated,
    :mod:`studies.speed_docs`); return the paths written."""
    claims = read_claims(claims_path)
    scorecard_path = results / SCORECARD
    if not scorecard_path.exists():
        raise ConfigError(f"no {scorecard_path}: run `make scorecard` first")
    scorecard = pd.read_csv(scorecard_path, dtype={"planned_in": str})
    texts = {out / "docs" / f"{study}.md": study_page(study, repo, results, scorecard, claims)
             for study in STUDIES}
    from studies import zoo_progress

    large = ResultsTable("capacity_gap", "large", results).read()
    progress = ResultsTable(zoo_progress.STUDY, "large", results).read()
    texts[out / "README.md"] = replace_block(
        (repo / "README.md").read_text(),
        readme_block(scorecard, claims, None if large.empty else large, progress))
    texts[out / "docs" / "recipe.md"] = recipe_page(results)
    texts[out / "docs" / "speed.md"] = replace_block(
        (repo / "docs" / "speed.md").read_text(), speed_docs.speed_block(results),
        speed_docs.BEGIN, speed_docs.END, "docs/speed.md")
    (out / "docs").mkdir(parents=True, exist_ok=True)  # only once every text is made
    for path, content in texts.items():
        path.write_text(content)
    return list(texts)


def main(argv: list[str] | None = None) -> list[Path]:
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default=".", help="where docs/ and README.md are written")
    parser.add_argument("--repo", default=".", help="the checkout: README.md, docs/intro, figures")
    parser.add_argument("--results", default="results", help="results root")
    parser.add_argument("--claims", default=None, help="the claims table (default "
                                                       "studies/claims.csv)")
    args = parser.parse_args(argv)
    written = generate(Path(args.repo), Path(args.out), Path(args.results), args.claims)
    print("\n".join(str(p) for p in written))
    return written


if __name__ == "__main__":
    raise SystemExit(run_main(main))
