"""Where a training step's time goes, operator by operator (``torch.profiler``), grouped into
what issue 26 asked to look at: convolutions, batch norm, activations, layout conversions and
casts, the optimizer, and the rest.

    python -m kd.experiment.bench --task profile [--profile-arch resnet20] [--batch-size 128]

prints, for fp32 and bf16 autocast, each group's share of the operators' own (self) CPU time
over a few steps after a warm-up, and the five most expensive operators.
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from kd.models import build_model
from kd.train import engine
from kd.train.precision import training_step

# operator name fragments -> group; the first that matches wins
GROUPS = (
    ("convolution", ("convolution", "conv2d", "mkldnn_conv")),
    ("batch norm", ("batch_norm",)),
    ("activation", ("relu", "threshold", "clamp_min")),
    ("layout and casts", ("copy_", "_to_copy", "contiguous", "::to", "clone", "empty_like")),
    ("optimizer", ("sgd", "add_", "mul_", "addcmul", "lerp", "foreach", "zero_")),
)


def group_of(name: str) -> str:
    lowered = name.lower()
    return next((group for group, parts in GROUPS if any(p in lowered for p in parts)), "other")


def self_times(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str,
               steps: int = 3) -> Counter:
    """Self CPU microseconds per aten operator over ``steps`` SGD steps (after one warm-up)."""
    step = training_step(model, x, y)
    step(precision)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step(precision)
    return Counter({e.key: e.self_cpu_time_total for e in prof.key_averages()
                    if e.key.startswith("aten::")})


def shares(times: Counter) -> dict[str, float]:
    """Each group's share of the total, in the order of :data:`GROUPS`, then "other"."""
    total = sum(times.values()) or 1.0
    grouped = Counter()
    for name, t in times.items():
        grouped[group_of(name)] += t
    return {g: grouped[g] / total for g in [*(g for g, _ in GROUPS), "other"]}


def run(device: torch.device, args: argparse.Namespace) -> None:
    engine.seed_everything(0)
    model = engine.prepare_model(build_model(args.profile_arch), device)
    x = torch.randn(args.batch_size, 3, 32, 32, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    print(f"  {args.profile_arch}, batch {args.batch_size}: share of the operators' own CPU time")
    for precision in ("fp32", "bf16"):
        times = self_times(model, x, y, precision)
        print(f"  {precision}: " + ", ".join(f"{g} {s:.0%}" for g, s in shares(times).items()))
        top = ", ".join(f"{n[6:]} {t / sum(times.values()):.0%}" for n, t in times.most_common(5))
        print(f"        top operators: {top}")
