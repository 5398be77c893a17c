"""What every study's command line shares: its arguments and how errors end the process."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from kd.errors import ConfigError, KDError

EXIT_BAD_INPUT = 2


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument error is a :class:`ConfigError`, so :func:`run_main` prints it as one line
    and exits 2 (argparse itself prints the usage, several lines, before its message)."""

    def error(self, message: str):
        raise ConfigError(f"{message} (see --help)")


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
                        help="training steps in fp32 or bf16 autocast; auto: bf16 where the "
                             "device computes it natively (CUDA, AVX512_BF16 or AMX CPUs); "
                             "the default comes from $KD_PRECISION when set")
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


def with_training(profile, **settings):
    """The profile with ``settings`` (e.g. ``compile=True``, ``precision="bf16"``) in every
    :class:`~kd.train.engine.TrainConfig` it holds, directly or as the values of a dict (named
    candidates); the same object when nothing changes."""
    from kd.train.engine import TrainConfig

    def changed(value):
        if isinstance(value, TrainConfig):
            return dataclasses.replace(value, **settings)
        if isinstance(value, dict) and any(isinstance(v, TrainConfig) for v in value.values()):
            return {k: changed(v) for k, v in value.items()}
        return value

    changes = {f.name: changed(getattr(profile, f.name)) for f in dataclasses.fields(profile)}
    same = all(changes[name] == getattr(profile, name) for name in changes)
    return profile if same else dataclasses.replace(profile, **changes)


def with_compile(profile, enabled: bool):
    """The profile with ``compile=True`` in every :class:`~kd.train.engine.TrainConfig` it holds."""
    return with_training(profile, compile=True) if enabled else profile


@dataclasses.dataclass(frozen=True)
class StudyCommand:
    """A parsed study command line, ready to run: the arguments, the profile (``--compile`` and
    the precision applied), its results table (a :class:`kd.experiment.results.ResultsTable`), the device
    and the resolved precision (``fp32`` or ``bf16``)."""

    args: argparse.Namespace
    profile: object
    table: object
    device: object
    precision: str = "fp32"
    executor: str = "local"  # --executor: local, or ray (kd.experiment.executor)


def open_study(argv: list[str] | None, *, study: str, description: str, profiles: dict,
               report: Callable, datasets: Sequence[str] = (),
               dataset_help: str | None = None) -> StudyCommand | None:
    """Parse a study's command line (:func:`study_parser`). With ``--report``, print
    ``report(rows)`` for the profile's results and return None; otherwise return what the study
    runs with. ``datasets`` adds ``--dataset`` (default the first); the rows of another data
    set go to ``<profile>_<dataset>.csv``."""
    from kd.train.engine import native_bf16, resolve_device, resolve_precision
    from kd.experiment.results import ResultsTable, failure_lines

    parser = study_parser(description, profiles)
    if datasets:
        parser.add_argument("--dataset", choices=list(datasets), default=datasets[0],
                            help=dataset_help)
    args = parser.parse_args(argv)
    other_data = datasets and args.dataset != datasets[0]
    name = f"{args.profile}_{args.dataset}" if other_data else args.profile
    table = ResultsTable(study, name, args.results and Path(args.results))
    if args.report:
        print("\n".join([report(table.read_or_fail()), *failure_lines(table)]))
        return None
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    if precision == "bf16" and not native_bf16(device):
        print(f"warning: {device} has no native bf16; it is emulated, and much slower than fp32",
              file=sys.stderr)
    table.check_writable()  # a foreign table or a read-only folder: say so before training
    if args.executor == "ray":
        from kd.experiment.executor import require_ray

        require_ray()  # not installed: say so before training
    profile = with_training(with_compile(profiles[args.profile], args.compile),
                            precision=precision)
    table.lock()  # one writer per table: a second run of this study and profile stops here
    return StudyCommand(args, profile, table, device, precision, args.executor)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


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


def importable(function: Callable) -> Callable:
    """``function``, or where it was defined in ``__main__`` (``python -m studies.<name>``) the
    same function of that module imported under its own name, so that what it creates (cells,
    profiles) pickles by reference for the workers of ``--executor ray``."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if function.__module__ != "__main__" or spec is None or spec.name == "__main__":
        return function
    return getattr(importlib.import_module(spec.name), function.__name__)


def run_main(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    """Run a study's ``main``; a :class:`KDError` becomes one line on stderr and exit code 2."""
    from kd.experiment.results import release_locks

    main = importable(main)
    try:
        main(argv)
    except KDError as error:
        one_line = " ".join(str(error).splitlines())
        print(f"error: {one_line}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted: finished rows are saved; rerun the same command to resume",
              file=sys.stderr)
        return 130
    finally:
        release_locks()  # the tables it wrote (the OS would, when the process ends)
    return 0
