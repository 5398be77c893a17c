"""Verdicts on claims from paired differences over seeds, by a rule fixed before the runs.

Cells of one seed share their initial weights and batches (and, where the study has one per
seed, their teacher), so a claim is tested on one number per seed, q_s: a paired difference of
two cells of the same seed (or a level, such as an agreement). Over the n seeds:

    mean  q̄ = (1/n) Σ q_s
    sd    s = sqrt( Σ (q_s − q̄)² / (n − 1) )
    95 % interval  q̄ ± t_{0.975, n−1} · s / √n    (Student's t, n − 1 degrees of freedom)

A claim states a direction and a reference r (0 for a difference, a level such as 99 % for a
threshold) and, in advance, a margin m:

* direction ``>`` (the claim: q > r). **reproduced** when the whole interval lies above r;
  **contradicted** when it lies below r; **absent** when it lies inside (r − m, r + m) (a
  well-measured null; only when the claim states a margin); otherwise **inconclusive**.
  Checked in this order: an interval above r but within the margin is still reproduced (the
  effect column shows its size).
* direction ``<``: the mirror image.
* direction ``=`` (a level claim, q = r within a tolerance m): **reproduced** when the whole
  interval lies inside [r − m, r + m]; **contradicted** when it lies wholly outside it;
  otherwise **inconclusive**.
* direction ``report``: no claim, the quantity is only reported with its interval (verdict
  **report**).

Before that: **not run** when no seed has the cells; **inconclusive** with fewer than
:data:`MIN_SEEDS` seeds, whatever the numbers. A claim may also name a precondition, a quantity
that must be > 0 for the claim to be testable at all (measured per seed like the claim):
**precondition not met** when its mean is ≤ 0; when its interval does not lie wholly above 0
(or it has fewer than :data:`MIN_SEEDS` seeds) the verdict is at best **inconclusive**. A
precondition on models that every seed shares (one teacher per architecture) has one value,
not one per seed; its interval is then the test set's sampling interval
(:func:`accuracy_step`), and it is met when that lies wholly above 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from scipy import stats

MIN_SEEDS = 3
LEVEL = 0.95
DIRECTIONS = (">", "<", "=", "report")
VERDICTS = ("reproduced", "contradicted", "absent", "inconclusive", "precondition not met",
            "not run", "report")


@dataclass(frozen=True)
class Interval:
    """Mean and two-sided t-interval of per-seed values (``low``/``high`` NaN below 2 seeds),
    or, with ``basis="test images"``, the test set's sampling interval of one fixed set of
    models (:func:`accuracy_step`)."""

    n: int
    mean: float
    low: float
    high: float
    basis: str = "seeds"

    @property
    def known(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high))


def t_interval(values: Iterable[float], level: float = LEVEL) -> Interval:
    """q̄ ± t_{(1+level)/2, n−1} · s/√n over the finite values (NaNs dropped)."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    n = len(x)
    if n == 0:
        return Interval(0, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n == 1:
        return Interval(1, mean, math.nan, math.nan)
    half = float(stats.t.ppf((1 + level) / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Interval(n, mean, mean - half, mean + half)


def accuracy_step(accuracies: Iterable[float], n_test: int, level: float = LEVEL) -> Interval:
    """The smallest step between consecutive accuracies (fractions) of fixed models scored on
    the same ``n_test`` images, in percentage points, with the test set's sampling interval: for
    each step b − a, ±z·sqrt(a(1 − a)/n + b(1 − b)/n) (normal approximation; unpaired, so wider
    than the paired interval when the models' errors go together, as those of models trained on
    the same data do); the result's low and high are the minima over the steps, so its low is
    above 0 only when every step's is. For one model per architecture shared by every seed:
    the interval says these models are ordered on this test set, not that models of these
    sizes are (the variance between training seeds is not in it)."""
    acc = np.asarray(list(accuracies), dtype=float)
    if len(acc) < 2 or n_test <= 0 or not np.isfinite(acc).all():
        return Interval(0, math.nan, math.nan, math.nan, "test images")
    a, b = acc[:-1], acc[1:]
    half = stats.norm.ppf((1 + level) / 2) * np.sqrt((a * (1 - a) + b * (1 - b)) / n_test)
    steps = 100 * (b - a)
    return Interval(1, float(steps.min()), float((steps - 100 * half).min()),
                    float((steps + 100 * half).min()), "test images")


def _margin(margin: float | None) -> float | None:
    return None if margin is None or (isinstance(margin, float) and math.isnan(margin)) else margin


def rule(interval: Interval, direction: str, reference: float = 0.0,
         margin: float | None = None) -> str:
    """The verdict of one interval under the rule of the module docstring (seed count aside)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r}: expected one of {DIRECTIONS}")
    if direction == "report":
        return "report"
    margin = _margin(margin)
    if not interval.known:
        return "inconclusive"
    low, high = interval.low, interval.high
    if direction == "=":
        if margin is None:
            raise ValueError("a level claim ('=') needs its tolerance as the margin")
        if reference - margin <= low and high <= reference + margin:
            return "reproduced"
        if high < reference - margin or low > reference + margin:
            return "contradicted"
        return "inconclusive"
    if direction == "<":  # mirror onto '>'
        low, high, reference = -high, -low, -reference
    if low > reference:
        return "reproduced"
    if high < reference:
        return "contradicted"
    if margin is not None and reference - margin < low and high < reference + margin:
        return "absent"
    return "inconclusive"


def precondition_status(interval: Interval, min_seeds: int = MIN_SEEDS) -> str:
    """``met`` (interval wholly above 0, on enough seeds or on the test set's sampling of fixed
    models), ``not met`` (mean ≤ 0), ``not run`` (no seed), else ``unsure``."""
    if interval.n == 0:
        return "not run"
    if interval.mean <= 0:
        return "not met"
    enough = interval.n >= min_seeds or interval.basis == "test images"
    if enough and interval.known and interval.low > 0:
        return "met"
    return "unsure"


def decide(interval: Interval, direction: str, reference: float = 0.0,
           margin: float | None = None, precondition: Interval | None = None,
           min_seeds: int = MIN_SEEDS) -> str:
    """The verdict of a claim: not run, precondition, seed count, then :func:`rule`."""
    if interval.n == 0:
        return "not run"
    if precondition is not None:
        status = precondition_status(precondition, min_seeds)
        if status == "not run":
            return "not run"
        if status == "not met":
            return "precondition not met"
    if direction == "report":
        return "report"
    if interval.n < min_seeds:
        return "inconclusive"
    if precondition is not None and precondition_status(precondition, min_seeds) != "met":
        return "inconclusive"
    return rule(interval, direction, reference, margin)


# ----------------------------------------------------------------------------------------------
# Size, and many claims at once (docs/scorecard_rules.md, fixed before they were computed)

ALPHA = 1 - LEVEL
SIZE_VERDICTS = ("agrees", "differs", "other data set", "no paper value", "not tested")
UNDECIDED = ("not run", "not planned", "cut", "precondition not met", "report")
DECIDED = ("reproduced", "contradicted", "absent", "inconclusive")  # the family corrected together
AFTER_CORRECTION = "inconclusive (after correction)"


def size(interval: Interval, verdict: str, paper_value: float | None, same_dataset: bool,
         tolerance: float | None = None, min_seeds: int = MIN_SEEDS) -> str:
    """Does the paper's value lie inside our interval, widened by ``tolerance`` (None = 0)?
    ``not tested`` without a sign verdict on ``min_seeds`` seeds; ``no paper value``; ``other data
    set``; then ``agrees`` or ``differs``."""
    if verdict in UNDECIDED or interval.n < min_seeds or not interval.known:
        return "not tested"
    if paper_value is None or not np.isfinite(paper_value):
        return "no paper value"
    if not same_dataset:
        return "other data set"
    tol = _margin(tolerance) or 0.0
    return "agrees" if interval.low - tol <= paper_value <= interval.high + tol else "differs"


def one_sided_p(interval: Interval, direction: str, reference: float = 0.0,
                margin: float | None = None, level: float = LEVEL) -> tuple[float, float]:
    """(p of the claim's side, p of the contradicting side), one-sided, from the t statistic
    (mean − reference)/se behind the interval (se = half-width / t_{(1+level)/2, n−1}, n − 1
    degrees of freedom). ``>``: P(T ≥ t) and P(T ≤ t); ``<``: the mirror; ``= r ± m``: the larger
    p of "above r − m" and "below r + m" (TOST), and the smaller p of "below r − m" and "above
    r + m". NaN for ``report``, below 2 seeds, or an interval not over seeds."""
    nan = (math.nan, math.nan)
    if direction == "report" or interval.n < 2 or interval.basis != "seeds" or not interval.known:
        return nan
    df = interval.n - 1
    se = (interval.high - interval.low) / 2 / stats.t.ppf((1 + level) / 2, df)

    def t_of(ref: float) -> float:
        gap = interval.mean - ref
        return gap / se if se > 0 else (math.copysign(math.inf, gap) if gap else 0.0)

    above = lambda ref: float(stats.t.sf(t_of(ref), df))  # evidence for q > ref
    below = lambda ref: float(stats.t.cdf(t_of(ref), df))  # evidence for q < ref
    if direction == ">":
        return above(reference), below(reference)
    if direction == "<":
        return below(reference), above(reference)
    margin = _margin(margin)
    if margin is None:
        raise ValueError("a level claim ('=') needs its tolerance as the margin")
    low, high = reference - margin, reference + margin
    return max(above(low), below(high)), min(below(low), above(high))


def two_sided_p(p_claim: float, p_against: float) -> float:
    """The p of the sign verdict's own test: reproduced or contradicted exactly when < 1 − LEVEL."""
    return min(1.0, 2 * min(p_claim, p_against))


def adjust(p_values: Iterable[float]) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (``scipy.stats.false_discovery_control``)."""
    p = np.asarray(list(p_values), dtype=float)
    return stats.false_discovery_control(p, method="bh") if len(p) else p


def corrected(verdict: str, p_adjusted: float, alpha: float = ALPHA) -> str:
    """A reproduced or contradicted verdict whose adjusted p is ≥ ``alpha`` becomes
    ``inconclusive (after correction)``; every other verdict stands."""
    if verdict in ("reproduced", "contradicted") and not p_adjusted < alpha:
        return AFTER_CORRECTION
    return verdict
