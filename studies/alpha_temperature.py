"""An alpha x temperature grid on CIFAR-10: a ResNet-18 teacher distilled into a 2-layer CNN.

Each cell trains the student (Mirzadeh et al.'s plain CNN: Conv16-MaxPool-Conv16-MaxPool-FC10)
with

    L = (1 − α) · CE(s, y) + α · w · KL(softmax_T(t) ‖ softmax_T(s)),   w = T² or w = 1,

over α × T, both with the T² factor (Hinton et al.) and without it (the seed study's loss, whose
soft term is the cross-entropy CE(softmax_T(t), softmax_T(s)): the same gradient as the KL).
Without T² the soft term's gradient shrinks like 1/T, so at high T a cell trains almost on
(1 − α)·CE alone; with T² it does not. Cell ``scratch`` is the student on labels only (α = 0).

Within a seed every cell starts from the same initial weights and sees the same batches, so the
differences between cells come from α, T and w alone. One teacher (seed 0) serves all seeds.
On a GPU the cells of a seed train together as one :class:`kd.train.batched.StackedModels` (one
teacher pass per batch for all of them); on a CPU one at a time, which is faster there.

Run ``python -m studies.alpha_temperature --help``. The seed study's numbers live in
``studies/reference/alpha_temperature.csv`` and are never written into a result row.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pandas as pd
import torch
from torch import nn

import kd.models.cifar  # noqa: F401  (registers the CIFAR models)
from kd import data, metrics
from kd.data.cifar import RandomCropFlip
from kd.errors import NonFiniteLossError
from kd.experiment.cache import ModelCache
from kd.experiment.cli import open_study, run_main
from kd.experiment.executor import Unit, every, run_units_on_ray
from kd.experiment.results import (ResultsTable, markdown_table, mean_std, pending, provenance,
                                   record_failure, run_footer)
from kd.models import build_model, parameter_count
from kd.models.cifar import flops_per_image
from kd.train import engine
from kd.train.batched import StackedModels
from kd.train.distill import CrossEntropy, Distill
from kd.train.engine import TrainConfig

STUDY = "alpha_temperature"
REFERENCE = Path(__file__).with_name("reference") / f"{STUDY}.csv"
STUDENT = "plain_cnn2"
TEACHER_SEED = 0


@dataclass(frozen=True)
class Profile:
    description: str
    seeds: int
    teacher_arch: str
    teacher: TrainConfig
    student: TrainConfig
    alphas: tuple[float, ...]
    temperatures: tuple[float, ...]
    augment_students: bool  # False: the teacher's logits are computed once and looked up
    stack_size: int  # students trained together as one stacked model (1: one at a time)
    train_limit: int | None = None  # n training / test images drawn at random (seed 0)
    test_limit: int | None = None


# The seed study's settings: SGD lr 0.1, cosine annealing, batch 128. Momentum and weight decay
# are not given; 0.9 and 5e-4 are the usual CIFAR choices. The 1-epoch linear warm-up is ours:
# without it lr 0.1 kills our 2-layer CNN (with batch norm) in its first epoch (10 % accuracy).
SGD_COSINE = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4,
                         schedule="cosine", warmup_epochs=1.0, batch_size=128)
ALPHAS = (0.1, 0.25, 0.5, 0.75, 0.9)
TEMPERATURES = (1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 30.0, 40.0, 50.0)

PROFILES = {
    "smoke": Profile(
        description="seconds: 512 training and 256 test images, 1 epoch, a 2 x 2 grid",
        seeds=1, teacher_arch="resnet8", train_limit=512, test_limit=256,
        alphas=(0.5, 0.9), temperatures=(1.0, 20.0), augment_students=False, stack_size=3,
        teacher=dataclasses.replace(SGD_COSINE, epochs=1),
        student=dataclasses.replace(SGD_COSINE, epochs=1)),
    "quick": Profile(
        description="a 2-core CPU in about 25 minutes: ResNet-8 teacher (15 epochs) and students "
                    "(8 epochs, no augmentation) on 20,000 random training images, full test "
                    "set, alpha {0.1, 0.5, 0.9} x T {1, 5, 20, 50}, 2 seeds",
        seeds=2, teacher_arch="resnet8", train_limit=20_000,
        alphas=(0.1, 0.5, 0.9), temperatures=(1.0, 5.0, 20.0, 50.0), augment_students=False,
        stack_size=1,
        teacher=dataclasses.replace(SGD_COSINE, epochs=15),
        student=dataclasses.replace(SGD_COSINE, epochs=8)),
    # Sized before any full run from this CPU's bf16 speeds (ResNet-8 about 2,300 training
    # images/s, the 2-layer CNN about 12,000): teacher ~15 min, 17 students ~18 min a seed.
    # All 50,000 training images; the teacher trains until its loss plateaus (40 epochs, cosine
    # to zero; kd.metrics.PLATEAU_DROP, recorded in its row); students without augmentation
    # (the teacher's logits looked up), 15 epochs; alpha 0.1 left out of the grid to afford the
    # 5 seeds that claims of under a point need.
    "full": Profile(
        description="a 2-core CPU in about 2 hours (bf16): ResNet-8 teacher (40 epochs, crop + "
                    "flip) and students (15 epochs, no augmentation) on all 50,000 training "
                    "images, alpha {0.5, 0.9} x T {1, 5, 20, 50} with and without T², 5 seeds",
        seeds=5, teacher_arch="resnet8", alphas=(0.5, 0.9), temperatures=(1.0, 5.0, 20.0, 50.0),
        augment_students=False, stack_size=1,
        teacher=dataclasses.replace(SGD_COSINE, epochs=40),
        student=dataclasses.replace(SGD_COSINE, epochs=15)),
    "paper": Profile(
        description="the seed study's settings for a GPU: ResNet-18 teacher and students 100 "
                    "epochs each with crop + flip, the full grid with and without T², 3 seeds, "
                    "each seed's 91 students as one stacked model",
        seeds=3, teacher_arch="resnet18_cifar", alphas=ALPHAS, temperatures=TEMPERATURES,
        augment_students=True, stack_size=91,
        teacher=dataclasses.replace(SGD_COSINE, epochs=100),
        student=dataclasses.replace(SGD_COSINE, epochs=100)),
}


@dataclass(frozen=True)
class Cell:
    name: str
    alpha: float = 0.0  # 0: labels only
    temperature: float = 1.0
    t_squared: bool = True

    @property
    def is_teacher(self) -> bool:
        return self.name == "teacher"


def cell_name(alpha: float, temperature: float, t_squared: bool) -> str:
    return f"a{alpha:g}_T{temperature:g}_{'t2' if t_squared else 'no_t2'}"


def plan(profile: Profile) -> list[Cell]:
    """The student cells of one seed: scratch, then the grid without and with T²."""
    return [Cell("scratch")] + [Cell(cell_name(a, t, sq), a, t, sq) for sq in (False, True)
                                for a in profile.alphas for t in profile.temperatures]


class Run:
    """One profile on one device: the data, the teacher, and the training of student groups."""

    def __init__(self, profile: Profile, device: torch.device, cache: ModelCache):
        self.profile, self.device, self.cache = profile, device, cache
        # a fixed random subset: the offline CIFAR-10 copy is sorted by class
        self.train = data.load("cifar10", train=True).sample(profile.train_limit).to(device)
        self.test = data.load("cifar10", train=False).sample(profile.test_limit).to(device)
        self.teacher_meta: dict = {}

    def teacher_spec(self) -> dict:
        return {"data": "cifar10", "train_limit": self.profile.train_limit,
                "arch": self.profile.teacher_arch, "augment": "crop4+flip",
                "train": dataclasses.asdict(self.profile.teacher), "seed": TEACHER_SEED}

    @functools.cached_property
    def teacher(self) -> nn.Module:
        """Trained once (with crop + flip) and kept in the model cache."""
        engine.seed_everything(TEACHER_SEED)
        model = engine.prepare_model(build_model(self.profile.teacher_arch), self.device)
        model, self.teacher_meta, _ = self.cache.fit(
            self.teacher_spec(), model, self.train, CrossEntropy(), self.profile.teacher,
            seed=TEACHER_SEED, augment=RandomCropFlip(), desc="teacher")
        return model

    @functools.cached_property
    def teacher_test_logits(self) -> torch.Tensor:
        return engine.predict(self.teacher, self.test)

    @functools.cached_property
    def teacher_train_logits(self) -> torch.Tensor | None:
        """Shared by every student when students see the training images unaugmented."""
        return None if self.profile.augment_students else engine.predict(self.teacher, self.train)

    def teacher_row(self) -> dict:
        teacher = self.teacher  # trained or loaded first: that sets teacher_meta
        meta = self.teacher_meta
        return {"role": "teacher", "model": self.profile.teacher_arch,
                "train_s": meta.get("train_s"), "final_train_loss": meta.get("final_train_loss"),
                "train_loss_plateau": metrics.loss_plateau(meta.get("train_loss_history", [])),
                **self.describe(teacher, self.profile.teacher, augmented=True),
                **self.evaluate(self.teacher_test_logits, teacher=False)}

    def train_students(self, cells: list[Cell], seed: int) -> list[dict]:
        """Train ``cells`` from one initialization and one batch order; one row per cell."""
        students = []
        for _ in cells:  # every cell of a seed starts from the same weights
            engine.seed_everything(seed)
            students.append(build_model(STUDENT))
        model = students[0] if len(cells) == 1 else StackedModels(students)
        model = engine.prepare_model(model, self.device)
        setting = lambda key: [getattr(c, key) for c in cells]
        scalar = (lambda values: values[0]) if len(cells) == 1 else (lambda values: values)
        objective = Distill(self.teacher, scalar(setting("temperature")), scalar(setting("alpha")),
                            t_squared=scalar(setting("t_squared")),
                            transfer_logits=self.teacher_train_logits)
        fitted = engine.fit(model, self.train, objective, self.profile.student, seed=seed,
                            augment=RandomCropFlip() if self.profile.augment_students else None,
                            desc=f"seed {seed}: {len(cells)} student(s)")
        logits = engine.predict(model, self.test).reshape(len(cells), len(self.test), -1)
        train_logits = engine.predict(model, self.train).reshape(len(cells), len(self.train), -1)
        description = self.describe(students[0], self.profile.student)
        return [{"role": "student", "model": STUDENT, "alpha": cell.alpha,
                 "temperature": cell.temperature, "t_squared": cell.t_squared,
                 "stacked_with": len(cells), "train_s": round(fitted.wall_s / len(cells), 2),
                 **description, **self.evaluate(logits[k]),
                 "train_accuracy": metrics.accuracy(train_logits[k], self.train.labels)}
                for k, cell in enumerate(cells)]

    def describe(self, model: nn.Module, config: TrainConfig, augmented: bool | None = None
                 ) -> dict:
        """``augmented``: whether ``model`` trained with crop + flip (default: the students')."""
        augmented = self.profile.augment_students if augmented is None else augmented
        return {"params": parameter_count(model), "flops_per_image": flops_per_image(model),
                "train_n": len(self.train), "epochs": config.epochs,
                "batch_size": config.batch_size, "optimizer": config.optimizer, "lr": config.lr,
                "weight_decay": config.weight_decay, "schedule": config.schedule,
                "augment": "crop4+flip" if augmented else "none"}

    def evaluate(self, logits: torch.Tensor, teacher: bool = True) -> dict:
        labels = self.test.labels
        out = {"test_accuracy": metrics.accuracy(logits, labels),
               "test_errors": metrics.error_count(logits, labels), "test_n": labels.numel(),
               "test_ece": metrics.expected_calibration_error(logits, labels)}
        if teacher:
            out["test_agreement"] = metrics.agreement(logits, self.teacher_test_logits)
            out["test_kl_teacher_student"] = metrics.predictive_kl(self.teacher_test_logits,
                                                                   logits)
        return out


# ----------------------------------------------------------------------------------------------
# Seed study vs ours

def grid_table(rows: pd.DataFrame, t_squared: bool) -> pd.DataFrame:
    """Mean test accuracy (%) over seeds, α down, T across."""
    grid = rows[(rows["role"] == "student") & (rows["alpha"] > 0)
                & (rows["t_squared"].astype(bool) == t_squared)]
    return grid.pivot_table(index="alpha", columns="temperature", values="test_accuracy",
                            aggfunc="mean") * 100


def comparison(rows: pd.DataFrame) -> pd.DataFrame:
    ref = pd.read_csv(REFERENCE).set_index("cell")["value"]
    cell = lambda name: rows[rows["cell"] == name]["test_accuracy"] * 100
    table = [("teacher test accuracy %", ref["teacher"] * 100, mean_std(cell("teacher"), 2)),
             ("student from scratch %", ref["scratch"] * 100, mean_std(cell("scratch"), 2))]
    for name in ("a0.9_T5", "a0.5_T10"):
        table.append((f"{name.replace('_', ', ')} without T² %", ref[name] * 100,
                      mean_std(cell(f"{name}_no_t2"), 2)))
    for t_squared in (False, True):
        means = grid_table(rows, t_squared).stack()
        if not means.empty:
            (alpha, temperature), best = means.idxmax(), means.max()
            table.append((f"best cell {'with' if t_squared else 'without'} T², on the test set "
                          f"(descriptive, mean %)",
                          "α 0.9, T 5: 62.57" if not t_squared else "not run",
                          f"α {alpha:g}, T {temperature:g}: {best:.2f}"))
    return pd.DataFrame(table, columns=["quantity", "seed study", "ours"])


def report(rows: pd.DataFrame) -> str:
    lines = markdown_table(comparison(rows), number="{:.2f}")
    for t_squared in (False, True):
        grid = grid_table(rows, t_squared)
        lines += [f"\nMean test accuracy %, {'with' if t_squared else 'without'} T²:\n",
                  "| α \\ T | " + " | ".join(f"{t:g}" for t in grid.columns) + " |",
                  "| --- " * (len(grid.columns) + 1) + "|"]
        lines += [f"| {a:g} | " + " | ".join(f"{v:.2f}" for v in values) + " |"
                  for a, values in grid.iterrows()]
    lines.append("\n" + run_footer(rows))
    return "\n".join(lines)


def stacks(profile: Profile, seeds: int, table: ResultsTable) -> Iterator[tuple[int, list[Cell]]]:
    """The cells still to run, seed by seed, in groups of at most ``stack_size``."""
    for seed, group in itertools.groupby(pending(plan(profile), seeds, table), lambda p: p[0]):
        cells = [cell for _, cell in group]
        for start in range(0, len(cells), profile.stack_size):
            yield seed, cells[start:start + profile.stack_size]


def planned(name: str) -> list[tuple[str, int]]:
    """Every ``(cell, seed)`` the profile runs: what a complete table holds."""
    return [("teacher", TEACHER_SEED)] + [(cell.name, seed) for seed, cell in every(
        plan(PROFILES[name]), PROFILES[name].seeds)]


def main(argv: list[str] | None = None) -> None:
    command = open_study(argv, study=STUDY, description=__doc__.split("\n\n")[0],
                         profiles=PROFILES, report=report)
    if command is None:
        return
    args, profile, table, device = (command.args, command.profile, command.table,
                                    command.device)
    groups = list(stacks(profile, args.seeds or profile.seeds, table))
    teacher_done = ("teacher", TEACHER_SEED) in table.done()
    print(f"{STUDY} [{args.profile}] {profile.description}; "
          f"{sum(map(len, (g for _, g in groups)))} student cells to run on {device} -> "
          f"{table.path}")
    if command.executor == "ray":  # the teacher a task, then each group a task after it
        first = [] if teacher_done else [Unit(TEACHER_SEED, (Cell("teacher"),))]
        units = first + [Unit(seed, tuple(cells), tuple(range(len(first))))
                         for seed, cells in groups]
        order = [("teacher", TEACHER_SEED)] + [(c.name, seed) for seed, c in every(
            plan(profile), args.seeds or profile.seeds)]
        run_units_on_ray(command, units, group_runner, summary, grouped=True, order=order)
        return
    run = Run(profile, device, ModelCache())
    if not teacher_done:
        start = time.perf_counter()
        row = run.teacher_row()
        table.append({"cell": "teacher", "seed": TEACHER_SEED, **row,
                      **provenance(device, time.perf_counter() - start, command.precision)})
        print(f"  teacher {profile.teacher_arch}: test accuracy {row['test_accuracy']:.4f}")
    for seed, cells in groups:
        start = time.perf_counter()
        try:
            rows = run.train_students(cells, seed)
        except NonFiniteLossError as error:  # a stack fails as a whole: each of its cells
            wall = (time.perf_counter() - start) / len(cells)
            for cell in cells:
                record_failure(table, cell.name, seed, error,
                               provenance(device, wall, command.precision))
            continue
        wall = (time.perf_counter() - start) / len(cells)
        for cell, row in zip(cells, rows):
            table.append({"cell": cell.name, "seed": seed, **row,
                          **provenance(device, wall, command.precision)})
            table.failures().discard(cell.name, seed)
            print(f"  seed {seed} {cell.name:>16}: {summary(row)}")


def summary(row: dict) -> str:
    return f"test accuracy {row['test_accuracy']:.4f}"


def group_runner(command):
    """``run(seed, cells) -> rows`` for a study command (on a Ray worker): the teacher's row
    for the cell ``teacher``, else the students of one group trained together."""
    run = Run(command.profile, command.device, ModelCache())
    return lambda seed, cells: ([run.teacher_row()] if cells[0].is_teacher
                                else run.train_students(list(cells), seed))


if __name__ == "__main__":
    raise SystemExit(run_main(main))
