"""What every study's command line shares: its arguments (:func:`study_parser`) and what it
runs with (:func:`open_study`: the profile, the results table, locked, the device and precision).
How errors end the process is :mod:`kd.experiment.command`'s (re-exported here: a study's
``main`` runs through :func:`run_main`)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from kd.experiment.command import (EXIT_BAD_INPUT, OneLineErrorParser, importable,  # noqa: F401
                                   positive_int, run_main, with_compile, with_training)
from kd.experiment.executor import require_ray
from kd.experiment.results import ResultsTable, failure_lines


def study_parser(description: str, profiles: Sequence[str]) -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--profile", choices=list(profiles), default="quick",
                        help="smoke: seconds, for tests; quick: a 2-core CPU in minutes; "
                             "full: a 2-core CPU in hours, sized to decide the claims; "
                             "paper: the paper's settings, for a GPU")
    parser.add_argument("--seeds", type=seed_selection, default=None,
                        help="number of seeds (0, 1, ..., N-1), or A:B for seeds A to B-1 alone "
                             "(to split a profile's seeds between processes or machines); "
                             "default: the profile's")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile every training forward pass (for GPUs; slow to start)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                        default=os.environ.get("KD_PRECISION", "auto"),
                        help="training steps in fp32 or bf16 autocast; auto: per model, "
                             "whichever a short timed calibration finds faster on this machine "
                             "(bf16 only where the device computes it natively and it is at "
                             "least 1.1x faster; kd.train.precision); the default comes from "
                             "$KD_PRECISION when set")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads (default $KD_THREADS, else every core this process "
                             "may use, shared with the other kd processes running: a study "
                             "beside the tests takes one of two cores; kd.experiment.threads)")
    parser.add_argument("--report", action="store_true",
                        help="print the study's paper-vs-ours tables for the profile's results "
                             "and exit")
    parser.add_argument("--results", default=None,
                        help="results root (default $KD_RESULTS or results/)")
    parser.add_argument("--executor", choices=["local", "ray"], default="local",
                        help="local: the cells one after another in this process; ray: each "
                             "cell a Ray task, after the tasks whose models it uses (needs "
                             "pip install -e '.[ray]')")
    parser.add_argument("--ray-address", default=None,
                        help="the Ray cluster to run on (default: $RAY_ADDRESS when set, else "
                             "a local Ray instance started for the run)")
    parser.add_argument("--ray-cpus", type=positive_float, default=1.0,
                        help="CPUs each cell's task asks Ray for (and its torch threads)")
    parser.add_argument("--ray-gpus", type=nonnegative_float, default=None,
                        help="GPUs each cell's task asks Ray for (0.5: two cells per GPU); "
                             "default 1 when the device is CUDA, or auto on a cluster with "
                             "GPUs, else 0")
    return parser


@dataclasses.dataclass(frozen=True)
class StudyCommand:
    """A parsed study command line, ready to run: the arguments, the profile (``--compile`` and
    the precision applied), its results table (a :class:`kd.experiment.results.ResultsTable`), the
    device and the resolved precision (``fp32`` or ``bf16``)."""

    args: argparse.Namespace
    profile: object
    table: object
    device: object
    precision: str = "fp32"
    executor: str = "local"  # --executor: local, or ray (kd.experiment.executor)


def report_text(table, report: Callable, select: Callable | None = None) -> str:
    """What ``--report`` prints for a results table: ``report(rows)`` and a line per failed
    cell. ``select(table, rows)`` gives the rows the report reads and lines said before it (a
    profile whose verdicts read some seeds only); no rows left: the lines alone.
    ``studies.docs`` writes the same text into the study pages."""
    rows, notes = table.read_or_fail(), []
    if select is not None:
        rows, notes = select(table, rows)
    return "\n".join([*notes, *([report(rows)] if not rows.empty else []),
                      *failure_lines(table)])


def open_study(argv: list[str] | None, *, study: str, description: str, profiles: dict,
               report: Callable, datasets: Sequence[str] = (),
               dataset_help: str | None = None,
               select: Callable | None = None) -> StudyCommand | None:
    """Parse a study's command line (:func:`study_parser`). With ``--report``, print
    ``report(rows)`` for the profile's results (``select``: :func:`report_text`) and return
    None; otherwise return what the study
    runs with. ``datasets`` adds ``--dataset`` (default the first); the rows of another data
    set go to ``<profile>_<dataset>.csv``."""
    from kd.experiment.threads import claim_threads
    from kd.train.engine import native_bf16, resolve_device, resolve_precision

    parser = study_parser(description, profiles)
    if datasets:
        parser.add_argument("--dataset", choices=list(datasets), default=datasets[0],
                            help=dataset_help)
    args = parser.parse_args(argv)
    other_data = datasets and args.dataset != datasets[0]
    name = f"{args.profile}_{args.dataset}" if other_data else args.profile
    table = ResultsTable(study, name, args.results and Path(args.results))
    if args.report:
        print(report_text(table, report, select))
        return None
    if args.threads is not None:
        os.environ["KD_THREADS"] = str(args.threads)  # kept by every later claim
    claim_threads()
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    if precision == "bf16" and not native_bf16(device):
        print(f"warning: {device} has no native bf16; it is emulated, and much slower than fp32",
              file=sys.stderr)
    table.check_writable()  # a foreign table or a read-only folder: say so before training
    if args.executor == "ray":
        require_ray()  # not installed: say so before training
    profile = with_training(with_compile(profiles[args.profile], args.compile),
                            precision=precision)
    table.lock()  # one writer per table: a second run of this study and profile stops here
    return StudyCommand(args, profile, table, device, precision, args.executor)


def seed_selection(text: str) -> int | range:
    """``N`` (seeds 0 to N-1, as a count) or ``A:B`` (seeds A to B-1, as a range)."""
    if ":" not in text:
        return positive_int(text)
    first, _, stop = text.partition(":")
    try:
        seeds = range(int(first), int(stop))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or A:B (seeds A to B-1), got {text!r}") from None
    if seeds.start < 0 or not seeds:
        raise argparse.ArgumentTypeError(f"expected 0 <= A < B in A:B, got {text!r}")
    return seeds


def positive_float(text: str) -> float:
    value = nonnegative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value
