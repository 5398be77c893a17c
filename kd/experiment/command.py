"""What every command of the harness shares: bad input as one line and exit code 2
(:func:`run_main`, :class:`OneLineErrorParser`), argument types, and a profile's training
settings (:func:`with_training`)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from typing import Callable

from kd.errors import ConfigError, KDError
from kd.experiment.lock import release_locks

EXIT_BAD_INPUT = 2


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument error is a :class:`ConfigError`, so :func:`run_main` prints it as one line
    and exits 2 (argparse itself prints the usage, several lines, before its message)."""

    def error(self, message: str):
        raise ConfigError(f"{message} (see --help)")


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


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
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
