"""Speed benchmark: one epoch of 800-800 student distillation on MNIST, our engine vs a textbook loop.

Ours: the split in memory on the device, batches sliced there, the 1200-1200 teacher's logits
computed once for the (unaugmented) transfer set and looked up each step.
Textbook: torchvision's ``MNIST`` dataset with per-sample ``ToTensor`` + ``Normalize``, a
``DataLoader``, and a live fp32 teacher forward under ``no_grad`` every step.
Both: same student, loss (T = 20, α = 0.9), optimizer, batch size, device, in the same process.

    python -m kd.bench [--device auto] [--batch-size 128] [--workers 0] [--repeats 1]
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision
from torchvision.transforms import v2

from kd import data, engine
from kd.cli import run_main
from kd.distill import Distill
from kd.engine import TrainConfig
from kd.losses import distillation_loss
from kd.models import MLP
from kd.results import hardware

TEMPERATURE, ALPHA = 20.0, 0.9


def models(device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    engine.seed_everything(0)
    teacher = MLP(784, (1200, 1200), input_dropout=0.2, hidden_dropout=0.5, max_norm=3.5)
    student = MLP(784, (800, 800))
    return engine.prepare_model(teacher, device).eval(), engine.prepare_model(student, device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def ours(device: torch.device, batch_size: int) -> float:
    """Samples per second of one epoch (teacher-logit caching included) with kd.engine."""
    train = data.load("mnist", train=True).to(device)
    teacher, student = models(device)
    config = TrainConfig(epochs=1, batch_size=batch_size, lr=0.05, schedule="constant")
    sync(device)
    start = time.perf_counter()
    engine.fit(student, train, Distill(teacher, TEMPERATURE, ALPHA), config, seed=0, desc="ours")
    sync(device)
    return len(train) / (time.perf_counter() - start)


def textbook(device: torch.device, batch_size: int, workers: int) -> float:
    """Samples per second of one epoch of the loop most tutorials write."""
    transform = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize(data.MNIST_MEAN, data.MNIST_STD)])
    root = data.mnist_torchvision_root()
    dataset = torchvision.datasets.MNIST(str(root), train=True, transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                         num_workers=workers, pin_memory=device.type == "cuda")
    teacher, student = models(device)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    sync(device)
    start = time.perf_counter()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with torch.no_grad():
            teacher_logits = teacher(x)
        loss = distillation_loss(student(x), teacher_logits, y, TEMPERATURE, ALPHA)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    sync(device)
    return len(dataset) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (textbook)")
    parser.add_argument("--repeats", type=int, default=1, help="epochs timed per loop; best kept")
    args = parser.parse_args(argv)
    device = engine.resolve_device(args.device)
    print(f"MNIST 800-800 student distillation, one epoch, batch {args.batch_size}, "
          f"{device} ({hardware(device.type)}), torch {torch.__version__}")
    ours_rate = max(ours(device, args.batch_size) for _ in range(args.repeats))
    book_rate = max(textbook(device, args.batch_size, args.workers) for _ in range(args.repeats))
    print(f"  ours     : {ours_rate:10,.0f} samples/s")
    print(f"  textbook : {book_rate:10,.0f} samples/s  (DataLoader, {args.workers} workers, "
          f"live fp32 teacher)")
    print(f"  ratio    : {ours_rate / book_rate:.2f}x")


if __name__ == "__main__":
    raise SystemExit(run_main(main))
