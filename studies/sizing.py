"""What the sizing of a profile reads before anything trains: the engine's measured training
speeds (``results/bench/roofline.csv``, written by ``make bench ARGS="--task roofline
--record"``) and how a teacher's forward pass relates to them. Used by
:mod:`studies.zoo_budget` and :func:`studies.method_zoo.large_sizing`."""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

import pandas as pd

import kd.models
from kd.models import build_model
from kd.models.cifar import flops_per_image

ROOFLINE = Path(__file__).resolve().parents[1] / "results" / "bench" / "roofline.csv"
CIFAR10_TRAIN, CIFAR10_TEST = 50_000, 10_000
# A forward pass's share of a training step's time (FLOPs: forward 1, backward 2), for the
# teachers' passes and evaluations, which the roofline does not time on their own.
FORWARD_SHARE = 1 / 3


def measured_speeds(path: Path = ROOFLINE, threads: int = 2,
                    precision: str = "bf16") -> dict[str, float]:
    """Training images/s per model at ``threads`` threads and ``precision``: the latest row of
    each (engine, batch 128, crop + flip, idle machine)."""
    rows = pd.read_csv(path)
    rows = rows[(rows["threads"] == threads) & (rows["precision"] == precision)]
    return rows.sort_values("finished_at").groupby("model")["images_per_s"].last().to_dict()


@cache
def forward_flops(arch: str) -> int:
    return flops_per_image(build_model(arch, num_classes=10))


def images_per_s(arch: str, speeds: dict[str, float]) -> tuple[float, str]:
    """Measured, or the FLOP/s of the measured model nearest in FLOPs per image: (rate, from)."""
    if arch in speeds:
        return speeds[arch], "measured"
    known = [a for a in speeds if a in kd.models.MODELS]
    nearest = min(known, key=lambda a: abs(math.log(forward_flops(a) / forward_flops(arch))))
    return speeds[nearest] * forward_flops(nearest) / forward_flops(arch), f"FLOPs of {nearest}"
