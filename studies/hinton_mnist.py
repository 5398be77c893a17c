"""Hinton, Vinyals & Dean (2015), Section 3: distillation on MNIST and the effect of temperature.

Cells (each a trained model and one row of ``results/hinton_mnist/<profile>.csv``):

* ``teacher``: 784-1200-1200-10 ReLU MLP, dropout 20 % on the input and 50 % on hidden units,
  max-norm weight constraint, inputs jittered by up to 2 pixels.
* ``<w>x2/hard``: a 784-w-w-10 student on hard labels only, no regularization (w = 800, 300, 30).
* ``<w>x2/T<T>``: the same student distilled from the teacher at temperature T on the unaugmented
  training set, L = (1 − α) CE + α T² KL, with α = 0.9 (the paper gives no weights; it says a
  considerably lower weight on the hard-label term worked best, and keeps the T² factor).
* ``no_3``: the 800-800 student distilled on a transfer set with every 3 removed; evaluated as is,
  with the paper's +3.5 on the bias of class 3, and with a shift fitted on the training set.
* ``only_7_8``: the same with a transfer set of only 7s and 8s; the paper's shift is −7.6 on the
  biases of 7 and 8.

The fitted shift: the one value, on a 0.1 grid from −20 to 20, added to the shifted classes'
logits that makes the fewest errors on the full training split (all 60,000 images, including
the classes the student never saw); the paper chose its shifts on the test set instead.

Run ``python -m studies.hinton_mnist --help``. The paper's numbers live in
``studies/reference/hinton_mnist.csv`` and are never written into a result row.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from torch import nn

from kd import data, metrics
from kd.experiment.cache import ModelCache
from kd.experiment.cli import open_study, run_main
from kd.experiment.executor import every, run_cells_on_ray
from kd.experiment.results import (markdown_table, mean_std, one_per_teacher, pending, run_cells,
                                   run_footer)
from kd.models import MLP, parameter_count
from kd.train import engine
from kd.train.batched import StackedModels
from kd.train.distill import CrossEntropy, Distill
from kd.train.engine import TrainConfig

STUDY = "hinton_mnist"
REFERENCE = Path(__file__).with_name("reference") / f"{STUDY}.csv"

TEACHER_ARCH = {"hidden": (1200, 1200), "input_dropout": 0.2, "hidden_dropout": 0.5,
                "max_norm": 3.5}
JITTER_PIXELS = 2


@dataclass(frozen=True)
class Profile:
    description: str
    seeds: int
    teacher: TrainConfig
    student: TrainConfig
    temperatures: tuple[float, ...]
    widths: tuple[int, ...]  # students' hidden width, two hidden layers each
    alpha: float = 0.9  # weight of the soft-target term
    transfer_width: int = 800  # the student of the omitted-class cells
    transfer_temperature: float = 20.0
    train_limit: int | None = None  # first n training / test images (smoke only)
    test_limit: int | None = None
    shared_teacher: bool = False  # one teacher (seed 0) for every seed's students
    # The students of one width on the whole training set (hard labels and every temperature)
    # train as one kd.train.batched.StackedModels: they share their seed's initialization and
    # batches anyway, and on a GPU one step for all of them costs about what one student's does.
    stack_students: bool = False


# Adam with a cosine schedule for everyone: on a 2-core CPU it got the dropout teacher and the
# students furthest in few epochs (SGD at lr 0.1 made the dropout teacher diverge; SGD at 0.2
# made T = 20 students diverge, since at high T the soft loss behaves like a squared error).
ADAM_COSINE = TrainConfig(optimizer="adam", lr=1e-3, batch_size=128)  # profiles set the epochs
ALL_TEMPERATURES = (1.0, 2.0, 3.0, 4.0, 5.0, 8.0, 10.0, 15.0, 20.0, 30.0)

PROFILES = {
    "smoke": Profile(
        description="seconds: 2,000 training and 1,000 test images, 1 epoch, two temperatures",
        seeds=1, train_limit=2000, test_limit=1000, temperatures=(1.0, 20.0), widths=(30,),
        transfer_width=30,
        teacher=dataclasses.replace(ADAM_COSINE, epochs=1),
        student=dataclasses.replace(ADAM_COSINE, epochs=1)),
    "quick": Profile(
        description="all of MNIST on a 2-core CPU in about 20 minutes: teacher 40 epochs, "
                    "students 10 epochs, one seed",
        seeds=1, temperatures=ALL_TEMPERATURES, widths=(800, 300, 30),
        teacher=dataclasses.replace(ADAM_COSINE, epochs=40),
        student=dataclasses.replace(ADAM_COSINE, epochs=10)),
    # Sized before any full run, from the bf16 speeds measured on this CPU (800x2 students
    # about 21,000 images/s, the teacher about 8,000): teacher ~20 min, students ~18 min a seed.
    # The teacher trains 150 epochs (Adam, cosine to zero) so that its training loss plateaus
    # (kd.metrics.PLATEAU_DROP, recorded in its row); it is trained once and shared by the 5
    # seeds of students, so teacher-seed variance is not in the intervals. Students train twice
    # as long as in quick (20 epochs), which tests whether longer training moves the 30x2
    # students' best temperature into the paper's 2.5-4.
    "full": Profile(
        description="a 2-core CPU in about 2 hours (bf16): one teacher, 150 epochs, shared by "
                    "5 seeds of students, 20 epochs each",
        seeds=5, temperatures=ALL_TEMPERATURES, widths=(800, 300, 30), shared_teacher=True,
        teacher=dataclasses.replace(ADAM_COSINE, epochs=150),
        student=dataclasses.replace(ADAM_COSINE, epochs=20)),
    "paper": Profile(
        description="long training for a GPU: teacher 300 epochs, students 100 epochs, 3 seeds",
        seeds=3, temperatures=ALL_TEMPERATURES, widths=(800, 300, 30),
        teacher=dataclasses.replace(ADAM_COSINE, epochs=300),
        student=dataclasses.replace(ADAM_COSINE, epochs=100), stack_students=True),
}


@dataclass(frozen=True)
class TransferSet:
    """Which training images the student is distilled on, and which logits a bias fix shifts."""

    keep: Callable[[data.Split], torch.Tensor]  # split -> boolean mask of examples kept
    shifted_classes: tuple[int, ...] = ()


TRANSFER_SETS = {
    "all": TransferSet(lambda split: torch.ones_like(split.labels, dtype=torch.bool)),
    "no_3": TransferSet(lambda split: ~split.class_mask([3]), (3,)),
    "only_7_8": TransferSet(lambda split: split.class_mask([7, 8]), (7, 8)),
}


@dataclass(frozen=True)
class Cell:
    name: str
    width: int | None = None  # None: the teacher
    temperature: float | None = None  # None: hard labels only
    transfer: str = "all"


def plan(profile: Profile) -> list[Cell]:
    """Every cell of one seed, the teacher first."""
    cells = [Cell("teacher")]
    for width in profile.widths:
        cells.append(Cell(f"{width}x2/hard", width))
        cells += [Cell(f"{width}x2/T{t:g}", width, t) for t in profile.temperatures]
    cells += [Cell(name, profile.transfer_width, profile.transfer_temperature, name)
              for name in TRANSFER_SETS if name != "all"]
    return cells


def paper_shifts() -> dict[str, float]:
    """The paper's bias shifts per transfer set, read from the reference table."""
    reference = pd.read_csv(REFERENCE)
    rows = reference[reference["quantity"] == "logit_shift"]
    return dict(zip(rows["cell"], rows["value"].astype(float)))


class Run:
    """One profile and seed: the data on the device, the teacher, and a runner per cell."""

    def __init__(self, profile: Profile, seed: int, device: torch.device, cache: ModelCache,
                 pending: list[Cell] | None = None):
        """pending: the cells of this seed still to run (a stack trains those of its width)."""
        self.profile, self.seed, self.device, self.cache = profile, seed, device, cache
        self.pending = pending
        self._stacked: dict[str, tuple[nn.Module, int, float]] = {}  # trained, not yet scored
        self._stacked_with: dict[str, int] = {}  # cell -> size of the stack it trained in
        self.train = data.load("mnist", train=True).head(profile.train_limit).to(device)
        self.test = data.load("mnist", train=False).head(profile.test_limit).to(device)
        self.teacher_seed = 0 if profile.shared_teacher else seed
        self._teacher: nn.Module | None = None
        self.teacher_meta: dict = {}

    # -- the teacher, trained once per seed and kept in the model cache ------------------------
    def teacher_spec(self) -> dict:
        return {"data": "mnist", "train_limit": self.profile.train_limit, "arch": TEACHER_ARCH,
                "jitter": JITTER_PIXELS, "train": dataclasses.asdict(self.profile.teacher),
                "seed": self.teacher_seed}

    def teacher(self) -> nn.Module:
        if self._teacher is None:
            engine.seed_everything(self.teacher_seed)
            model = engine.prepare_model(MLP(784, **TEACHER_ARCH), self.device)
            self._teacher, self.teacher_meta, _ = self.cache.fit(
                self.teacher_spec(), model, self.train, CrossEntropy(), self.profile.teacher,
                seed=self.teacher_seed, augment=data.RandomTranslate(JITTER_PIXELS),
                desc=f"teacher seed {self.teacher_seed}")
        return self._teacher

    @functools.cached_property
    def teacher_test_logits(self) -> torch.Tensor:
        return engine.predict(self.teacher(), self.test)

    # -- cells ---------------------------------------------------------------------------------
    def run(self, cell: Cell) -> dict:
        if cell.width is None:
            model = self.teacher()
            config, transfer_n = self.profile.teacher, len(self.train)
            meta = self.teacher_meta
            row = {"model": "mlp-784-1200-1200-10", **TEACHER_ARCH, "jitter": JITTER_PIXELS,
                   "hidden": "1200-1200", "train_s": meta.get("train_s"),
                   "final_train_loss": meta.get("final_train_loss"),
                   "train_loss_plateau": metrics.loss_plateau(meta.get("train_loss_history", []))}
        else:
            model, transfer_n, train_s = self.train_student(cell)
            config = self.profile.student
            stacked = self._stacked_with.get(cell.name)
            row = {**({"stacked_with": stacked} if stacked else {}), "train_s": train_s, "model": f"mlp-784-{cell.width}-{cell.width}-10", "hidden":
                   f"{cell.width}-{cell.width}", "temperature": cell.temperature,
                   "alpha": None if cell.temperature is None else self.profile.alpha}
        row.update({"teacher_seed": self.teacher_seed,
                    "width": cell.width or TEACHER_ARCH["hidden"][0], "transfer": cell.transfer,
                    "transfer_n": transfer_n, "params": parameter_count(model),
                    "epochs": config.epochs, "batch_size": config.batch_size,
                    "optimizer": config.optimizer, "lr": config.lr, "schedule": config.schedule})
        row.update(self.evaluate(model, cell))
        return row

    @functools.cached_property
    def teacher_train_logits(self) -> torch.Tensor:
        """Computed once per seed and shared by every distilled student (none is augmented)."""
        return engine.predict(self.teacher(), self.train)

    def train_student(self, cell: Cell) -> tuple[nn.Module, int, float]:
        if self.profile.stack_students and cell.transfer == "all":
            if cell.name not in self._stacked:
                self.train_stack(cell)
            return self._stacked.pop(cell.name)
        keep = TRANSFER_SETS[cell.transfer].keep(self.train)
        transfer = self.train.subset(keep)
        objective = (CrossEntropy() if cell.temperature is None else
                     Distill(self.teacher(), cell.temperature, self.profile.alpha,
                             transfer_logits=self.teacher_train_logits[keep]))
        engine.seed_everything(self.seed)
        student = engine.prepare_model(MLP(784, (cell.width, cell.width)), self.device)
        fitted = engine.fit(student, transfer, objective, self.profile.student, seed=self.seed,
                            desc=f"{cell.name} seed {self.seed}")
        return student, len(transfer), round(fitted.wall_s, 2)

    def train_stack(self, cell: Cell) -> None:
        """Train ``cell`` and the pending cells of its width on the whole training set as one
        stack (hard labels: α = 0, the soft term's weight is zero), each from this seed's
        initialization on this seed's batches, as it would train alone (up to rounding)."""
        group = [c for c in (self.pending or []) if c.width == cell.width and c.transfer == "all"
                 and c.name not in self._stacked_with]
        group = group if cell in group else [cell, *group]
        students = []
        for _ in group:
            engine.seed_everything(self.seed)
            students.append(MLP(784, (cell.width, cell.width)))
        stack = engine.prepare_model(StackedModels(students), self.device)
        objective = Distill(self.teacher(), [c.temperature or 1.0 for c in group],
                            [0.0 if c.temperature is None else self.profile.alpha for c in group],
                            transfer_logits=self.teacher_train_logits)
        fitted = engine.fit(stack, self.train, objective, self.profile.student, seed=self.seed,
                            desc=f"{len(group)} x {cell.width}x2 seed {self.seed}")
        for c, model in zip(group, stack.unstack(students)):
            model = engine.prepare_model(model, self.device)
            self._stacked[c.name] = (model, len(self.train), round(fitted.wall_s / len(group), 2))
            self._stacked_with[c.name] = len(group)

    def evaluate(self, model: nn.Module, cell: Cell) -> dict:
        logits = engine.predict(model, self.test)
        labels = self.test.labels
        out = summarize(logits, labels, prefix="test_")
        if cell.width is not None:
            teacher_logits = self.teacher_test_logits
            out["test_agreement"] = metrics.agreement(logits, teacher_logits)
            out["test_kl_teacher_student"] = metrics.predictive_kl(teacher_logits, logits)
        classes = TRANSFER_SETS[cell.transfer].shifted_classes
        if classes:
            shifted_mask = self.test.class_mask(classes)
            out["shifted_class_n"] = int(shifted_mask.sum())
            out["shifted_class_errors"] = errors_among(logits, labels, shifted_mask)
            fitted = metrics.fit_logit_shift(engine.predict(model, self.train), self.train.labels,
                                             classes)
            for tag, shift in (("paper", paper_shifts()[cell.transfer]), ("fitted", fitted)):
                shifted = metrics.shift_logits(logits, classes, shift)
                out[f"shift_{tag}"] = round(shift, 4)
                out.update({f"{k}_shift_{tag}": v for k, v in
                            summarize(shifted, labels, "test_", per_class=False).items()})
                out[f"shifted_class_errors_shift_{tag}"] = errors_among(shifted, labels,
                                                                        shifted_mask)
        return out


def summarize(logits: torch.Tensor, labels: torch.Tensor, prefix: str,
              per_class: bool = True) -> dict:
    errors = metrics.error_count(logits, labels)
    out = {f"{prefix}errors": errors, f"{prefix}error_pct": 100 * errors / labels.numel(),
           f"{prefix}n": labels.numel()}
    if per_class:
        out[f"{prefix}ece"] = metrics.expected_calibration_error(logits, labels)
        counts = metrics.per_class_errors(logits, labels, 10).tolist()
        out.update({f"{prefix}errors_class{c}": n for c, n in enumerate(counts)})
    return out


def errors_among(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> int:
    """Errors on the examples selected by ``mask``."""
    return metrics.error_count(logits[mask], labels[mask])


# ----------------------------------------------------------------------------------------------
# Paper vs ours

def best_temperature(rows: pd.DataFrame, width: int) -> str:
    """The temperature with the fewest mean test errors among one width's distilled students."""
    grid = rows[(rows["width"] == width) & rows["temperature"].notna() & (rows["transfer"] == "all")]
    if grid.empty:
        return "not run"
    means = grid.groupby("temperature")["test_errors"].mean()
    return f"T = {means.idxmin():g} ({means.min():.1f} errors)"


def spread_above(rows: pd.DataFrame, width: int, temperature: float) -> str:
    grid = rows[(rows["width"] == width) & (rows["temperature"] >= temperature)
                & (rows["transfer"] == "all")]
    if grid.empty:
        return "not run"
    means = grid.groupby("temperature")["test_errors"].mean()
    return f"{means.min():.1f} to {means.max():.1f} errors over T = {means.index.min():g}..{means.index.max():g}"


def comparison(rows: pd.DataFrame) -> pd.DataFrame:
    """Every number of the paper's Section 3 beside ours (mean ± std over seeds, final epoch)."""
    ref = pd.read_csv(REFERENCE).set_index(["quantity", "cell"])["value"]
    cell = lambda name: rows[rows["cell"] == name]
    table = [
        ("teacher 1200-1200, test errors", ref["test_errors", "teacher"],
         mean_std(one_per_teacher(cell("teacher"))["test_errors"], of="teacher")),
        ("800-800 hard labels, test errors", ref["test_errors", "800x2/hard"],
         mean_std(cell("800x2/hard")["test_errors"])),
        ("800-800 distilled at T = 20, test errors", ref["test_errors", "800x2/T20"],
         mean_std(cell("800x2/T20")["test_errors"])),
        ("800-800 best temperature (on the test set)", "20 (the one reported)",
         best_temperature(rows, 800)),
        ("300-300 errors for T >= 8", "all temperatures above 8 fairly similar",
         spread_above(rows, 300, ref["alike_above_temperature", "300x2"])),
        ("30-30 hard labels, test errors", "not reported", mean_std(cell("30x2/hard")["test_errors"])),
        ("30-30 best temperature (on the test set)", f"{ref['best_temperature_low', '30x2']:g} to "
         f"{ref['best_temperature_high', '30x2']:g}", best_temperature(rows, 30)),
        ("no 3s in transfer set, test errors", ref["test_errors", "no_3"],
         mean_std(cell("no_3")["test_errors"])),
        ("no 3s, errors on the 1,010 test 3s", ref["shifted_class_errors", "no_3"],
         mean_std(cell("no_3")["shifted_class_errors"])),
        ("no 3s, bias of 3 +3.5: test errors", ref["test_errors_shifted", "no_3"],
         mean_std(cell("no_3")["test_errors_shift_paper"])),
        ("no 3s, bias of 3 +3.5: errors on 3s", ref["shifted_class_errors_shifted", "no_3"],
         mean_std(cell("no_3")["shifted_class_errors_shift_paper"])),
        ("no 3s, shift fitted on training data", "3.5 (chosen on the test set)",
         mean_std(cell("no_3")["shift_fitted"])),
        ("no 3s, fitted shift: test errors / errors on 3s", "",
         f"{mean_std(cell('no_3')['test_errors_shift_fitted'])} / "
         f"{mean_std(cell('no_3')['shifted_class_errors_shift_fitted'])}"),
        ("only 7s and 8s, test error %", ref["test_error_pct", "only_7_8"],
         mean_std(cell("only_7_8")["test_error_pct"])),
        ("only 7s and 8s, biases of 7, 8 -7.6: test error %", ref["test_error_pct_shifted", "only_7_8"],
         mean_std(cell("only_7_8")["test_error_pct_shift_paper"])),
        ("only 7s and 8s, shift fitted on training data", "-7.6 (chosen on the test set)",
         mean_std(cell("only_7_8")["shift_fitted"])),
        ("only 7s and 8s, fitted shift: test error %", "",
         mean_std(cell("only_7_8")["test_error_pct_shift_fitted"])),
    ]
    return pd.DataFrame(table, columns=["quantity", "paper", "ours"])


# Columns only student rows have: a partial run (the teacher alone) reports them as not run.
STUDENT_COLUMNS = ("width", "temperature", "transfer", "shifted_class_errors", "shift_fitted",
                   *(f"{quantity}_shift_{tag}" for tag in ("paper", "fitted") for quantity in
                     ("test_errors", "test_error_pct", "shifted_class_errors")))


def report(rows: pd.DataFrame) -> str:
    """A Markdown table of :func:`comparison` with the run's profile, hardware and wall time."""
    rows = rows.reindex(columns=[*rows.columns,
                                 *(c for c in STUDENT_COLUMNS if c not in rows.columns)])
    lines = markdown_table(comparison(rows), number="{:g}")
    lines.append("\n" + run_footer(rows))
    return "\n".join(lines)


def planned(name: str) -> list[tuple[str, int]]:
    """Every ``(cell, seed)`` the profile runs: what a complete table holds."""
    return [(cell.name, seed) for seed, cell in every(plan(PROFILES[name]), PROFILES[name].seeds)]


def main(argv: list[str] | None = None) -> None:
    command = open_study(argv, study=STUDY, description=__doc__.split("\n\n")[0],
                         profiles=PROFILES, report=report)
    if command is None:
        return
    args, profile, table, device = (command.args, command.profile, command.table,
                                    command.device)
    cells, seeds = plan(profile), args.seeds or profile.seeds
    todo = list(pending(cells, seeds, table))
    print(f"{STUDY} [{args.profile}] {profile.description}; {len(todo)} cells to run on "
          f"{device} -> {table.path}")
    summary = lambda row: f"{row['test_errors']} test errors"
    if command.executor == "ray":
        teacher_seed = lambda seed: 0 if profile.shared_teacher else seed
        run_cells_on_ray(command, every(cells, seeds), cell_runner, summary,  # all use the teacher
                         lambda seed, cell: [("teacher", teacher_seed(seed))])
        return
    run_cells(table, todo, cell_runner(command, todo), device, summary,
              precision=command.precision)


def cell_runner(command, todo: list[tuple[int, Cell]] | None = None
                ) -> Callable[[int, Cell], dict]:
    """``run(seed, cell) -> row`` for a study command (here, or on a Ray worker); ``todo``, the
    pending ``(seed, cell)`` pairs, lets a profile that stacks students stack just those."""
    runs: dict[int, Run] = {}
    cache = ModelCache()
    pending = lambda seed: [cell for s, cell in todo or [] if s == seed]
    return lambda seed, cell: runs.setdefault(
        seed, Run(command.profile, seed, command.device, cache, pending(seed))).run(cell)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
