"""Result tables: one CSV per study and profile, one row per trained model.

Rows are appended by rewriting the file to a temporary name and renaming it over the old one,
so a crash at any moment leaves either the old file or the new one, never a partial row. A rerun
asks :meth:`ResultsTable.done` and skips the (cell, seed) pairs already present.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import io
import os
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import pandas as pd
import torch

from kd.errors import (ConfigError, CorruptFileError, NonFiniteLossError, NotWritableError,
                       check_writable_folder, reason)
from kd.experiment.lock import hold
from kd.experiment.threads import claim_threads
from kd.train.precision import cpu_model, last_choice, native_bf16
from kd.train.snapshot import restored_time

PROVENANCE_COLUMNS = ("wall_s", "device", "precision", "hardware", "torch", "git_commit",
                      "finished_at")


def results_root() -> Path:
    """``$KD_RESULTS`` or ``results/``."""
    return Path(os.environ.get("KD_RESULTS", "results"))


class ResultsTable:
    """``<root>/<study>/<profile>.csv``; key columns ``study, profile, cell, seed`` come first.

    A file that is not a whole table of this study and profile (unparseable, empty, cut short,
    another schema's or study's) is a :class:`~kd.errors.CorruptFileError` naming it, and is
    never overwritten or appended to.
    """

    KEY = ("study", "profile", "cell", "seed")

    def __init__(self, study: str, profile: str, root: Path | None = None,
                 suffix: str = ""):
        self.study, self.profile, self.root = study, profile, root
        folder = results_root() if root is None else Path(root)
        self.path = folder / study / f"{profile}{suffix}.csv"

    def failures(self) -> "ResultsTable":
        """``<profile>_failures.csv`` beside this table: cells whose training failed (a
        non-finite loss), one row each until a rerun trains them."""
        return ResultsTable(self.study, self.profile, self.root, suffix="_failures")

    def read(self) -> pd.DataFrame:
        if not self.path.exists():
            return pd.DataFrame(columns=list(self.KEY))
        frame = self._parse()
        problem = self._problem(frame)
        if problem is not None:
            raise CorruptFileError(f"results table {self.path} {problem}; it is left as it is")
        return frame

    def _parse(self) -> pd.DataFrame:
        """The file as a frame; the checks our atomic writes make safe to assume of our files."""
        try:
            blob = self.path.read_bytes()
        except OSError as error:
            raise CorruptFileError(f"cannot read results table {self.path} ({reason(error)}): "
                                   f"fix its permissions or move it away, then rerun") from None
        fix = None
        if not blob:
            fix = "is empty (0 bytes): delete it and rerun"
        elif not blob.endswith(b"\n"):  # every row we write ends with one
            fix = "ends in a half-written line: delete that last line and rerun"
        elif b"\0" in blob:  # what a crash of the machine can leave in a file's last blocks
            fix = "contains NUL bytes: repair it or move it away, then rerun"
        if fix is None:
            try:
                text = blob.decode()
                ragged = _ragged_line(text)
                if ragged is None:
                    return pd.read_csv(io.StringIO(text), index_col=False)
                fix = f"has {ragged}: repair that line or move the file away, then rerun"
            except (ValueError, csv.Error) as error:  # not UTF-8, pandas' ParserError, ...
                fix = (f"cannot be parsed as CSV ({reason(error)}): repair it or move it away, "
                       f"then rerun")
        raise CorruptFileError(f"results table {self.path} {fix}; it is left as it is")

    def _problem(self, frame: pd.DataFrame) -> str | None:
        """What makes a parsed file not a table of this study and profile, and what to do."""
        elsewhere = "move it away or pass --results with another folder, then rerun"
        missing = [c for c in self.KEY if c not in frame.columns]
        if missing:
            return (f"has no {', '.join(missing)} column, so it is not a results table of this "
                    f"project: {elsewhere}")
        blank = frame[list(self.KEY)].isna().any(axis=1)
        if blank.any():
            return (f"has a row without study, profile, cell or seed (line "
                    f"{blank.to_numpy().argmax() + 2}): repair or delete that row and rerun")
        seeds = pd.to_numeric(frame["seed"], errors="coerce")
        if seeds.isna().any() or (seeds % 1 != 0).any():
            return "has seeds that are not integers: repair them or move it away, then rerun"
        owners = sorted({f"{s}/{p}" for s, p in zip(frame["study"].astype(str),
                                                     frame["profile"].astype(str))})
        if owners and owners != [f"{self.study}/{self.profile}"]:
            return (f"holds rows of {', '.join(owners)}, not {self.study}/{self.profile}: "
                    f"{elsewhere}")
        return None

    def check_writable(self) -> None:
        """Fail now, before any training, where appending rows would fail after it: a file that
        is not this table, or a folder that cannot be written."""
        self.read()
        check_writable_folder(self.path.parent, f"{self.study} results",
                              "pass --results (or set KD_RESULTS) with a writable folder")

    def lock(self) -> None:
        """Become the one writer of this study and profile's table (its failures table too):
        :func:`kd.experiment.lock.hold` on ``.<profile>.lock`` beside it."""
        hold(self.path.parent / f".{self.profile}.lock", self.path)

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
        self._write(frame)

    def merge(self, sources: Sequence["ResultsTable"]) -> int:
        """Add the rows of other tables of this study and profile (the same profile's seeds run
        by separate processes or machines, ``--seeds A:B``), in one atomic write, rows as they
        are; a ``(cell, seed)`` already here or in two sources is an error and nothing is
        written. Returns the number of rows added."""
        frames = [table.read() for table in sources]  # each checked: this study and profile
        seen = {key: self.path for key in self.done()}
        for table, frame in zip(sources, frames):
            for key in zip(frame["cell"].astype(str), frame["seed"].astype(int)):
                if key in seen:
                    raise ConfigError(f"row {key[0]!r} seed {key[1]} is in both {seen[key]} and "
                                      f"{table.path}: nothing merged")
                seen[key] = table.path
        new = [frame for frame in frames if not frame.empty]
        if not new:
            return 0
        old = [self.read()] if self.path.exists() else []
        self._write(pd.concat(old + new, ignore_index=True))
        return sum(len(f) for f in new)

    def replace(self, frame: pd.DataFrame) -> None:
        """Replace the whole table by ``frame`` (its rows keyed by ``cell`` and ``seed``), in one
        atomic write: for a table that states where something stands now, not rows that add
        up."""
        frame = frame.assign(study=self.study, profile=self.profile)
        if frame.duplicated(["cell", "seed"]).any():
            raise ValueError(f"two rows share a cell and seed: not written to {self.path}")
        self._write(frame)

    def discard(self, cell: str, seed: int) -> None:
        """Remove the row of ``(cell, seed)`` if there is one (atomically, like :meth:`append`)."""
        self.discard_cells([cell], seed)

    def discard_cells(self, cells: Sequence[str], seed: int) -> None:
        """Remove the rows of ``cells`` of ``seed`` that exist, in one read and one atomic
        write: after a kill the table has all of them or none of them removed."""
        frame = self.read()
        drop = frame["cell"].astype(str).isin(cells) & (frame["seed"].astype(int) == seed)
        if drop.any():
            self._write(frame[~drop])

    def reorder(self, order: Sequence[tuple[str, int]]) -> None:
        """Rewrite the table with its rows in the order of ``(cell, seed)`` keys (rows not in
        ``order`` last, as they were), atomically; nothing is written when already in order."""
        frame = self.read()
        rank = {key: k for k, key in enumerate(order)}
        keys = [rank.get((str(c), int(s)), len(rank)) for c, s in zip(frame["cell"], frame["seed"])]
        ordered = frame.assign(_rank=keys).sort_values("_rank", kind="stable").drop(columns="_rank")
        if not ordered.index.equals(frame.index):
            self._write(ordered.reset_index(drop=True))

    def _write(self, frame: pd.DataFrame) -> None:
        """Replace the file by ``frame`` through a temporary file: the old file or the new one,
        never a partial row. Columns: the key first, provenance last; nullable dtypes keep
        integer columns integers where other rows leave them empty."""
        first = [*self.KEY]
        last = [c for c in PROVENANCE_COLUMNS if c in frame.columns]
        middle = [c for c in frame.columns if c not in first and c not in last]
        frame = frame[first + middle + last].convert_dtypes()
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", newline="") as handle:
                frame.to_csv(handle, index=False)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except OSError as error:
            raise NotWritableError(f"cannot write results table {self.path} ({reason(error)}): "
                                   f"it is left as it was; make its folder writable and rerun "
                                   f"to resume") from None
        finally:
            with contextlib.suppress(OSError):  # a parent that is a file: no tmp to remove
                tmp.unlink(missing_ok=True)


def _ragged_line(text: str) -> str | None:
    """The first line whose number of fields differs from the header's, described; every row
    we write has them all (pandas would quietly fill a short row or index by a long one)."""
    rows = csv.reader(io.StringIO(text, newline=""))
    width = len(next(rows, []))
    for row in rows:
        if row and len(row) != width:  # blank lines are skipped, as pandas does
            return f"{len(row)} fields on line {rows.line_num}, its header {width}"
    return None


REPO_ROOT = Path(__file__).resolve().parents[2]
OUTPUT_FOLDERS = ("results", "figures")  # what studies write: rewriting them is not a code change


@lru_cache(maxsize=None)
def git_commit(root: Path = REPO_ROOT) -> str:
    """The checkout's commit, with ``+dirty`` when tracked files other than outputs differ; in a
    copy of the tree without git (a lent GPU machine), ``$KD_GIT_COMMIT`` as the sender set it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, check=True,
                                capture_output=True, text=True).stdout.strip()
        excluded = [f":(exclude){folder}" for folder in OUTPUT_FOLDERS]
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                *excluded], cwd=root, capture_output=True, text=True).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("KD_GIT_COMMIT", "unknown")


def hardware(device_type: str) -> str:
    """A readable name of the machine that ran: the GPU, or the CPU model, whether it lacks
    native bf16 (one model name covers CPUs with and without it, several times apart in speed),
    its core count and the torch threads now (a study's threads may change between cells,
    kd.experiment.threads)."""
    if device_type == "cuda":
        return torch.cuda.get_device_name()
    emulated = "" if native_bf16(torch.device("cpu")) else " without native bf16"
    return f"{cpu_model()}{emulated} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def provenance(device: torch.device, wall_s: float, precision: str = "fp32",
               trained_in: str | None = None) -> dict:
    """The columns every row ends with: how long, where, in what precision, with what, from
    which commit. A study run with ``--precision auto`` records ``trained_in``, the precision
    the row's model trained in where the study knows it (the model's cache spec: it may have
    trained in an earlier process, which this one's choices say nothing about), else what its
    latest training was measured to train in, and bf16's measured speed-up over fp32
    (``bf16_speedup``; :func:`kd.train.precision.last_choice`)."""
    measured = {}
    if precision == "auto" and trained_in is not None:
        precision = trained_in
    elif precision == "auto" and (choice := last_choice()) is not None:
        precision, measured = choice.precision, {"bf16_speedup": choice.bf16_speedup}
    return {"wall_s": round(wall_s, 2), "device": str(device), "precision": precision,
            **measured, "hardware": hardware(device.type),
            "torch": torch.__version__, "git_commit": git_commit(),
            "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def mean_std(values: pd.Series, digits: int = 1, of: str = "seed") -> str:
    """``mean ± std (n seeds)``; the std is left out for a single value. ``of`` names what the
    values are of (``"teacher"``: several models of one seed are not seeds)."""
    values = values.dropna().astype(float)
    if values.empty:
        return "not run"
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f} (1 {of})"
    return f"{values.mean():.{digits}f} ± {values.std():.{digits}f} ({len(values)} {of}s)"


def one_per_teacher(rows: pd.DataFrame) -> pd.DataFrame:
    """A teacher cell's rows, one per teacher: where every seed shares one teacher (one
    ``teacher_seed``) its rows repeat one model's numbers, which are not seeds."""
    if "teacher_seed" not in rows:
        return rows
    return rows.drop_duplicates(["cell", "teacher_seed"])


def seed_range(seeds: int | range) -> range:
    """The seeds a run covers: a count ``N`` is seeds 0 to N-1; a range is itself."""
    return range(seeds) if isinstance(seeds, int) else seeds


def pending(cells: Iterable, seeds: int | range, table: ResultsTable
            ) -> Iterator[tuple[int, object]]:
    """The ``(seed, cell)`` pairs not in the table yet, seed by seed, cells in their order
    (each cell has a ``name``); ``seeds`` is a count or a range (:func:`seed_range`)."""
    done, cells = table.done(), list(cells)
    for seed in seed_range(seeds):
        yield from ((seed, cell) for cell in cells if (cell.name, seed) not in done)


def profile_to_show(folder: Path, planned: Callable[[str], Iterable[tuple[str, int]]],
                    order: Sequence[str] = ("paper", "large", "full", "quick", "smoke"),
                    read: Callable[[str], pd.DataFrame] | None = None) -> str | None:
    """Which of a study's tables a notebook draws: the first in ``order`` whose CSV holds every
    ``(cell, seed)`` its profile plans (``planned(profile)``); else the partial table with the
    most rows; None when there is none. ``read(profile)``: the rows the notebook would draw
    (default: the whole CSV), where a profile reads some seeds only."""
    existing = [p for p in order if (folder / f"{p}.csv").exists()]
    def pairs(profile: str) -> set:
        rows = (read(profile) if read is not None
                else pd.read_csv(folder / f"{profile}.csv", usecols=["cell", "seed"]))
        return set(zip(rows["cell"], rows["seed"]))

    done = {p: pairs(p) for p in existing}
    for profile in existing:
        if set(planned(profile)) <= done[profile]:
            return profile
    # none complete: the one with the most rows (a run whose teachers alone have landed has
    # nothing to draw yet), the first in order among equals
    return max(existing, key=lambda p: (len(done[p]), -existing.index(p))) if existing else None


def run_cells(table: ResultsTable, todo: Iterable[tuple[int, object]],
              run_cell: Callable[[int, object], dict], device: torch.device,
              summary: Callable[[dict], str], precision: str = "fp32") -> int:
    """Train and score each pending ``(seed, cell)`` with ``run_cell``, appending its row (with
    provenance) as soon as it is done, so a killed study loses at most the cell it was on.

    A cell whose training loss stops being finite gets no row: it is recorded in
    ``table.failures()`` (cell, seed, the message naming epoch and term) and the other cells go
    on; a rerun retries it, and its failure row is removed once it trains. Returns the number
    of cells that failed this time."""
    failed = 0
    for seed, cell in todo:
        claim_threads()  # a fair share of the cores, as other kd processes come and go
        restored_time()  # what the cell itself resumes, not what earlier work left behind
        start = time.perf_counter()
        try:
            row = run_cell(seed, cell)
        except NonFiniteLossError as error:
            failed += 1
            record_failure(table, cell.name, seed, error,
                           provenance(device, time.perf_counter() - start, precision))
            continue
        # a training resumed from a snapshot: the killed processes' time too
        wall = time.perf_counter() - start + restored_time()
        trained_in = row.pop("precision", None)  # a row may name its model's (provenance)
        table.append({"cell": cell.name, "seed": seed, **row,
                      **provenance(device, wall, precision, trained_in)})
        table.failures().discard(cell.name, seed)
        print(f"  seed {seed} {cell.name:>36}: {summary(row)} ({wall:.0f} s)")
    return failed


def record_failure(table: ResultsTable, cell: str, seed: int, error: Exception,
                   provenance_columns: dict) -> None:
    """Record (or replace) the failure row of ``(cell, seed)`` and say so on stderr."""
    failures = table.failures()
    failures.discard(cell, seed)
    failures.append({"cell": cell, "seed": seed, "error": str(error), **provenance_columns})
    print(f"  seed {seed} {cell:>36}: FAILED, {error} (recorded in {failures.path}; a rerun "
          f"retries it)", file=sys.stderr)


def failure_lines(table: ResultsTable) -> list[str]:
    """What ``--report`` adds under a study's tables: one line per cell that failed, if any."""
    if not table.failures().path.exists():
        return []
    frame = table.failures().read()
    return [f"FAILED (no row): seed {seed} {cell}: {error}"
            for cell, seed, error in zip(frame["cell"], frame["seed"], frame["error"])]


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


def main(argv: list[str] | None = None) -> None:
    """``python -m kd.experiment.results merge STUDY PROFILE ROOT [ROOT ...]`` adds the
    STUDY/PROFILE rows found under each results ROOT (e.g. the folders of processes that ran
    ``--seeds 0:1``, ``--seeds 1:2``, ...) to the table under ``--results`` (default
    ``$KD_RESULTS`` or ``results/``), rows unchanged. ``python -m kd.experiment.results discard
    STUDY PROFILE SEED CELL [CELL ...]`` removes rows that a study is to score again from the
    models it cached (rows written by a defect mended since; git keeps the old ones)."""
    from kd.experiment.command import OneLineErrorParser

    parser = OneLineErrorParser(description=main.__doc__.split(" adds")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    merge = commands.add_parser("merge", help="add other results folders' rows of one table")
    merge.add_argument("study")
    merge.add_argument("profile")
    merge.add_argument("roots", nargs="+", type=Path)
    discard = commands.add_parser("discard", help="remove rows for the study to score again")
    discard.add_argument("study")
    discard.add_argument("profile")
    discard.add_argument("seed", type=int)
    discard.add_argument("cells", nargs="+")
    for command in (merge, discard):
        command.add_argument("--results", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.command == "discard":
        return discard_rows(ResultsTable(args.study, args.profile, args.results), args.seed,
                            args.cells)
    sources = [ResultsTable(args.study, args.profile, root) for root in args.roots]
    for table in sources:
        if not table.path.exists():
            raise ConfigError(f"no table {table.path} to merge: nothing merged")
    target = ResultsTable(args.study, args.profile, args.results)
    target.lock()  # not while a study writes it
    added = target.merge(sources)
    print(f"{target.path}: {added} rows added")


def discard_rows(table: ResultsTable, seed: int, cells: Sequence[str]) -> None:
    """Remove the rows of ``cells`` of ``seed``, all or none: a cell without a row is said and
    nothing is removed."""
    table.lock()  # not while a study writes it
    done = table.done()  # one read, not one a cell
    missing = [cell for cell in cells if (cell, seed) not in done]
    if missing:
        raise ConfigError(f"{table.path} has no row of seed {seed} for {', '.join(missing)}: "
                          "nothing removed")
    table.discard_cells(cells, seed)
    print(f"{table.path}: {len(cells)} rows of seed {seed} removed")


if __name__ == "__main__":
    from kd.experiment.command import run_main

    raise SystemExit(run_main(main))
