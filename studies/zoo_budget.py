"""How long a profile of the capacity-gap and early-stopping studies takes on this CPU, sized
from measured speeds before anything trains.

    python -m studies.zoo_budget                          # large, for a few epoch counts
    python -m studies.zoo_budget --student-epochs 30 --teacher-epochs 100 --detail
    python -m studies.zoo_budget --with-plain           # large with its cut plain family too

Every model the two studies make together is listed once (they share teachers, checkpoints,
scratch and full-KD students through the model cache), derived from their own plans: its
architecture, role, training images, epochs and hours. The schedules of the `large` profile are
not chosen yet (studies.recipe.LARGE_RECIPES), so their epochs are parameters here: the
recipe's base candidate (cosine, so the first "drop", where ESKD stops and a teacher checkpoint
is kept, is half the epochs) with the epochs asked for.

Hours of one training = epochs x images / (its images/s) + the teacher's forward pass on every
image of its epochs with the KD term (live, as students learn with crop + flip) at
``1 / FORWARD_SHARE`` times the teacher's training speed (a forward is a third of a training
step's FLOPs) + the evaluations (the test set after training, and for a teacher once more per
checkpoint). Images/s: the 2-thread bf16 rows of ``results/bench/roofline.csv`` (engine, batch
128, crop + flip, idle machine); an architecture without a row takes the FLOP/s of the
measured model nearest to it in FLOPs per image (marked in the listing). Not counted: start-up,
data loading, checkpoint copies, a busy machine.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

import pandas as pd

import kd.models.cifar  # noqa: F401  (registers the CIFAR models)
from kd.errors import ConfigError
from kd.experiment.cli import run_main
from studies import capacity_gap, early_stopping
from studies.cifar_zoo import ZOO_PROFILES, Family, ZooProfile
from studies.recipe import BASE
from studies.sizing import (CIFAR10_TEST, CIFAR10_TRAIN, FORWARD_SHARE, ROOFLINE,  # noqa: F401
                            forward_flops, images_per_s, measured_speeds)


@dataclass(frozen=True)
class Planned:
    """One training the studies make (the same model in both studies is one)."""

    family: str
    role: str  # teacher, scratch, distilled
    arch: str
    seed: int
    images: int
    epochs: int
    teacher: "Planned | None" = None
    teacher_epoch: int | None = None  # a checkpoint of the teacher (None: the finished one)
    kd_epochs: int = 0  # epochs with the teacher's forward pass
    checkpoints: int = 0  # a teacher's kept checkpoints, each evaluated

    @property
    def taught_by(self) -> str:
        if self.teacher is None:
            return "labels"
        at = "" if self.teacher_epoch is None else f"@{self.teacher_epoch}"
        chain = self.teacher.taught_by
        return f"{self.teacher.arch}{at}" + ("" if chain == "labels" else f" < {chain}")


class Planner:
    """The trainings of one resolved profile, as its studies would ask the zoo for them."""

    def __init__(self, profile: ZooProfile, kd_stop: int):
        self.profile, self.kd_stop = profile, kd_stop
        self.images = profile.train_limit or CIFAR10_TRAIN
        self.found: dict[Planned, None] = {}

    def add(self, training: Planned) -> Planned:
        self.found.setdefault(training)
        return training

    def teacher(self, family: Family, arch: str, seed: int) -> Planned:
        seed = seed if self.profile.teacher_seed is None else self.profile.teacher_seed
        config = self.profile.teacher_config or self.profile.config
        return self.add(Planned(family.name, "teacher", arch, seed, self.images, config.epochs,
                                checkpoints=len(self.profile.teacher_checkpoints)))

    def student(self, family: Family, arch: str, seed: int, teacher: Planned | None = None,
                teacher_epoch: int | None = None, kd_until: int | None = None) -> Planned:
        """``arch`` from labels or a teacher: a family's student on its images; an assistant
        with the teachers' seed on theirs when the students learn on a subset (as
        capacity_gap.Run.place)."""
        epochs = self.profile.config.epochs
        images, is_student = self.images, arch == family.student
        if family.student_train_limit is not None:
            if is_student:
                images = family.student_train_limit
            elif self.profile.teacher_seed is not None:
                seed = self.profile.teacher_seed
        if teacher_epoch == teacher_epochs(teacher):
            teacher_epoch = None  # the last checkpoint is the finished teacher
        kd = 0 if teacher is None else (epochs if kd_until is None else kd_until)
        role = "scratch" if teacher is None else "distilled"
        return self.add(Planned(family.name, role, arch, seed, images, epochs, teacher,
                                teacher_epoch, kd))

    def capacity_gap(self, families: tuple[Family, ...], seed: int) -> None:
        by_name = {f.name: f for f in families}
        for cell in capacity_gap.plan(families):
            family = by_name[cell.family]
            if cell.role == "teacher":
                self.teacher(family, cell.arch, seed)
            elif cell.role == "scratch":
                self.student(family, cell.arch, seed)
            else:  # kd, ta, ta_kd: along the chain of teachers
                taught = self.teacher(family, cell.chain[0], seed)
                for arch in (*cell.chain[1:], cell.arch):
                    taught = self.student(family, arch, seed, taught)

    def early_stopping(self, families: tuple[Family, ...], seed: int) -> None:
        for cell in early_stopping.plan(families, self.profile.teacher_checkpoints):
            family = next(f for f in families if f.name == cell.family)
            if cell.role == "teacher_checkpoint":
                self.teacher(family, cell.arch, seed)
            elif cell.role == "scratch":
                self.student(family, cell.arch, seed)
            else:
                teacher = self.teacher(family, cell.teacher, seed)
                self.student(family, cell.arch, seed, teacher, cell.teacher_epoch,
                             self.kd_stop if cell.role == "eskd" else None)


def teacher_epochs(teacher: Planned | None) -> int | None:
    return None if teacher is None else teacher.epochs


def trainings(name: str, profile: ZooProfile, seeds: int,
              cg_families: tuple[Family, ...] | None = None,
              es_families: tuple[Family, ...] | None = None) -> list[Planned]:
    """Every training of profile ``name`` (``profile`` resolved) for both studies, once each,
    in the order the studies first ask for them."""
    planner = Planner(profile, early_stopping.kd_stop_epoch(name, profile))
    for seed in range(seeds):
        planner.capacity_gap(cg_families or capacity_gap.FAMILIES[name], seed)
        planner.early_stopping(es_families or early_stopping.FAMILIES[name], seed)
    return list(planner.found)


# ----------------------------------------------------------------------------------------------
# Speeds and hours

def teacher_passes(planned: list[Planned], profile: ZooProfile) -> dict[Planned, int]:
    """Epochs of its teacher's forward pass each distilled training pays for: its KD epochs
    (live, as students learn with crop + flip), or one pass (its logits looked up); in a
    profile with ``lockstep``, the students of one teacher (and checkpoint) share one pass per
    batch, so the one with the most KD epochs pays for all of them."""
    distilled = [t for t in planned if t.teacher is not None]
    if not profile.augment_students:
        return {t: 1 for t in distilled}
    passes = {t: t.kd_epochs for t in distilled}
    if profile.lockstep:
        groups: dict[tuple, list[Planned]] = {}
        for t in distilled:
            groups.setdefault((t.teacher, t.teacher_epoch), []).append(t)
        for group in groups.values():
            payer = max(group, key=lambda t: t.kd_epochs)
            passes.update({t: 0 for t in group if t is not payer})
    return passes


def hours(t: Planned, speeds: dict[str, float], passes: int = 0,
          test_images: int = CIFAR10_TEST) -> float:
    """Hours of training ``t``, with ``passes`` epochs of its teacher's forward pass."""
    rate, _ = images_per_s(t.arch, speeds)
    seconds = t.epochs * t.images / rate
    seconds += (1 + t.checkpoints) * test_images * FORWARD_SHARE / rate
    if t.teacher is not None:
        seconds += passes * t.images * FORWARD_SHARE / images_per_s(t.teacher.arch, speeds)[0]
    return seconds / 3600


def plan_table(planned: list[Planned], profile: ZooProfile,
               speeds: dict[str, float]) -> pd.DataFrame:
    """One row per training (seeds summed): family, role, arch, taught by, seeds, images,
    epochs, KD epochs, images/s, where the speed comes from, hours for all its seeds."""
    test_images = profile.test_limit or CIFAR10_TEST
    passes = teacher_passes(planned, profile)
    rows = [{"family": t.family, "role": t.role, "arch": t.arch, "taught_by": t.taught_by,
             "images": t.images, "epochs": t.epochs, "kd_epochs": t.kd_epochs,
             "images_per_s": round(images_per_s(t.arch, speeds)[0]),
             "speed": images_per_s(t.arch, speeds)[1],
             "teacher_passes": passes.get(t, 0),
             "hours": hours(t, speeds, passes.get(t, 0), test_images)}
            for t in planned]
    keys = ["family", "role", "arch", "taught_by", "images", "epochs", "kd_epochs",
            "teacher_passes", "images_per_s", "speed"]
    table = pd.DataFrame(rows).groupby(keys, sort=False, as_index=False).agg(
        seeds=("hours", "size"), hours=("hours", "sum"))
    return table[keys[:4] + ["seeds"] + keys[4:] + ["hours"]]


def sized(name: str, student_epochs: int, teacher_epochs: int, seeds: int | None = None,
          **families) -> tuple[ZooProfile, pd.DataFrame]:
    """Profile ``name`` resolved with the recipes' base schedule at these epochs (other profiles
    as they are), and its :func:`plan_table`."""
    profile = ZOO_PROFILES[name].resolved(dataclasses.replace(BASE, epochs=student_epochs),
                                          dataclasses.replace(BASE, epochs=teacher_epochs))
    planned = trainings(name, profile, seeds or profile.seeds, **families)
    return profile, plan_table(planned, profile, measured_speeds())


def grid(name: str, student_epochs: list[int], teacher_epochs: list[int],
         seeds: int | None = None, **families) -> pd.DataFrame:
    """Hours by family and in all, for every pair of epoch counts."""
    rows = []
    for s in student_epochs:
        for t in teacher_epochs:
            _, table = sized(name, s, t, seeds, **families)
            by_family = table.groupby("family", sort=False)["hours"].sum()
            rows.append({"student_epochs": s, "teacher_epochs": t, "trainings":
                         int(table["seeds"].sum()),
                         **{f"{f} h": round(h, 1) for f, h in by_family.items()},
                         "teachers h": round(table.loc[table["role"] == "teacher",
                                                       "hours"].sum(), 1),
                         "total h": round(table["hours"].sum(), 1)})
    return pd.DataFrame(rows)


def with_plain(name: str) -> dict[str, tuple[Family, ...]]:
    """The families of profile ``name`` with the plain family cut from large added back."""
    if name != "large":
        raise ConfigError("--with-plain sizes the large profile only")
    return {"cg_families": (*capacity_gap.FAMILIES[name], capacity_gap.PLAIN_LARGE),
            "es_families": (*early_stopping.FAMILIES[name], early_stopping.PLAIN_LARGE)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=list(ZOO_PROFILES), default="large")
    parser.add_argument("--student-epochs", type=int, nargs="+", default=[30, 60])
    parser.add_argument("--teacher-epochs", type=int, nargs="+", default=[60, 100, 150])
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--detail", action="store_true",
                        help="every training, for the first epoch counts given")
    parser.add_argument("--with-plain", action="store_true",
                        help="large: with the plain family its budget cut (PLAIN_LARGE)")
    args = parser.parse_args(argv)
    profile = ZOO_PROFILES[args.profile]
    seeds = args.seeds or profile.seeds
    families = with_plain(args.profile) if args.with_plain else {}
    if not profile.from_recipes:  # its schedules are its own: no epochs to choose
        args.student_epochs = [profile.config.epochs]
        args.teacher_epochs = [(profile.teacher_config or profile.config).epochs]
    print(f"capacity_gap + early_stopping [{args.profile}{' with plain' if families else ''}],"
          f" {seeds} seeds: hours on this CPU (2 threads, bf16, {ROOFLINE.name})")
    print(grid(args.profile, args.student_epochs, args.teacher_epochs, seeds,
               **families).to_string(index=False))
    if args.detail:
        _, table = sized(args.profile, args.student_epochs[0], args.teacher_epochs[0], seeds,
                         **families)
        print(f"\nstudents {args.student_epochs[0]} epochs, teachers {args.teacher_epochs[0]}:")
        print(table.round({"hours": 2}).to_string(index=False))


if __name__ == "__main__":
    raise SystemExit(run_main(main))
