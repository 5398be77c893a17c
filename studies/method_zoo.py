"""The method families of the KD survey (Gou et al. 2021), side by side on one teacher/student pair.

Cells of one seed (each one trained student and one row), all with the same student
architecture, initialization and batches:

* ``scratch``: the student on labels alone;
* ``method/<name>``: every method of :data:`kd.methods.METHODS` (response: ``kd``; feature:
  ``fitnets``, ``at``; relation: ``sp``, ``rkd``, ``fsp``), with its own defaults;
* ``mutual``: two students trained together by deep mutual learning, no teacher (the row is
  the first student; the second's accuracy is ``peer_test_accuracy``);
* ``born_again``: a student distilled from the ``scratch`` student, its own architecture;
* ``multi_teacher/mean`` and ``multi_teacher/random``: distilled from two teachers (seeds s and
  s + 100), their mean softmax or one drawn at random each step;
* ``quantized/w<b>/labels`` and ``quantized/w<b>/kd``: the student with fake-quantized
  b-bit weights and 8-bit activations, on labels alone or distilled.

Every distilled cell uses the method's own loss; ``kd`` and the schemes use T = 4, α = 0.9.
Teachers come from :mod:`studies.cifar_zoo` (labels, crop + flip) and are cached. RepDistiller's
CIFAR-100 numbers (``studies/reference/method_zoo.csv``) are shown as another data set's.
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

from kd import engine, metrics
from kd.batched import StackedModels
from kd.cache import spec_key
from kd.cli import run_main, study_parser, with_compile
from kd.distill import CrossEntropy, Distill, Objective
from kd.engine import TrainConfig
from kd.methods import METHODS, build_method
from kd.models import Ensemble
from kd.quantize import quantize_student
from kd.results import ResultsTable, markdown_table, mean_std, pending, run_cells, run_footer
from kd.schemes import MutualLearning, RandomTeacher
from studies.cifar_zoo import MIRZADEH_SGD, Teacher, Zoo, table_profile

STUDY = "method_zoo"
REFERENCE = Path(__file__).with_name("reference") / f"{STUDY}.csv"
TEMPERATURE, ALPHA = 4.0, 0.9
SECOND_TEACHER_OFFSET = 100  # the second teacher of the multi-teacher cells: seed s + 100


@dataclass(frozen=True)
class Profile:
    description: str
    seeds: int
    teacher: str
    student: str
    config: TrainConfig
    quantized_bits: tuple[int, ...]
    train_limit: int | None = None
    test_limit: int | None = None


PROFILES = {
    "smoke": Profile(
        description="seconds: 256 training and 128 test images, 1 epoch, ResNet-8 -> ResNet-8",
        seeds=1, teacher="resnet8", student="resnet8", train_limit=256, test_limit=128,
        config=dataclasses.replace(MIRZADEH_SGD, epochs=1, milestones=()), quantized_bits=(4,)),
    "quick": Profile(
        description="a 2-core CPU: ResNet-14 -> ResNet-8 on 5,000 random training images, full "
                    "test set, 8 epochs (lr ÷10 at 4 and 6), students without augmentation, "
                    "2 seeds",
        seeds=2, teacher="resnet14", student="resnet8", train_limit=5_000,
        config=dataclasses.replace(MIRZADEH_SGD, epochs=8, milestones=(4, 6)),
        quantized_bits=(8, 4)),
    "paper": Profile(
        description="a GPU: ResNet-56 -> ResNet-20 on all of CIFAR-10, 150 epochs, 3 seeds",
        seeds=3, teacher="resnet56", student="resnet20", config=MIRZADEH_SGD,
        quantized_bits=(8, 4)),
}


@dataclass(frozen=True)
class Cell:
    name: str
    family: str  # response, feature, relation, scheme, quantized, baseline


def plan(profile: Profile) -> list[Cell]:
    families = {"kd": "response", "fitnets": "feature", "at": "feature", "sp": "relation",
                "rkd": "relation", "fsp": "relation"}
    cells = [Cell("scratch", "baseline")]
    cells += [Cell(f"method/{name}", families.get(name, "other")) for name in METHODS]
    cells += [Cell(name, "scheme") for name in ("mutual", "born_again", "multi_teacher/mean",
                                                "multi_teacher/random")]
    cells += [Cell(f"quantized/w{b}/{how}", "quantized") for b in profile.quantized_bits
              for how in ("labels", "kd")]
    return cells


class Run:
    """One seed: its teachers, and each cell's student trained (or loaded) through the cache."""

    def __init__(self, zoo: Zoo, profile: Profile, seed: int):
        self.zoo, self.profile, self.seed = zoo, profile, seed

    @functools.cached_property
    def teacher(self) -> Teacher:
        return self.zoo.teacher(self.profile.teacher, self.seed)[0]

    @functools.cached_property
    def second_teacher(self) -> Teacher:
        return self.zoo.teacher(self.profile.teacher, self.seed + SECOND_TEACHER_OFFSET)[0]

    @functools.cached_property
    def scratch(self) -> tuple[Teacher, dict]:
        return self.zoo.distilled(self.profile.student, self.seed, None)

    def student(self) -> nn.Module:
        return self.zoo.new_model(self.profile.student, self.seed)

    def distill(self, teacher: nn.Module, **options) -> Objective:
        return Distill(teacher, TEMPERATURE, ALPHA, **options)

    # cell name -> (model to train, objective, the teachers' cache keys)
    def recipe(self, cell: Cell) -> tuple[nn.Module, Objective, list[str]]:
        name = cell.name
        if name.startswith("method/"):
            method = build_method(name.split("/", 1)[1], self.student(), self.teacher.model)
            return engine.prepare_model(method.model, self.zoo.device), method, [self.teacher.key]
        if name.startswith("quantized/"):
            _, bits, how = name.split("/")
            model = quantize_student(self.student(), weight_bits=int(bits[1:]))
            objective = CrossEntropy() if how == "labels" else self.distill(self.teacher.model)
            return model, objective, [] if how == "labels" else [self.teacher.key]
        return self.schemes[name]()

    @property
    def schemes(self) -> dict[str, Callable[[], tuple[nn.Module, Objective, list[str]]]]:
        pair = lambda: [self.teacher, self.second_teacher]
        return {
            "mutual": lambda: (engine.prepare_model(StackedModels(
                [self.student(), self.zoo.new_model(self.profile.student, self.seed + 500)]),
                self.zoo.device), MutualLearning(), []),
            "born_again": lambda: (self.student(), self.distill(self.scratch[0].model),
                                   [self.scratch[0].key]),
            "multi_teacher/mean": lambda: (self.student(), self.distill(
                Ensemble([t.model for t in pair()])), [t.key for t in pair()]),
            "multi_teacher/random": lambda: (self.student(), self.distill(
                RandomTeacher([t.model for t in pair()],
                              torch.Generator().manual_seed(self.seed)), cache_logits=False),
                [t.key for t in pair()]),
        }

    def run(self, cell: Cell) -> dict:
        row = {"family": cell.family, "teacher": self.profile.teacher,
               "teacher_accuracy": self.zoo.accuracy(self.teacher)}
        if cell.name == "scratch":
            model, meta = self.scratch
            return {**row, **self.zoo.describe(model, meta),
                    **self.zoo.agreement(model, self.teacher)}
        model, objective, teacher_keys = self.recipe(cell)
        spec = {**self.zoo.base_spec(self.profile.student, self.seed, self.zoo.config),
                "role": "method_zoo", "cell": cell.name, "teachers": teacher_keys,
                "augment": "crop4+flip" if self.zoo.augment_students else "none"}
        model, meta, _ = self.zoo.cache.fit(spec, model, self.zoo.train, objective,
                                            self.zoo.config, seed=self.seed,
                                            desc=f"{cell.name} seed {self.seed}")
        logits = engine.predict(model, self.zoo.test)
        if isinstance(model, StackedModels):  # mutual learning: the first student is the row
            row["peer_test_accuracy"] = metrics.accuracy(logits[1], self.zoo.test.labels)
            model, logits = model.unstack([self.student(), self.student()])[0], logits[0]
        model = getattr(model, "student", model)  # without a method's heads (FitNets' regressor)
        trained = Teacher(self.profile.student, model, spec_key(spec), logits)
        return {**row, **self.zoo.describe(trained, meta),
                **self.zoo.agreement(trained, self.teacher)}


# ----------------------------------------------------------------------------------------------
# Report

def summary(rows: pd.DataFrame) -> pd.DataFrame:
    acc = lambda f: mean_std(f["test_accuracy"] * 100, 2)
    out = [{"cell": cell, "family": g["family"].iloc[0], "test accuracy %": acc(g),
            "agreement with teacher %": mean_std(g["test_agreement"] * 100, 1),
            "train s": mean_std(g["train_s"], 0)}
           for cell, g in rows.groupby("cell", sort=False)]
    return pd.DataFrame(out)


def report(rows: pd.DataFrame) -> str:
    lines = markdown_table(summary(rows))
    reference = pd.read_csv(REFERENCE)
    lines += ["\nReference (RepDistiller, CIFAR-100; another data set, not run here):\n",
              "| quantity | test accuracy % |", "| --- | --- |"]
    lines += [f"| {r.quantity} | {r.value:.2f} |" for r in reference.itertuples()]
    lines.append("\n" + run_footer(rows))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = study_parser(__doc__.split("\n\n")[0], PROFILES)
    parser.add_argument("--dataset", choices=["cifar10", "cifar100"], default="cifar10")
    args = parser.parse_args(argv)
    table = ResultsTable(STUDY, table_profile(args.profile, args.dataset),
                         args.results and Path(args.results))
    if args.report:
        print(report(table.read_or_fail()))
        return
    profile = with_compile(PROFILES[args.profile], args.compile)
    device = engine.resolve_device(args.device)
    todo = list(pending(plan(profile), args.seeds or profile.seeds, table))
    print(f"{STUDY} [{args.profile}] {profile.description}; {len(todo)} cells on {device} -> "
          f"{table.path}")
    zoo = Zoo(args.dataset, profile.config, device, train_limit=profile.train_limit,
              test_limit=profile.test_limit, augment_students=args.profile == "paper")
    runs: dict[int, Run] = {}
    run_cell = lambda seed, cell: runs.setdefault(seed, Run(zoo, profile, seed)).run(cell)
    run_cells(table, todo, run_cell, device, lambda row: f"test accuracy {row['test_accuracy']:.4f}")


if __name__ == "__main__":
    raise SystemExit(run_main(main))
