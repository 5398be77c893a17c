"""Which seeds a `large` verdict reads: the first 3 seeds to complete every planned cell of
capacity gap and early stopping, in the order their last row landed (docs/scorecard_rules.md,
section 5, written before any row of a student of seed 1 or 2 existed). The rule depends on
which seeds finish first, never on what they measure; rows of other seeds decide nothing.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from kd.experiment.results import ResultsTable


@dataclass(frozen=True)
class SeedRule:
    count: int  # how many complete seeds the verdicts read
    studies: tuple[str, ...]  # the studies whose tables a seed must complete (shared models)


RULES = {"large": SeedRule(count=3, studies=("capacity_gap", "early_stopping"))}


def planned_cells(study: str, profile: str) -> set[str]:
    """The cells ``studies.<study>.planned(profile)`` gives every seed."""
    return {cell for cell, _ in importlib.import_module(f"studies.{study}").planned(profile)}


def complete_seeds(tables: dict[tuple[str, str], pd.DataFrame], profile: str, rule: SeedRule,
                   planned: Callable[[str, str], set[str]] | None = None) -> list[int]:
    """The seeds with a row for every planned cell of every study of ``rule``, in the order
    their last row landed (ties by seed). ``planned(study, profile)``: the cells a seed needs
    (default :func:`planned_cells`)."""
    needed = {study: (planned or planned_cells)(study, profile) for study in rule.studies}
    landed: dict[int, pd.Timestamp] = {}
    for seed in sorted(seeds_in(tables, profile, rule)):
        last = []
        for study in rule.studies:
            frame = tables.get((study, profile))
            rows = frame[frame["seed"].astype(int) == seed] if frame is not None else None
            if rows is None or not needed[study] <= set(rows["cell"]):
                break
            last.append(pd.to_datetime(rows["finished_at"], utc=True).max())
        else:
            landed[seed] = max(last)
    return sorted(landed, key=lambda seed: (landed[seed], seed))


def seeds_in(tables, profile: str, rule: SeedRule) -> set[int]:
    return {int(s) for study in rule.studies if (study, profile) in tables
            for s in tables[(study, profile)]["seed"]}


def verdict_seeds(tables, profile: str, planned=None) -> list[int] | None:
    """The seeds the profile's verdicts read, or None where no rule restricts them."""
    rule = RULES.get(profile)
    if rule is None:
        return None
    return complete_seeds(tables, profile, rule, planned)[:rule.count]


def restrict(tables: dict[tuple[str, str], pd.DataFrame],
             planned=None) -> dict[tuple[str, str], pd.DataFrame]:
    """``tables`` with each ruled study's rows cut to its profile's :func:`verdict_seeds`."""
    out = dict(tables)
    for profile, rule in RULES.items():
        seeds = verdict_seeds(tables, profile, planned)
        for study in rule.studies:
            if (study, profile) in out:
                frame = out[(study, profile)]
                out[(study, profile)] = frame[frame["seed"].astype(int).isin(seeds)]
    return out


def rows_read(table, rows: pd.DataFrame, planned=None) -> tuple[pd.DataFrame, list[str]]:
    """The rows of ``table`` (a :class:`kd.experiment.results.ResultsTable`, read as ``rows``)
    that its profile's verdicts read, and a line that says which seeds those are, for a report
    (``--report``, the study pages, the notebooks): every row where no rule applies."""
    rule = RULES.get(table.profile)
    if rule is None or table.study not in rule.studies:
        return rows, []
    tables = {(table.study, table.profile): rows}
    for study in rule.studies:
        beside = ResultsTable(study, table.profile, table.path.parent.parent)
        if study != table.study and beside.path.exists():
            tables[(study, table.profile)] = beside.read_or_fail()
    seeds = verdict_seeds(tables, table.profile, planned)
    others = sorted({int(s) for s in rows["seed"]} - set(seeds))
    left_out = (f"; rows here of seed(s) {', '.join(map(str, others))} are read by neither"
                if others else "")
    which = (f"seed(s) {', '.join(map(str, seeds))}" if seeds else "no seed yet")
    note = (f"The `{table.profile}` verdicts and this report read {which}: they read the first "
            f"{rule.count} seeds to complete every cell of {' and '.join(rule.studies)} "
            f"(docs/scorecard_rules.md, 5){left_out}.")
    return rows[rows["seed"].astype(int).isin(seeds)], [note]


def read_table(study: str, profile: str, root: Path | None = None) -> pd.DataFrame:
    """``<root>/<study>/<profile>.csv`` cut to the seeds its verdicts read (:func:`rows_read`)."""
    table = ResultsTable(study, profile, root)
    return rows_read(table, table.read_or_fail())[0]
