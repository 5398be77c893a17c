"""Rows that describe one model must agree: a check across capacity_gap's and early_stopping's
tables of a profile.

The two studies share their models through the cache: early stopping's final checkpoint of a
teacher is capacity gap's teacher, its students of that checkpoint are capacity gap's KD
students, and every student row records its teacher's accuracy. A model lost with the cache is
retrained from its seed, which gives the same model only on a CPU that computes alike (a bf16
run on another kind of CPU rounds otherwise). Then the committed rows of the lost model and the
new rows of its students would describe two models under one name. This finds such rows:

    python -m studies.zoo_rows          # every profile; exit 1 and one line a disagreement

A disagreement is a row pair whose test accuracies differ by more than ``TOLERANCE`` (a few test
images: one model evaluated on two machines may flip a tie). Its remedy is to rerun the rows of
the lost model's seed from the new model, the old ones kept in git's history.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from kd.experiment.cli import run_main
from kd.experiment.command import OneLineErrorParser
from kd.experiment.results import ResultsTable, results_root
from studies.cifar_zoo import ZOO_PROFILES

STUDIES = ("capacity_gap", "early_stopping")
TOLERANCE = 5e-4  # 5 of CIFAR-10's 10,000 test images


def canonical(rows: pd.DataFrame) -> pd.DataFrame:
    """Early stopping's cells with a teacher's last checkpoint named as capacity gap names the
    finished teacher: ``teacher/resnet14@60`` -> ``teacher/resnet14`` where 60 is its last."""
    if "run_epochs" not in rows:
        return rows
    checkpoints = rows[rows["role"] == "teacher_checkpoint"]
    last = {(seed, model): int(epochs) for seed, model, epochs
            in zip(checkpoints["seed"], checkpoints["model"], checkpoints["run_epochs"])}

    def name(cell: str, seed: int) -> str:
        return re.sub(r"(\w+)@(\d+)", lambda m: m[1] if last.get((seed, m[1])) == int(m[2])
                      else m[0], cell)

    return rows.assign(cell=[name(c, s) for c, s in zip(rows["cell"], rows["seed"])])


def teacher_cell(cell: str) -> str:
    """The cell of a student's teacher: ``kd/T/S``, ``eskd/T/S`` and ``ta/T/A`` ->
    ``teacher/T``; ``kd/T/A/S`` (through an assistant) -> ``ta/T/A``."""
    between = cell.split("/")[1:-1]
    return ("teacher/" if len(between) == 1 else "ta/") + "/".join(between)


def disagreements(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per disagreement among one profile's tables (study -> rows): ``what`` (the same
    model in two tables, or a student's record of its teacher), ``cell``, ``seed``, the two
    ``accuracy`` values and where each comes from."""
    columns = ["what", "cell", "seed", "accuracy", "other", "source", "other_source"]
    present = [canonical(t).assign(source=study) for study, t in tables.items() if not t.empty]
    if not present:
        return pd.DataFrame(columns=columns)
    rows = pd.concat(present, ignore_index=True)
    found = []
    for (cell, seed), same in rows.groupby(["cell", "seed"]):
        first = same.iloc[0]
        for _, row in same.iloc[1:].iterrows():
            if abs(row["test_accuracy"] - first["test_accuracy"]) > TOLERANCE:
                found.append(("one model, two rows", cell, seed, first["test_accuracy"],
                              row["test_accuracy"], first["source"], row["source"]))
    accuracy = rows.groupby(["cell", "seed"])["test_accuracy"].first()
    students = rows[rows["teacher_accuracy"].notna()] if "teacher_accuracy" in rows else rows[:0]
    for _, row in students.iterrows():
        key = (teacher_cell(row["cell"]), row["seed"])
        if key in accuracy.index and abs(accuracy[key] - row["teacher_accuracy"]) > TOLERANCE:
            found.append(("a student's teacher", row["cell"], row["seed"], accuracy[key],
                          row["teacher_accuracy"], f"{key[0]} in the tables", row["source"]))
    return pd.DataFrame(found, columns=columns)


def tables(name: str, root: Path | None = None) -> dict[str, pd.DataFrame]:
    """study -> its rows of profile ``name`` (none: an empty frame)."""
    return {s: ResultsTable(s, name, root).read() for s in STUDIES}


def profile_tables(root: Path | None = None) -> dict[str, dict[str, pd.DataFrame]]:
    """profile -> study -> its committed rows, for every zoo profile either study has (not
    the other tables beside them, such as a profile's ``_failures``)."""
    root = Path(root) if root is not None else results_root()
    return {name: tables(name, root) for name in ZOO_PROFILES
            if any((root / s / f"{name}.csv").exists() for s in STUDIES)}


def main(argv: list[str] | None = None) -> None:
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=None,
                        help="results root (default $KD_RESULTS or results/)")
    args = parser.parse_args(argv)
    bad = sum(report(name, tables) for name, tables in profile_tables(args.results).items())
    print(f"{bad} disagreement(s) among the rows of one model" if bad
          else "every model's rows agree")
    if bad:
        raise SystemExit(1)


def report(name: str, tables: dict[str, pd.DataFrame]) -> int:
    """Print one line per disagreement among profile ``name``'s tables; returns how many."""
    found = disagreements(tables)
    for d in found.itertuples():
        print(f"{name}: {d.what}: {d.cell} seed {d.seed}: {d.accuracy:.4f} ({d.source}) "
              f"against {d.other:.4f} ({d.other_source})")
    return len(found)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
