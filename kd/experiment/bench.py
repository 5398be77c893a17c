"""Speed benchmarks: student distillation with our engine vs a textbook loop, same process.

Both loops of a task share the student, teacher, loss, optimizer (SGD, lr 0.05, momentum 0.9),
batch size, device and images; each reports images (samples) per second.

mnist: one epoch of 800-800 student distillation from a 1200-1200 teacher (T = 20, α = 0.9).
  Ours: the split in memory on the device, batches sliced there, the teacher's logits computed
  once for the (unaugmented) transfer set and looked up each step.
  Textbook: torchvision's ``MNIST`` with per-sample ``ToTensor`` + ``Normalize``, a
  ``DataLoader``, and a live fp32 teacher forward under ``no_grad`` every step.
cifar: CIFAR-10 distillation of ``plain_cnn2`` from a ``resnet18_cifar`` teacher (random weights:
  speed does not depend on them; T = 4, α = 0.9) with random crop + flip, so both loops run the
  teacher live on every augmented batch.
  Ours: the uint8 split on the device, crop + flip batched there
  (:class:`kd.data.cifar.RandomCropFlip`), ``kd.train.engine.fit`` with
  :class:`kd.train.distill.Distill` (bf16 autocast and channels_last on CUDA).
  Textbook: a ``Dataset`` handing out one PIL image per sample as torchvision's ``CIFAR10`` does,
  v2 ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``, ``ToImage``, ``ToDtype``,
  ``Normalize``, a ``DataLoader``, and a live fp32 teacher under ``no_grad``.

``--batches N`` times only the first N batches' worth of images (a ResNet-18 forward is slow on a
CPU); both loops then see the same first ``N * batch_size`` images of the training split.

batched: K students (``--students``, default 45) of ``plain_cnn2`` distilled from one
  ``resnet18_cifar`` with crop + flip, each with its own (α, T): one stacked model
  (:class:`kd.train.batched.StackedModels`, one teacher pass per batch for all K) against the same K
  students trained one after another, in student-images per second.
roofline: the machine's own limit, measured in the same run: the FLOP/s of an n x n matmul
  (n = 2048) in fp32 and in bf16, then for each model the studies train (the Hinton MLP
  784-1200-1200-10, plain_cnn2, resnet8, -14, -20, -32) the engine (``kd.train.engine.fit`` on
  random images, crop + flip for 32x32 ones) training on labels in fp32 and in bf16 autocast:
  images/s, achieved training FLOP/s (FLOPs of a forward and backward pass counted by torch's
  FlopCounterMode) as a share of the bf16 matmul's, the bf16/fp32 ratio, and what
  ``--precision auto`` measures and picks for the model (:mod:`kd.train.precision`). Epochs of
  ``--batches`` batches (default 5), the best of two after a warm-up batch. Run it on an idle
  machine: beside another process the timings swing by up to 10x.

profile: where a training step's time goes, grouped by operator kind, in fp32 and bf16
  (:mod:`kd.experiment.op_profile`; ``--profile-arch``). Not part of ``all``.

estimate: no timing; how long each study's profile would take on a GPU, from its FLOPs and
  operators per step counted on this machine (:mod:`kd.experiment.estimate`; ``--study``,
  ``--profile``, ``--peak-tflops``, ``--mfu``, ``--op-overhead-us``; ``--precision auto`` means
  the GPU's bf16 there). Not part of ``all``.

``--precision`` (auto, fp32, bf16) is what our loop trains in (auto: per model, whichever
precision a short timed calibration finds faster, :mod:`kd.train.precision`); the textbook loops
stay fp32.

    python -m kd.experiment.bench [--task mnist|cifar|batched|roofline|profile|estimate|all]
                       [--device auto] [--precision auto] [--batch-size 128] [--workers 0]
                       [--repeats 1] [--batches N] [--students 45]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.transforms import v2

from kd import data
from kd.data import cifar
from kd.experiment import estimate, op_profile
from kd.experiment.command import OneLineErrorParser, positive_int, run_main
from kd.experiment.results import ResultsTable, hardware, provenance
from kd.losses import distillation_loss
from kd.models import MLP, build_model
from kd.train import engine
from kd.train import precision as precision_lib
from kd.train.batched import StackedModels
from kd.train.distill import CrossEntropy, Distill
from kd.train.engine import TrainConfig

TEMPERATURE, ALPHA = 20.0, 0.9  # MNIST, as in Hinton et al. (2015)
CIFAR_TEMPERATURE = 4.0  # the usual CIFAR choice (Tian et al. 2020 and most KD papers since)
LR, MOMENTUM = 0.05, 0.9


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def seconds(device: torch.device, work) -> float:
    """Wall time of ``work()``, with the device's queue drained before and after."""
    sync(device)
    start = time.perf_counter()
    work()
    sync(device)
    return time.perf_counter() - start


def image_count(split_size: int, batch_size: int, batches: int | None) -> int:
    """How many images are timed: a full epoch, or the first ``batches`` batches of it."""
    return split_size if batches is None else min(split_size, batches * batch_size)


def ours(device: torch.device, train: data.Split, teacher: nn.Module, student: nn.Module,
         temperature: float, batch_size: int, augment: data.Augment | None = None,
         precision: str = "fp32") -> float:
    """Images per second of one epoch of ``kd.train.engine.fit`` (teacher-logit caching
    included)."""
    config = TrainConfig(epochs=1, batch_size=batch_size, lr=LR, momentum=MOMENTUM,
                         schedule="constant", precision=precision)
    objective = Distill(teacher, temperature, ALPHA)
    fit = lambda: engine.fit(student, train, objective, config, seed=0, augment=augment,
                             desc="ours")
    return len(train) / seconds(device, fit)


def textbook(device: torch.device, dataset: torch.utils.data.Dataset, teacher: nn.Module,
             student: nn.Module, temperature: float, batch_size: int, workers: int) -> float:
    """Images per second of one epoch of the loop most tutorials write."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                         num_workers=workers, pin_memory=device.type == "cuda")
    optimizer = torch.optim.SGD(student.parameters(), lr=LR, momentum=MOMENTUM)

    def epoch() -> None:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            with torch.no_grad():
                teacher_logits = teacher(x)
            loss = distillation_loss(student(x), teacher_logits, y, temperature, ALPHA)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return len(dataset) / seconds(device, epoch)


# ----------------------------------------------------------------------------------------------
# MNIST


def mnist_models(device: torch.device) -> tuple[nn.Module, nn.Module]:
    engine.seed_everything(0)
    teacher = MLP(784, (1200, 1200), input_dropout=0.2, hidden_dropout=0.5, max_norm=3.5)
    student = MLP(784, (800, 800))
    return engine.prepare_model(teacher, device).eval(), engine.prepare_model(student, device)


def mnist_dataset(count: int) -> torch.utils.data.Dataset:
    """torchvision's MNIST with per-sample transforms, cut to its first ``count`` images."""
    transform = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize(data.MNIST_MEAN, data.MNIST_STD)])
    root = data.mnist_torchvision_root()
    dataset = torchvision.datasets.MNIST(str(root), train=True, transform=transform)
    if count < len(dataset):
        dataset = torch.utils.data.Subset(dataset, range(count))
    return dataset


def mnist(device: torch.device, args: argparse.Namespace) -> tuple[float, float]:
    train = data.load("mnist", train=True)
    train = train.head(image_count(len(train), args.batch_size, args.batches)).to(device)
    ours_rate = ours(device, train, *mnist_models(device), TEMPERATURE, args.batch_size,
                     precision=args.precision)
    book_rate = textbook(device, mnist_dataset(len(train)), *mnist_models(device), TEMPERATURE,
                         args.batch_size, args.workers)
    return ours_rate, book_rate


# ----------------------------------------------------------------------------------------------
# CIFAR-10


class PILImageDataset(torch.utils.data.Dataset):
    """A split's uint8 images served one ``PIL.Image`` at a time, as torchvision's ``CIFAR10``
    does (HWC uint8 array, ``Image.fromarray``, then the transform; labels as Python ints)."""

    def __init__(self, split: data.Split, transform):
        self.images = np.ascontiguousarray(split.images.permute(0, 2, 3, 1).cpu().numpy())
        self.labels = split.labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


def cifar_transform(split: data.Split) -> v2.Compose:
    """The per-sample CIFAR training transform of the tutorials: crop, flip, tensor, normalize."""
    return v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(), v2.ToImage(),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(split.mean, split.std)])


def cifar_models(device: torch.device, place=engine.prepare_model) -> tuple[nn.Module, nn.Module]:
    """Teacher (eval mode) and student, seeded; ``place`` puts each on the device."""
    engine.seed_everything(0)
    teacher = build_model("resnet18_cifar")
    student = build_model("plain_cnn2")
    return place(teacher, device).eval(), place(student, device)


def plain_to(model: nn.Module, device: torch.device) -> nn.Module:
    """The textbook's placement: fp32, default memory format, on any device."""
    return model.to(device)


def cifar_bench(device: torch.device, args: argparse.Namespace) -> tuple[float, float]:
    train = data.load("cifar10", train=True)
    train = train.head(image_count(len(train), args.batch_size, args.batches))
    ours_rate = ours(device, train.to(device), *cifar_models(device), CIFAR_TEMPERATURE,
                     args.batch_size, augment=cifar.RandomCropFlip(), precision=args.precision)
    dataset = PILImageDataset(train, cifar_transform(train))
    book_rate = textbook(device, dataset, *cifar_models(device, plain_to), CIFAR_TEMPERATURE,
                         args.batch_size, args.workers)
    return ours_rate, book_rate


# ----------------------------------------------------------------------------------------------
# K students at once


def batched_bench(device: torch.device, args: argparse.Namespace) -> tuple[float, float]:
    """Student-images per second of K ``--student-arch`` students (default ``plain_cnn2``)
    distilled from ``resnet18_cifar`` with crop + flip (a live teacher), as one
    :class:`kd.train.batched.StackedModels` and as K runs
    one after another. Each student has its own (α, T); all share the data order."""
    train = data.load("cifar10", train=True)
    train = train.head(image_count(len(train), args.batch_size, args.batches)).to(device)
    teacher, _ = cifar_models(device)
    temperatures = [(1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 30.0, 40.0, 50.0)[k % 9]
                    for k in range(args.students)]
    alphas = [(0.1, 0.25, 0.5, 0.75, 0.9)[k % 5] for k in range(args.students)]
    config = TrainConfig(epochs=1, batch_size=args.batch_size, lr=LR, momentum=MOMENTUM,
                         schedule="constant", precision=args.precision)

    def students() -> list[nn.Module]:
        engine.seed_everything(0)
        return [build_model(args.student_arch) for _ in range(args.students)]

    def stacked() -> None:
        model = engine.prepare_model(StackedModels(students()), device)
        engine.fit(model, train, Distill(teacher, temperatures, alphas), config, seed=0,
                   augment=cifar.RandomCropFlip(), desc="stacked")

    def sequential() -> None:
        for student, t, a in zip(students(), temperatures, alphas):
            engine.fit(engine.prepare_model(student, device), train, Distill(teacher, t, a),
                       config, seed=0, augment=cifar.RandomCropFlip(), desc="sequential")

    images = args.students * len(train)
    return images / seconds(device, stacked), images / seconds(device, sequential)


# ----------------------------------------------------------------------------------------------
# Against the machine's limit

ROOFLINE_MODELS = {  # name: (builder, input shape of one image)
    "mlp 784-1200-1200-10": (lambda: MLP(784, (1200, 1200)), (1, 28, 28)),
    "plain_cnn2": (lambda: build_model("plain_cnn2"), (3, 32, 32)),
    "resnet8": (lambda: build_model("resnet8"), (3, 32, 32)),
    "resnet14": (lambda: build_model("resnet14"), (3, 32, 32)),
    "resnet20": (lambda: build_model("resnet20"), (3, 32, 32)),
    "resnet32": (lambda: build_model("resnet32"), (3, 32, 32)),
}


def matmul_flops(device: torch.device, dtype: torch.dtype, n: int = 2048,
                 repeats: int = 5) -> float:
    """FLOP/s of an ``n x n`` matrix product (2 n³ FLOPs): the best of up to ``repeats`` timed
    products after a warm-up, fewer when one takes over a second (emulated bf16 on a CPU
    without it takes a minute)."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    times = [seconds(device, lambda: a @ b)]  # the warm-up, kept if it is all there is
    while len(times) <= repeats and sum(times) < 1.0:
        times.append(seconds(device, lambda: a @ b))
    return 2 * n ** 3 / min(times[1:] or times)


def training_flops(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """FLOPs of one forward and backward pass on the batch ``x`` (torch's FlopCounterMode)."""
    with FlopCounterMode(display=False) as counter:
        nn.functional.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def synthetic_split(shape: tuple[int, ...], n: int, device: torch.device) -> data.Split:
    """``n`` random uint8 images of ``shape`` with labels, on the device (speed does not depend
    on the pixels)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g)
    return data.Split(images, torch.randint(0, 10, (n,), generator=g), (0.5,) * shape[0],
                      (0.25,) * shape[0]).to(device)


def engine_images_per_s(model: nn.Module, train: data.Split, precision: str, batch_size: int,
                        repeats: int = 2) -> float:
    """images/s of ``kd.train.engine.fit`` training ``model`` on labels for one epoch of ``train``
    (crop + flip for 32x32 images), the best of ``repeats`` epochs after a warm-up batch."""
    config = TrainConfig(epochs=1, batch_size=batch_size, lr=LR, momentum=MOMENTUM,
                         schedule="constant", precision=precision)
    augment = cifar.RandomCropFlip() if train.images.shape[-1] == 32 else None
    fit = lambda split: engine.fit(model, split, CrossEntropy(), config, seed=0,
                                   augment=augment, desc="roofline")
    fit(train.head(batch_size))  # kernels chosen, memory allocated
    return len(train) / min(fit(train).wall_s for _ in range(repeats))


def roofline_rows(device: torch.device, args: argparse.Namespace) -> list[dict]:
    """One row per model and precision (fp32, bf16): the engine's images/s, its FLOP/s and the
    bf16 matmul's FLOP/s; each row also names the precision ``auto`` measures for the model
    (:mod:`kd.train.precision`) and bf16's measured speed-up."""
    peaks = {"fp32": matmul_flops(device, torch.float32),
             "bf16": matmul_flops(device, torch.bfloat16)}
    batches = args.batches or 5
    rows = []
    for name, (build, shape) in ROOFLINE_MODELS.items():
        engine.seed_everything(0)
        model = engine.prepare_model(build(), device)
        train = synthetic_split(shape, batches * args.batch_size, device)
        x, y = engine.sample_batch(model, train, args.batch_size)
        flops = training_flops(model, x, y) / len(y)
        choice = precision_lib.choose("auto", model, x, y)
        for precision in ("fp32", "bf16"):
            rate = engine_images_per_s(model, train, precision, args.batch_size)
            rows.append({"model": name, "precision": precision, "images_per_s": rate,
                         "flops_per_s": rate * flops, "peak_flops_per_s": peaks[precision],
                         "bf16_peak_flops_per_s": peaks["bf16"], "auto": choice.precision,
                         "bf16_speedup": choice.bf16_speedup})
    return rows


def next_run(table: ResultsTable) -> int:
    """The ``seed`` column of a recorded benchmark numbers its runs: the next one's."""
    done = table.read()
    return int(done["seed"].max()) + 1 if len(done) else 0


def record_roofline(rows: list[dict], device: torch.device, args: argparse.Namespace) -> Path:
    """Append one run's rows to ``<results>/bench/roofline.csv`` (one ``seed`` per run), with
    the provenance every result row carries, for the generated speed page."""
    table = ResultsTable("bench", "roofline")
    run = next_run(table)
    for r in rows:
        table.append({"cell": f"{r['model']}|{r['precision']}", "seed": run, "model": r["model"],
                      "images_per_s": round(r["images_per_s"], 1),
                      "gflops_per_s": round(r["flops_per_s"] / 1e9, 2),
                      "share_of_bf16_matmul": round(r["flops_per_s"] / r["bf16_peak_flops_per_s"], 4),
                      "matmul_gflops_per_s": round(r["peak_flops_per_s"] / 1e9, 1),
                      "auto": r["auto"], "bf16_speedup_measured": r["bf16_speedup"],
                      "batch_size": args.batch_size, "batches": args.batches or 5,
                      "threads": torch.get_num_threads(),
                      "amx": device.type == "cpu" and torch.cpu._is_amx_tile_supported(),
                      **provenance(device, 0.0, r["precision"])})
    return table.path


def roofline(device: torch.device, args: argparse.Namespace) -> None:
    rows = roofline_rows(device, args)
    if getattr(args, "record", False):
        print(f"  rows appended to {record_roofline(rows, device, args)}")
    fp32_peak, bf16_peak = rows[0]["peak_flops_per_s"], rows[1]["peak_flops_per_s"]
    amx = device.type == "cpu" and torch.cpu._is_amx_tile_supported()
    print(f"  matmul 2048x2048: fp32 {fp32_peak / 1e9:,.1f} GFLOP/s, bf16 {bf16_peak / 1e9:,.1f} "
          f"GFLOP/s (bf16/fp32 {bf16_peak / fp32_peak:.2f}x); bf16 native here: "
          f"{'yes' if engine.native_bf16(device) else 'no (emulated)'}"
          f"{', with AMX' if amx else ''}; shares below are of the bf16 matmul")
    for fp32, bf16 in zip(rows[::2], rows[1::2]):
        chosen = fp32 if fp32["auto"] == "fp32" else bf16
        speedup = "" if fp32["bf16_speedup"] is None else f", measured {fp32['bf16_speedup']:.2f}x"
        print(f"  {fp32['model']:<21}" + "".join(
            f" | {r['precision']} {r['images_per_s']:8,.0f} images/s "
            f"{r['flops_per_s'] / 1e9:6,.1f} GFLOP/s ({r['flops_per_s'] / bf16_peak:4.0%})"
            for r in (fp32, bf16))
              + f" | bf16/fp32 {bf16['images_per_s'] / fp32['images_per_s']:.2f}x"
              + f" | auto: {chosen['precision']}{speedup}, {chosen['images_per_s']:,.0f} images/s")


TASKS = {
    # name: (benchmark, what it times, what it counts, names of its two loops)
    "mnist": (mnist, "MNIST 800-800 student distillation", "samples",
              ("ours", "textbook  (DataLoader, {workers} workers, live fp32 teacher)")),
    "cifar": (cifar_bench,
              "CIFAR-10 plain_cnn2 student distillation from resnet18_cifar, crop + flip",
              "images", ("ours", "textbook  (DataLoader, {workers} workers, live fp32 teacher)")),
    "batched": (batched_bench,
                "CIFAR-10, {students} {student_arch} students from one resnet18_cifar teacher, "
                "crop + flip", "student-images",
                ("stacked", "sequential  (the same students one after another)")),
    "roofline": (roofline, "Training steps against this machine's matmul FLOP/s", None, None),
    "profile": (op_profile.run, "Where a training step's time goes (torch.profiler)", None, None),
}


def report(first: float, second: float, names: tuple[str, str], unit: str) -> None:
    first_name, (second_name, _, note) = names[0], names[1].partition("  ")
    width = max(len(first_name), len(second_name))
    print(f"  {first_name:<{width}} : {first:10,.0f} {unit}/s")
    print(f"  {second_name:<{width}} : {second:10,.0f} {unit}/s" + (f"  {note}" if note else ""))
    print(f"  {'ratio':<{width}} : {first / second:.2f}x")


def run_task(name: str, device: torch.device, args: argparse.Namespace) -> None:
    """Print the header, time both loops (best of ``--repeats`` each) and print the rates."""
    bench, title, unit, names = TASKS[name]
    if unit is None:  # the roofline prints its own table
        print(f"{title}, batch {args.batch_size}, {device} ({hardware(device.type)}), "
              f"torch {torch.__version__}")
        return bench(device, args)
    span = "one epoch" if args.batches is None else f"first {args.batches} batches"
    title = title.format(students=args.students, student_arch=args.student_arch)
    print(f"{title}, {span}, batch {args.batch_size}, {device} ({hardware(device.type)}), "
          f"torch {torch.__version__}, ours in {args.precision}")
    rates = [bench(device, args) for _ in range(args.repeats)]
    names = tuple(n.format(workers=args.workers) for n in names)
    best = max(r[0] for r in rates), max(r[1] for r in rates)
    report(*best, names, unit)
    if args.record:
        table = ResultsTable("bench", name)
        table.append({"cell": title, "seed": next_run(table),
                      "first": names[0], "first_per_s": best[0],
                      "second": names[1].split("  ")[0], "second_per_s": best[1],
                      "ratio": round(best[0] / best[1], 3), "unit": f"{unit}/s",
                      "batch_size": args.batch_size, "batches": args.batches,
                      "threads": torch.get_num_threads(), **provenance(device, 0.0, args.precision)})
        print(f"  row appended to {table.path}")


def main(argv: list[str] | None = None) -> None:
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=[*TASKS, "estimate", "all"], default="mnist",
                        help="which benchmark: mnist (default), cifar, ..., or all in turn; "
                             "estimate: the studies' GPU time, from counts "
                             "(kd.experiment.estimate)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="what our loop trains in (the textbook loops stay fp32)")
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (textbook)")
    parser.add_argument("--repeats", type=positive_int, default=1,
                        help="epochs timed per loop; best kept")
    parser.add_argument("--students", type=positive_int, default=45,
                        help="students trained together by the batched task")
    parser.add_argument("--profile-arch", default="resnet20",
                        help="the profile task's model (a CIFAR model of kd.models)")
    parser.add_argument("--student-arch", default="plain_cnn2",
                        help="the batched task's student architecture (e.g. resnet8)")
    parser.add_argument("--batches", type=positive_int, default=None,
                        help="time only the first N batches of the epoch (default: all)")
    parser.add_argument("--record", action="store_true",
                        help="append the rates to <results>/bench/<task>.csv ($KD_RESULTS or "
                             "results/), which docs/speed.md is made from")
    estimate.add_arguments(parser.add_argument_group("--task estimate"), precision=False)
    args = parser.parse_args(argv)
    if args.task == "estimate":
        return estimate.run(args)
    device = engine.resolve_device(args.device)
    args.precision = engine.resolve_precision(args.precision, device)
    for name in [n for n in TASKS if n != "profile"] if args.task == "all" else [args.task]:
        run_task(name, device, args)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
