"""One training engine for teachers and students.

``fit`` trains a model on a :class:`~kd.data.Split` that already lives on the device, minimizing
an :class:`~kd.train.distill.Objective`, with the optimizer and learning-rate schedule named in a
:class:`TrainConfig`. It evaluates every epoch, keeps copies of the weights at chosen epochs,
and repeats exactly on one CPU for a given seed. It trains in bf16 autocast when the config
says so (``--precision auto`` picks it where the hardware has native bf16), conv nets in
``channels_last``; nothing inside an epoch waits on the host, and a loss that is no longer
finite stops training at the end of its epoch with :class:`NonFiniteLossError`.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from kd import metrics
from kd.data.core import Augment, Split, iterate_batches, iterate_member_batches
from kd.errors import ConfigError, NonFiniteLossError
from kd.train import precision as precision_lib
from kd.train.precision import native_bf16
from kd.train.snapshot import Snapshots
from kd.train.teacher_pass import sharing

PRECISIONS = precision_lib.PRECISIONS  # what a model trains in
# and "auto": measured per model when it is trained (:func:`resolve_auto`)
CONFIG_PRECISIONS = precision_lib.REQUESTS


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides how a model is trained; the defaults live here and nowhere else.

    schedule: ``constant``, ``cosine`` (to 0 over all steps), ``linear`` (to 0), or ``step``
    (multiply by ``gamma`` at each epoch in ``milestones``); ``warmup_epochs`` ramps linearly first.
    checkpoint_epochs: epochs after which a copy of the weights is kept (0 = before training).
    compile: run the training forward pass through ``torch.compile`` (the first epoch pays for
    the compilation; evaluation stays eager) with the backend of :func:`compile_backend`.
    precision: ``fp32``, or ``bf16`` autocast for the training steps (weights, optimizer state
    and every evaluation stay fp32), or ``auto``: whichever of the two trains this model faster
    on this machine (:mod:`kd.train.precision`), decided when training starts.
    """

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    checkpoint_epochs: tuple[int, ...] = ()
    compile: bool = False  # torch.compile the training forward pass (worth it on a GPU)
    precision: str = "fp32"

    def __post_init__(self):
        if self.epochs < 0 or self.batch_size < 1 or not self.lr > 0:
            raise ConfigError(f"need epochs >= 0, batch_size >= 1, lr > 0 in {self}")
        if self.precision not in CONFIG_PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; known: "
                              f"{list(CONFIG_PRECISIONS)}")
        for name, table in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES)):
            if getattr(self, name) not in table:
                raise ConfigError(f"unknown {name} {getattr(self, name)!r}; known: {sorted(table)}")


OPTIMIZERS: dict[str, Callable[[list, TrainConfig], torch.optim.Optimizer]] = {
    "sgd": lambda params, c: torch.optim.SGD(params, lr=c.lr, momentum=c.momentum,
                                             nesterov=c.nesterov, weight_decay=c.weight_decay),
    # fused: one kernel for the whole update; on a 2-core CPU it makes an 800-800 epoch 1.6x faster
    "adam": lambda params, c: torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay,
                                               fused=True),
    "adamw": lambda params, c: torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay,
                                                 fused=True),
}

# Each schedule maps (progress in epochs, config) to a multiplier of the base learning rate.
SCHEDULES: dict[str, Callable[[float, TrainConfig], float]] = {
    "constant": lambda e, c: 1.0,
    "cosine": lambda e, c: 0.5 * (1 + math.cos(math.pi * min(e / max(c.epochs, 1e-9), 1.0))),
    "linear": lambda e, c: max(0.0, 1 - e / max(c.epochs, 1e-9)),
    "step": lambda e, c: c.gamma ** sum(e >= m for m in c.milestones),
}


def lr_multiplier(epoch_progress: float, config: TrainConfig) -> float:
    """Learning-rate factor at a (fractional) epoch: warm-up, then the named schedule."""
    warm = min(1.0, (epoch_progress + 1e-12) / config.warmup_epochs) if config.warmup_epochs else 1.0
    return warm * SCHEDULES[config.schedule](epoch_progress, config)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices), so a CPU run repeats exactly."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str | None = None) -> torch.device:
    """``None``/``auto`` -> CUDA when present, else CPU. An unusable request is a ConfigError."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r} (try cpu, cuda, cuda:0, auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available here")
    if device.type == "cuda" and device.index is not None and (
            device.index >= (count := torch.cuda.device_count())):
        raise ConfigError(f"device {name!r} requested but this machine has {count} CUDA "
                          f"device(s): cuda:0 to cuda:{count - 1}")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    """What a study asks its trainings for: ``fp32``/``bf16`` as given; ``auto`` stays ``auto``
    (each model's precision measured when it is trained, :mod:`kd.train.precision`) where the device
    computes bf16 natively, and is ``fp32`` elsewhere."""
    if name == "auto":
        return "auto" if native_bf16(device) else "fp32"
    if name not in PRECISIONS:
        raise ConfigError(f"unknown precision {name!r}; known: auto, {', '.join(PRECISIONS)}")
    return name


def sample_batch(model: nn.Module, train: Split, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of ``train`` shaped as the model trains on it (``[K, N, ...]`` for a stack of K),
    drawn with a generator of its own, so the training's batches are not disturbed."""
    generator = torch.Generator(device=train.device).manual_seed(0)
    batch = next(iterate_batches(train, batch_size, generator=generator))
    members = len(model) if getattr(model, "input_ndim", None) is not None else None
    if members is None:
        return batch.x, batch.y
    return (batch.x.expand(members, *batch.x.shape).contiguous(),
            batch.y.expand(members, *batch.y.shape).contiguous())


def resolve_auto(config: "TrainConfig", model: nn.Module, train: Split):
    """``config`` with ``precision="auto"`` made concrete for ``model`` (measured once per
    machine, :func:`kd.train.precision.resolve`), and the choice; other configs as they are."""
    if config.precision != "auto":
        return config, precision_lib.Choice(config.precision)
    return precision_lib.resolve(config, model, *sample_batch(model, train, config.batch_size))


def autocast(device: torch.device, precision: str = "fp32"):
    """bf16 autocast for ``precision="bf16"`` (weights and optimizer state stay fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """``n`` intra-op threads for the block, the previous count after it. Steps of a few images
    spend their time handing work between threads (ten times more when other work shares the
    cores), so the estimator and the tests run them on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def compile_backend(device: torch.device) -> str:
    """``$KD_COMPILE_BACKEND``, else ``inductor``, except on a CPU whose kernels torch runs
    without vector instructions (``DEFAULT``; also what ``ATEN_CPU_CAPABILITY=default`` gives):
    there torch 2.14's inductor writes C++ that does not compile ("'at::vec' has not been
    declared"), so ``aot_eager`` traces and differentiates the same graph without code
    generation."""
    if "KD_COMPILE_BACKEND" in os.environ:
        return os.environ["KD_COMPILE_BACKEND"]
    scalar_cpu = device.type == "cpu" and torch.backends.cpu.get_cpu_capability() == "DEFAULT"
    if device.type == "cpu" and not scalar_cpu:
        isolate_inductor_cache()
    return "aot_eager" if scalar_cpu else "inductor"


def isolate_inductor_cache() -> None:
    """One inductor cache folder per CPU capability torch runs at, unless
    ``$TORCHINDUCTOR_CACHE_DIR`` names a folder other than inductor's default. torch 2.14's cache keys leave the capability out, so a
    kernel built under ``ATEN_CPU_CAPABILITY=avx2`` was loaded by a later AVX512 process on the
    same machine and computed wrong losses or corrupted the heap (seen on an AMD EPYC with
    AVX512; a fresh folder per capability computed the eager losses)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    default = default_cache_dir()  # inductor writes it into the variable once it has run
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR", default) == default:
        capability = torch.backends.cpu.get_cpu_capability().lower()
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = f"{default}_{capability}"


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move to the device, in ``channels_last``: convolutions run faster that way on CUDA and
    on this CPU (oneDNN) alike (a 2-layer CNN trains 1.4x faster on 2 cores). Stacked students
    (5-D weights) keep the default layout."""
    model = model.to(device)
    if getattr(model, "supports_channels_last", True):
        model = model.to(memory_format=torch.channels_last)
    return model


@torch.no_grad()
def predict(model: nn.Module, split: Split, batch_size: int | None = None,
            precision: str = "fp32") -> torch.Tensor:
    """Logits of the whole split, float32 ``[N, C]`` (``[K, N, C]`` for a stack of K models),
    in eval mode, on the split's device. Default batches: 1024 images on CUDA, 256 elsewhere
    (on this 2-core CPU a ResNet-8 predicts about twice as fast in batches of 256 as of 1024).
    Evaluation is fp32 by default whatever the model trained in, so scores do not depend on
    the precision of the forward pass."""
    was_training = model.training
    model.eval()
    batch_size = batch_size or (1024 if split.device.type == "cuda" else 256)
    with autocast(split.device, precision):
        out = torch.cat([model(b.x).float() for b in
                         iterate_batches(split, batch_size, shuffle=False)], dim=-2)
    model.train(was_training)
    return out


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)  # one dict per epoch
    checkpoints: dict[int, dict] = field(default_factory=dict)  # epoch -> state_dict on CPU
    wall_s: float = 0.0
    precision: str = "fp32"  # what it trained in ("auto" resolved)
    bf16_speedup: float | None = None  # bf16 over fp32 images/s, where "auto" measured it

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


def _cpu_state(model: nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class _Training:
    """One model's training state (optimizer, schedule, per-epoch sums, history): what
    :func:`fit` runs for one model and :func:`fit_lockstep` for several on one batch stream."""

    def __init__(self, model: nn.Module, train: Split, objective, config: TrainConfig,
                 augmented: bool, desc: str):
        trained_student = getattr(objective, "trained_student", None)
        config, choice = resolve_auto(
            config, trained_student(model) if trained_student else model, train)
        self.model, self.objective, self.config, self.desc = model, objective, config, desc
        self.device = train.device
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = OPTIMIZERS[config.optimizer](self.params, config)
        self.steps_per_epoch = max(1, math.ceil(len(train) / config.batch_size))
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_multiplier(step / self.steps_per_epoch, config))
        objective.bind(train, augmented=augmented)
        self.post_step = getattr(model, "post_step", None)
        # shares model's parameters
        self.forward = (torch.compile(model, backend=compile_backend(self.device))
                        if config.compile else model)
        self.result = FitResult(precision=choice.precision, bf16_speedup=choice.bf16_speedup)
        if 0 in config.checkpoint_epochs:
            self.result.checkpoints[0] = _cpu_state(model)
        self.sums: dict[str, torch.Tensor] = {}

    def start_epoch(self, epoch: int) -> None:
        self.model.train()
        self.objective.start_epoch(epoch)
        self.sums = {}

    def step(self, batch) -> None:
        with autocast(self.device, self.config.precision):
            loss, terms = self.objective(self.forward, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()  # a stack of K students: each slice gets its own gradient
        self.optimizer.step()
        self.schedule.step()
        if self.post_step is not None:
            self.post_step()
        for name, value in {"loss": loss, **terms}.items():
            self.sums[name] = self.sums.get(name, 0) + value.detach().float()

    def end_epoch(self, epoch: int, eval_sets: dict[str, Split]) -> dict:
        check_finite(self.sums, self.params, epoch, self.desc)
        record = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]}
        # .tolist(): a number for one model, a list of K for a stack of K
        record.update({f"train_{k}": (v / self.steps_per_epoch).tolist()
                       for k, v in self.sums.items()})
        for name, split in eval_sets.items():
            logits = predict(self.model, split)
            record[f"{name}_accuracy"] = metrics.accuracy(logits, split.labels)
            record[f"{name}_errors"] = metrics.error_count(logits, split.labels)
        self.result.history.append(record)
        if epoch in self.config.checkpoint_epochs:
            self.result.checkpoints[epoch] = _cpu_state(self.model)
        return record


def fit(model: nn.Module, train: Split, objective, config: TrainConfig, *,
        seed: int | Sequence[int], eval_sets: dict[str, Split] | None = None, augment: Augment | None = None,
        desc: str = "train", snapshot: Path | None = None,
        snapshot_every_s: float = 120.0) -> FitResult:
    """Train ``model`` in place on ``train`` and return per-epoch history and checkpoints.

    objective: ``objective(model, batch) -> (loss, {term: value})``; its ``bind(train, augmented)``
    is called first (a distiller caches its teacher's logits there when nothing is augmented),
    and ``start_epoch(epoch)`` before each epoch (epochs count from 1).
    eval_sets: splits on the same device, evaluated after every epoch (accuracy and errors).
    seed: the seed of the batch order and augmentation; K seeds train a
    :class:`kd.train.batched.StackedModels` of K members (built with ``input_ndim``) each on its own
    batches, exactly those a run of its seed would see (their initialization is the caller's).
    snapshot: a file to resume from, if it exists, and to write the run's state to after an epoch
    every ``snapshot_every_s`` seconds and after the last one (:mod:`kd.train.snapshot`); a
    resumed run ends with the weights of one that never stopped. The caller removes it.
    """
    device = train.device
    eval_sets = eval_sets or {}
    seeds = [seed] if isinstance(seed, int) else list(seed)
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    if isinstance(seed, int):
        batches = lambda: iterate_batches(train, config.batch_size, generator=generators[0],
                                          augment=augment)
    else:
        if getattr(model, "input_ndim", None) is None or len(model) != len(seeds):
            raise ConfigError(f"{len(seeds)} seeds train a StackedModels of as many members "
                              f"built with input_ndim, not a {type(model).__name__}")
        batches = lambda: iterate_member_batches(train, config.batch_size, generators,
                                                 augment=augment)
    training = _Training(model, train, objective, config, augment is not None, desc)
    snapshots = Snapshots(snapshot, snapshot_every_s)
    done, spent = snapshots.load([training], generators)
    start = time.perf_counter() - spent
    bar = tqdm(range(done + 1, config.epochs + 1), desc=desc, leave=False, disable=None)
    for epoch in bar:
        training.start_epoch(epoch)
        for batch in batches():
            training.step(batch)
        record = training.end_epoch(epoch, eval_sets)
        bar.set_postfix({k: f"{v:.4g}" for k, v in record.items()
                         if k != "epoch" and isinstance(v, (int, float))})
        snapshots.maybe_save(epoch, config.epochs, [training], generators,
                             time.perf_counter() - start)
    training.result.wall_s = time.perf_counter() - start
    return training.result


def fit_lockstep(models: Sequence[nn.Module], train: Split, objectives: Sequence,
                 config: TrainConfig, *, seed: int, augment: Augment | None = None,
                 desc: str = "train", snapshot: Path | None = None,
                 snapshot_every_s: float = 120.0) -> list[FitResult]:
    """Train several models on one batch stream, one step of each per batch: model i as
    ``fit(models[i], train, objectives[i], config, seed=seed, augment=augment)`` would, on the
    same batches (those of ``seed``), but each teacher they distil from runs once per batch for
    all of them (:func:`kd.train.teacher_pass.sharing`). Each result's ``wall_s`` is the lockstep's
    time divided by the models. Only the teachers' passes are shared, so each model's weights
    are those of its own run, up to rounding. ``snapshot`` as in :func:`fit`, for all of them."""
    if len(models) != len(objectives) or not models:
        raise ConfigError(f"fit_lockstep needs one objective per model, got {len(models)} "
                          f"models and {len(objectives)} objectives")
    generator = torch.Generator(device=train.device).manual_seed(seed)
    trainings = [_Training(m, train, o, config, augment is not None, f"{desc} [{i}]")
                 for i, (m, o) in enumerate(zip(models, objectives))]
    snapshots = Snapshots(snapshot, snapshot_every_s)
    done, spent = snapshots.load(trainings, [generator])
    start = time.perf_counter() - spent
    with sharing():
        for epoch in tqdm(range(done + 1, config.epochs + 1), desc=desc, leave=False,
                          disable=None):
            for training in trainings:
                training.start_epoch(epoch)
            for batch in iterate_batches(train, config.batch_size, generator=generator,
                                         augment=augment):
                for training in trainings:
                    training.step(batch)
            for training in trainings:
                training.end_epoch(epoch, {})
            snapshots.maybe_save(epoch, config.epochs, trainings, [generator],
                                 time.perf_counter() - start)
    wall_s = (time.perf_counter() - start) / len(trainings)
    for training in trainings:
        training.result.wall_s = wall_s
    return [training.result for training in trainings]


def check_finite(sums: dict[str, torch.Tensor], params: list[torch.Tensor], epoch: int,
                 desc: str) -> None:
    """Raise :class:`NonFiniteLossError` naming the first loss term whose epoch sum is NaN or
    infinite, or else saying that the weights are (an update after the epoch's last finite
    loss can still blow up). Checked once an epoch, not per step: a NaN stays NaN in the sum,
    and a per-step check would wait on the device every step."""
    flags = torch.stack([v.isfinite().all() for v in sums.values()]
                        + [torch.stack([p.isfinite().all() for p in params]).all()]).tolist()
    for name, ok in zip([*sums, None], flags):
        if not ok and name is not None:
            raise NonFiniteLossError(f"{desc}: training loss term {name!r} is not finite at "
                                     f"epoch {epoch}")
        if not ok:
            raise NonFiniteLossError(f"{desc}: the weights are not finite after epoch {epoch} "
                                     f"(the update of its last step diverged)")


__all__ = ["NonFiniteLossError", "torch_threads", "native_bf16", "resolve_precision", "compile_backend",
           "check_finite", "TrainConfig", "resolve_auto", "sample_batch", "CONFIG_PRECISIONS", "fit", "fit_lockstep", "predict", "seed_everything", "resolve_device", "autocast",
           "prepare_model", "FitResult", "lr_multiplier", "OPTIMIZERS", "SCHEDULES"]
