"""Resume a killed training where it stopped: a snapshot of everything that decides the next
epoch, written at epoch ends.

A resumed run takes the same steps as one that never stopped: the weights and batch-norm
statistics, the optimizer's moments, the schedule's step, the history and checkpoints so far,
every random stream the run draws from (the batch order and augmentation generators, torch's
global CPU generator (not CUDA's: nothing in the engine's step draws from it), and the state an
objective's modules keep through torch's
``get_extra_state``, such as :class:`kd.methods.schemes.RandomTeacher`'s draws) and the training
time spent. A snapshot is written through a temporary file (the old one or the new one, never
half of one) and belongs to the caller, who names its path and removes it once the finished
model is stored (:meth:`kd.experiment.cache.ModelCache.fit` does both).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

import torch
from torch import nn

from kd.errors import CorruptFileError, NotWritableError, reason

SNAPSHOT_VERSION = 1
_restored_s = 0.0  # training seconds restored from snapshots since restored_time() last read


def restored_time() -> float:
    """Seconds of training that snapshots restored since the last call, and reset: the time
    the killed processes spent, which the clock of the process that resumes does not see (the
    results harness adds it to a row's ``wall_s``)."""
    global _restored_s
    seconds, _restored_s = _restored_s, 0.0
    return seconds


@contextlib.contextmanager
def _written_atomically(path: Path, what: str, hint: str):
    """Yield a temporary path beside ``path`` to write, then move it into place (the old file
    or the new one, never half of one); a folder that cannot be written is a
    :class:`NotWritableError` naming ``what`` and ending in ``hint``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as error:
        raise NotWritableError(f"cannot write {what} {path} ({reason(error)}): {hint}") from None
    finally:
        with contextlib.suppress(OSError):  # after a failed save (or a parent that is a file)
            tmp.unlink(missing_ok=True)


def save_atomically(obj, path: Path, what: str, hint: str) -> Path:
    """``torch.save`` to ``path`` atomically (:func:`_written_atomically`)."""
    with _written_atomically(path, what, hint) as tmp:
        torch.save(obj, tmp)
    return path


def write_text_atomically(text: str, path: Path, what: str, hint: str) -> Path:
    """Write ``text`` to ``path`` atomically (:func:`_written_atomically`)."""
    with _written_atomically(path, what, hint) as tmp:
        tmp.write_text(text)
    return path


def copy_atomically(source: Path, path: Path, what: str, hint: str) -> Path:
    """Copy the file ``source`` to ``path`` atomically (:func:`_written_atomically`)."""
    with _written_atomically(path, what, hint) as tmp:
        shutil.copyfile(source, tmp)
    return path


def stateful_modules(objective) -> dict[str, nn.Module]:
    """The modules an objective holds (its teacher, a projection) that keep state outside their
    weights (they override ``get_extra_state``), by a stable name."""
    found = {}
    for attr, value in sorted(vars(objective).items()):
        if isinstance(value, nn.Module):
            for name, module in value.named_modules(prefix=attr):
                if type(module).get_extra_state is not nn.Module.get_extra_state:
                    found[name] = module
    return found


def training_state(training) -> dict:
    """One :class:`kd.train.engine._Training`'s part of a snapshot."""
    return {"model": training.model.state_dict(),
            "optimizer": training.optimizer.state_dict(),
            "schedule": training.schedule.state_dict(),
            "objective": {name: m.get_extra_state()
                          for name, m in stateful_modules(training.objective).items()},
            "history": training.result.history,
            "checkpoints": training.result.checkpoints,
            "precision": training.config.precision}


def restore_training(training, state: dict, path: Path) -> None:
    if state["precision"] != training.config.precision:
        raise CorruptFileError(f"training snapshot {path} was trained in {state['precision']}, "
                               f"not {training.config.precision}: delete it to start over")
    training.model.load_state_dict(state["model"])
    training.optimizer.load_state_dict(state["optimizer"])
    training.schedule.load_state_dict(state["schedule"])
    modules = stateful_modules(training.objective)
    for name, extra in state["objective"].items():
        modules[name].set_extra_state(extra)
    training.result.history = state["history"]
    training.result.checkpoints = state["checkpoints"]


def read_snapshot(path: Path, trainings: int | None = None) -> dict:
    """The snapshot at ``path`` (of ``trainings`` trainings, when given); a file that is not
    one (truncated, another program's, another run's) is a :class:`CorruptFileError`."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        assert saved["version"] == SNAPSHOT_VERSION
        assert trainings is None or len(saved["trainings"]) == trainings
    except Exception as error:
        raise CorruptFileError(f"training snapshot {path} cannot be read ({reason(error)}): "
                               f"delete it to train from the start") from None
    return saved


class Snapshots:
    """The snapshot file of one run (``path``; None: no snapshots), written after an epoch when
    ``every_s`` seconds have passed since the last one, and always after the last epoch."""

    def __init__(self, path: Path | None, every_s: float = 120.0):
        self.path, self.every_s = (Path(path) if path is not None else None), every_s
        self.last = time.perf_counter()

    def load(self, trainings: list, generators: list[torch.Generator]) -> tuple[int, float]:
        """Restore the trainings and generators from the snapshot, if there is one; return
        ``(epochs done, training seconds spent)`` ((0, 0.0) when there is none)."""
        if self.path is None or not self.path.exists():
            return 0, 0.0
        saved = read_snapshot(self.path, len(trainings))
        for training, state in zip(trainings, saved["trainings"]):
            restore_training(training, state, self.path)
        for generator, state in zip(generators, saved["generators"]):
            generator.set_state(state)
        torch.set_rng_state(saved["torch_rng"])
        global _restored_s
        _restored_s += saved["wall_s"]
        return saved["epoch"], saved["wall_s"]

    def maybe_save(self, epoch: int, last_epoch: int, trainings: list,
                   generators: list[torch.Generator], wall_s: float) -> bool:
        if self.path is None or (epoch < last_epoch
                                 and time.perf_counter() - self.last < self.every_s):
            return False
        self.save(epoch, trainings, generators, wall_s)
        return True

    def save(self, epoch: int, trainings: list, generators: list[torch.Generator],
             wall_s: float) -> None:
        save_atomically({"version": SNAPSHOT_VERSION, "epoch": epoch, "wall_s": wall_s,
                         "trainings": [training_state(t) for t in trainings],
                         "generators": [g.get_state() for g in generators],
                         "torch_rng": torch.get_rng_state()},
                        self.path, "training snapshot", "set KD_CACHE to a writable folder")
        self.last = time.perf_counter()
