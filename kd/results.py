"""Result tables: one CSV per study and profile, one row per trained model.

Rows are appended by rewriting the file to a temporary name and renaming it over the old one,
so a crash at any moment leaves either the old file or the new one, never a partial row. A rerun
asks :meth:`ResultsTable.done` and skips the (cell, seed) pairs already present.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Iterator

import pandas as pd
import torch

from kd.errors import ConfigError

PROVENANCE_COLUMNS = ("wall_s", "device", "hardware", "torch", "git_commit", "finished_at")


def results_root() -> Path:
    """``$KD_RESULTS`` or ``results/``."""
    return Path(os.environ.get("KD_RESULTS", "results"))


class ResultsTable:
    """``<root>/<study>/<profile>.csv``; key columns ``study, profile, cell, seed`` come first."""

    KEY = ("study", "profile", "cell", "seed")

    def __init__(self, study: str, profile: str, root: Path | None = None):
        self.study, self.profile = study, profile
        self.path = (results_root() if root is None else Path(root)) / study / f"{profile}.csv"

    def read(self) -> pd.DataFrame:
        if not self.path.exists():
            return pd.DataFrame(columns=list(self.KEY))
        return pd.read_csv(self.path)

    def read_or_fail(self) -> pd.DataFrame:
        """The rows, or a :class:`ConfigError` saying the profile has not been run."""
        frame = self.read()
        if frame.empty:
            raise ConfigError(f"no {self.profile} results yet in {self.path}: run the profile "
                              f"first")
        return frame

    def done(self) -> set[tuple[str, int]]:
        frame = self.read()
        return {(str(c), int(s)) for c, s in zip(frame["cell"], frame["seed"])}

    def append(self, row: dict) -> None:
        """Add one row atomically; its key must not be in the table yet."""
        row = {"study": self.study, "profile": self.profile, **row}
        if (str(row["cell"]), int(row["seed"])) in self.done():
            raise ValueError(f"row {row['cell']!r} seed {row['seed']} is already in {self.path}")
        new = pd.DataFrame([row])
        # Concatenating onto an empty frame would turn every integer column into floats.
        frame = pd.concat([self.read(), new], ignore_index=True) if self.path.exists() else new
        first = [*self.KEY]
        last = [c for c in PROVENANCE_COLUMNS if c in frame.columns]
        middle = [c for c in frame.columns if c not in first and c not in last]
        # Nullable dtypes keep integer columns integers where other rows leave them empty.
        frame = frame[first + middle + last].convert_dtypes()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w", newline="") as handle:
                frame.to_csv(handle, index=False)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)


REPO_ROOT = Path(__file__).resolve().parent.parent
OUTPUT_FOLDERS = ("results", "figures")  # what studies write: rewriting them is not a code change


@lru_cache(maxsize=None)
def git_commit(root: Path = REPO_ROOT) -> str:
    """The checkout's commit, with ``+dirty`` when tracked files other than outputs differ."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, check=True,
                                capture_output=True, text=True).stdout.strip()
        excluded = [f":(exclude){folder}" for folder in OUTPUT_FOLDERS]
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                *excluded], cwd=root, capture_output=True, text=True).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@lru_cache(maxsize=None)
def hardware(device_type: str) -> str:
    """A readable name of the machine that ran: the GPU, or the CPU model and its core count."""
    if device_type == "cuda":
        return torch.cuda.get_device_name()
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            name = next(line.split(":", 1)[1].strip() for line in handle
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def provenance(device: torch.device, wall_s: float) -> dict:
    """The columns every row ends with: how long, where, with what, from which commit."""
    return {"wall_s": round(wall_s, 2), "device": str(device), "hardware": hardware(device.type),
            "torch": torch.__version__, "git_commit": git_commit(),
            "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def mean_std(values: pd.Series, digits: int = 1) -> str:
    """``mean ± std (n seeds)``; the std is left out for a single seed."""
    values = values.dropna().astype(float)
    if values.empty:
        return "not run"
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f} (1 seed)"
    return f"{values.mean():.{digits}f} ± {values.std():.{digits}f} ({len(values)} seeds)"


def pending(cells: Iterable, seeds: int, table: ResultsTable) -> Iterator[tuple[int, object]]:
    """The ``(seed, cell)`` pairs not in the table yet, seed by seed, cells in their order
    (each cell has a ``name``)."""
    done, cells = table.done(), list(cells)
    for seed in range(seeds):
        yield from ((seed, cell) for cell in cells if (cell.name, seed) not in done)


def run_cells(table: ResultsTable, todo: Iterable[tuple[int, object]],
              run_cell: Callable[[int, object], dict], device: torch.device,
              summary: Callable[[dict], str]) -> None:
    """Train and score each pending ``(seed, cell)`` with ``run_cell``, appending its row (with
    provenance) as soon as it is done, so a killed study loses at most the cell it was on."""
    for seed, cell in todo:
        start = time.perf_counter()
        row = run_cell(seed, cell)
        wall = time.perf_counter() - start
        table.append({"cell": cell.name, "seed": seed, **row, **provenance(device, wall)})
        print(f"  seed {seed} {cell.name:>36}: {summary(row)} ({wall:.0f} s)")


def markdown_table(frame: pd.DataFrame, number: str = "{}") -> list[str]:
    """The lines of a Markdown table of ``frame``'s columns and rows: floats written with the
    format ``number`` (e.g. ``"{:.2f}"``), other values with ``str``."""
    cell = lambda v: number.format(v) if isinstance(v, float) else str(v)
    return (["| " + " | ".join(map(str, frame.columns)) + " |", "| --- " * len(frame.columns) + "|"]
            + ["| " + " | ".join(map(cell, row)) + " |" for row in frame.itertuples(index=False)])


def run_footer(rows: pd.DataFrame) -> str:
    """One line under a report: profile, seeds, hardware, total wall time and commits."""
    return (f"Profile {', '.join(sorted(rows['profile'].unique()))}; seeds "
            f"{sorted(rows['seed'].unique().tolist())}; "
            f"{'; '.join(sorted(rows['hardware'].unique()))}; {rows['wall_s'].sum() / 60:.1f} "
            f"min of training and evaluation in all; commit "
            f"{', '.join(sorted(rows['git_commit'].astype(str).unique()))}.")
