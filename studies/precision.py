"""One study's results at two precisions (or any two runs), compared cell by cell on the same seeds.

    python -m studies.precision results/alpha_temperature/quick_fp32.csv \
        results/alpha_temperature/quick.csv

For every metric column the two tables share (accuracy, errors, agreement, ...), over the rows
present in both (same ``cell`` and ``seed``): the mean difference second − first with its 95 %
t-interval over those rows, the largest difference in absolute terms, and how many rows moved;
then the training time of the shared rows, first / second. The rows are cells of one grid, not
independent draws, so the interval describes the spread of the differences; it is not a test.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from kd.errors import ConfigError, CorruptFileError, reason
from kd.experiment.cli import OneLineErrorParser, run_main
from kd.experiment.results import markdown_table
from kd.experiment.verdict import t_interval

METRICS = ("test_accuracy", "test_errors", "test_error_pct", "test_agreement",
           "test_kl_teacher_student", "test_ece", "train_accuracy", "train_agreement")
KEY = ["cell", "seed"]


def read(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise ConfigError(f"no results table {path}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise CorruptFileError(f"results table {path} cannot be read ({reason(error)})") from None
    if not set(KEY) <= set(frame.columns):
        raise CorruptFileError(f"results table {path} has no cell and seed columns")
    return frame


def paired(first: pd.DataFrame, second: pd.DataFrame) -> pd.DataFrame:
    """The rows of both tables with the same cell and seed, side by side (suffixes _a, _b)."""
    return first.merge(second, on=KEY, suffixes=("_a", "_b"))


def compare(first: pd.DataFrame, second: pd.DataFrame) -> pd.DataFrame:
    """One row per shared metric: rows compared, mean difference (b − a) with its interval,
    the largest absolute difference and the rows that changed."""
    both = paired(first, second)
    out = []
    for metric in METRICS:
        if f"{metric}_a" not in both or f"{metric}_b" not in both:
            continue
        diff = (both[f"{metric}_b"] - both[f"{metric}_a"]).dropna()
        if diff.empty:
            continue
        interval = t_interval(diff)
        out.append({"metric": metric, "rows": len(diff), "mean b - a": interval.mean,
                    "95 % interval": f"[{interval.low:.4g}, {interval.high:.4g}]",
                    "largest |b - a|": diff.abs().max(), "rows changed": int((diff != 0).sum())})
    return pd.DataFrame(out)


def time_ratio(first: pd.DataFrame, second: pd.DataFrame) -> tuple[float, float, int]:
    """Training seconds of the rows both tables timed: (first, second, rows)."""
    both = paired(first, second).dropna(subset=["train_s_a", "train_s_b"])
    return float(both["train_s_a"].sum()), float(both["train_s_b"].sum()), len(both)


def describe(frame: pd.DataFrame) -> str:
    precision = ", ".join(sorted(map(str, frame.get("precision", pd.Series(["fp32"])).fillna(
        "fp32").unique())))
    commits = ", ".join(sorted(map(str, frame["git_commit"].dropna().unique()))) \
        if "git_commit" in frame else "?"
    return f"{len(frame)} rows, precision {precision}, commit {commits}"


def main(argv: list[str] | None = None) -> None:
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("first", type=Path, help="the reference table (a)")
    parser.add_argument("second", type=Path, help="the table compared with it (b)")
    args = parser.parse_args(argv)
    first, second = read(args.first), read(args.second)
    print(f"a: {args.first} ({describe(first)})\nb: {args.second} ({describe(second)})\n")
    table = compare(first, second)
    if table.empty:
        raise ConfigError(f"{args.first} and {args.second} share no cell, seed and metric")
    print("\n".join(markdown_table(table, number="{:.4g}")))
    a_s, b_s, rows = time_ratio(first, second)
    if rows:
        print(f"\ntraining time of the {rows} rows timed in both: a {a_s / 60:.1f} min, "
              f"b {b_s / 60:.1f} min, a / b = {a_s / b_s:.2f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(run_main(main))
