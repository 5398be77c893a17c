"""A cache of trained models on disk, keyed by everything that decides their weights.

Studies share teachers through it (an architecture, data set, seed and schedule trained once),
and a killed study does not train its teacher again. The key is a hash of a JSON spec; change
any field of the spec (or ``CACHE_VERSION``, when training code changes meaning) and it misses.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from kd.data import cache_root
from kd.errors import ConfigError, check_writable_folder, reason
from kd.experiment.results import hardware
from kd.train.batched import StackedModels
from kd.train.engine import PRECISIONS, fit, fit_lockstep, prepare_model, resolve_auto
from kd.train.snapshot import (copy_atomically, read_snapshot, save_atomically,
                               write_text_atomically)

CACHE_VERSION = 2  # 2: fused Adam
# Trained teachers committed with the results they produced (named by their key): a fresh
# checkout reruns any student cell without training the teacher again. A long run's finished
# models and part-way trainings are carried here too (``carry``; ``snapshots/``).
SHIPPED_ROOT = Path(__file__).resolve().parents[2] / "results" / "models"


def spec_key(spec: dict) -> str:
    """A stable short hash of a JSON-serializable spec (key order does not matter)."""
    text = json.dumps({"cache_version": CACHE_VERSION, **spec}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def write_entry(path: Path, spec: dict, state_dict: dict, meta: dict | None,
                checkpoints: dict[int, dict] | None, hint: str) -> Path:
    """Write one entry through a temporary file (the old file or the new one, never half of
    one); a folder that cannot be written is a :class:`NotWritableError` ending in ``hint``.
    A checkpoint equal to the final weights (the last epoch's) is stored as them, once."""
    checkpoints = {epoch: state_dict if same_weights(state, state_dict) else state
                   for epoch, state in (checkpoints or {}).items()}
    return save_atomically({"spec": json.loads(json.dumps(spec, default=str)), "meta": meta or {},
                            "state_dict": state_dict, "checkpoints": checkpoints},
                           path, "model cache entry", hint)


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class ModelCache:
    """Model weights (and a small metadata dict) stored as ``<root>/models/<key>.pt``."""

    def __init__(self, root: Path | None = None, shipped: Path | None = SHIPPED_ROOT,
                 snapshot_every_s: float = 120.0):
        self.root = (cache_root() if root is None else Path(root)) / "models"
        self.shipped, self.snapshot_every_s = shipped, snapshot_every_s
        self.snapshots = self.root.parent / "snapshots"  # trainings left part-way
        self.finished_log = self.snapshots / "finished.txt"  # names of those since finished

    def path(self, spec: dict) -> Path:
        return self.root / f"{spec_key(spec)}.pt"

    def snapshot_path(self, specs: list[dict]) -> Path:
        """Where the training of ``specs`` (one model, or several trained together) keeps its
        snapshot until they are stored (:mod:`kd.train.snapshot`): a killed study resumes
        them from their last snapshot epoch."""
        name = spec_key(specs[0]) if len(specs) == 1 else spec_key(
            {"together": [spec_key(spec) for spec in specs]})
        return self.snapshots / f"{name}.pt"

    @staticmethod
    def members_path(snapshot: Path) -> Path:
        """Beside the snapshot of several models trained together (a lockstep group or a
        stack, named by their specs, not a key): their keys, one a line, for the listings
        (:func:`part_way`)."""
        return snapshot.with_suffix(".keys")

    def members(self, name: str) -> list[str] | None:
        """The keys of the models whose training left the snapshot ``name`` (here, else
        carried); None where it is one model's (named by its key) or a group begun before its
        members were kept."""
        here = self.members_path(self.snapshots / f"{name}.pt")
        for path in (here, self.carried(here)):
            if path is not None and path.exists():
                return path.read_text(errors="replace").split()  # a garbled key matches none
        return None

    def carried(self, snapshot: Path) -> Path | None:
        """Where a checkout carries ``snapshot`` (``<shipped>/snapshots``, written by
        :func:`carry`): a fresh machine's empty cache resumes the training from it."""
        return None if self.shipped is None else self.shipped / "snapshots" / snapshot.name

    def _resume_from(self, specs: list[dict]) -> Path:
        """The snapshot path of ``specs``, first filled from the carried copy when this cache
        has none (the training goes on in the cache; the carried copy is left as it is). A
        carried copy that cannot be read is a :class:`CorruptFileError` naming it."""
        path = self.snapshot_path(specs)
        carried = self.carried(path)
        if not path.exists() and carried is not None and carried.exists():
            read_snapshot(carried)  # (a group of specs is one training: no count)
            copy_atomically(carried, path, "training snapshot", "set KD_CACHE to a writable folder")
        if len(specs) > 1:
            write_text_atomically("".join(f"{spec_key(spec)}\n" for spec in specs),
                                  self.members_path(path), "the keys of a training snapshot",
                                  "set KD_CACHE to a writable folder")
        return path

    def _stored(self, snapshot: Path) -> None:
        """Forget a finished training's snapshot, and its carried copy where it can (a
        read-only checkout keeps a stale one: resuming from it trains the same steps), and
        note its name in :attr:`finished_log`, for :func:`drop_finished`."""
        if snapshot.exists():
            with contextlib.suppress(OSError), self.finished_log.open("a") as log:
                log.write(f"{snapshot.stem}\n")
        for path in (snapshot, self.members_path(snapshot)):
            path.unlink(missing_ok=True)
            if (carried := self.carried(path)) is not None:
                with contextlib.suppress(OSError):
                    carried.unlink(missing_ok=True)

    def concrete_precision(self, specs: list[dict], config, probe: Callable[[], nn.Module],
                           train):
        """``config`` with ``precision="auto"`` replaced by a concrete one, written into each
        spec's ``train`` config IN PLACE before any key is computed: a model trained in bf16 has
        one key, the one its caller reads from the spec afterwards, whether bf16 was asked for
        or measured to be faster. Specs already begun in one precision (a model stored, or a
        snapshot, here or carried) go on in it; only new ones are measured on this machine
        (``probe()`` builds a model, in a forked random state so that the models trained after
        it are those a run told the precision would train). A run resumed on a machine that
        measures the other way would otherwise start again under other keys."""
        if config.precision != "auto" or not any(map(_asks_auto, specs)):
            return config
        if (begun := self.begun_precision(specs)) is not None:
            config = dataclasses.replace(config, precision=begun)
        else:
            with torch.random.fork_rng(devices=[]):
                config, _ = resolve_auto(config, probe(), train)
        for spec in specs:
            if _asks_auto(spec):
                spec["train"]["precision"] = config.precision
        return config

    def begun_precision(self, specs: list[dict]) -> str | None:
        """The first precision under which some of ``specs`` (asking for ``auto``) are stored
        or the rest left part-way, in this cache or carried in ``shipped``; None if none."""
        for precision in PRECISIONS:
            concrete = [with_precision(spec, precision) for spec in specs]
            missing = [spec for spec in concrete if not self.stored(spec)]
            if len(missing) < len(concrete):
                return precision
            snapshot = self.snapshot_path(missing)
            if snapshot.exists() or ((carried := self.carried(snapshot)) and carried.exists()):
                return precision
        return None

    def stored(self, spec: dict) -> bool:
        """Whether a finished model of ``spec`` is in the cache or shipped (readable or not)."""
        return self.entry_path(spec_key(spec)) is not None

    def entry_path(self, key: str) -> Path | None:
        """Where the entry of ``key`` is: the cache, else the shipped models; None if neither."""
        places = [self.root] + ([self.shipped] if self.shipped is not None else [])
        return next((path for place in places if (path := place / f"{key}.pt").exists()), None)

    def load(self, spec: dict) -> dict | None:
        """``{"state_dict", "meta", "spec"}`` for a hit, from the cache or else from the shipped
        teachers (``results/models``); None for a miss. A truncated, corrupt or foreign entry
        is a miss too, said in one line on stderr: it is trained again and the cache entry is
        overwritten (it is derived data)."""
        if (path := self.entry_path(spec_key(spec))) is None:
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:  # removed since it was found
            return None
        # torch.load of a broken file raises RuntimeError (zip), UnpicklingError, EOFError, ...
        except Exception as error:
            return self._unusable(path, reason(error))
        if not isinstance(entry, dict) or not {"spec", "meta", "state_dict"} <= entry.keys():
            return self._unusable(path, "not a model-cache entry")
        if entry["spec"] != json.loads(json.dumps(spec, default=str)):
            return self._unusable(path, "an entry of another spec")
        return entry

    @staticmethod
    def _unusable(path: Path, why: str) -> None:
        print(f"warning: model cache entry {path} is unusable ({why}); training it again",
              file=sys.stderr)
        return None

    def save(self, spec: dict, state_dict: dict, meta: dict | None = None,
             checkpoints: dict[int, dict] | None = None) -> Path:
        """Store weights, metadata and optional earlier checkpoints ``{epoch: state_dict}``."""
        return write_entry(self.path(spec), spec, state_dict, meta, checkpoints,
                           "set KD_CACHE to a writable folder")

    def fit(self, spec: dict, model: nn.Module, train, objective, config, *, seed: int,
            augment=None, desc: str = "train") -> tuple[nn.Module, dict, dict[int, dict]]:
        """Load ``model``'s weights for ``spec``, or train it with :func:`kd.train.engine.fit` and
        store them; either way return ``(model in eval mode, meta, checkpoints)``.

        ``spec`` must name everything that decides the weights (architecture, data, seed, the
        training config with its checkpoint epochs). meta holds ``train_s``, the training time
        when the model was trained, ``final_train_loss``, its last epoch's mean loss (a
        number, or a list for a stack of students), and ``train_loss_history``, one per epoch
        (absent from entries stored before it was kept).
        """
        config = self.concrete_precision([spec], config, lambda: student_of(objective, model),
                                         train)
        hit = self.load(spec)
        if hit is None:
            # Fail before training, not when storing the result after it.
            check_writable_folder(self.root, "the model cache", "set KD_CACHE to a writable folder")
            snapshot = self._resume_from([spec])
            fitted = fit(model, train, objective, config, seed=seed, augment=augment, desc=desc,
                         snapshot=snapshot, snapshot_every_s=self.snapshot_every_s)
            meta = fit_meta(fitted, train)
            hit = {"meta": meta, "checkpoints": fitted.checkpoints}
            self.save(spec, model.state_dict(), meta, fitted.checkpoints)
            self._stored(snapshot)
        else:
            model.load_state_dict(hit["state_dict"])
        return model.eval(), hit["meta"], hit.get("checkpoints", {})

    def fit_stack(self, specs: list[dict], new_model: Callable[[int], nn.Module], train,
                  objective_for: Callable[[list[int]], object], config, *, seeds: list[int],
                  augment=None, desc: str = "train") -> list[int]:
        """Train the models of ``specs`` that the cache lacks as one
        :class:`kd.train.batched.StackedModels` (member k on the batches of ``seeds[k]``, see
        :func:`kd.train.engine.fit`) and store each under its own spec, as :meth:`fit` would have
        one at a time; return the indices trained. ``new_model(i)`` builds model i untrained (its
        seeded initialization); ``objective_for(indices)`` the objective of a stack of those
        (a live teacher per member is a stack too). meta also holds ``stacked_with``, and
        ``train_s`` is the stack's time divided by its members."""
        config = self.concrete_precision(specs, config, lambda: new_model(0), train)
        missing = [i for i, spec in enumerate(specs) if self.load(spec) is None]
        if not missing:
            return []
        check_writable_folder(self.root, "the model cache", "set KD_CACHE to a writable folder")
        stack = prepare_model(StackedModels([new_model(i) for i in missing],
                                            input_ndim=train.images.dim()), train.device)
        snapshot = self._resume_from([specs[i] for i in missing])
        fitted = fit(stack, train, objective_for(missing), config,
                     seed=[seeds[i] for i in missing], augment=augment, desc=desc,
                     snapshot=snapshot, snapshot_every_s=self.snapshot_every_s)
        member = lambda value, k: value[k] if isinstance(value, list) else value
        checkpoints = {e: stack.split_state(state) for e, state in fitted.checkpoints.items()}
        for k, (i, state) in enumerate(zip(missing, stack.state_dicts())):
            meta = {"train_s": round(fitted.wall_s / len(missing), 2),
                    "stacked_with": len(missing), "trained_on": trained_on(train),
                    "final_train_loss": member(fitted.final.get("train_loss"), k),
                    "train_loss_history": [member(epoch.get("train_loss"), k)
                                           for epoch in fitted.history]}
            self.save(specs[i], state, meta, {e: states[k] for e, states in checkpoints.items()})
        self._stored(snapshot)
        return missing

    def fit_lockstep(self, specs: list[dict], new_run: Callable[[int], tuple[nn.Module, object]],
                     train, config, *, seed: int, augment=None, desc: str = "train") -> list[int]:
        """Train the models of ``specs`` that the cache lacks in lockstep on the batches of
        ``seed`` (:func:`kd.train.engine.fit_lockstep`: each teacher's pass shared between them) and
        store each under its own spec, as :meth:`fit` would have one at a time; return the
        indices trained. ``new_run(i)`` gives model i untrained, prepared for the device, and its
        objective. meta also holds ``lockstep_with``, and ``train_s`` is the lockstep's time
        divided by its models."""
        config = self.concrete_precision(specs, config,
                                         lambda: student_of(*reversed(new_run(0))), train)
        missing = [i for i, spec in enumerate(specs) if self.load(spec) is None]
        if not missing:
            return []
        check_writable_folder(self.root, "the model cache", "set KD_CACHE to a writable folder")
        models, objectives = zip(*(new_run(i) for i in missing))
        snapshot = self._resume_from([specs[i] for i in missing])
        fitted = fit_lockstep(list(models), train, list(objectives), config, seed=seed,
                              augment=augment, desc=desc, snapshot=snapshot,
                              snapshot_every_s=self.snapshot_every_s)
        for i, model, result in zip(missing, models, fitted):
            self.save(specs[i], model.state_dict(),
                      {**fit_meta(result, train), "lockstep_with": len(missing)},
                      result.checkpoints)
        self._stored(snapshot)
        return missing


def _asks_auto(spec: dict) -> bool:
    return isinstance(spec.get("train"), dict) and spec["train"].get("precision") == "auto"


def with_precision(spec: dict, precision: str) -> dict:
    """A copy of ``spec`` whose ``auto`` training precision is ``precision``."""
    if not _asks_auto(spec):
        return spec
    spec = copy.deepcopy(spec)
    spec["train"]["precision"] = precision
    return spec


def student_of(objective, model: nn.Module) -> nn.Module:
    """The network whose speed decides the precision: the student inside a method's model."""
    trained_student = getattr(objective, "trained_student", None)
    return trained_student(model) if trained_student is not None else model


def trained_on(train) -> str:
    """The hardware a model trained on (the device of its training data): a model the cache
    holds may come from another machine than the study that reads it (a lent GPU's teachers)."""
    return hardware(train.images.device.type)


def fit_meta(fitted, train) -> dict:
    """A trained model's cache meta: training time, the hardware it trained on, last epoch's
    mean loss, loss per epoch."""
    return {"train_s": round(fitted.wall_s, 2), "trained_on": trained_on(train),
            "final_train_loss": fitted.final.get("train_loss"),
            "train_loss_history": [epoch.get("train_loss") for epoch in fitted.history]}


def ship(spec: dict, cache: ModelCache | None = None, shipped: Path = SHIPPED_ROOT,
         checkpoints: bool = False) -> Path:
    """Copy a trained model's cache entry into ``shipped`` (``results/models``), to be committed:
    spec, meta and final weights, and its earlier checkpoints only when asked (they multiply the
    size). Written atomically; returns the path."""
    cache = cache or ModelCache()
    entry = cache.load(spec)
    if entry is None:
        raise FileNotFoundError(f"no trained model in {cache.root} for key {spec_key(spec)}")
    return write_entry(shipped / f"{spec_key(spec)}.pt", entry["spec"], entry["state_dict"],
                       entry["meta"], entry.get("checkpoints") if checkpoints else None,
                       f"make {shipped} writable")


def ship_key(key: str, cache: ModelCache, shipped: Path = SHIPPED_ROOT,
             checkpoints: bool = False) -> Path:
    """:func:`ship` the entry stored under ``key`` in ``cache``; an entry that cannot be read
    is a :class:`ConfigError`."""
    try:  # the entry's spec, to load it as a study would
        spec = torch.load(cache.root / f"{key}.pt", map_location="cpu", weights_only=True)["spec"]
    except Exception:
        raise ConfigError(f"no readable entry {key} in {cache.root} "
                          f"(python -m kd.experiment.cache list)") from None
    return ship(spec, cache, shipped=shipped, checkpoints=checkpoints)


def carry(keys: list[str], cache: ModelCache) -> list[Path]:
    """Copy into ``cache.shipped`` what a checkout must hold for a long run to go on on a
    machine without this cache: the entries of ``keys`` it lacks (with their checkpoints, which
    later trainings may read), and every training left part-way (its snapshot, which
    :meth:`ModelCache.fit` resumes from, and a group's member keys; an older copy is
    replaced). Returns the paths written."""
    written = [ship_key(key, cache, cache.shipped, checkpoints=True) for key in keys
               if (cache.root / f"{key}.pt").exists()
               and not (cache.shipped / f"{key}.pt").exists()]
    for snapshot in sorted(cache.snapshots.glob("*.pt")):
        for path in (snapshot, cache.members_path(snapshot)):
            if path.exists():
                written.append(copy_atomically(path, cache.carried(path), "training snapshot",
                                               f"make {cache.shipped} writable"))
    return written


def drop_finished(cache: ModelCache) -> list[Path]:
    """Delete the carried snapshots (``<shipped>/snapshots``) of trainings that have finished
    since, and are not left part-way in the cache: those this cache noted as finished (a
    lockstep group's too, whose snapshot is named by its specs) and those of a key with a stored
    model. A run in another checkout (a worktree) forgets its own carried copy, not this one's.
    Returns the paths deleted."""
    if cache.shipped is None:
        return []
    finished = set(cache.finished_log.read_text(errors="replace").split()) \
        if cache.finished_log.exists() else set()  # a garbled line matches no name
    stale = [path for path in sorted((cache.shipped / "snapshots").glob("*.pt"))
             if (path.stem in finished or cache.entry_path(path.stem) is not None)
             and not (cache.snapshots / path.name).exists()]
    for path in stale:
        path.unlink()
        cache.members_path(path).unlink(missing_ok=True)
    return stale


def entries(cache: ModelCache | None = None) -> list[tuple[str, dict, int]]:
    """(key, spec, bytes) of every entry in the cache, newest first; unreadable ones skipped."""
    cache = cache or ModelCache()
    out = []
    for path in sorted(cache.root.glob("*.pt"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            out.append((path.stem, entry["spec"], path.stat().st_size))
        except Exception:  # a broken entry is retrained when a study needs it; not listed
            continue
    return out


def in_training(cache: ModelCache | None = None) -> list[tuple[str, int, float]]:
    """(snapshot name, epochs done, training seconds so far) of every training a killed study
    left part-way (:mod:`kd.train.snapshot`), newest first, then those only carried by the
    checkout (:func:`carry`); unreadable ones skipped."""
    cache = cache or ModelCache()
    local = sorted(cache.snapshots.glob("*.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    carried = [] if cache.shipped is None else sorted(
        path for path in (cache.shipped / "snapshots").glob("*.pt")
        if not (cache.snapshots / path.name).exists())
    out = []
    for path in local + carried:
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            out.append((path.stem, int(saved["epoch"]), float(saved["wall_s"])))
        except Exception:  # the study that resumes it says what is wrong with it
            continue
    return out


def part_way(cache: ModelCache | None = None) -> dict[str, int]:
    """Epochs done of every model left part-way (:func:`in_training`), by its key: one model's
    snapshot is named by its key; a group's names its members in the keys beside it
    (:meth:`ModelCache.members`)."""
    cache = cache or ModelCache()
    done: dict[str, int] = {}
    for name, epoch, _ in in_training(cache):  # the cache's own first, then carried ones
        for key in cache.members(name) or [name]:
            done.setdefault(key, epoch)
    return done


def main(argv: list[str] | None = None) -> None:
    """``python -m kd.experiment.cache list`` shows the trained models in the cache; ``python -m
    kd.experiment.cache ship KEY [KEY ...]`` copies them (final weights; ``--checkpoints`` adds the
    earlier ones) into ``results/models`` to be committed."""
    from kd.experiment.command import OneLineErrorParser

    parser = OneLineErrorParser(description=main.__doc__.split(";")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the cache's entries, newest first, then the trainings "
                                     "left part-way")
    ship_parser = commands.add_parser("ship", help="copy entries into results/models")
    ship_parser.add_argument("keys", nargs="+")
    ship_parser.add_argument("--checkpoints", action="store_true")
    args = parser.parse_args(argv)
    cache = ModelCache(shipped=None)
    if args.command == "list":
        for key, spec, size in entries(cache):
            summary = ", ".join(f"{k}={spec[k]}" for k in ("data", "arch", "role", "seed")
                                if k in spec)
            if isinstance(spec.get("train"), dict) and "precision" in spec["train"]:
                summary += f", precision={spec['train']['precision']}"  # part of the key
            print(f"{key}  {size / 1e6:6.1f} MB  {summary}")
        for name, epoch, wall_s in in_training(cache):
            group = cache.members(name)
            print(f"{name}  in training{f' ({len(group)} models together)' if group else ''}: "
                  f"{epoch} epochs done, {wall_s / 60:.0f} min so far "
                  f"(a rerun of its study resumes it)")
        return
    for key in args.keys:
        path = ship_key(key, cache, SHIPPED_ROOT, checkpoints=args.checkpoints)
        print(f"{path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    from kd.experiment.command import run_main

    raise SystemExit(run_main(main))
