"""One training engine for teachers and students.

``fit`` trains a model on a :class:`~kd.data.Split` that already lives on the device, minimizing
an :class:`~kd.distill.Objective`, with the optimizer and learning-rate schedule named in a
:class:`TrainConfig`. It evaluates every epoch, keeps copies of the weights at chosen epochs,
and repeats exactly on the CPU for a given seed. On CUDA it uses bf16 autocast and
``channels_last``; nothing inside an epoch waits on the host.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from kd.data import Augment, Split, iterate_batches
from kd.errors import ConfigError
from kd import metrics


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides how a model is trained; the defaults live here and nowhere else.

    schedule: ``constant``, ``cosine`` (to 0 over all steps), ``linear`` (to 0), or ``step``
    (multiply by ``gamma`` at each epoch in ``milestones``); ``warmup_epochs`` ramps linearly first.
    checkpoint_epochs: epochs after which a copy of the weights is kept (0 = before training).
    compile: run the training forward pass through ``torch.compile`` (the first epoch pays for
    the compilation; evaluation stays eager).
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

    def __post_init__(self):
        if self.epochs < 0 or self.batch_size < 1 or not self.lr > 0:
            raise ConfigError(f"need epochs >= 0, batch_size >= 1, lr > 0 in {self}")
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
    return device


def autocast(device: torch.device):
    """bf16 autocast on CUDA (fp32 weights and optimizer state); a no-op elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move to the device, in ``channels_last``: convolutions run faster that way on CUDA and
    on this CPU (oneDNN) alike (a 2-layer CNN trains 1.4x faster on 2 cores). Stacked students
    (5-D weights) keep the default layout."""
    model = model.to(device)
    if getattr(model, "supports_channels_last", True):
        model = model.to(memory_format=torch.channels_last)
    return model


@torch.no_grad()
def predict(model: nn.Module, split: Split, batch_size: int | None = None) -> torch.Tensor:
    """Logits of the whole split, float32 ``[N, C]`` (``[K, N, C]`` for a stack of K models),
    in eval mode, on the split's device. Default batches: 1024 images on CUDA, 256 elsewhere
    (on this 2-core CPU a ResNet-8 predicts about twice as fast in batches of 256 as of 1024)."""
    was_training = model.training
    model.eval()
    batch_size = batch_size or (1024 if split.device.type == "cuda" else 256)
    with autocast(split.device):
        out = torch.cat([model(b.x).float() for b in
                         iterate_batches(split, batch_size, shuffle=False)], dim=-2)
    model.train(was_training)
    return out


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)  # one dict per epoch
    checkpoints: dict[int, dict] = field(default_factory=dict)  # epoch -> state_dict on CPU
    wall_s: float = 0.0

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


def _cpu_state(model: nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def fit(model: nn.Module, train: Split, objective, config: TrainConfig, *, seed: int,
        eval_sets: dict[str, Split] | None = None, augment: Augment | None = None,
        desc: str = "train") -> FitResult:
    """Train ``model`` in place on ``train`` and return per-epoch history and checkpoints.

    objective: ``objective(model, batch) -> (loss, {term: value})``; its ``bind(train, augmented)``
    is called first (a distiller caches its teacher's logits there when nothing is augmented),
    and ``start_epoch(epoch)`` before each epoch (epochs count from 1).
    eval_sets: splits on the same device, evaluated after every epoch (accuracy and errors).
    """
    device = train.device
    eval_sets = eval_sets or {}
    generator = torch.Generator(device=device).manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = OPTIMIZERS[config.optimizer](params, config)
    steps_per_epoch = max(1, math.ceil(len(train) / config.batch_size))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step / steps_per_epoch, config))
    objective.bind(train, augmented=augment is not None)
    post_step = getattr(model, "post_step", None)
    forward = torch.compile(model) if config.compile else model  # shares model's parameters
    result = FitResult()
    if 0 in config.checkpoint_epochs:
        result.checkpoints[0] = _cpu_state(model)
    start = time.perf_counter()
    bar = tqdm(range(1, config.epochs + 1), desc=desc, leave=False, disable=None)
    for epoch in bar:
        model.train()
        objective.start_epoch(epoch)
        sums: dict[str, torch.Tensor] = {}
        for batch in iterate_batches(train, config.batch_size, generator=generator,
                                     augment=augment):
            with autocast(device):
                loss, terms = objective(forward, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()  # a stack of K students: each slice gets its own gradient
            optimizer.step()
            schedule.step()
            if post_step is not None:
                post_step()
            for name, value in {"loss": loss, **terms}.items():
                sums[name] = sums.get(name, 0) + value.detach().float()
        record = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
        # .tolist(): a number for one model, a list of K for a stack of K
        record.update({f"train_{k}": (v / steps_per_epoch).tolist() for k, v in sums.items()})
        for name, split in eval_sets.items():
            logits = predict(model, split)
            record[f"{name}_accuracy"] = metrics.accuracy(logits, split.labels)
            record[f"{name}_errors"] = metrics.error_count(logits, split.labels)
        result.history.append(record)
        bar.set_postfix({k: f"{v:.4g}" for k, v in record.items()
                         if k != "epoch" and isinstance(v, (int, float))})
        if epoch in config.checkpoint_epochs:
            result.checkpoints[epoch] = _cpu_state(model)
    result.wall_s = time.perf_counter() - start
    return result


__all__ = ["TrainConfig", "fit", "predict", "seed_everything", "resolve_device", "autocast",
           "prepare_model", "FitResult", "lr_multiplier", "OPTIMIZERS", "SCHEDULES"]
