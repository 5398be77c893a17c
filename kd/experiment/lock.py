"""One writer per results table: a study takes its table's lock when it starts, before it
trains, and a second run of the same study and profile into the same results folder stops with
one line naming the first (its pid and command) and exit code 2.

The lock is a ``flock`` (the ``filelock`` package) on ``.<profile>.lock`` beside the table; the
OS releases it when the process ends, killed or not, so a stale lock never blocks a resume. The
holder's pid and command go to ``.<profile>.lock.json`` beside it, for the second run's message
(``flock`` itself cannot say who holds it).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sys
from pathlib import Path

from filelock import FileLock, Timeout

from kd.errors import NotWritableError, TableInUseError, reason

_HELD: dict[Path, FileLock] = {}  # lock file -> its lock, held by this process


def hold(lock_path: Path, table: Path) -> None:
    """Hold ``lock_path``, the lock of ``table``, for as long as this process runs or until
    :func:`release_locks`. Held already by this process: nothing to do (a study resumed
    in-process). Held by another: a :class:`TableInUseError` naming it."""
    if lock_path in _HELD:
        return
    lock = FileLock(lock_path, thread_local=False)
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire(timeout=0)
    except Timeout:
        raise TableInUseError(f"{table} is being written by {holder(lock_path)}: wait for it to "
                              f"finish, or stop it and rerun to resume, or pass --results with "
                              f"another folder") from None
    except OSError as error:
        raise NotWritableError(f"cannot lock results table {table} ({reason(error)}): pass "
                               f"--results (or set KD_RESULTS) with a writable folder") from None
    _HELD[lock_path] = lock
    who = {"pid": os.getpid(), "argv": [Path(sys.executable).name, *sys.argv],
           "started": datetime.datetime.now().isoformat(timespec="seconds")}
    with contextlib.suppress(OSError):  # only the message of a second writer needs it
        _holder_path(lock_path).write_text(json.dumps(who) + "\n")


def _holder_path(lock_path: Path) -> Path:
    return lock_path.with_name(lock_path.name + ".json")


def holder(lock_path: Path) -> str:
    """Who holds ``lock_path``, as its holder wrote it: "process PID (COMMAND), started T"."""
    try:
        who = json.loads(_holder_path(lock_path).read_text())
        return f"process {who['pid']} ({' '.join(who['argv'])}), started {who['started']}"
    except (OSError, ValueError, KeyError, TypeError):  # being written, or removed
        return "another process"


def release_locks() -> None:
    """Release every lock this process holds; :func:`kd.experiment.command.run_main` does when
    a command ends."""
    while _HELD:
        lock_path, lock = _HELD.popitem()
        with contextlib.suppress(OSError):
            _holder_path(lock_path).unlink(missing_ok=True)
        lock.release()
