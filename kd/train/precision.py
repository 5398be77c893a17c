"""Precision chosen by measurement: fp32 or bf16 per model architecture and machine.

A CPU that computes bf16 natively (AVX512_BF16, AMX) does not always train faster in it: a
convolution's bf16 kernel may be slower than its fp32 one for small channel counts, and the
casts that autocast inserts cost time of their own. So ``precision="auto"`` times a few
training steps of the model in both precisions, interleaved (fp32, bf16, fp32, bf16, ...) so
that a change of load hits both alike, keeps the best of each, and picks bf16 only when it is
at least :data:`MIN_BF16_SPEEDUP` times faster. Where bf16 is emulated it is never measured
(about 30x slower) and fp32 is chosen.

The measurement is cached per machine in ``<kd cache>/precision.json``, keyed by the model's
structure, batch shape, thread count, torch version and machine, so that one machine decides
once and then always trains an architecture in the same precision (the precision is part of a
trained model's cache key).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass

import torch
from torch import nn

from kd.data import cache_root
from kd.errors import ConfigError

MIN_BF16_SPEEDUP = 1.1  # below this, bf16's rounding is not worth its few per cent
PRECISIONS = ("fp32", "bf16")
REQUESTS = ("auto", *PRECISIONS)


@dataclass(frozen=True)
class Choice:
    """What a model trains in, and why: ``bf16_speedup`` is bf16's images/s over fp32's
    (None where nothing was measured: a precision asked for by name, or emulated bf16)."""

    precision: str
    bf16_speedup: float | None = None
    measured: bool = False


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively: a CUDA GPU that supports it, or a CPU whose
    kernels torch runs at AVX512 with the AVX512_BF16 or AMX instructions. Elsewhere bf16 is
    emulated: on an AVX2 CPU (AMD EPYC Zen 2) a training step of ResNet-8 ran about 30x slower
    in bf16 than in fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    return (torch.backends.cpu.get_cpu_capability() == "AVX512"
            and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()))


@functools.lru_cache(maxsize=None)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine() or "cpu"


def machine_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name with the instruction set torch runs at."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    amx = "+AMX" if torch.cpu._is_amx_tile_supported() else ""
    return f"{cpu_model()} ({torch.backends.cpu.get_cpu_capability()}{amx})"


def structure(model: nn.Module) -> str:
    """The model's class and its parameter and buffer shapes: what its speed depends on."""
    model = getattr(model, "_orig_mod", model)
    shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    return f"{type(model).__module__}.{type(model).__qualname__}:{shapes}"


def measure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, rounds: int = 3,
            steps: int = 2) -> dict[str, float]:
    """images/s of SGD training steps of a copy of ``model`` on the batch ``(x, y)`` in fp32
    and in bf16 autocast: the best of ``rounds`` rounds of ``steps`` steps each, the two
    precisions interleaved, after one warm-up step each. ``model`` itself, and the random
    state, are left untouched, so a run that measured trains as one told its precision.
    Each step is a :func:`training_step`."""
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        return _measure(copy.deepcopy(getattr(model, "_orig_mod", model)).train(), x, y,
                        rounds, steps)


def training_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """``step(precision)``: one SGD step of ``model`` on the batch ``(x, y)`` in fp32 or bf16
    autocast (what :func:`measure` times and ``kd.experiment.op_profile`` profiles). Outputs
    ``[..., C]`` (a stack of K models: ``[K, N, C]``) meet their labels broadcast to their
    leading shape."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step(precision: str) -> None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(x)
        target = y.expand(out.shape[:-1])  # a stack sharing one batch: each member's labels
        loss = nn.functional.cross_entropy(out.flatten(0, -2).float(), target.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def _measure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, rounds: int,
             steps: int) -> dict[str, float]:
    """:func:`measure` on a copy, inside a forked random state (dropout draws numbers)."""
    step, device = training_step(model, x, y), x.device

    def timed(precision: str) -> float:
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step(precision)
        synchronize(device)
        return time.perf_counter() - start

    for precision in PRECISIONS:
        step(precision)  # warm-up: kernels chosen, memory allocated
    best = {p: float("inf") for p in PRECISIONS}
    for _ in range(rounds):
        for precision in PRECISIONS:
            best[precision] = min(best[precision], timed(precision))
    images = steps * y.numel()
    return {p: images / best[p] for p in PRECISIONS}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decide(speeds: dict[str, float]) -> Choice:
    """bf16 where it is at least :data:`MIN_BF16_SPEEDUP` times faster than fp32."""
    speedup = speeds["bf16"] / speeds["fp32"]
    return Choice("bf16" if speedup >= MIN_BF16_SPEEDUP else "fp32", round(speedup, 3), True)


def calibration_file() -> os.PathLike:
    return cache_root() / "precision.json"


def read_calibrations() -> dict:
    """The machine's measurements so far; a broken file is said to be broken and ignored (it
    is rewritten whole at the next measurement)."""
    path = calibration_file()
    try:
        entries = json.loads(path.read_text())
        return entries if isinstance(entries, dict) else {}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        print(f"warning: precision calibrations {path} cannot be read; measuring again",
              flush=True)
        return {}


def write_calibration(key: str, entry: dict) -> None:
    """Add one entry, atomically (a temporary file renamed over the old one)."""
    path = calibration_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = {**read_calibrations(), key: entry}
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(entries, indent=1, sort_keys=True))
    os.replace(temporary, path)


def calibration_key(model: nn.Module, x: torch.Tensor) -> str:
    text = json.dumps([structure(model), list(x.shape), torch.get_num_threads(),
                       torch.__version__, machine_name(x.device)])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def choose(requested: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Choice:
    """The precision ``model`` trains in on batches shaped like ``(x, y)``: ``fp32``/``bf16``
    as requested; ``auto``: fp32 where bf16 is emulated, else measured (once per machine)."""
    if requested not in REQUESTS:
        raise ConfigError(f"unknown precision {requested!r}; known: {', '.join(REQUESTS)}")
    if requested != "auto":
        return Choice(requested)
    if not native_bf16(x.device):
        return Choice("fp32")
    key = calibration_key(model, x)
    entry = read_calibrations().get(key)
    if not (isinstance(entry, dict) and {"fp32", "bf16"} <= entry.keys()):
        entry = {**measure(model, x, y), "model": structure(model).split(":")[0],
                 "batch": list(x.shape), "threads": torch.get_num_threads(),
                 "machine": machine_name(x.device), "torch": torch.__version__}
        write_calibration(key, entry)
    return decide(entry)


_LAST: list[Choice] = []  # the latest choice of this process (see last_choice)


def resolve(config, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """``config`` (a :class:`kd.train.engine.TrainConfig`) with ``precision="auto"`` replaced by the
    measured choice for ``model``; the choice is also kept for :func:`last_choice`."""
    choice = choose(config.precision, model, x, y)
    _LAST[:] = [choice]
    return dataclasses.replace(config, precision=choice.precision), choice


def last_choice() -> Choice | None:
    """The latest choice this process made: what a study's row records under ``auto``. A row
    is written after the training of its model (or of the stack or teacher its numbers come
    from, e.g. a stack of students that gives one row each, or a checkpoint of a teacher), so
    the latest choice is that model's."""
    return _LAST[0] if _LAST else None


__all__ = ["Choice", "MIN_BF16_SPEEDUP", "native_bf16", "machine_name", "measure", "decide",
           "choose", "resolve", "last_choice"]
