"""The reproduction scorecard: one verdict per claim and profile, from every study's CSVs.

The claims are data, in ``studies/claims.csv`` (one row per claim: the study, the paper, the
claim in one sentence, the quantity that tests it, its ``measure`` here, the claimed direction,
the reference and margin or tolerance, the paper's value, and an optional precondition). This
module only turns a study's rows into one number per seed for each ``measure`` (the functions
registered below, one per kind of quantity) and hands them to :mod:`kd.experiment.verdict`, whose
rule decides. A measure spec is ``name`` or ``name:arg1,arg2``; the arguments are strings.

Run ``python -m studies.scorecard`` (or ``make scorecard``): it reads
``<results>/<study>/<profile>.csv`` for every study and profile found (profiles ordered paper,
full, quick, then the rest) and writes ``<results>/scorecard.csv`` and
``<figures>/scorecard_matrix.png`` (the verdict matrix) and ``<figures>/scorecard_<study>.png``
(one forest plot per study; :mod:`studies.scorecard_figures`); ``--markdown`` also prints the
table of every verdict (the README's is made by :mod:`studies.docs`). :func:`study_verdicts` gives a study's verdicts to its notebook.

Beside the sign verdict (``verdict``, :mod:`kd.experiment.verdict`), by rules fixed in
``docs/scorecard_rules.md`` before any of them was computed:

* **size** (``size_verdict``): *not tested* (no sign verdict was reached on 3+ seeds, or
  ``report``), else *no paper value*, else *other data set* (``paper_dataset`` in ``claims.csv``
  is not our rows' data set; empty is not a match), else *agrees* when
  ``ci_low − tol ≤ paper_value ≤ ci_high + tol`` (``tol`` = the claim's ``size_tolerance``, empty
  = 0), else *differs*.
* **regime** (``regime``, ``regime_reason``, ``dataset``, ``student_train_n``, ``teacher_train_n``,
  ``epochs``, ``teacher_acc``, ``scratch_acc`` and their ``paper_*`` values from
  ``studies/reference/regimes.csv``): *reduced regime* when any recorded condition fails (another
  data set; a student or teacher on fewer images than the paper's recorded number, else the whole
  training set, unless the paper's students used a subset by design; on the same data set, teacher
  or scratch-student accuracy more than 2 points from the paper's), *paper regime* when all hold and
  are known, else *unknown*; empty without rows.
* **multiplicity** (``p_value``, ``p_adjusted``, ``verdict_adjusted``): the one-sided p of the
  claim's direction from the interval's own t statistic; Benjamini–Hochberg over the two-sided p
  (2·min of the claim's and the contradicting side's one-sided p) of every claim decided on 3+ seeds
  at the profile; a reproduced or contradicted verdict whose adjusted p is ≥ 0.05 becomes
  *inconclusive (after correction)*. Expected false calls = 0.05 × claims decided, per profile.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from kd.errors import ConfigError
from kd.experiment import verdict as rule
from kd.experiment.cli import OneLineErrorParser, run_main
from kd.experiment.results import markdown_table, results_root
from studies import regime
from studies import scorecard_figures as figures
from studies import verdict_seeds

CLAIMS = Path(__file__).with_name("claims.csv")
REPO = Path(__file__).resolve().parents[1]  # notebooks run in notebooks/
PROFILE_ORDER = ("paper", "large", "full", "quick")
KNOWN_PROFILES = (*PROFILE_ORDER, "smoke")  # what a claim's planned_in may name
SCORECARD = "scorecard.csv"
FIGURE = "scorecard_matrix.png"
STUDY_FIGURE = "scorecard_{study}.png"


# ----------------------------------------------------------------------------------------------
# A study's rows, seed by seed

class Rows:
    """One study's rows for one profile. Every cell a measure asks for is remembered, so the
    scorecard row can name the commits and hardware of the rows it was computed from."""

    def __init__(self, frame: pd.DataFrame | None):
        self.frame = frame if frame is not None else pd.DataFrame(columns=["cell", "seed"])
        self.used: set[str] = set()

    def names(self, pattern: str = ".*") -> list[str]:
        """The cells whose whole name matches the regular expression, in the table's order."""
        return [c for c in dict.fromkeys(self.frame["cell"].astype(str))
                if re.fullmatch(pattern, c)]

    def has(self, cell: str) -> bool:
        return bool((self.frame["cell"] == cell).any())

    def value(self, cell: str, column: str, scale: float = 1.0) -> pd.Series:
        """``column`` of ``cell`` by seed, times ``scale`` (empty when the cell is missing)."""
        self.used.add(cell)
        rows = self.frame[self.frame["cell"] == cell]
        if rows.empty or column not in rows:
            return pd.Series(dtype=float)
        return rows.set_index(rows["seed"].astype(int))[column].astype(float) * scale

    def shares_teachers(self) -> bool:
        """One teacher per architecture for every seed: some seed's rows name another seed's
        teacher (``teacher_seed``), so the teacher cells repeat one model's numbers."""
        if "teacher_seed" not in self.frame:
            return False
        known = self.frame.dropna(subset=["teacher_seed"])
        return bool((known["teacher_seed"].astype(int) != known["seed"].astype(int)).any())

    def percent(self, cell: str, column: str = "test_accuracy") -> pd.Series:
        """A fraction column (accuracy, agreement) in %."""
        return self.value(cell, column, 100.0)

    def where(self, **equal) -> pd.DataFrame:
        mask = pd.Series(True, index=self.frame.index)
        for column, value in equal.items():
            if column not in self.frame:
                return self.frame.iloc[0:0]
            mask &= self.frame[column] == value
        return self.frame[mask]

    def provenance(self) -> dict:
        rows = self.frame[self.frame["cell"].isin(self.used)]
        join = lambda column: ("; ".join(sorted(rows[column].dropna().astype(str).unique()))
                               if column in rows else "")
        return {"git_commits": join("git_commit"), "hardware": join("hardware")}


def per_seed_mean(parts: list[pd.Series]) -> pd.Series:
    """The mean of several per-seed series, NaN for a seed that one of them lacks."""
    if not parts:
        return pd.Series(dtype=float)
    return pd.concat(parts, axis=1).mean(axis=1, skipna=False)


def per_seed(parts: list[pd.Series], how: str) -> pd.Series:
    """min / max of several per-seed series, NaN for a seed that one of them lacks."""
    if not parts:
        return pd.Series(dtype=float)
    frame = pd.concat(parts, axis=1)
    return getattr(frame, how)(axis=1, skipna=False)


# ----------------------------------------------------------------------------------------------
# Measures: rows -> one number per seed

MEASURES: dict[str, Callable[..., pd.Series]] = {}


def measure(function: Callable[..., pd.Series]) -> Callable[..., pd.Series]:
    MEASURES[function.__name__] = function
    return function


def parse_measure(spec: str) -> tuple[str, list[str]]:
    """A measure spec (``name`` or ``name:arg,...``) as its name and arguments."""
    name, _, args = str(spec).partition(":")
    return name, args.split(",") if args else []


def evaluate(spec: str, rows: Rows) -> pd.Series | rule.Interval:
    """The per-seed values of a measure spec (:func:`parse_measure`), NaNs dropped; or the
    interval a measure of models shared by every seed computes itself."""
    name, args = parse_measure(spec)
    if name not in MEASURES:
        raise ConfigError(f"measure {name!r} in {CLAIMS.name} is not registered in "
                          f"studies.scorecard (known: {', '.join(sorted(MEASURES))})")
    values = MEASURES[name](rows, *args)
    if isinstance(values, rule.Interval):
        return values
    return values.astype(float).replace([np.inf, -np.inf], np.nan).dropna().sort_index()


def interval_of(values: pd.Series | rule.Interval) -> rule.Interval:
    return values if isinstance(values, rule.Interval) else rule.t_interval(values)


def temperatures(rows: Rows, width: str) -> dict[float, str]:
    """Hinton: the distilled ``<width>x2/T<T>`` cells by temperature."""
    found = {}
    for cell in rows.names(rf"{width}x2/T([0-9.]+)"):
        found[float(cell.split("/T", 1)[1])] = cell
    return dict(sorted(found.items()))


@measure
def hinton_distill_gain(rows: Rows, width: str, temperature: str) -> pd.Series:
    """errors(<w>x2/hard) − errors(<w>x2/T<T>)."""
    return (rows.value(f"{width}x2/hard", "test_errors")
            - rows.value(f"{width}x2/T{float(temperature):g}", "test_errors"))


@measure
def hinton_spread_above(rows: Rows, width: str, lowest: str) -> pd.Series:
    """max − min test errors over the distilled students with T ≥ ``lowest``."""
    cells = [c for t, c in temperatures(rows, width).items() if t >= float(lowest)]
    if len(cells) < 2:
        return pd.Series(dtype=float)
    errors = [rows.value(c, "test_errors") for c in cells]
    return per_seed(errors, "max") - per_seed(errors, "min")


@measure
def hinton_band_advantage(rows: Rows, width: str, low: str, high: str) -> pd.Series:
    """min(mean errors below the band, mean errors above it) − mean errors inside it."""
    by_t = temperatures(rows, width)
    groups = [[c for t, c in by_t.items() if test(t)] for test in (
        lambda t: t < float(low), lambda t: float(low) <= t <= float(high),
        lambda t: t > float(high))]
    if not all(groups):
        return pd.Series(dtype=float)
    below, inside, above = (per_seed_mean([rows.value(c, "test_errors") for c in g])
                            for g in groups)
    return per_seed([below, above], "min") - inside


@measure
def hinton_class_accuracy(rows: Rows, cell: str) -> pd.Series:
    """% of the omitted class's test images right, before any shift."""
    errors = rows.value(cell, "shifted_class_errors")
    return 100 * (1 - errors / rows.value(cell, "shifted_class_n"))


@measure
def hinton_recovered(rows: Rows, cell: str) -> pd.Series:
    """% of the errors on the omitted class removed by the paper's bias shift."""
    before = rows.value(cell, "shifted_class_errors")
    return 100 * (before - rows.value(cell, "shifted_class_errors_shift_paper")) / before


@measure
def hinton_shifted_error_pct(rows: Rows, cell: str) -> pd.Series:
    """Test error % after the paper's bias shift."""
    return rows.value(cell, "test_error_pct_shift_paper")


@measure
def at_diff(rows: Rows, cell: str, baseline: str) -> pd.Series:
    """Test accuracy % of ``cell`` − ``baseline``."""
    return rows.percent(cell) - rows.percent(baseline)


@measure
def at_t2_agreement(rows: Rows) -> pd.Series:
    """Mean over α of test agreement % with T² − without, at the grid's highest T."""
    grid = {}
    for cell in rows.names(r"a[0-9.]+_T[0-9.]+_(t2|no_t2)"):
        alpha, temp, kind = re.fullmatch(r"a([0-9.]+)_T([0-9.]+)_(t2|no_t2)", cell).groups()
        grid.setdefault((float(temp), alpha), set()).add(kind)
    both = [key for key, kinds in grid.items() if kinds == {"t2", "no_t2"}]
    if not both:
        return pd.Series(dtype=float)
    top = max(t for t, _ in both)
    return per_seed_mean([
        rows.percent(f"a{a}_T{t:g}_t2", "test_agreement")
        - rows.percent(f"a{a}_T{t:g}_no_t2", "test_agreement") for t, a in both if t == top])


def family_teachers(rows: Rows, family: str, role: str = "teacher") -> list[str]:
    """The family's teacher architectures by growing parameter count."""
    teachers = rows.where(family=family, role=role)
    if teachers.empty:
        return []
    arch = "model" if role == "teacher" else "teacher"
    return list(teachers.groupby(arch)["params"].first().sort_values().index)


def family_student(rows: Rows, family: str) -> str | None:
    scratch = rows.where(family=family, role="scratch")
    return None if scratch.empty else str(scratch["model"].iloc[0])


@measure
def cg_teacher_rise(rows: Rows, family: str) -> pd.Series | rule.Interval:
    """The smallest step in test accuracy % between consecutive teachers by size: per seed, or,
    when every seed shares one teacher per architecture, once, with the test set's sampling
    interval (:func:`kd.experiment.verdict.accuracy_step`): the same teacher counted once per seed
    would give an interval of width zero."""
    teachers = family_teachers(rows, family)
    if len(teachers) < 2:
        return pd.Series(dtype=float)
    acc = [rows.percent(f"teacher/{t}") for t in teachers]
    if rows.shares_teachers():
        n_test = min(int(rows.value(f"teacher/{t}", "test_n").min()) for t in teachers)
        return rule.accuracy_step([a.iloc[0] / 100 for a in acc], n_test)
    return per_seed([b - a for a, b in zip(acc, acc[1:])], "min")


@measure
def cg_top_step(rows: Rows, family: str) -> pd.Series:
    """Student of the largest teacher − student of the second-largest (test accuracy %)."""
    teachers, student = family_teachers(rows, family), family_student(rows, family)
    if len(teachers) < 2 or student is None:
        return pd.Series(dtype=float)
    return (rows.percent(f"kd/{teachers[-1]}/{student}")
            - rows.percent(f"kd/{teachers[-2]}/{student}"))


@measure
def cg_ta_gain(rows: Rows, family: str) -> pd.Series:
    """Mean over the assistants of the largest teacher: student via the assistant − direct."""
    teachers, student = family_teachers(rows, family), family_student(rows, family)
    if not teachers or student is None:
        return pd.Series(dtype=float)
    largest = teachers[-1]
    chains = rows.names(rf"kd/{re.escape(largest)}/[^/]+/{re.escape(student)}")
    direct = rows.percent(f"kd/{largest}/{student}")
    return per_seed_mean([rows.percent(c) - direct for c in chains])


def checkpoint_students(rows: Rows, teacher: str) -> dict[int, str]:
    """Early stopping: the ``kd/<teacher>@<epoch>/<student>`` cells by teacher epoch."""
    found = {}
    for cell in rows.names(rf"kd/{re.escape(teacher)}@([0-9]+)/[^/]+"):
        found[int(cell.split("@", 1)[1].split("/", 1)[0])] = cell
    return dict(sorted(found.items()))


def kd_teachers(rows: Rows, family: str = "") -> list[str]:
    """The teachers of the full-KD students, of one family when ``family`` is given."""
    kd = rows.where(role="kd", **({"family": family} if family else {}))
    return [] if kd.empty else list(dict.fromkeys(kd["teacher"].astype(str)))


def first_drop(rows: Rows, cell: str) -> float:
    """The schedule's first learning-rate drop (``step (5, 8)`` → 5), else half its epochs."""
    row = rows.frame[rows.frame["cell"] == cell].iloc[0]
    drops = re.findall(r"[0-9]+", str(row.get("schedule", "")).partition("(")[2])
    return float(drops[0]) if drops else float(row["epochs"]) / 2


@measure
def es_eskd_gain(rows: Rows, family: str = "") -> pd.Series:
    """Mean over teachers (of ``family``, else every family): ESKD student − full-KD student of
    the final checkpoint."""
    parts = []
    for teacher in kd_teachers(rows, family):
        by_epoch = checkpoint_students(rows, teacher)
        eskd = rows.names(rf"eskd/{re.escape(teacher)}/[^/]+")
        if by_epoch and eskd:
            parts.append(rows.percent(eskd[0]) - rows.percent(by_epoch[max(by_epoch)]))
    return per_seed_mean(parts)


@measure
def es_early_teacher_gain(rows: Rows, family: str = "") -> pd.Series:
    """Mean over teachers (of ``family``, else every family): student of the latest checkpoint at
    or before the first learning-rate drop − student of the final checkpoint."""
    parts = []
    for teacher in kd_teachers(rows, family):
        by_epoch = checkpoint_students(rows, teacher)
        if not by_epoch:
            continue
        final = max(by_epoch)
        early = [e for e in by_epoch if e <= first_drop(rows, by_epoch[final]) and e < final]
        if early:
            parts.append(rows.percent(by_epoch[max(early)]) - rows.percent(by_epoch[final]))
    return per_seed_mean(parts)


@measure
def es_full_vs_scratch(rows: Rows, family: str) -> pd.Series:
    """Full-KD student of the family's largest teacher − the scratch student."""
    teachers = family_teachers(rows, family, role="teacher_checkpoint")
    student = family_student(rows, family)
    if not teachers or student is None:
        return pd.Series(dtype=float)
    by_epoch = checkpoint_students(rows, teachers[-1])
    if not by_epoch:
        return pd.Series(dtype=float)
    return rows.percent(by_epoch[max(by_epoch)]) - rows.percent(f"scratch/{student}")


@measure
def fid_level(rows: Rows, cell: str, column: str) -> pd.Series:
    """A fraction column of one cell, in %."""
    return rows.percent(cell, column)


@measure
def fid_diff(rows: Rows, cell: str, baseline: str, column: str) -> pd.Series:
    """A fraction column of ``cell`` − ``baseline``, in points."""
    return rows.percent(cell, column) - rows.percent(baseline, column)


HARDER_ALONE = ("mixup", "rotation", "vflip", "color_jitter")


@measure
def fid_augment_each(rows: Rows) -> pd.Series:
    """Mean over the single harder augmentations run: train agreement − crop + flip's."""
    base = rows.percent("augment/crop_flip", "train_agreement")
    return per_seed_mean([rows.percent(f"augment/{a}", "train_agreement") - base
                          for a in HARDER_ALONE if rows.has(f"augment/{a}")])


def lambda_cells(rows: Rows, keep: Callable[[float], bool]) -> list[str]:
    return [c for c in rows.names(r"init/lam[0-9.]+") if keep(float(c[len("init/lam"):]))]


@measure
def fid_lambda_min(rows: Rows, lowest: str) -> pd.Series:
    """min over λ ≥ ``lowest`` of train agreement %."""
    return per_seed([rows.percent(c, "train_agreement")
                     for c in lambda_cells(rows, lambda lam: lam >= float(lowest))], "min")


@measure
def fid_lambda_max(rows: Rows, highest: str) -> pd.Series:
    """max over λ ≤ ``highest`` of train agreement %."""
    return per_seed([rows.percent(c, "train_agreement")
                     for c in lambda_cells(rows, lambda lam: lam <= float(highest))], "max")


@measure
def fid_discordance(rows: Rows) -> pd.Series:
    """% of pairs of distinct CIFAR students of a seed where the one with the higher test
    agreement has the lower test accuracy."""
    students = rows.where(role="student")
    students = students[~students["cell"].astype(str).str.startswith("mnist/")]
    out = {}
    for seed, group in students.groupby("seed"):
        rows.used.update(group["cell"].astype(str))
        group = group.drop_duplicates("model_key") if "model_key" in group else group
        acc, agr = group["test_accuracy"].to_numpy(float), group["test_agreement"].to_numpy(float)
        i, j = np.triu_indices(len(group), k=1)
        if len(i):
            out[int(seed)] = 100 * float(np.mean((acc[i] - acc[j]) * (agr[i] - agr[j]) < 0))
    return pd.Series(out, dtype=float)


def mz_pairs(rows: Rows) -> list[str]:
    return [] if "pair" not in rows.frame else list(dict.fromkeys(rows.frame["pair"].astype(str)))


@measure
def mz_diff(rows: Rows, cell: str, baseline: str) -> pd.Series:
    """Per seed, mean over the pairs that ran both: test accuracy % of ``<pair>/<cell>`` −
    ``<pair>/<baseline>``."""
    return per_seed_mean([rows.percent(f"{p}/{cell}") - rows.percent(f"{p}/{baseline}")
                          for p in mz_pairs(rows)
                          if rows.has(f"{p}/{cell}") and rows.has(f"{p}/{baseline}")])


CONTROL = "label_smoothing"  # the method zoo's control for regularisation (large profile)


@measure
def mz_minus_control(rows: Rows, method: str, control: str = CONTROL) -> pd.Series:
    """Per seed, mean over the pairs that ran both: test accuracy % of ``<pair>/<method>`` −
    ``<pair>/label_smoothing`` (label smoothing of the same strength): the part of a method's
    gain that regularisation alone does not give."""
    return mz_diff(rows, method, control)


@measure
def mz_ta_chain(rows: Rows, variant: str = "") -> pd.Series:
    """Per seed, mean over the pairs with an assistant: KD via the assistant − KD. The cells
    ``<pair>/kd_via_<assistant>``, or with ``variant`` ``<pair>/kd_via_<assistant>/<variant>``
    (``teacher_data``: the assistant distilled on the teacher's data); each claim reads one
    kind."""
    suffix = f"/{re.escape(variant)}" if variant else ""
    return per_seed_mean([rows.percent(c) - rows.percent(f"{p}/kd") for p in mz_pairs(rows)
                          for c in rows.names(rf"{re.escape(p)}/kd_via_[^/]+{suffix}")
                          if rows.has(f"{p}/kd")])


# ----------------------------------------------------------------------------------------------
# The scorecard

def read_claims(path: Path | None = None) -> pd.DataFrame:
    """The claims table: ``path``, else ``$KD_CLAIMS``, else ``studies/claims.csv``."""
    path = Path(path or os.environ.get("KD_CLAIMS") or CLAIMS)
    claims = pd.read_csv(path, dtype={"measure": str, "precondition_measure": str,
                                      "planned_in": str})
    for column in ("reference", "margin", "paper_value"):
        claims[column] = pd.to_numeric(claims[column], errors="coerce")
    claims["reference"] = claims["reference"].fillna(0.0)
    for column in ("paper_dataset", "paper_regime"):  # tables written before the columns: none
        claims[column] = claims[column].fillna("").astype(str) if column in claims else ""
    claims["size_tolerance"] = pd.to_numeric(claims.get("size_tolerance", math.nan),
                                             errors="coerce")
    if "planned_in" not in claims:  # a table written before the column: every profile
        claims["planned_in"] = ""
    claims["planned_in"] = claims["planned_in"].fillna("").str.strip()
    duplicated = claims["id"][claims["id"].duplicated()]
    if not duplicated.empty:
        raise ConfigError(f"claim ids repeated in {path}: {', '.join(duplicated)}")
    bad = set(claims["direction"]) - set(rule.DIRECTIONS)
    if bad:
        raise ConfigError(f"unknown directions in {path}: {sorted(bad)}")
    unknown = {p for names in claims["planned_in"] for p in names.split()} - set(KNOWN_PROFILES)
    if unknown:
        raise ConfigError(f"unknown profiles in planned_in of {path}: {sorted(unknown)} "
                          f"(known: {', '.join(KNOWN_PROFILES)})")
    return claims


def profile_key(profile: str) -> tuple[int, str]:
    return (PROFILE_ORDER.index(profile) if profile in PROFILE_ORDER else len(PROFILE_ORDER),
            profile)


def find_tables(root: Path, studies) -> dict[tuple[str, str], pd.DataFrame]:
    """Every ``<root>/<study>/<profile>.csv`` of the given studies. Tables beside them (a
    profile's ``_failures`` and ``_selection`` rows) name their profile in a column that is not
    their file's name, and are left out."""
    tables = {}
    for study in studies:
        for path in sorted((root / study).glob("*.csv")):
            frame = pd.read_csv(path)
            if "profile" in frame and not frame["profile"].astype(str).eq(path.stem).all():
                continue
            tables[(study, path.stem)] = frame
    return tables


def read_tables(root: Path, studies) -> dict[tuple[str, str], pd.DataFrame]:
    """The tables the verdicts read: :func:`find_tables`, with each profile that a seed rule
    governs (``large``) cut to the seeds it reads (:mod:`studies.verdict_seeds`)."""
    return verdict_seeds.restrict(find_tables(root, studies))


def interval_columns(prefix: str, interval: rule.Interval) -> dict:
    return {f"{prefix}n": interval.n, f"{prefix}effect": interval.mean,
            f"{prefix}ci_low": interval.low, f"{prefix}ci_high": interval.high,
            f"{prefix}basis": interval.basis if interval.n else None}


NOT_PLANNED = "not planned"
CUT = "cut"
# Profiles that a budget runs for some studies only (issue 28: about 30 hours of this CPU), and
# for which of their families: ``make large`` runs these. A claim of another study or family is
# cut at that profile: it will not run there, unlike a claim whose rows are still to come.
BUDGET_RUNS = {"large": {"capacity_gap": ("resnet",), "early_stopping": ("resnet",)}}


def cut_at(claim, profile: str) -> bool:
    """Is ``claim`` cut from ``profile`` by :data:`BUDGET_RUNS`? Its study is not run there,
    or its measure's first argument names a family (``es_eskd_gain:plain``) that the study's
    run leaves out."""
    if profile not in BUDGET_RUNS:
        return False
    families = BUDGET_RUNS[profile].get(claim.study)
    _, args = parse_measure(claim.measure)
    return families is None or (bool(args) and args[0] not in families)


def scored_table(claim, profile: str, tables: dict) -> pd.DataFrame | None:
    """The rows a claim is scored on at ``profile``: none where the claim supersedes another and
    ``planned_in`` leaves the profile out. It was written after the rows of the claim it
    supersedes were seen, so rows there would score it after the fact: it reads not planned."""
    superseding = isinstance(getattr(claim, "supersedes", None), str) and claim.supersedes
    where = claim.planned_in.split()
    if superseding and where and profile not in where:
        return None
    return tables.get((claim.study, profile))


def planned_verdict(verdict: str, claim, profile: str) -> str:
    """``not planned`` for a claim that its profile never sets out to test (``planned_in``
    names the profiles that do, e.g. the ResNet families only at ``paper``), ``cut`` for one
    that the profile's budget leaves out (:func:`cut_at`); a verdict from rows that exist
    anyway stands, except for a claim that supersedes another (:func:`scored_table`)."""
    where = claim.planned_in.split()
    if verdict != "not run":
        return verdict
    if where and profile not in where:
        return NOT_PLANNED
    return CUT if cut_at(claim, profile) else verdict


def nan_if_none(value) -> float:
    return math.nan if value is None else float(value)


def size_and_p(claim, interval: rule.Interval, verdict: str, margin, dataset: str) -> dict:
    """The size verdict and the claim's one-sided p (docs/scorecard_rules.md)."""
    p_claim, p_against = rule.one_sided_p(interval, claim.direction, claim.reference, margin)
    decided = verdict in rule.DECIDED and interval.n >= rule.MIN_SEEDS and math.isfinite(p_claim)
    return {"size_verdict": rule.size(interval, verdict, nan_if_none(claim.paper_value),
                                      bool(claim.paper_dataset) and dataset == claim.paper_dataset,
                                      nan_if_none(claim.size_tolerance)),
            "size_tolerance": claim.size_tolerance, "p_value": p_claim,
            "p_two_sided": rule.two_sided_p(p_claim, p_against) if decided else math.nan}


def correct(frame: pd.DataFrame) -> pd.DataFrame:
    """Benjamini–Hochberg over each profile's decided claims: ``p_adjusted``,
    ``verdict_adjusted``."""
    frame["p_adjusted"] = math.nan
    for _, group in frame.dropna(subset=["p_two_sided"]).groupby("profile"):
        frame.loc[group.index, "p_adjusted"] = rule.adjust(group["p_two_sided"])
    frame["verdict_adjusted"] = [rule.corrected(v, p) if np.isfinite(p) else v
                                 for v, p in zip(frame["verdict"], frame["p_adjusted"])]
    return frame


def expected_false_calls(scorecard: pd.DataFrame) -> pd.DataFrame:
    """Per profile: claims decided (the corrected family), expected false calls by chance alone
    (ALPHA × decided), and how many verdicts the correction turns inconclusive."""
    decided = scorecard.dropna(subset=["p_two_sided"])
    out = pd.DataFrame({"decided": decided.groupby("profile", sort=False).size()})
    out["expected_false_calls"] = rule.ALPHA * out["decided"]
    out["changed_by_correction"] = (decided["verdict_adjusted"] != decided["verdict"]
                                    ).groupby(decided["profile"], sort=False).sum()
    return out


def score(claims: pd.DataFrame, tables: dict[tuple[str, str], pd.DataFrame],
          extra_profiles: Iterable[str] = ()) -> pd.DataFrame:
    """One row per claim and profile (claims in their order, profiles paper, full, quick, ...,
    and ``extra_profiles`` before their rows exist: the command line's are those of
    :data:`BUDGET_RUNS`, whose claims wait or are cut). A claim whose study lacks a
    profile found for another study is ``not run`` there, ``not planned`` where the claim's
    ``planned_in`` leaves that profile out, ``cut`` where the budget does. Beside the sign
    verdict: size, regime and the corrected verdict (module docstring)."""
    profiles = sorted({p for _, p in tables} | set(extra_profiles), key=profile_key)
    regimes = regime.read_regimes()
    out = []
    for claim in claims.itertuples(index=False):
        for profile in profiles:
            table = scored_table(claim, profile, tables)
            rows = Rows(table)
            values = evaluate(claim.measure, rows)
            interval = interval_of(values)
            seeds = [] if isinstance(values, rule.Interval) else values.index
            pre = None
            if isinstance(claim.precondition_measure, str) and claim.precondition_measure:
                pre = interval_of(evaluate(claim.precondition_measure, rows))
            margin = None if math.isnan(claim.margin) else float(claim.margin)
            verdict = planned_verdict(rule.decide(interval, claim.direction, claim.reference,
                                                  margin, pre), claim, profile)
            our = regime.ours(table, rows.used, claim.study)
            paper, subset = regime.paper_values(claim, regimes)
            out.append({
                "claim": claim.id, "study": claim.study, "profile": profile,
                "n_seeds": interval.n, "seeds": " ".join(map(str, seeds)),
                "effect": interval.mean, "ci_low": interval.low, "ci_high": interval.high,
                "unit": claim.unit, "direction": claim.direction,
                "reference": claim.reference, "margin": margin,
                "paper_value": claim.paper_value,
                "verdict": verdict,
                "planned_in": claim.planned_in,
                **(interval_columns("precondition_", pre) if pre else
                   dict.fromkeys(interval_columns("precondition_", rule.t_interval([])))),
                "precondition_status": rule.precondition_status(pre) if pre else "",
                **rows.provenance(),
                **size_and_p(claim, interval, verdict, margin, our["dataset"]),
                **regime.columns(our, paper, regime.label(our, paper, subset))})
    frame = correct(pd.DataFrame(out))
    tail = ["p_adjusted", "verdict_adjusted"]  # beside the p they come from
    rest = [c for c in frame.columns if c not in tail]
    at = rest.index("p_two_sided") + 1
    frame = frame[rest[:at] + tail + rest[at:]]
    p_columns = ["p_value", "p_two_sided", "p_adjusted"]
    numeric = frame.select_dtypes("number").columns.difference(p_columns)
    frame[numeric] = frame[numeric].round(4)
    frame[p_columns] = frame[p_columns].map(lambda p: float(f"{p:.4g}"))  # small p stay visible
    counts = [c for c in regime.COLUMNS if c.endswith("train_n")]
    frame[counts] = frame[counts].astype(float).round().astype("Int64")
    return frame


def fmt(value: float, digits: int = 2) -> str:
    return "" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def summary_cell(row) -> str:
    """``verdict, n seeds: mean [low, high]`` for the ``--markdown`` table."""
    if row.verdict == NOT_PLANNED:
        return f"{NOT_PLANNED} (only at {', '.join(row.planned_in.split())})"
    if row.n_seeds == 0:
        return row.verdict
    interval = f" [{fmt(row.ci_low)}, {fmt(row.ci_high)}]" if np.isfinite(row.ci_low) else ""
    seeds = f"{row.n_seeds} seed{'s' * (row.n_seeds != 1)}"
    return f"**{row.verdict}**, {seeds}: {fmt(row.effect)}{interval}"


def markdown(scorecard: pd.DataFrame, claims: pd.DataFrame) -> str:
    """The ``--markdown`` table (the README's compact one is studies.docs'): one line per claim, the paper's value, one column per profile (the
    `paper` profile among them), and the counts."""
    profiles = list(dict.fromkeys(scorecard["profile"]))
    text = claims.set_index("id")
    table = []
    for claim, group in scorecard.groupby("claim", sort=False):
        c = text.loc[claim]
        test = {">": f"> {c.reference:g}", "<": f"< {c.reference:g}",
                "=": f"{c.reference:g} ± {c.margin:g}", "report": "(report)"}[c.direction]
        line = {"claim": f"`{claim}`", "what it says": c.claim, "test": f"{test} {c.unit}",
                "paper's value": fmt(c.paper_value, 2)}
        line.update({p: summary_cell(r) for p, r in zip(group["profile"],
                                                          group.itertuples(index=False))})
        table.append(line)
    frame = pd.DataFrame(table, columns=["claim", "what it says", "test", "paper's value", *profiles])
    counts = [f"{p}: " + ", ".join(f"{n} {v}" for v, n in scorecard[scorecard["profile"] == p]
                                   ["verdict"].value_counts().items()) for p in profiles]
    return "\n".join(markdown_table(frame.fillna("")) + [""] + [f"Verdicts, {c}." for c in counts]
                     + [""] + many_claims_lines(scorecard))


def many_claims_lines(scorecard: pd.DataFrame) -> list[str]:
    """Per profile: size verdicts, expected false calls and the BH correction's changes."""
    lines = []
    for profile, row in expected_false_calls(scorecard).iterrows():
        sizes = scorecard.loc[scorecard["profile"] == profile, "size_verdict"].value_counts()
        lines.append(
            f"At {profile}: {row.decided:.0f} claims decided on 3 or more seeds; chance alone "
            f"would give {row.expected_false_calls:.2f} wrong calls ({rule.ALPHA:.0%} × "
            f"{row.decided:.0f}); after the Benjamini–Hochberg correction "
            f"{row.changed_by_correction:.0f} reproduced/contradicted verdict(s) become "
            f"inconclusive. Size: " + ", ".join(f"{n} {v}" for v, n in sizes.items()) + ".")
    return lines


def study_verdicts(study: str, path: Path | None = None) -> pd.DataFrame:
    """A study's claims' verdicts from ``results/scorecard.csv`` (or ``path``): claim, profile,
    sign verdict, after correction, size, regime and why. Empty, with a note, before any
    ``make scorecard``."""
    path = Path(path or Path(os.environ.get("KD_RESULTS", REPO / "results")) / SCORECARD)
    columns = ["claim", "profile", "n_seeds", "effect", "ci_low", "ci_high", "paper_value",
               "verdict", "verdict_adjusted", "size_verdict", "regime", "regime_reason"]
    if not path.exists():
        print(f"no {path} yet: run make scorecard")
        return pd.DataFrame(columns=columns)
    card = pd.read_csv(path, keep_default_na=False, na_values=[""])
    card = card[(card["study"] == study) & (card["n_seeds"] > 0)]
    return card.reindex(columns=columns).reset_index(drop=True)


def draw(scorecard: pd.DataFrame, folder: Path) -> list[Path]:
    """The verdict matrix and one forest plot per study, closed once written."""
    import matplotlib.pyplot as plt

    paths = [folder / FIGURE]
    plt.close(figures.matrix(scorecard, expected_false_calls(scorecard), paths[0]))
    for study in dict.fromkeys(scorecard["study"]):
        paths.append(folder / STUDY_FIGURE.format(study=study))
        plt.close(figures.study_forest(scorecard, study, paths[-1]))
    return paths


def figures_root() -> Path:
    return Path(os.environ.get("KD_FIGURES", "figures"))


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--results", default=None, help="results root (default $KD_RESULTS "
                                                        "or results/)")
    parser.add_argument("--figures", default=None, help="figures folder (default $KD_FIGURES "
                                                        "or figures/)")
    parser.add_argument("--claims", default=None,
                        help=f"the claims table (default $KD_CLAIMS or {CLAIMS})")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table of every verdict")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")  # a file, no window
    root = Path(args.results) if args.results else results_root()
    claims = read_claims(args.claims)
    tables = read_tables(root, claims["study"].unique())
    if not tables:
        raise ConfigError(f"no study results under {root}: run a study first "
                          f"(make study STUDY=<name> PROFILE=<profile>)")
    scorecard = score(claims, tables, extra_profiles=BUDGET_RUNS)
    root.mkdir(parents=True, exist_ok=True)
    scorecard.to_csv(root / SCORECARD, index=False)
    folder = Path(args.figures) if args.figures else figures_root()
    figure = folder / FIGURE
    draw(scorecard, folder)
    counts = scorecard.groupby(["profile", "verdict"], sort=False).size()
    print(f"{len(claims)} claims x {scorecard['profile'].nunique()} profile(s) -> "
          f"{root / SCORECARD}, {figure}")
    for (profile, verdict), n in counts.items():
        print(f"  {profile:>8}  {verdict:<22} {n}")
    print("\n".join(many_claims_lines(scorecard)))
    if args.markdown:
        print("\n" + markdown(scorecard, claims))
    return scorecard


if __name__ == "__main__":
    raise SystemExit(run_main(main))
