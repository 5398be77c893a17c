"""Fidelity vs generalization: students often fail to match their teachers, even on the training
data, and matching them better does not always generalize better (Stanton et al. 2021, "Does
Knowledge Distillation Really Work?").

Every student is distilled with the KD term alone at T = 4, L = T² · KL(softmax_T(t) ‖
softmax_T(s)) (α = 1 in :class:`kd.train.distill.Distill`: Stanton et al.'s "no label term"), from
teachers of its own architecture. An ensemble teacher of m members gives the log of the mean of
their softmaxes (:class:`kd.models.Ensemble`). Fidelity is measured as top-1 agreement,
(1/n) Σ 1[argmax t = argmax s], and predictive KL, (1/n) Σ KL(p_t ‖ p_s), on the unaugmented
training images and on the test set.

Cells of one seed (each one trained model and one row):

* ``teacher`` (seed column = its index k in the teacher pool): trained on labels with crop +
  flip from torch seed 1000 + k. Seed s uses teachers s, s+1, ..., s+m−1, so each seed has its
  own self-distillation teacher while an ensemble of m costs only m + seeds − 1 teachers. The
  same cached teachers serve every experiment below.
* ``ensemble/m<m>``: a student distilled from m teachers (m = 1: self-distillation), crop +
  flip; ``ensemble/m<m>/<augment>`` with another augmentation of the distillation data.
* ``augment/<name>``: from teacher s, the distillation data augmented by ``none``,
  ``crop_flip`` (the baseline), or crop + flip followed by ``mixup`` (α = 1), ``rotation``
  (±30°), ``vflip`` or ``color_jitter`` (brightness, contrast, saturation ±0.4), or ``all`` of
  these four together; the teacher labels every augmented batch live.
* ``epochs/x<f>``: from teacher s, crop + flip, f times the profile's student epochs.
* ``init/lam<λ>``: from teacher s, crop + flip, the student starting at
  θ = λ·θ_teacher + (1 − λ)·θ_random (:func:`kd.models.interpolate_state`);
  ``init/teacher_init``: starting from the teacher's own initial weights instead of its own.
* ``mnist/teacher``: LeNet-5 trained on 200 random MNIST training images;
  ``mnist/student``: LeNet-5 distilled from it on all 60,000 training images.

Students are cached like teachers, keyed by everything that decides their weights, so cells that
train the same model (``ensemble/m1``, ``augment/crop_flip``, ``epochs/x1`` and ``init/lam0`` are
one model) train it once; each still gets its row.

Differences from the paper: CIFAR-10 by default (``--dataset cifar100`` when its files are
present; the paper used CIFAR-100), the post-activation CIFAR ResNets of He et al. from
:mod:`kd.models.cifar` (the paper: preactivation ResNet-56), far shorter training (the paper: 300
epochs), and our own choices of augmentation strengths. The paper's numbers live in
``studies/reference/fidelity.csv`` and are never written into a result row.
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

import kd.models.cifar  # noqa: F401  (registers the CIFAR models)
from kd import data, metrics
from kd.data import Augment, Split
from kd.data.augment import ColorJitter, Compose, Mixup, RandomRotation, RandomVerticalFlip
from kd.data.cifar import RandomCropFlip
from kd.experiment.cache import ModelCache, spec_key
from kd.experiment.cli import open_study, run_main
from kd.experiment.executor import run_cells_on_ray
from kd.experiment.results import ResultsTable, markdown_table, mean_std, run_cells, seed_range
from kd.models import Ensemble, build_model, interpolate_state, parameter_count
from kd.train import engine
from kd.train.distill import CrossEntropy, Distill
from kd.train.engine import TrainConfig
from studies.cifar_zoo import CIFAR_DATASETS

STUDY = "fidelity"
REFERENCE = Path(__file__).with_name("reference") / f"{STUDY}.csv"
TEMPERATURE, ALPHA = 4.0, 1.0  # KD term only
TEACHER_SEED_BASE = 1000  # teacher k's torch seed: never a student's seed (0, 1, ...)
MNIST_TEACHER_N = 200

# Harder augmentations, each applied after crop + flip; "all" chains them in this order
# (mixup last, so it mixes the already transformed images).
HARDER: dict[str, Callable[[], Augment]] = {
    "rotation": lambda: RandomRotation(30.0),
    "vflip": RandomVerticalFlip,
    "color_jitter": lambda: ColorJitter(0.4, 0.4, 0.4),
    "mixup": lambda: Mixup(1.0),
}
AUGMENTS: dict[str, Callable[[], Augment | None]] = {
    "none": lambda: None,
    "crop_flip": RandomCropFlip,
    **{name: (lambda make=make: Compose([RandomCropFlip(), make()]))
       for name, make in HARDER.items()},
    "all": lambda: Compose([RandomCropFlip(), *(make() for make in HARDER.values())]),
}


@dataclass(frozen=True)
class Profile:
    description: str
    seeds: int
    arch: str  # teachers and students of the CIFAR experiments
    teacher: TrainConfig
    student: TrainConfig  # the base; epochs/x<f> multiplies its epochs
    ensemble_sizes: tuple[int, ...]
    ensemble_augments: tuple[str, ...]  # augmentations of the ensemble cells
    augments: tuple[str, ...]
    epoch_factors: tuple[int, ...]
    lambdas: tuple[float, ...]
    mnist_teacher: TrainConfig
    mnist_student: TrainConfig
    teacher_init: bool = True  # the init/teacher_init cell
    train_limit: int | None = None  # n random images (a fixed draw, seed 0)
    test_limit: int | None = None
    mnist_train_limit: int | None = None  # the MNIST student's transfer set (smoke only)
    mnist_test_limit: int | None = None


# SGD with cosine annealing, as the CIFAR studies here use; the 1-epoch warm-up keeps lr 0.1
# from wrecking the first steps (and a student started at the teacher from jumping away at once).
SGD_COSINE = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4,
                         schedule="cosine", warmup_epochs=1.0, batch_size=128)
# LeNet-5 on MNIST: Adam; 100 epochs of 200 images (batch 32) give the paper's 84-86 % teacher.
ADAM = TrainConfig(optimizer="adam", lr=1e-3, schedule="cosine", batch_size=128)
MNIST_TEACHER = dataclasses.replace(ADAM, epochs=100, batch_size=32)
ALL_LAMBDAS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.75, 1.0)

# Time estimates (images through the models, at measured or assumed speeds):
# quick, from 2-core CPU speeds with channels_last (ResNet-8 trains ~1,300 images/s and infers
# ~5,000/s; LeNet-5 trains ~6,000/s): 3 teachers x 10 epochs x 10,000 / 1,300 = 230 s; 12
# distinct students of 5 x 10,000 images (x4 for epochs/x4), each batch also through its live
# teacher(s) at inference speed (augmentation adds <= 13 ms per batch of 128) = 750 s; scoring
# 20,000 train + test images per row = 80 s; MNIST (teacher 20,000 images, student 600,000) =
# 110 s: about 20 minutes in all.
# paper: not measured (no GPU at hand). At an assumed ~20,000 training and ~60,000 inference
# images/s for ResNet-56 on an H100 (bf16, channels_last): 7 teachers x 20 epochs = 350 s, 3 seeds
# x ~470 s of students and scoring, ~1 min of MNIST: about 30 minutes.

PROFILES = {
    "smoke": Profile(
        description="seconds: 128 CIFAR training and test images, ResNet-8, 1 epoch, m in "
                    "{1, 2}, 4 augmentations, 3 lambdas; MNIST teacher 5 epochs, student 1 epoch "
                    "on 2,000 images",
        seeds=1, arch="resnet8", train_limit=128, test_limit=128,
        teacher=dataclasses.replace(SGD_COSINE, epochs=1),
        student=dataclasses.replace(SGD_COSINE, epochs=1),
        ensemble_sizes=(1, 2), ensemble_augments=("crop_flip",),
        augments=("none", "crop_flip", "mixup", "all"), epoch_factors=(1, 2),
        lambdas=(0.0, 0.5, 1.0),
        mnist_teacher=dataclasses.replace(MNIST_TEACHER, epochs=5),
        mnist_student=dataclasses.replace(ADAM, epochs=1),
        mnist_train_limit=2000, mnist_test_limit=1000),
    "quick": Profile(
        description="a 2-core CPU in about 20 minutes, CIFAR scaled down: ResNet-8 (not 56) "
                    "teachers (10 epochs) and students (5 epochs; x1 and x4 for the epochs "
                    "experiment) on 10,000 random training images (not 50,000), full test set; "
                    "m in {1, 3} (not 5); augmentations none, crop + flip, mixup, rotation, all "
                    "(no vflip or colour jitter alone); lambda in {0, 0.25, 0.5, 0.75, 1} and the "
                    "teacher's init; one seed. MNIST in full: teacher 100 epochs on 200 images, "
                    "student 10 epochs on 60,000",
        seeds=1, arch="resnet8", train_limit=10_000,
        teacher=dataclasses.replace(SGD_COSINE, epochs=10),
        student=dataclasses.replace(SGD_COSINE, epochs=5),
        ensemble_sizes=(1, 3), ensemble_augments=("crop_flip",),
        augments=("none", "crop_flip", "mixup", "rotation", "all"), epoch_factors=(1, 4),
        lambdas=(0.0, 0.25, 0.5, 0.75, 1.0),
        mnist_teacher=MNIST_TEACHER, mnist_student=dataclasses.replace(ADAM, epochs=10)),
    # Sized before any full run from this CPU's bf16 speeds (ResNet-8 about 2,000-2,300
    # training images/s): 7 pool teachers ~15 min, ~22 min of students a seed. 20,000 random
    # training images (not 50,000: every student distils from live teachers on augmented
    # batches, 17 to 21 of them a seed); teachers 15 epochs (cosine to zero, their loss plateau
    # in each row); every single harder augmentation; lambdas around the paper's 0.375 boundary;
    # 5 seeds, each with its own teacher (the pool of 7 covers the ensembles of 3).
    "full": Profile(
        description="a 2-core CPU in about 2 hours (bf16): ResNet-8 teachers (15 epochs) and "
                    "students (5 epochs; x1 and x4) on 20,000 random training images, full test "
                    "set; m in {1, 3}; every augmentation; lambda in {0, 0.25, 0.375, 0.5, 1} "
                    "and the teacher's init; 5 seeds. MNIST in full: student 20 epochs",
        seeds=5, arch="resnet8", train_limit=20_000,
        teacher=dataclasses.replace(SGD_COSINE, epochs=15),
        student=dataclasses.replace(SGD_COSINE, epochs=5),
        ensemble_sizes=(1, 3), ensemble_augments=("crop_flip",),
        augments=tuple(AUGMENTS), epoch_factors=(1, 4),
        lambdas=(0.0, 0.25, 0.375, 0.5, 1.0),
        mnist_teacher=MNIST_TEACHER, mnist_student=dataclasses.replace(ADAM, epochs=20)),
    "paper": Profile(
        description="one GPU in about half an hour: ResNet-56 teachers (20 epochs) and students "
                    "(5 epochs; x1, x2, x4) on all 50,000 training images; m in {1, 3, 5} with "
                    "crop + flip and m = 5 with mixup; every augmentation; every lambda and the "
                    "teacher's init; 3 seeds. MNIST in full: student 20 epochs",
        seeds=3, arch="resnet56",
        teacher=dataclasses.replace(SGD_COSINE, epochs=20),
        student=dataclasses.replace(SGD_COSINE, epochs=5),
        ensemble_sizes=(1, 3, 5), ensemble_augments=("crop_flip", "mixup"),
        augments=tuple(AUGMENTS), epoch_factors=(1, 2, 4), lambdas=ALL_LAMBDAS,
        mnist_teacher=MNIST_TEACHER, mnist_student=dataclasses.replace(ADAM, epochs=20)),
}


@dataclass(frozen=True)
class Cell:
    name: str
    part: str  # "cifar" or "mnist": which data and models
    role: str  # "teacher" or "student"
    experiment: str
    m: int = 1  # ensemble size
    augment: str = "crop_flip"
    epochs_factor: int = 1
    lam: float = 0.0  # weight of the trained teacher's parameters in the student's init
    init: str = "student"  # whose random initial weights: the student's seed or the teacher's


TEACHER = Cell("teacher", "cifar", "teacher", "teacher")


def student_cells(profile: Profile) -> list[Cell]:
    """The student cells of one seed, experiment by experiment, then MNIST."""
    cells = [Cell(f"ensemble/m{m}" + ("" if a == "crop_flip" else f"/{a}"), "cifar", "student",
                  "ensemble", m=m, augment=a)
             for a in profile.ensemble_augments for m in profile.ensemble_sizes]
    cells += [Cell(f"augment/{a}", "cifar", "student", "augment", augment=a)
              for a in profile.augments]
    cells += [Cell(f"epochs/x{f}", "cifar", "student", "epochs", epochs_factor=f)
              for f in profile.epoch_factors]
    cells += [Cell(f"init/lam{lam:g}", "cifar", "student", "init", lam=lam)
              for lam in profile.lambdas]
    if profile.teacher_init:
        cells.append(Cell("init/teacher_init", "cifar", "student", "init", init="teacher"))
    cells += [Cell("mnist/teacher", "mnist", "teacher", "mnist"),
              Cell("mnist/student", "mnist", "student", "mnist")]
    return cells


def members(seed: int, m: int) -> range:
    """The teacher-pool indices of seed ``seed``'s ensemble of m (m = 1: its own teacher)."""
    return range(seed, seed + m)


def plan(profile: Profile, seeds: int | range) -> list[tuple[int, Cell]]:
    """(seed, cell) pairs in run order: each seed's new pool teachers (seed = pool index),
    then its students."""
    pairs: list[tuple[int, Cell]] = []
    for seed in seed_range(seeds):
        pairs += [(k, TEACHER) for k in members(seed, max(profile.ensemble_sizes))
                  if (k, TEACHER) not in pairs]
        pairs += [(seed, cell) for cell in student_cells(profile)]
    return pairs


def pending(profile: Profile, seeds: int | range, table: ResultsTable) -> list[tuple[int, Cell]]:
    done = table.done()
    return [(seed, cell) for seed, cell in plan(profile, seeds) if (cell.name, seed) not in done]


# ----------------------------------------------------------------------------------------------
# Trained models and their scores

@dataclass(frozen=True)
class Trained:
    """A trained model, its cache key and metadata, and its logits on the train and test sets."""

    model: nn.Module
    key: str
    meta: dict
    train_logits: torch.Tensor
    test_logits: torch.Tensor


def scores(logits: torch.Tensor, labels: torch.Tensor, prefix: str) -> dict:
    return {f"{prefix}accuracy": metrics.accuracy(logits, labels),
            f"{prefix}ece": metrics.expected_calibration_error(logits, labels)}


def fidelity(student: Trained, teacher_train: torch.Tensor, teacher_test: torch.Tensor) -> dict:
    """Agreement and KL(teacher ‖ student) on the (unaugmented) training and test sets."""
    out = {}
    for name, s, t in (("train", student.train_logits, teacher_train),
                       ("test", student.test_logits, teacher_test)):
        out[f"{name}_agreement"] = metrics.agreement(s, t)
        out[f"{name}_kl"] = metrics.predictive_kl(t, s)
    return out


def describe(model: nn.Module, config: TrainConfig) -> dict:
    return {"params": parameter_count(model), "epochs": config.epochs,
            "batch_size": config.batch_size, "optimizer": config.optimizer, "lr": config.lr,
            "weight_decay": config.weight_decay, "schedule": config.schedule}


class Part:
    """One data set's models: training (through the cache) and the rows that describe them."""

    def __init__(self, arch: str, dataset: str, train: Split, test: Split, device: torch.device,
                 cache: ModelCache):
        self.arch, self.dataset, self.device, self.cache = arch, dataset, device, cache
        self.train, self.test = train.to(device), test.to(device)

    def new_model(self, seed: int) -> nn.Module:
        engine.seed_everything(seed)
        model = build_model(self.arch, num_classes=self.train.num_classes)
        return engine.prepare_model(model, self.device)

    def fit(self, spec: dict, model: nn.Module, transfer: Split, objective, config: TrainConfig,
            seed: int, augment: Augment | None, desc: str) -> Trained:
        model, meta, _ = self.cache.fit(spec, model, transfer, objective, config, seed=seed,
                                        augment=augment, desc=desc)
        return Trained(model, spec_key(spec), meta, engine.predict(model, self.train),
                       engine.predict(model, self.test))

    def spec(self, role: str, seed: int, config: TrainConfig, **extra) -> dict:
        return {"role": role, "data": self.dataset, "arch": self.arch, "seed": seed,
                "train": dataclasses.asdict(config), **extra}

    def student_row(self, student: Trained, teachers: list[Trained], config: TrainConfig) -> dict:
        """The columns of a student's row: its own scores, its teachers', and the fidelity."""
        teacher_train = metrics.ensemble_log_probs([t.train_logits for t in teachers])
        teacher_test = metrics.ensemble_log_probs([t.test_logits for t in teachers])
        return {"dataset": self.dataset, "role": "student", "model": self.arch,
                "temperature": TEMPERATURE, "alpha": ALPHA, "train_n": len(self.train),
                "transfer_n": len(self.train), "test_n": len(self.test),
                **describe(student.model, config),
                **scores(student.test_logits, self.test.labels, "test_"),
                **scores(student.train_logits, self.train.labels, "train_"),
                **fidelity(student, teacher_train, teacher_test),
                **scores(teacher_test, self.test.labels, "teacher_test_"),
                "train_s": student.meta.get("train_s"), "model_key": student.key,
                "teacher_keys": " ".join(t.key for t in teachers)}

    def teacher_row(self, teacher: Trained, config: TrainConfig, train_n: int, seed: int) -> dict:
        """train_* scores are on the students' transfer set (for MNIST: 60,000 images, of which
        the teacher saw train_n)."""
        return {"dataset": self.dataset, "role": "teacher", "model": self.arch,
                "model_seed": seed, "train_n": train_n, "transfer_n": len(self.train),
                "test_n": len(self.test), **describe(teacher.model, config),
                **scores(teacher.test_logits, self.test.labels, "test_"),
                **scores(teacher.train_logits, self.train.labels, "train_"),
                "train_s": teacher.meta.get("train_s"), "model_key": teacher.key,
                "final_train_loss": teacher.meta.get("final_train_loss"),
                "train_loss_plateau": metrics.loss_plateau(
                    teacher.meta.get("train_loss_history", []))}


class Cifar(Part):
    """The CIFAR experiments: a pool of teachers and students distilled from them."""

    def __init__(self, profile: Profile, dataset: str, device: torch.device, cache: ModelCache):
        # fixed random subsets: the offline CIFAR-10 copy is sorted by class
        train = data.load(dataset, True).sample(profile.train_limit)
        test = data.load(dataset, False).sample(profile.test_limit)
        super().__init__(profile.arch, dataset, train, test, device, cache)
        self.profile = profile

    def spec(self, role: str, seed: int, config: TrainConfig, **extra) -> dict:
        return super().spec(role, seed, config, train_limit=self.profile.train_limit, **extra)

    @functools.cache
    def teacher(self, k: int) -> Trained:
        """Pool teacher k: labels only, crop + flip, torch seed 1000 + k; trained once."""
        seed, config = TEACHER_SEED_BASE + k, self.profile.teacher
        return self.fit(self.spec("teacher", seed, config, augment="crop_flip"),
                        self.new_model(seed), self.train, CrossEntropy(), config, seed,
                        RandomCropFlip(), f"teacher {k}")

    def initial_student(self, cell: Cell, seed: int, teacher: Trained) -> nn.Module:
        """A student at θ = λ·θ_teacher + (1 − λ)·θ_0, θ_0 drawn with the student's own seed or
        with its teacher's (the teacher's initial weights)."""
        init_seed = {"student": seed, "teacher": TEACHER_SEED_BASE + seed}[cell.init]
        model = self.new_model(init_seed)
        model.load_state_dict(interpolate_state(teacher.model.state_dict(), model.state_dict(),
                                                cell.lam))
        return model

    def student(self, cell: Cell, seed: int) -> tuple[Trained, list[Trained], TrainConfig]:
        teachers = [self.teacher(k) for k in members(seed, cell.m)]
        config = dataclasses.replace(self.profile.student,
                                     epochs=self.profile.student.epochs * cell.epochs_factor)
        spec = self.spec("student", seed, config, teachers=[t.key for t in teachers],
                         temperature=TEMPERATURE, alpha=ALPHA, augment=cell.augment,
                         init=cell.init, init_lam=cell.lam)
        model = self.initial_student(cell, seed, teachers[0])
        augment = AUGMENTS[cell.augment]()
        cached = None if augment is not None else metrics.ensemble_log_probs(
            [t.train_logits for t in teachers])  # unaugmented: the teacher's logits once
        objective = Distill(Ensemble([t.model for t in teachers]), TEMPERATURE, ALPHA,
                            transfer_logits=cached)
        return (self.fit(spec, model, self.train, objective, config, seed, augment,
                         f"{cell.name} seed {seed}"), teachers, config)

    def run(self, cell: Cell, seed: int) -> dict:
        if cell.role == "teacher":
            return self.teacher_row(self.teacher(seed), self.profile.teacher, len(self.train),
                                    TEACHER_SEED_BASE + seed)
        student, teachers, config = self.student(cell, seed)
        return {**self.student_row(student, teachers, config), "m": cell.m,
                "teachers": " ".join(map(str, members(seed, cell.m))), "augment": cell.augment,
                "epochs_factor": cell.epochs_factor, "init": cell.init, "init_lam": cell.lam}


class Mnist(Part):
    """LeNet-5 taught by a teacher that saw 200 images, on all 60,000 (Stanton et al. §4)."""

    def __init__(self, profile: Profile, device: torch.device, cache: ModelCache):
        self.full_train = data.load("mnist", True)
        super().__init__("lenet5", "mnist", self.full_train.sample(profile.mnist_train_limit),
                         data.load("mnist", False).sample(profile.mnist_test_limit), device, cache)
        self.profile = profile

    @functools.cache
    def teacher(self, seed: int) -> Trained:
        """Trained on 200 random training images (drawn with the run's seed), no augmentation."""
        few = self.full_train.sample(MNIST_TEACHER_N, seed=seed).to(self.device)
        model_seed, config = TEACHER_SEED_BASE + seed, self.profile.mnist_teacher
        spec = self.spec("teacher", model_seed, config, train_n=MNIST_TEACHER_N, subset_seed=seed)
        return self.fit(spec, self.new_model(model_seed), few, CrossEntropy(), config,
                        model_seed, None, f"mnist teacher seed {seed}")

    def run(self, cell: Cell, seed: int) -> dict:
        teacher = self.teacher(seed)
        if cell.role == "teacher":
            return self.teacher_row(teacher, self.profile.mnist_teacher, MNIST_TEACHER_N,
                                    TEACHER_SEED_BASE + seed)
        config = self.profile.mnist_student
        spec = self.spec("student", seed, config, teacher=teacher.key, temperature=TEMPERATURE,
                         alpha=ALPHA, train_limit=self.profile.mnist_train_limit)
        objective = Distill(teacher.model, TEMPERATURE, ALPHA, transfer_logits=teacher.train_logits)
        student = self.fit(spec, self.new_model(seed), self.train, objective, config, seed, None,
                           f"mnist student seed {seed}")
        return {**self.student_row(student, [teacher], config), "m": 1, "augment": "none"}


# ----------------------------------------------------------------------------------------------
# Paper vs ours

def ours(rows: pd.DataFrame, cells: list[str], metric: str, scale: float) -> str:
    """mean ± std over seeds of one cell; for several cells, each cell's mean."""
    values = lambda cell: rows.loc[rows["cell"] == cell, metric].astype(float) * scale
    digits = 1 if scale == 100 else 3
    if len(cells) == 1:
        return mean_std(values(cells[0]), digits)
    found = [(c.split("/")[-1], values(c).mean()) for c in cells if not values(c).empty]
    return ", ".join(f"{name} {v:.{digits}f}" for name, v in found) or "not run"


def comparison(rows: pd.DataFrame) -> pd.DataFrame:
    """Every reference number beside ours (mean ± std over seeds, final epoch)."""
    reference = pd.read_csv(REFERENCE)
    return pd.DataFrame(
        [(r.quantity, r.dataset, r.paper,
          ours(rows, r.cell.split(), r.metric, 100 if r.unit == "%" else 1))
         for r in reference.itertuples()],
        columns=["quantity", "paper's data set", "paper", "ours"])


CELL_COLUMNS = {"test_accuracy": ("test acc. %", 100), "test_ece": ("test ECE", 1),
                "train_agreement": ("train agr. %", 100), "test_agreement": ("test agr. %", 100),
                "test_kl": ("test KL", 1)}


def cell_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Students' means over seeds, one line per cell, in run order."""
    students = rows[rows["role"] == "student"]
    frame = students.groupby("cell", sort=False)[list(CELL_COLUMNS)].mean()
    frame = frame * [scale for _, scale in CELL_COLUMNS.values()]
    return frame.rename(columns={k: name for k, (name, _) in CELL_COLUMNS.items()})


def report(rows: pd.DataFrame) -> str:
    datasets = ", ".join(sorted(rows["dataset"].astype(str).unique()))
    header = ["quantity", "paper's data set", "paper", f"ours ({datasets}, final epoch)"]
    lines = markdown_table(comparison(rows).set_axis(header, axis=1))
    table = cell_table(rows)
    lines += ["\nEvery student (mean over seeds; agreement and KL against its own teacher):\n",
              "| cell | " + " | ".join(table.columns) + " |", "| --- " * (len(table.columns) + 1)
              + "|"]
    lines += [f"| {cell} | " + " | ".join(f"{v:.3f}" if "KL" in c or "ECE" in c else f"{v:.1f}"
                                          for c, v in values.items()) + " |"
              for cell, values in table.iterrows()]
    teachers = rows[rows["cell"] == "teacher"]
    if not teachers.empty:
        lines.append(f"\nPool teachers ({teachers['model'].iloc[0]}, seed column = pool index): "
                     f"test accuracy {mean_std(teachers['test_accuracy'] * 100, 2, 'teacher')}.")
    lines.append(f"Profile {', '.join(sorted(rows['profile'].unique()))}; seeds "
                 f"{sorted(rows.loc[rows['role'] == 'student', 'seed'].unique().tolist())}; "
                 f"{'; '.join(sorted(rows['hardware'].unique()))}; "
                 f"{rows['wall_s'].sum() / 60:.1f} min in all; commit "
                 f"{', '.join(sorted(rows['git_commit'].astype(str).unique()))}.")
    return "\n".join(lines)


def planned(name: str) -> list[tuple[str, int]]:
    """Every ``(cell, seed)`` the profile runs: what a complete table holds."""
    return [(cell.name, seed) for seed, cell in plan(PROFILES[name], PROFILES[name].seeds)]


def main(argv: list[str] | None = None) -> None:
    command = open_study(argv, study=STUDY, description=__doc__.split("\n\n")[0],
                         profiles=PROFILES, report=report, datasets=CIFAR_DATASETS,
                         dataset_help="the data set of the CIFAR experiments (MNIST runs "
                                      "either way)")
    if command is None:
        return
    args, profile, table, device = (command.args, command.profile, command.table,
                                    command.device)
    todo = pending(profile, args.seeds or profile.seeds, table)
    print(f"{STUDY} [{args.profile}] {profile.description}; {len(todo)} cells on {device} -> "
          f"{table.path}")
    summary = lambda row: f"test accuracy {row['test_accuracy']:.4f}" + (
        f", test agreement {row['test_agreement']:.4f}" if "test_agreement" in row else "")
    if command.executor == "ray":
        run_cells_on_ray(command, plan(profile, args.seeds or profile.seeds), cell_runner,
                         summary, models_used)
        return
    run_cells(table, todo, cell_runner(command), device, summary, precision=command.precision)


def cell_runner(command) -> Callable[[int, Cell], dict]:
    """``run(seed, cell) -> row`` for a study command (here, or on a Ray worker)."""
    profile, device, cache = command.profile, command.device, ModelCache()
    # Built on first use, so a resumed run loads only the data its remaining cells need.
    parts = {"cifar": functools.cache(lambda: Cifar(profile, command.args.dataset, device,
                                                    cache)),
             "mnist": functools.cache(lambda: Mnist(profile, device, cache))}
    return lambda seed, cell: {"experiment": cell.experiment, **parts[cell.part]().run(cell, seed)}


def models_used(seed: int, cell: Cell) -> list[tuple]:
    """The models a cell trains or loads: pool teachers (the seed of a teacher cell is its
    pool index) and its own student, which cells with the same settings share."""
    if cell.part == "mnist":
        return [("mnist teacher", seed)] + [("mnist student", seed)] * (cell.role == "student")
    if cell.role == "teacher":
        return [("teacher", seed)]
    return [*(("teacher", k) for k in members(seed, cell.m)),
            ("student", seed, cell.m, cell.augment, cell.epochs_factor, cell.lam, cell.init)]


if __name__ == "__main__":
    raise SystemExit(run_main(main))
