"""Errors that mean "bad input": the command-line entry points turn them into one line and exit 2."""

from __future__ import annotations

import os
from pathlib import Path


class KDError(Exception):
    """Base class for user-facing errors (bad arguments, missing data, bad configuration)."""


class DataNotFoundError(KDError):
    """A data set's files are not under the data root and could not be downloaded."""


class ConfigError(KDError, ValueError):
    """An argument or configuration value is out of range or inconsistent."""


class CorruptFileError(KDError):
    """A file is there but cannot be read as what it should be (truncated, corrupt, or another
    program's or study's file). The message names the file and says what to do; the file is
    left as it is."""


class NotWritableError(KDError):
    """A folder that a run must write into cannot be written (it is a file, or read-only)."""


class TableInUseError(KDError):
    """Another running process writes the results table (one writer per table and profile);
    the message names it (pid and command) and says what to do."""


def blocking_file(folder: Path) -> Path | None:
    """The file that stands where ``folder`` or one of its parents should be, if any."""
    for path in (Path(folder), *Path(folder).parents):
        if path.exists():
            return None if path.is_dir() else path
    return None


def check_writable_folder(folder: Path, what: str, hint: str) -> None:
    """Raise :class:`NotWritableError` unless ``folder`` is, or could be created as, a folder
    this process may write in. Nothing is created: a run that fails later leaves no trace."""
    folder = Path(folder)
    try:
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        problem = (None if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)
                   else "is not writable" if existing.is_dir() else "is a file, not a folder")
    except OSError as error:  # e.g. a parent that may not be searched
        existing, problem = folder, f"cannot be checked ({reason(error)})"
    if problem:
        raise NotWritableError(f"cannot write {what} under {folder}: {existing} {problem}; {hint}")


def reason(error: BaseException) -> str:
    """A library exception as a short phrase for a one-line message (its text, on one line)."""
    if isinstance(error, OSError) and error.strerror:  # its str repeats the (long) path
        return error.strerror
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 120 else text[:117] + "..."


class NonFiniteLossError(KDError):
    """Training produced a loss term that is NaN or infinite; the message names the model,
    the epoch and the term. A study records the cell as failed and goes on with the others."""
