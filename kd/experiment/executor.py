"""Where a study's cells run: here, one after another (``--executor local``, the default: the
loop of :func:`kd.experiment.results.run_cells`), or as tasks on a Ray cluster (``--executor ray``).

Under Ray each pending cell is one task (``alpha_temperature``: one per stacked group of
students, as it trains them). A task asks Ray for ``--ray-cpus`` CPUs (default 1; it also sets
the task's torch threads) and ``--ray-gpus`` GPUs (default 1 when the study runs on CUDA, which
``--device auto`` does when the cluster has GPUs; 0 otherwise; 0.5 puts two cells on a GPU).

Order: a study names the shared models each cell trains or loads (``models_used(seed, cell)``:
a teacher, an assistant, a scratch student, ...). In run order, the first cell that uses a
model trains it (or loads it from the cache); every later pending cell that uses it gets that
cell's task's result (an object reference) as an argument, so Ray starts it only after the
model exists. Where that first cell already has a row, the model is taken to be in the cache
and nothing waits. The trained weights travel through the model cache, not the object store:
it stays the one source of truth (keyed by everything that decides the weights, shared with
the other studies and with later runs), so ``KD_CACHE`` must be a folder every worker reads
and writes (one machine: any local folder; a cluster: a shared file system).

A task returns its rows; only the driver writes the results table, appending each row as it
arrives (:meth:`kd.experiment.results.ResultsTable.append`), so resuming, provenance and
``--report`` work as under ``local``. A cell that raises gets a row in ``<profile>_failures.csv``
(:func:`kd.experiment.results.record_failure`) and the other cells go on; bad input (a
:class:`~kd.errors.KDError` other than a non-finite loss, e.g. missing data) stops the run with
one line, as under ``local``. When every cell has run, the table is rewritten once in run order
(the rows arrive in the order they finish).

Workers rebuild a study's state from its module's runner (a module-level function
``runner(command)``, looked up by name) and the parsed command line, which is pickled small:
arguments, profile, device and precision, never models or data.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable, Iterable, Sequence

import torch
from tqdm.auto import tqdm

from kd.errors import ConfigError, KDError, NonFiniteLossError
from kd.experiment.results import git_commit, provenance, record_failure, seed_range

EXECUTORS = ("local", "ray")
RAY_HINT = "install it with pip install -e '.[ray]' (or pip install 'ray>=2.9'), or use --executor local"


@dataclass(frozen=True)
class Unit:
    """One task: the cells it trains for one seed (one cell, or a stacked group trained
    together) and the indices of earlier units whose models it uses."""

    seed: int
    cells: tuple
    needs: tuple[int, ...] = ()


def every(cells: Sequence, seeds: int | range) -> list[tuple[int, object]]:
    """All ``(seed, cell)`` pairs in run order: seed by seed, cells in their order."""
    return [(seed, cell) for seed in seed_range(seeds) for cell in cells]


def cell_units(order: Iterable[tuple[int, object]], done: set[tuple[str, int]],
               models_used: Callable[[int, object], Iterable[Hashable]]) -> list[Unit]:
    """One unit per pending ``(seed, cell)`` of ``order`` (those not in ``done``), each needing
    the unit of the first cell in ``order`` that uses one of its models, when that cell is
    pending too (a done cell's models are in the cache)."""
    trainer: dict[Hashable, int | None] = {}  # model -> unit that trains it (None: cached)
    units: list[Unit] = []
    for seed, cell in order:
        pending = (cell.name, seed) not in done
        needs = []
        for model in models_used(seed, cell):
            if model not in trainer:
                trainer[model] = len(units) if pending else None
            elif trainer[model] is not None and trainer[model] != len(units):
                needs.append(trainer[model])
        if pending:
            units.append(Unit(seed, (cell,), tuple(dict.fromkeys(needs))))
    return units


# ----------------------------------------------------------------------------------------------
# The driver

def require_ray():
    """The ``ray`` module, or a :class:`ConfigError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--executor ray needs the ray package, which is not installed: "
                          f"{RAY_HINT}") from None
    return ray


def run_cells_on_ray(command, order: Sequence[tuple[int, object]], runner: Callable,
                     summary: Callable[[dict], str],
                     models_used: Callable[[int, object], Iterable[Hashable]]) -> int:
    """:func:`kd.experiment.results.run_cells` on Ray: every pending cell of ``order`` a task that
    calls ``runner(command)(seed, cell)`` on a worker. Returns the number of cells that failed."""
    units = cell_units(order, command.table.done(), models_used)
    return run_units_on_ray(command, units, runner, summary, grouped=False,
                            order=[(cell.name, seed) for seed, cell in order])


def run_units_on_ray(command, units: Sequence[Unit], runner: Callable,
                     summary: Callable[[dict], str], *, grouped: bool,
                     order: Sequence[tuple[str, int]] = ()) -> int:
    """Run ``units`` as Ray tasks, each after the units it needs, and write their rows.

    ``runner``: a module-level function of the study; ``runner(command)`` returns, on a
    worker, ``run(seed, cell) -> row`` (``grouped=False``) or ``run(seed, cells) -> rows``
    (``grouped=True``: the cells of a unit are trained together and fail together). ``order``:
    the ``(cell, seed)`` keys in run order, for the final rewrite of the table."""
    if not units:
        return 0
    ray = require_ray()
    started = connect(command.args.ray_address)
    try:
        cpus, gpus = cell_resources(command.args, ray)
        job = Job(module=_module_name(runner), runner=runner.__name__, command=command,
                  grouped=grouped, cpus=cpus, gpus=gpus, token=uuid.uuid4().hex,
                  commit=git_commit())
        task = ray.remote(_run_unit).options(num_cpus=cpus, num_gpus=gpus,
                                             runtime_env={"env_vars": worker_env(cpus)})
        job_ref = ray.put(job)  # pickled once for every task
        refs: list = []
        for unit in units:  # dependencies are earlier units: their refs exist already
            refs.append(task.remote(job_ref, unit.seed, unit.cells,
                                    *(refs[i] for i in unit.needs)))
        failed = _collect(ray, command, dict(zip(refs, units)), summary)
        if order:
            command.table.reorder(order)
        return failed
    finally:
        if started:
            ray.shutdown()


def connect(address: str | None) -> bool:
    """Join the Ray cluster at ``address`` (default ``$RAY_ADDRESS``), or start a local
    instance when neither is given; nothing when this process is connected already. Returns
    whether it connected (and so should disconnect)."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address)
    else:
        ray.init(include_dashboard=False)
    return True


def cell_resources(args, ray) -> tuple[float, float]:
    """``(CPUs, GPUs)`` each task asks for: ``--ray-cpus``; ``--ray-gpus``, by default 1 when
    the device is CUDA, or ``auto`` on a cluster with GPUs, else 0."""
    cluster = ray.cluster_resources()
    gpus = args.ray_gpus
    if gpus is None:
        cuda = args.device.startswith("cuda") or (args.device == "auto"
                                                   and cluster.get("GPU", 0) > 0)
        gpus = 1.0 if cuda else 0.0
    if gpus > cluster.get("GPU", 0):
        print(f"warning: each cell asks for {gpus:g} GPU(s) and the Ray cluster has "
              f"{cluster.get('GPU', 0):g} now; the tasks wait until such a node joins",
              file=sys.stderr)
    if args.ray_cpus > cluster.get("CPU", 0):
        print(f"warning: each cell asks for {args.ray_cpus:g} CPUs and the Ray cluster has "
              f"{cluster.get('CPU', 0):g} now; the tasks wait until such a node joins",
              file=sys.stderr)
    if len(ray.nodes()) > 1 and not os.environ.get("KD_CACHE"):
        print("warning: the Ray cluster has several nodes and KD_CACHE is not set; set it to a "
              "folder on a file system every node shares, or each node trains its own teachers",
              file=sys.stderr)
    return float(args.ray_cpus), float(gpus)


def worker_env(cpus: float) -> dict[str, str]:
    """The driver's ``KD_*`` variables for the workers, with the data and cache folders made
    absolute (a worker's working directory is not the driver's)."""
    from kd.data import cache_root

    env = {key: value for key, value in os.environ.items() if key.startswith("KD_")}
    env["KD_DATA"] = str(Path(env.get("KD_DATA") or "data").expanduser().resolve())
    env["KD_CACHE"] = str(cache_root())
    env.setdefault("KD_OFFLINE", "0")
    env["OMP_NUM_THREADS"] = str(_threads(cpus))
    return env


def _module_name(function: Callable) -> str:
    """The importable name of ``function``'s module (a study run as ``python -m studies.x``
    defines it in ``__main__``)."""
    name = function.__module__
    if name == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        if spec is None:
            raise ConfigError("--executor ray needs the study run as a module: "
                              "python -m studies.<name>")
        name = spec.name
    return name


def _collect(ray, command, owners: dict, summary: Callable[[dict], str]) -> int:
    """Append each row as its task finishes (one progress bar over cells); record failures.
    Returns the number of cells that failed."""
    table, failed = command.table, 0
    remaining = list(owners)
    total = sum(len(unit.cells) for unit in owners.values())
    with tqdm(total=total, desc=f"{table.study} cells on Ray", unit="cell", disable=None) as bar:
        while remaining:
            ready, remaining = ray.wait(remaining, num_returns=1)
            unit = owners[ready[0]]
            try:
                results = ray.get(ready[0])
            except ray.exceptions.RayError as error:  # its worker died, or a task it needed
                results = [_failure(unit.seed, cell.name, _one_line(error),
                                    provenance(command.device, 0.0, command.precision))
                           for cell in unit.cells]
            for result in results:
                if "fatal" in result:  # bad input: every cell would fail alike
                    for ref in remaining:
                        ray.cancel(ref)
                    raise result["fatal"]
                name, seed = result["cell"], result["seed"]
                if "error" in result:
                    failed += 1
                    with tqdm.external_write_mode():
                        record_failure(table, name, seed, CellFailed(result["error"]),
                                       result["provenance"])
                else:
                    row = result["row"]
                    table.append(row)
                    table.failures().discard(name, seed)
                    tqdm.write(f"  seed {seed} {name:>36}: {summary(row)} ({row['wall_s']:.0f} s)",
                               file=sys.stdout)
                bar.update()
    return failed


class CellFailed(Exception):
    """A cell's failure as reported by its task."""


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"


# ----------------------------------------------------------------------------------------------
# The workers

@dataclass(frozen=True)
class Job:
    """What every task of one run shares: how to rebuild the study on a worker."""

    module: str  # the study's module, e.g. studies.hinton_mnist
    runner: str  # its function command -> run(seed, cell(s))
    command: object  # kd.experiment.cli.StudyCommand, as the driver parsed it
    grouped: bool
    cpus: float
    gpus: float
    token: str  # one per run: a worker rebuilds its state for a new run
    commit: str  # the driver's commit, for rows of workers without a git checkout


_STATE: dict = {}  # this worker's run: {"token", "command", "run"}


def _threads(cpus: float) -> int:
    return max(1, int(round(cpus)))


def worker_command(job: Job):
    """The driver's command on this worker: its own device (the GPU Ray gave the task, or the
    CPU) and the precision that device resolves to."""
    from kd.experiment.command import with_training
    from kd.train.engine import resolve_device, resolve_precision

    command = job.command
    device = resolve_device("cuda" if job.gpus > 0 else "cpu")
    precision = resolve_precision(command.args.precision, device)
    return dataclasses.replace(command, device=device, precision=precision,
                               profile=with_training(command.profile, precision=precision))


def _state(job: Job) -> dict:
    if _STATE.get("token") != job.token:
        os.environ["KD_THREADS"] = str(_threads(job.cpus))  # what the task asked Ray for
        torch.set_num_threads(_threads(job.cpus))
        command = worker_command(job)
        runner = getattr(importlib.import_module(job.module), job.runner)
        _STATE.clear()
        _STATE.update(token=job.token, command=command, run=runner(command))
    return _STATE


def _run_unit(job: Job, seed: int, cells: tuple, *needed) -> list[dict]:
    """A task: train and describe ``cells`` of ``seed``; one result per cell, a row or a
    failure. ``needed``: the results of the tasks whose models these cells use (Ray ran them
    first; the models themselves are read from the model cache)."""
    start = time.perf_counter()
    try:
        state = _state(job)
        command, run = state["command"], state["run"]
        if job.grouped:
            rows = run(seed, cells)
            walls = [(time.perf_counter() - start) / len(cells)] * len(cells)
        else:
            rows, walls = [], []
            for cell in cells:
                rows.append(run(seed, cell))
                walls.append(time.perf_counter() - start - sum(walls))
    except NonFiniteLossError as error:  # the cell(s) failed; the run goes on
        message = str(error)
    except KDError as error:  # bad input: the driver stops the run with this one line
        return [{"fatal": error}]
    except Exception as error:  # noqa: BLE001 (any other failure is recorded as the cell's)
        frame = traceback.extract_tb(error.__traceback__)[-1]
        message = (f"{type(error).__name__}: {error} (at {Path(frame.filename).name}:"
                   f"{frame.lineno})")
    else:
        return [_success(seed, cell.name, row, _provenance(job, command, wall,
                                                           row.pop("precision", None)))
                for cell, row, wall in zip(cells, rows, walls)]
    command = _STATE.get("command", job.command)
    wall = (time.perf_counter() - start) / len(cells)
    return [_failure(seed, cell.name, message, _provenance(job, command, wall))
            for cell in cells]


def _success(seed: int, name: str, row: dict, provenance_columns: dict) -> dict:
    """A cell's row; ``provenance_columns`` was made after the row gave up its own precision,
    so every column sits where :func:`kd.experiment.results.run_cells` puts it."""
    return {"cell": name, "seed": seed,
            "row": {"cell": name, "seed": seed, **row, **provenance_columns}}


def _failure(seed: int, name: str, message: str, provenance_columns: dict) -> dict:
    return {"cell": name, "seed": seed, "error": message, "provenance": provenance_columns}


def _provenance(job: Job, command, wall: float, trained_in: str | None = None) -> dict:
    columns = provenance(command.device, wall, command.precision, trained_in)
    if columns["git_commit"] == "unknown":
        columns["git_commit"] = job.commit
    return columns
