"""Torch threads set on purpose: every core for one process, a fair share for several.

Two processes at two threads each on two cores oversubscribe them, and step times then swing
by up to 10x (a study beside the test suite: 36 minutes for a suite that takes 5.5 alone). So
every kd process that trains (a study, the test session) registers itself in a folder of the
machine (``$KD_PROCESSES``, else ``<tmp>/kd-processes``), one file named by its pid, and takes
``cores // live processes`` threads (at least one); a study claims again before each cell, so
it gives up a core when the tests start beside it and takes it back when they end.
``$KD_THREADS`` (or a study's ``--threads``) fixes the count instead; a count set by other
code in the process since the last claim is left alone. A file left by a killed process names a
pid that no longer runs and is not counted (and is removed).
"""

from __future__ import annotations

import atexit
import os
import tempfile
from pathlib import Path

import torch

from kd.errors import ConfigError


def available_cores() -> int:
    """The cores this process may run on (its affinity mask), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def registry() -> Path:
    return Path(os.environ.get("KD_PROCESSES") or Path(tempfile.gettempdir()) / "kd-processes")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it runs
        return True
    return True


def register() -> None:
    """Put this process in the registry (once); it leaves at exit."""
    me = registry() / str(os.getpid())
    if me.exists():
        return
    try:
        me.parent.mkdir(parents=True, exist_ok=True)
        me.touch()
    except OSError:  # an unwritable temp folder: count nobody, use every core
        return
    atexit.register(lambda: me.unlink(missing_ok=True))


def live_processes() -> int:
    """Registered processes that still run, this one included; stale files are removed."""
    count = 0
    for entry in registry().glob("*"):
        if not entry.name.isdigit():
            continue
        if alive(int(entry.name)):
            count += 1
        else:
            entry.unlink(missing_ok=True)
    return max(count, 1)


def fixed_threads() -> int | None:
    """``$KD_THREADS`` as a positive count, None when unset; anything else is a ConfigError."""
    text = os.environ.get("KD_THREADS")
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"KD_THREADS={text!r} is not a positive number of threads")
    return int(text)


def share(cores: int, processes: int) -> int:
    """Each of ``processes`` processes' share of ``cores``: at least one thread."""
    return max(1, cores // max(processes, 1))


_CLAIMED: list[int] = []  # the count the last claim set (see claim_threads)


def claim_threads() -> int:
    """Register this process and set torch's intra-op threads to its share (or to
    ``$KD_THREADS``); returns the count. A count that someone else set since the last claim
    (a test's :func:`kd.train.engine.torch_threads`, a Ray task) is theirs: it is left as it is
    and returned."""
    current = torch.get_num_threads()
    threads = fixed_threads()
    if threads is None:
        register()
        if _CLAIMED and current != _CLAIMED[0]:
            return current
        threads = share(available_cores(), live_processes())
    if current != threads:
        torch.set_num_threads(threads)
    _CLAIMED[:] = [threads]
    return threads


__all__ = ["claim_threads", "share", "live_processes", "register", "available_cores",
           "fixed_threads"]
