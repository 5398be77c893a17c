"""Early-stopped teachers, and early-stopped distillation, make better students.

Cho & Hariharan (2019): a teacher taken from early in its training can teach a small student
better than the fully trained one, and stopping the distillation term part-way through the
student's training (the student then continues on labels alone: "ESKD") beats both full KD and
training from scratch, while full KD from larger teachers can be worse than scratch.

Cells of one seed and family (each one trained model and one row):

* ``teacher/<arch>@<e>``: the teacher's weights after e epochs (a checkpoint of one run);
* ``scratch/<student>``: the student on labels only;
* ``kd/<arch>@<e>/<student>``: the student distilled from that checkpoint for its whole training
  (at the last epoch: full KD from the finished teacher);
* ``eskd/<arch>/<student>``: the student distilled from the finished teacher, with the KD term
  switched off after epoch ``kd_stop_epoch``.

Loss (1 − α)·CE + α·T²·KL with T = 4, α = 0.9, as in the paper. Teachers and their checkpoints
come from :mod:`studies.cifar_zoo`, shared with the capacity-gap study. The paper's ImageNet
numbers live in ``studies/reference/early_stopping.csv``: a reference, not something we ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kd.errors import ConfigError
from kd.experiment.cli import run_main
from kd.experiment.executor import every
from kd.experiment.results import markdown_table, mean_std, run_footer
from studies.cifar_zoo import (ZOO_PROFILES, Family, Teacher, Training, Zoo, ZooProfile,
                               first_drop, zoo_cell_runner, zoo_study_main)

STUDY = "early_stopping"
REFERENCE = Path(__file__).with_name("reference") / f"{STUDY}.csv"


FAMILIES = {
    "smoke": (Family("plain", "plain_cnn2", ("plain_cnn4",)),),
    "quick": (Family("plain", "plain_cnn2", ("plain_cnn4", "plain_cnn8")),),
    # the ResNet family of capacity_gap's full profile (its teachers and its students on
    # 10,000 images): the smallest and the largest teacher
    "full": (Family("plain", "plain_cnn2", ("plain_cnn4", "plain_cnn8")),
             Family("resnet", "resnet8", ("resnet14", "resnet32"), student_train_limit=10_000)),
    "paper": (Family("plain", "plain_cnn2", ("plain_cnn4", "plain_cnn8", "plain_cnn10")),
              Family("resnet", "resnet8", ("resnet20", "resnet56", "resnet110"))),
    # capacity_gap's large ResNet family (all the images, per-seed teachers): as in full, its
    # smallest and largest teacher. The plain family (plain_cnn4 and plain_cnn10 -> plain_cnn2)
    # is cut with capacity_gap's PLAIN_LARGE, for the budget (see there).
    "large": (Family("resnet", "resnet8", ("resnet14", "resnet32")),),
}
PLAIN_LARGE = Family("plain", "plain_cnn2", ("plain_cnn4", "plain_cnn10"))  # cut: see above
# The KD term stops at the first learning-rate drop of each profile's schedule (our choice; the
# paper's ImageNet runs stop it part-way too); large: that of the students' recipe, looked up
# when it runs (kd_stop_epoch).
KD_STOP_EPOCH = {"smoke": 1, "quick": 5, "full": 13, "paper": 80}


def kd_stop_epoch(name: str, profile: ZooProfile) -> int:
    """Where ESKD stops the KD term in profile ``name`` (``profile`` resolved)."""
    return KD_STOP_EPOCH[name] if name in KD_STOP_EPOCH else first_drop(profile.config)


@dataclass(frozen=True)
class Cell:
    name: str
    family: str
    role: str  # teacher_checkpoint, scratch, kd, eskd
    arch: str  # the model this cell trains or evaluates
    teacher: str | None = None
    teacher_epoch: int | None = None


def plan(families: tuple[Family, ...], checkpoints: tuple[int, ...]) -> list[Cell]:
    cells = []
    for f in families:
        cells += [Cell(f"teacher/{t}@{e}", f.name, "teacher_checkpoint", t, None, e)
                  for t in f.teachers for e in checkpoints]
        cells.append(Cell(f"scratch/{f.student}", f.name, "scratch", f.student))
        for t in f.teachers:
            cells += [Cell(f"kd/{t}@{e}/{f.student}", f.name, "kd", f.student, t, e)
                      for e in checkpoints]
            cells.append(Cell(f"eskd/{t}/{f.student}", f.name, "eskd", f.student, t,
                              checkpoints[-1]))
    return cells


class Run:
    """One seed: teachers with their checkpoints (from the shared zoo), students from them."""

    def __init__(self, zoo: Zoo, seed: int, kd_stop_epoch: int,
                 families: tuple[Family, ...] = ()):
        self.zoo, self.seed, self.kd_stop_epoch = zoo, seed, kd_stop_epoch
        self.families = {f.name: f for f in families}
        self.checkpoints: dict[tuple[str, int], Teacher] = {}
        self.teacher_meta: dict[str, dict] = {}

    def teacher_at(self, arch: str, epoch: int) -> Teacher:
        if (arch, epoch) not in self.checkpoints:
            teacher, meta, states = self.zoo.teacher(arch, self.seed)
            self.teacher_meta[arch] = meta
            for e, state in states.items():
                self.checkpoints[(arch, e)] = self.zoo.from_checkpoint(teacher, state, e)
            if (arch, epoch) not in self.checkpoints:
                raise ConfigError(f"teacher {arch} has no checkpoint at epoch {epoch}; it has "
                                  f"{sorted(states)}")
        return self.checkpoints[(arch, epoch)]

    def training(self, cell: Cell) -> Training:
        zoo = self.zoo.for_arch(self.families.get(cell.family), cell.arch)
        if cell.role == "teacher_checkpoint":
            return zoo.teacher_training(cell.arch, self.seed)
        if cell.role == "scratch":
            return zoo.student_training(cell.arch, self.seed, None)
        stop = self.kd_stop_epoch if cell.role == "eskd" else None
        return zoo.student_training(cell.arch, self.seed,
                                    self.teacher_at(cell.teacher, cell.teacher_epoch), stop)

    def run(self, cell: Cell) -> dict:
        row = {"family": cell.family, "role": cell.role, "teacher": cell.teacher,
               "teacher_epoch": cell.teacher_epoch}
        if cell.role == "teacher_checkpoint":
            teacher = self.teacher_at(cell.arch, cell.teacher_epoch)
            meta = self.teacher_meta[cell.arch]
            # A checkpoint's own epochs; its time and final loss belong to the whole run.
            described = self.zoo.describe(teacher, meta, self.zoo.teacher_config)
            run_loss = {key: described.pop(key) for key in ("final_train_loss",
                                                             "train_loss_plateau")}
            return {**row, "teacher": cell.arch, **described,
                    "epochs": cell.teacher_epoch, "train_s": None,
                    "run_epochs": self.zoo.teacher_config.epochs, "run_train_s": meta.get("train_s"),
                    **{f"run_{key}": value for key, value in run_loss.items()}}
        training = self.training(cell)
        zoo = self.zoo.zoo_of(training)
        model, meta, _ = zoo.fit(training)
        if training.teacher is None:
            return {**row, **zoo.describe(model, meta)}
        teacher, stop = training.teacher, training.kd_until_epoch
        return {**row, "kd_until_epoch": stop, "teacher_accuracy": zoo.accuracy(teacher),
                **zoo.describe(model, meta), **zoo.agreement(model, teacher)}


# ----------------------------------------------------------------------------------------------
# Reference vs ours

def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per family and teacher: scratch, full KD, ESKD and the best teacher checkpoint (test
    accuracy %, mean ± std over seeds, final epoch of each student)."""
    acc = lambda frame: mean_std(frame["test_accuracy"] * 100, 2)
    out = []
    for family, f_rows in rows.groupby("family", sort=False):
        scratch = f_rows[f_rows["role"] == "scratch"]
        kd = f_rows[f_rows["role"] == "kd"]
        for teacher, t_rows in kd.groupby("teacher", sort=False):
            final = t_rows["teacher_epoch"].max()
            by_epoch = t_rows.groupby("teacher_epoch")["test_accuracy"].mean()
            eskd = f_rows[(f_rows["role"] == "eskd") & (f_rows["teacher"] == teacher)]
            out.append({"family": family, "teacher": teacher, "scratch": acc(scratch),
                        "full KD": acc(t_rows[t_rows["teacher_epoch"] == final]),
                        "early-stopped KD": acc(eskd),
                        "best teacher epoch on test": f"{by_epoch.idxmax():g} "
                                              f"({100 * by_epoch.max():.2f})",
                        "final teacher epoch": f"{final:g}"})
    return pd.DataFrame(out)


def checkpoints(rows: pd.DataFrame) -> pd.DataFrame:
    """Per teacher: its students by checkpoint epoch (test accuracy %, mean ± std over seeds),
    the checkpoint's own accuracy (mean over seeds: one model where the seeds share a teacher)
    in brackets."""
    acc = lambda frame: frame["test_accuracy"] * 100
    kd = rows[rows["role"] == "kd"]
    own = rows[rows["role"] == "teacher_checkpoint"].groupby(["model", "teacher_epoch"])
    own = own["test_accuracy"].mean() * 100
    out = []
    for teacher, t_rows in kd.groupby("teacher", sort=False):
        line = {"teacher": teacher}
        for epoch, e_rows in t_rows.groupby("teacher_epoch"):
            line[f"epoch {epoch:g}"] = (f"{mean_std(acc(e_rows), 2)} "
                                        f"(teacher {own.get((teacher, epoch), float('nan')):.2f})")
        out.append(line)
    return pd.DataFrame(out).fillna("not run")


def report(rows: pd.DataFrame) -> str:
    lines = markdown_table(summary(rows))
    lines += ["\nStudents of each teacher checkpoint (test accuracy %, mean ± std over seeds; "
              "the checkpoint's own accuracy in brackets):\n"]
    lines += markdown_table(checkpoints(rows))
    reference = pd.read_csv(REFERENCE)
    lines += ["\nReference (Cho & Hariharan 2019, ImageNet, ResNet-18 student, top-1 error %; "
              "not run here):\n"]
    lines += markdown_table(
        reference[["quantity", "value"]].set_axis(["quantity", "error %"], axis=1),
        number="{:.2f}")
    lines.append("\n" + run_footer(rows))
    return "\n".join(lines)


def cell_runner(command):
    """``run(seed, cell) -> row`` for a study command (here, or on a Ray worker)."""
    stop = kd_stop_epoch(command.args.profile, command.profile)
    return zoo_cell_runner(command, lambda zoo, seed, name: Run(zoo, seed, stop, FAMILIES[name]))


def models_used(seed: int, cell: Cell) -> list[tuple]:
    """The teacher run whose checkpoints a cell evaluates or learns from (one training run
    gives every checkpoint); a scratch student uses none."""
    teacher = cell.arch if cell.role == "teacher_checkpoint" else cell.teacher
    return [] if teacher is None else [(seed, teacher)]


def level(cell: Cell) -> int:
    """Teachers and scratch students 0, students of teacher checkpoints 1 (stacking order)."""
    return 1 if cell.role in ("kd", "eskd") else 0


def planned(name: str) -> list[tuple[str, int]]:
    """Every ``(cell, seed)`` the profile runs: what a complete table holds."""
    profile = ZOO_PROFILES[name].resolved()  # large: a ConfigError until its recipes are chosen
    return [(cell.name, seed) for seed, cell in every(
        plan(FAMILIES[name], profile.teacher_checkpoints), profile.seeds)]


def main(argv: list[str] | None = None) -> None:
    zoo_study_main(argv, study=STUDY, description=__doc__.split("\n\n")[0],
                   plan=lambda name, profile: plan(FAMILIES[name], profile.teacher_checkpoints),
                   runner=cell_runner, models_used=models_used, report=report,
                   level=level)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
