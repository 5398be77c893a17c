"""Which seeds a `large` verdict reads: the first 3 seeds to complete every planned cell of
capacity gap and early stopping, in the order their last row landed (docs/scorecard_rules.md,
section 5, written before any row of a student of seed 1 or 2 existed). The rule depends on
which seeds finish first, never on what they measure; rows of other seeds decide nothing.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import pandas as pd


@dataclass(frozen=True)
class SeedRule:
    count: int  # how many complete seeds the verdicts read
    studies: tuple[str, ...]  # the studies whose tables a seed must complete (shared models)


RULES = {"large": SeedRule(count=3, studies=("capacity_gap", "early_stopping"))}


def planned_cells(study: str, profile: str) -> set[str]:
    """The cells ``studies.<study>.planned(profile)`` gives every seed."""
    return {cell for cell, _ in importlib.import_module(f"studies.{study}").planned(profile)}


def complete_seeds(tables: dict[tuple[str, str], pd.DataFrame], profile: str, rule: SeedRule,
                   planned: Callable[[str, str], set[str]] = planned_cells) -> list[int]:
    """The seeds with a row for every planned cell of every study of ``rule``, in the order
    their last row landed (ties by seed)."""
    landed: dict[int, pd.Timestamp] = {}
    for seed in sorted(seeds_in(tables, profile, rule)):
        last = []
        for study in rule.studies:
            frame = tables.get((study, profile))
            rows = frame[frame["seed"].astype(int) == seed] if frame is not None else None
            if rows is None or not planned(study, profile) <= set(rows["cell"]):
                break
            last.append(pd.to_datetime(rows["finished_at"], utc=True).max())
        else:
            landed[seed] = max(last)
    return sorted(landed, key=lambda seed: (landed[seed], seed))


def seeds_in(tables, profile: str, rule: SeedRule) -> set[int]:
    return {int(s) for study in rule.studies if (study, profile) in tables
            for s in tables[(study, profile)]["seed"]}


def verdict_seeds(tables, profile: str, planned=planned_cells) -> list[int] | None:
    """The seeds the profile's verdicts read, or None where no rule restricts them."""
    rule = RULES.get(profile)
    if rule is None:
        return None
    return complete_seeds(tables, profile, rule, planned)[:rule.count]


def restrict(tables: dict[tuple[str, str], pd.DataFrame],
             planned=planned_cells) -> dict[tuple[str, str], pd.DataFrame]:
    """``tables`` with each ruled study's rows cut to its profile's :func:`verdict_seeds`."""
    out = dict(tables)
    for profile, rule in RULES.items():
        seeds = verdict_seeds(tables, profile, planned)
        for study in rule.studies:
            if (study, profile) in out:
                frame = out[(study, profile)]
                out[(study, profile)] = frame[frame["seed"].astype(int).isin(seeds)]
    return out
