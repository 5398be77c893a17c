"""What every study's command line shares: its arguments and how errors end the process."""

from __future__ import annotations

import argparse
import dataclasses
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
                             "paper: the paper's settings, for a GPU")
    parser.add_argument("--seeds", type=positive_int, default=None,
                        help="number of seeds (0, 1, ..., N-1); default: the profile's")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile every training forward pass (for GPUs; slow to start)")
    parser.add_argument("--report", action="store_true",
                        help="print the study's paper-vs-ours tables for the profile's results "
                             "and exit")
    parser.add_argument("--results", default=None,
                        help="results root (default $KD_RESULTS or results/)")
    return parser


def with_compile(profile, enabled: bool):
    """The profile with ``compile=True`` in every :class:`~kd.engine.TrainConfig` it holds."""
    from kd.engine import TrainConfig

    if not enabled:
        return profile
    changes = {f.name: dataclasses.replace(getattr(profile, f.name), compile=True)
               for f in dataclasses.fields(profile)
               if isinstance(getattr(profile, f.name), TrainConfig)}
    return dataclasses.replace(profile, **changes)


@dataclasses.dataclass(frozen=True)
class StudyCommand:
    """A parsed study command line, ready to run: the arguments, the profile (``--compile``
    applied), its results table (a :class:`kd.results.ResultsTable`) and the device."""

    args: argparse.Namespace
    profile: object
    table: object
    device: object


def open_study(argv: list[str] | None, *, study: str, description: str, profiles: dict,
               report: Callable, datasets: Sequence[str] = (),
               dataset_help: str | None = None) -> StudyCommand | None:
    """Parse a study's command line (:func:`study_parser`). With ``--report``, print
    ``report(rows)`` for the profile's results and return None; otherwise return what the study
    runs with. ``datasets`` adds ``--dataset`` (default the first); the rows of another data
    set go to ``<profile>_<dataset>.csv``."""
    from kd.engine import resolve_device
    from kd.results import ResultsTable

    parser = study_parser(description, profiles)
    if datasets:
        parser.add_argument("--dataset", choices=list(datasets), default=datasets[0],
                            help=dataset_help)
    args = parser.parse_args(argv)
    other_data = datasets and args.dataset != datasets[0]
    name = f"{args.profile}_{args.dataset}" if other_data else args.profile
    table = ResultsTable(study, name, args.results and Path(args.results))
    if args.report:
        print(report(table.read_or_fail()))
        return None
    device = resolve_device(args.device)
    table.check_writable()  # a foreign table or a read-only folder: say so before training
    return StudyCommand(args, with_compile(profiles[args.profile], args.compile), table, device)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def run_main(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    """Run a study's ``main``; a :class:`KDError` becomes one line on stderr and exit code 2."""
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
    return 0
