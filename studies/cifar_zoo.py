"""CIFAR models shared by the capacity-gap and early-stopping studies, trained once each.

A :class:`Zoo` is one data set (a fixed random subset of it for small profiles), one training
schedule and one device. It trains teachers (labels only, crop + flip) and distilled models
(a student, or a teacher assistant, from a given teacher) through the model cache, so a teacher
that both studies use, with its checkpoints at many epochs, is trained once. The cache key of
a model is its architecture, data, schedule, seed and, for a distilled model, the key of its
teacher and the loss's settings.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Callable, Hashable, Iterable, Protocol

import pandas as pd
import torch
from torch import nn

import kd.models.cifar  # noqa: F401  (registers the CIFAR models)
from kd import data, metrics
from kd.data.cifar import RandomCropFlip
from kd.errors import ConfigError
from kd.experiment.cache import ModelCache, spec_key
from kd.experiment.cli import open_study, with_compile, with_training
from kd.experiment.executor import every, run_cells_on_ray
from kd.experiment.results import pending, run_cells
from kd.models import build_model, parameter_count
from kd.models.cifar import flops_per_image
from kd.train import engine
from kd.train.batched import GroupedModels
from kd.train.distill import CrossEntropy, Distill
from kd.train.engine import NonFiniteLossError, TrainConfig
from studies.recipe import large_config, recipe_name
from studies.verdict_seeds import rows_read

# Mirzadeh et al. 2020: SGD, momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 at epochs 80
# and 120 of 150. The 1-epoch warm-up is ours: lr 0.1 from the first step kills the 2-layer CNN.
MIRZADEH_SGD = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4,
                           schedule="step", milestones=(80, 120), gamma=0.1, epochs=150,
                           warmup_epochs=1.0, batch_size=128)


@dataclass(frozen=True)
class KDSettings:
    """The loss of every distilled model: (1 − α)·CE + α·T²·KL."""

    temperature: float = 4.0
    alpha: float = 0.9


@dataclass(frozen=True)
class Teacher:
    """A trained model that can teach: its weights, cache key and test logits."""

    arch: str
    model: nn.Module
    key: str
    test_logits: torch.Tensor


@dataclass(frozen=True)
class Training:
    """One model the zoo trains: its cache spec and what decides its run."""

    spec: dict
    arch: str
    seed: int
    config: TrainConfig
    teacher: Teacher | None  # None: from labels
    kd_until_epoch: int | None
    desc: str

    @property
    def kind(self) -> tuple:
        """What models trained as one stack must share: all but the seed and the teacher (its
        weights or its architecture: teachers of different architectures run one after another,
        each on its own member's batch). The training images too: one zoo trains a stack."""
        return (self.spec["role"], self.arch, self.teacher is None, self.kd_until_epoch,
                self.config, self.spec["train_limit"])


def stack_desc(trainings: list[Training]) -> str:
    """``resnet8 from resnet14/resnet20``: the stack's architecture and its teachers'."""
    first = trainings[0]
    if first.teacher is None:
        return first.desc.rsplit(" seed ", 1)[0]
    teachers = dict.fromkeys(t.teacher.arch for t in trainings)
    return f"{first.arch} from {'/'.join(teachers)}"


class Zoo:
    def __init__(self, dataset: str, config: TrainConfig, device: torch.device, *,
                 train_limit: int | None = None, test_limit: int | None = None,
                 augment_students: bool = True, kd: KDSettings = KDSettings(),
                 teacher_checkpoints: tuple[int, ...] = (), teacher_seed: int | None = None,
                 cache: ModelCache | None = None, teacher_config: TrainConfig | None = None):
        """teacher_checkpoints: epochs at which every teacher's weights are kept (part of its
        cache key, so studies that share teachers must ask for the same ones). teacher_seed:
        one teacher of each architecture, of this seed, for every seed's students (None: each
        seed trains its own). teacher_config: the teachers' schedule (None: ``config``, that
        of the students and assistants)."""
        self.dataset, self.config, self.device, self.kd = dataset, config, device, kd
        self.teacher_config = teacher_config or config
        self.teacher_seed = teacher_seed
        self.train_limit, self.augment_students = train_limit, augment_students
        self.test_limit = test_limit
        self._subsets: dict[int, Zoo] = {}
        self.teacher_checkpoints = teacher_checkpoints
        # a fixed random subset: the offline CIFAR-10 copy is sorted by class
        self.train = data.load(dataset, train=True).sample(train_limit).to(device)
        self.test = data.load(dataset, train=False).sample(test_limit).to(device)
        self.cache = cache or ModelCache()
        self._train_logits: dict[str, torch.Tensor] = {}

    def for_students(self, family: Family) -> "Zoo":
        """The zoo a family's students learn in: this one, or (``student_train_limit``) one on a
        fixed random subset of the training images, with the same settings and cache. Only for
        a zoo on all of them, so that the subset is one of its images (and the cache key's
        ``train_limit`` says which)."""
        limit = family.student_train_limit
        if limit is None:
            return self
        if limit not in self._subsets:
            if self.train_limit is not None:
                raise ConfigError(f"family {family.name}: student_train_limit needs a profile "
                                  f"on all the training images, not {self.train_limit}")
            self._subsets[limit] = Zoo(
                self.dataset, self.config, self.device, train_limit=limit,
                test_limit=self.test_limit, augment_students=self.augment_students, kd=self.kd,
                teacher_checkpoints=self.teacher_checkpoints, teacher_seed=self.teacher_seed,
                cache=self.cache, teacher_config=self.teacher_config)
        return self._subsets[limit]

    def for_arch(self, family: Family | None, arch: str) -> "Zoo":
        """Where ``arch`` learns in ``family``: its students in :meth:`for_students`, its
        teachers and assistants here."""
        return self.for_students(family) if family is not None and arch == family.student \
            else self

    def zoo_of(self, training: Training) -> "Zoo":
        """The zoo ``training`` was planned in, to :meth:`fit` it there: this one or one of its
        students' subsets (another is refused by :meth:`fit`)."""
        return self._subsets.get(training.spec["train_limit"], self)

    # -- specs ---------------------------------------------------------------------------------
    def base_spec(self, arch: str, seed: int, config: TrainConfig) -> dict:
        return {"data": self.dataset, "train_limit": self.train_limit, "arch": arch,
                "seed": seed, "train": dataclasses.asdict(config)}

    def new_model(self, arch: str, seed: int) -> nn.Module:
        engine.seed_everything(seed)
        return engine.prepare_model(build_model(arch, num_classes=self.train.num_classes),
                                    self.device)

    # -- training ------------------------------------------------------------------------------
    def teacher_training(self, arch: str, seed: int) -> Training:
        """A model trained on labels with crop + flip, with checkpoints. Of seed
        ``teacher_seed`` when the zoo has one, whatever ``seed`` asks for."""
        seed = self.teacher_seed_for(seed)
        config = dataclasses.replace(self.teacher_config,
                                     checkpoint_epochs=self.teacher_checkpoints)
        spec = {**self.base_spec(arch, seed, config), "augment": "crop4+flip", "role": "teacher"}
        return Training(spec, arch, seed, config, None, None, f"teacher {arch} seed {seed}")

    def student_training(self, arch: str, seed: int, teacher: Teacher | None,
                         kd_until_epoch: int | None = None) -> Training:
        """``arch`` trained from ``teacher`` (labels only when None), cached like a teacher so it
        can teach in turn (a teacher assistant)."""
        spec = {**self.base_spec(arch, seed, self.config), "role": "student",
                "augment": "crop4+flip" if self.augment_students else "none"}
        if teacher is not None:
            spec.update(teacher=teacher.key, kd=dataclasses.asdict(self.kd),
                        kd_until_epoch=kd_until_epoch)
        return Training(spec, arch, seed, self.config, teacher, kd_until_epoch,
                        f"{arch} from {teacher.arch if teacher else 'labels'} seed {seed}")

    def augment_for(self, training: Training):
        teacher_run = training.spec["role"] == "teacher"
        return RandomCropFlip() if teacher_run or self.augment_students else None

    def fit(self, training: Training) -> tuple[Teacher, dict, dict[int, dict]]:
        """Train one model (or load it from the cache): the model, its meta and checkpoints."""
        self.check_data(training)
        objective = CrossEntropy() if training.teacher is None else Distill(
            training.teacher.model, self.kd.temperature, self.kd.alpha,
            kd_until_epoch=training.kd_until_epoch,
            transfer_logits=None if self.augment_students else self.train_logits(training.teacher))
        model, meta, checkpoints = self.cache.fit(
            training.spec, self.new_model(training.arch, training.seed), self.train, objective,
            training.config, seed=training.seed, augment=self.augment_for(training),
            desc=training.desc)
        # the cache wrote the precision it trained in (or was begun in) into the spec
        meta = {**meta, "precision": training.spec["train"]["precision"]}
        return self.as_teacher(training.arch, model, spec_key(training.spec)), meta, checkpoints

    def check_data(self, training: Training) -> None:
        """A training planned in another zoo (another subset of the images) is a bug here."""
        if training.spec["train_limit"] != self.train_limit:
            raise ValueError(f"{training.desc}: planned on train_limit "
                             f"{training.spec['train_limit']}, this zoo has {self.train_limit}")

    def fit_stack(self, trainings: list[Training]) -> int:
        """Train models of one kind (:attr:`Training.kind`) that differ in seed and teacher as
        one stack, each into the cache as :meth:`fit` would train it alone (up to rounding);
        returns how many were trained (those already cached are skipped)."""
        first = trainings[0]
        for training in trainings:
            self.check_data(training)
        if any(t.kind != first.kind for t in trainings):
            raise ConfigError("a stack needs trainings of one kind (architecture, schedule, "
                              "from labels or from a teacher)")

        def objective_for(members: list[int]):
            if first.teacher is None:
                return CrossEntropy()
            teachers = [trainings[i].teacher for i in members]
            # the teachers of one architecture as one vmapped forward when there are enough of
            # them (the checkpoints of a teacher), the others one forward each
            stack = GroupedModels([t.model for t in teachers], input_ndim=self.train.images.dim())
            transfer = None if self.augment_students else torch.stack(
                [self.train_logits(t) for t in teachers])
            return Distill(engine.prepare_model(stack, self.device), self.kd.temperature,
                           self.kd.alpha, kd_until_epoch=first.kd_until_epoch,
                           transfer_logits=transfer)

        trained = self.cache.fit_stack(
            [t.spec for t in trainings], lambda i: self.new_model(first.arch, trainings[i].seed),
            self.train, objective_for, first.config, seeds=[t.seed for t in trainings],
            augment=self.augment_for(first),
            desc=f"{len(trainings)} x {stack_desc(trainings)}")
        return len(trained)

    def fit_lockstep(self, trainings: list[Training]) -> int:
        """Train students of one teacher (one cache key), seed and schedule, with crop + flip,
        in lockstep on the seed's batches (:meth:`ModelCache.fit_lockstep`: the teacher runs once
        per batch for all of them, not once per student), each into the cache as :meth:`fit`
        would train it alone, up to rounding; returns how many were trained."""
        first = trainings[0]
        for training in trainings:
            self.check_data(training)
        same = lambda t: t.teacher is not None and (t.teacher.key, t.seed, t.config) == (
            first.teacher.key, first.seed, first.config)
        if first.teacher is None or not self.augment_students or not all(map(same, trainings)):
            raise ConfigError("a lockstep needs students of one teacher, seed and schedule, "
                              "learning from its live pass (crop + flip)")
        teacher = first.teacher.model  # one module for all: its pass is shared by identity

        def new_run(i: int):
            training = trainings[i]
            return self.new_model(training.arch, training.seed), Distill(
                teacher, self.kd.temperature, self.kd.alpha,
                kd_until_epoch=training.kd_until_epoch)

        trained = self.cache.fit_lockstep(
            [t.spec for t in trainings], new_run, self.train, first.config, seed=first.seed,
            augment=self.augment_for(first),
            desc=f"{len(trainings)} students of {first.teacher.arch} in lockstep seed "
                 f"{first.seed}")
        return len(trained)

    def teacher(self, arch: str, seed: int) -> tuple[Teacher, dict, dict[int, dict]]:
        """A model trained on labels with crop + flip; with its meta and checkpoints."""
        return self.fit(self.teacher_training(arch, seed))

    def teacher_seed_for(self, seed: int) -> int:
        return seed if self.teacher_seed is None else self.teacher_seed

    def from_checkpoint(self, teacher: Teacher, state: dict, epoch: int) -> Teacher:
        """The teacher's weights after ``epoch`` epochs, as a teacher of its own."""
        model = build_model(teacher.arch, num_classes=self.train.num_classes)
        model = engine.prepare_model(model, self.device)
        model.load_state_dict(state)
        # the last checkpoint is the finished teacher: same key, so its students are cache hits
        key = teacher.key if epoch == self.teacher_config.epochs else f"{teacher.key}@{epoch}"
        return self.as_teacher(teacher.arch, model.eval(), key)

    def as_teacher(self, arch: str, model: nn.Module, key: str) -> Teacher:
        return Teacher(arch, model, key, engine.predict(model, self.test))

    def distilled(self, arch: str, seed: int, teacher: Teacher | None, *,
                  kd_until_epoch: int | None = None) -> tuple[Teacher, dict]:
        """``arch`` trained from ``teacher`` (labels only when None), cached like a teacher so it
        can teach in turn (a teacher assistant)."""
        model, meta, _ = self.fit(self.student_training(arch, seed, teacher, kd_until_epoch))
        return model, meta

    def train_logits(self, teacher: Teacher) -> torch.Tensor:
        """The teacher's logits on the unaugmented training split, computed once per teacher."""
        if teacher.key not in self._train_logits:
            self._train_logits[teacher.key] = engine.predict(teacher.model, self.train)
        return self._train_logits[teacher.key]

    # -- rows ----------------------------------------------------------------------------------
    def accuracy(self, model: Teacher) -> float:
        return metrics.accuracy(model.test_logits, self.test.labels)

    def describe(self, model: Teacher, meta: dict, config: TrainConfig | None = None) -> dict:
        """The columns of a result row about one trained model (its accuracy on the test set),
        trained with ``config`` (None: the students' schedule)."""
        labels, config = self.test.labels, config or self.config
        return {"model": model.arch, "params": parameter_count(model.model),
                "flops_per_image": flops_per_image(model.model),
                "test_accuracy": self.accuracy(model),
                "test_ece": metrics.expected_calibration_error(model.test_logits, labels),
                "train_s": meta.get("train_s"),
                # the precision it trained in: the row's, under auto (kd.experiment.results)
                **({"precision": meta["precision"]} if "precision" in meta else {}),
                # where train_s was spent: a model from the cache may have trained elsewhere
                **({"trained_on": meta["trained_on"]} if "trained_on" in meta else {}),
                "train_n": len(self.train),
                "test_n": labels.numel(), "epochs": config.epochs,
                "schedule": f"{config.schedule} {config.milestones}",
                "lr": config.lr, "weight_decay": config.weight_decay,
                # the large profiles' recipe by name (studies.recipe); other profiles have none
                **({"recipe": name} if (name := recipe_name(config)) else {}),
                "final_train_loss": meta.get("final_train_loss"),
                "train_loss_plateau": metrics.loss_plateau(meta.get("train_loss_history", [])),
                # trained in a stack of that many models (kd.experiment.cache.ModelCache.fit_stack)
                **({"stacked_with": meta["stacked_with"]} if "stacked_with" in meta else {}),
                # trained in lockstep with that many (kd.experiment.cache.ModelCache.fit_lockstep)
                **({"lockstep_with": meta["lockstep_with"]} if "lockstep_with" in meta else {})}

    def agreement(self, student: Teacher, teacher: Teacher) -> dict:
        return {"test_agreement": metrics.agreement(student.test_logits, teacher.test_logits),
                "test_kl_teacher_student": metrics.predictive_kl(teacher.test_logits,
                                                                 student.test_logits)}


@dataclass(frozen=True)
class Family:
    """Teachers of growing capacity for one student architecture (and, for the capacity-gap
    study, (teacher, assistant) chains to the student).

    ``student_train_limit``: the family's students learn on that many of the profile's training
    images (a fixed random subset), its teachers on all of the profile's. Its assistants, which
    teach in turn, then learn on the teachers' images with the teachers' seed, once for every
    seed where the profile shares its teachers (Mirzadeh et al.'s assistants learn on all the
    data; one that saw only the students' subset knows little more than the student)."""

    name: str
    student: str
    teachers: tuple[str, ...]  # by growing capacity
    assistants: tuple[tuple[str, str], ...] = ()
    student_train_limit: int | None = None


@dataclass(frozen=True)
class ZooProfile:
    """What the capacity-gap and early-stopping studies share in a profile, so that they share
    its teachers through the cache: data, schedule, teacher checkpoints, seeds."""

    description: str
    config: TrainConfig | None  # None: from the large recipes (``from_recipes``)
    teacher_checkpoints: tuple[int, ...]  # epochs at which every teacher's weights are kept
    augment_students: bool  # False: teachers' logits computed once and looked up
    seeds: int
    train_limit: int | None = None
    # Seeds after ``seeds`` that run only in place of one that cannot finish (large: seed 3,
    # docs/scorecard_rules.md 5); zoo_progress counts one once it has begun.
    spare_seeds: int = 0
    test_limit: int | None = None
    teacher_seed: int | None = None  # one teacher per architecture for all seeds (None: per seed)
    # Train the models of one kind of every pending seed (and teacher checkpoint) as one stack
    # before the cells are scored (:func:`train_in_stacks`), when there are at least this many
    # (None: never). A stack pays on a GPU only when it is large: vmap runs a stacked step with
    # about 4 times the operators of one model's (views, permutes, copies around the grouped
    # convolutions: 290 against 73 for a plain CNN-4, counted by kd.experiment.estimate's
    # OpCounter), so 3 seeds of one model cost more as a stack than one after another.
    stack_at_least: int | None = None
    teacher_config: TrainConfig | None = None  # the teachers' schedule (None: ``config``)
    # The schedules are studies.recipe.large_config's, looked up when the profile runs
    # (:meth:`resolved`), not at import: until they are chosen, only this profile refuses to run.
    from_recipes: bool = False
    # Train each pending seed's students of one teacher in lockstep before the cells are scored
    # (:func:`train_in_lockstep`; with crop + flip, where the teacher's pass is live)
    lockstep: bool = False

    def resolved(self, student: TrainConfig | None = None,
                 teacher: TrainConfig | None = None) -> "ZooProfile":
        """The profile as it runs. One ``from_recipes`` takes its students' and assistants'
        schedule from ``large_config("student")`` and its teachers' from
        ``large_config("teacher")`` (a :class:`ConfigError` while either is not chosen), or
        ``student`` and ``teacher`` when given (to size it before they are), and keeps its
        teachers' checkpoints where :func:`teacher_checkpoints_for` puts them. Any other profile
        is returned as it is."""
        if not self.from_recipes:
            return self
        student = student or large_config("student")
        teacher = teacher or large_config("teacher")
        return dataclasses.replace(self, config=student, teacher_config=teacher,
                                   teacher_checkpoints=teacher_checkpoints_for(teacher),
                                   from_recipes=False)


def first_drop(config: TrainConfig) -> int:
    """The epoch of the schedule's first learning-rate drop; half its epochs when it decays
    smoothly (cosine, linear) or not at all (the rule of the claim es-early-teacher)."""
    if config.schedule == "step" and config.milestones:
        return config.milestones[0]
    return max(1, config.epochs // 2)


# The full profile keeps its teachers' weights at epochs 7, 13 and 25 of 25: early (7/25 of the
# run, before the first drop), at the first drop and at the end. The same rule on any schedule:
EARLY_CHECKPOINT = 7 / 25


def teacher_checkpoints_for(config: TrainConfig) -> tuple[int, ...]:
    """The epochs at which a teacher trained with ``config`` is kept, as the full profile keeps
    them: 7/25 of its epochs, its first drop (:func:`first_drop`) and its last epoch."""
    early = max(1, round(EARLY_CHECKPOINT * config.epochs))
    return tuple(sorted({early, first_drop(config), config.epochs}))


ZOO_PROFILES = {
    "smoke": ZooProfile(
        description="512 training and 256 test images, 2 epochs",
        config=dataclasses.replace(MIRZADEH_SGD, epochs=2, milestones=(1,)),
        teacher_checkpoints=(1, 2), augment_students=False, seeds=1, train_limit=512,
        test_limit=256),
    "quick": ZooProfile(
        description="10,000 random training images, full test set, 10 epochs (lr ÷10 at 5 "
                    "and 8), students without augmentation",
        config=dataclasses.replace(MIRZADEH_SGD, epochs=10, milestones=(5, 8)),
        teacher_checkpoints=(2, 4, 6, 8, 10), augment_students=False, seeds=2,
        train_limit=10_000),
    # Sized before any full run from this CPU's bf16 speeds in the quick reruns (the 2-layer
    # CNN about 10,000 training images/s: 2 min a student; plain CNN-4/6/8 teachers 3,700, 3,300
    # and 2,200 with crop + flip). All 50,000 images; Mirzadeh et al.'s schedule scaled to 25
    # epochs (lr 0.1, ÷10 at 13 and 19): the last epochs at lr 0.001 are where the teachers'
    # loss plateaus (kd.metrics.PLATEAU_DROP, in every row). One teacher per
    # architecture (seed 0) shared by 5 seeds of students, so teacher-seed variance is not in
    # the intervals; students without augmentation (the teacher's logits looked up).
    "full": ZooProfile(
        description="a 2-core CPU in about 2 hours a study (bf16): all 50,000 training images, "
                    "25 epochs (lr ÷10 at 13 and 19), one teacher per architecture shared by 5 "
                    "seeds of students, students without augmentation",
        config=dataclasses.replace(MIRZADEH_SGD, epochs=25, milestones=(13, 19)),
        teacher_checkpoints=(7, 13, 25), augment_students=False, seeds=5, teacher_seed=0),
    "paper": ZooProfile(
        description="all 50,000 training images, Mirzadeh et al.'s 150-epoch schedule, crop + "
                    "flip for every model, 3 seeds",
        config=MIRZADEH_SGD, teacher_checkpoints=(10, 20, 40, 60, 80, 100, 120, 150),
        augment_students=True, seeds=3, stack_at_least=6),
    # Issue 28's regime on this CPU: every model (teachers, assistants, students) on all 50,000
    # training images with crop + flip (the recipes were chosen with it; a scratch ResNet-8
    # needs it to near 85 %, so students are distilled with the teacher's live forward pass),
    # each seed its own teachers, checkpoints and assistants, so the intervals hold teacher
    # variance. Teachers train on labels alone (no label smoothing: it makes worse teachers,
    # Müller et al. 2019). Sized by studies.zoo_budget before any run.
    "large": ZooProfile(
        description="issue 28's regime: all 50,000 training images for every model, crop + "
                    "flip, the large recipes (studies.recipe: students and assistants, "
                    "teachers), each of 3 seeds its own teachers",
        config=None, teacher_checkpoints=(), augment_students=True, seeds=3, spare_seeds=1,
        from_recipes=True, lockstep=True),
}


def make_zoo(profile: ZooProfile, dataset: str, device: torch.device) -> Zoo:
    return Zoo(dataset, profile.config, device, train_limit=profile.train_limit,
               test_limit=profile.test_limit, augment_students=profile.augment_students,
               teacher_checkpoints=profile.teacher_checkpoints,
               teacher_seed=profile.teacher_seed, teacher_config=profile.teacher_config)


CIFAR_DATASETS = ("cifar10", "cifar100")  # --dataset of the CIFAR studies; the first is the default


class SeedRun(Protocol):
    def run(self, cell) -> dict: ...

    def training(self, cell) -> Training:
        """What the cell trains (its teachers already trained: a cache hit, or trained now)."""


def train_in_stacks(zoo: Zoo, todo: list[tuple[int, object]],
                    new_run: Callable[[int], SeedRun], level: Callable[[object], int],
                    at_least: int = 2) -> int:
    """Fill the model cache for the pending ``(seed, cell)`` pairs a level at a time (teachers
    at level 0, their students at 1, students of those at 2: ``level(cell)``), the models of
    one kind (:attr:`Training.kind`: architecture, schedule, labels or a teacher) as one
    stack, whatever their seeds and teachers (each member keeps its seed's batches and its own
    teacher), when a kind has ``at_least`` models to train. The cells then find their models
    in the cache (and train the rest one at a time). A stack whose loss stops being
    finite is left to the cells, which train its models one at a time and record failures.
    Returns the number of models trained."""
    runs: dict[int, SeedRun] = {}
    trained = 0
    for depth in sorted({level(cell) for _, cell in todo}):
        kinds: dict[tuple, dict[str, Training]] = {}
        for seed, cell in todo:
            if level(cell) == depth:
                training = runs.setdefault(seed, new_run(seed)).training(cell)
                kinds.setdefault(training.kind, {})[spec_key(training.spec)] = training
        for trainings in kinds.values():
            if len(trainings) < at_least:
                continue
            first = next(iter(trainings.values()))
            try:
                trained += zoo.zoo_of(first).fit_stack(list(trainings.values()))
            except NonFiniteLossError as error:
                print(f"warning: {error}; its models train one at a time instead",
                      file=sys.stderr)
    return trained


def train_in_lockstep(zoo: Zoo, trainings: Iterable[Training]) -> int:
    """Fill the model cache with the students among ``trainings`` (each once, by cache key)
    that share a teacher, seed and schedule with another, in lockstep (:meth:`Zoo.fit_lockstep`):
    the teacher's forward pass, the larger part of a small student's distillation from a large
    teacher, is paid once for all of them. The cells then find their models in the cache (and
    train the rest one at a time). A lockstep whose loss stops being finite is left to the
    cells, which train its models one at a time and record failures. Returns the number of
    models trained."""
    groups: dict[tuple, dict[str, Training]] = {}
    for training in trainings:
        if training.teacher is not None:
            group = (training.teacher.key, training.seed, training.config,
                     training.spec["train_limit"])
            groups.setdefault(group, {}).setdefault(spec_key(training.spec), training)
    trained = 0
    for group in groups.values():
        if len(group) < 2:
            continue
        first = next(iter(group.values()))
        try:
            trained += zoo.zoo_of(first).fit_lockstep(list(group.values()))
        except NonFiniteLossError as error:
            print(f"warning: {error}; its models train one at a time instead", file=sys.stderr)
    return trained


def zoo_study_main(argv: list[str] | None, *, study: str, description: str,
                   plan: Callable[[str, ZooProfile], list],
                   runner: Callable[[object], Callable[[int, object], dict]],
                   models_used: Callable[[int, object], Iterable[Hashable]],
                   report: Callable[[pd.DataFrame], str],
                   level: Callable[[object], int],
                   companions: Callable[[object, Zoo, int], Iterable[Training]] | None = None
                   ) -> None:
    """The command line of a study built on the zoo: ``plan(profile name, profile)`` lists the
    cells of one seed; ``runner(command)`` (a module-level function, which Ray workers call
    too) returns ``run(seed, cell) -> row``, most simply :func:`zoo_cell_runner`;
    ``models_used(seed, cell)`` names the shared models a cell trains or loads (the order of
    ``--executor ray``); ``level(cell)`` how many trained models stand between the cell's
    model and the labels (0 for teachers), the order of stacked training when the profile
    stacks models (``ZooProfile.stack_at_least``; the Ray executor trains one at a time).
    With a profile's ``lockstep``, each pending seed's students (level 1) of one teacher train in
    lockstep first, with ``companions(command, zoo, seed)``: the students another study will ask
    the same cache for (trained here, found there)."""
    command = open_study(argv, study=study, description=description, profiles=ZOO_PROFILES,
                         report=report, datasets=CIFAR_DATASETS, select=rows_read)
    if command is None:
        return
    command = resolved_command(command)  # the large recipes, or one line and exit 2
    args, profile, table, device = (command.args, command.profile, command.table,
                                    command.device)
    cells, seeds = plan(args.profile, profile), args.seeds or profile.seeds
    todo = list(pending(cells, seeds, table))
    print(f"{study} [{args.profile}] {profile.description}; {len(todo)} cells on {device} -> "
          f"{table.path}")
    summary = lambda row: f"test accuracy {row['test_accuracy']:.4f}"
    if command.executor == "ray":
        run_cells_on_ray(command, every(cells, seeds), runner, summary, models_used)
        return
    run_cell = runner(command)
    if profile.stack_at_least is not None and todo:
        trained = train_in_stacks(run_cell.zoo, todo, run_cell.new_run, level,
                                  profile.stack_at_least)
        print(f"{study}: {trained} models trained in stacks of one kind each; scoring the cells")
    if profile.lockstep and todo:
        trained = sum(train_in_lockstep(run_cell.zoo, lockstep_students(
            command, run_cell, todo, seed, level, companions))
            for seed in dict.fromkeys(s for s, _ in todo))
        print(f"{study}: {trained} students trained in lockstep with their teacher's other "
              f"students; scoring the cells")
    run_cells(table, todo, run_cell, device, summary, precision=command.precision)


def lockstep_students(command, run_cell, todo: list[tuple[int, object]], seed: int,
                      level: Callable[[object], int],
                      companions: Callable[[object, Zoo, int], Iterable[Training]] | None
                      ) -> list[Training]:
    """The students of ``seed`` that may train in lockstep before the cells: the pending cells'
    students of a teacher (level 1), and the ``companions`` another study will ask for."""
    own = [run_cell.new_run(seed).training(cell) for s, cell in todo
           if s == seed and level(cell) == 1]
    return own + list(companions(command, run_cell.zoo, seed) if companions else ())


def resolved_command(command):
    """The command with its profile :meth:`ZooProfile.resolved` and, where that changed it,
    ``--compile`` and the precision applied to the schedules it resolved."""
    profile = command.profile.resolved()
    if profile is command.profile:
        return command
    profile = with_training(with_compile(profile, command.args.compile),
                            precision=command.precision)
    return dataclasses.replace(command, profile=profile)


def zoo_cell_runner(command, new_run: Callable[[Zoo, int, str], SeedRun]
                    ) -> Callable[[int, object], dict]:
    """``run(seed, cell) -> row`` of a zoo study: ``new_run(zoo, seed, profile name)`` trains
    and describes the cells of one seed. The function carries its ``zoo`` and
    ``new_run(seed)`` as attributes (for :func:`train_in_stacks`)."""
    args = command.args
    zoo = make_zoo(command.profile, args.dataset, command.device)
    runs: dict[int, SeedRun] = {}

    def run_cell(seed: int, cell) -> dict:
        run = runs.setdefault(seed, new_run(zoo, seed, args.profile))
        return {"dataset": args.dataset, "teacher_seed": zoo.teacher_seed_for(seed),
                **run.run(cell)}

    run_cell.zoo = zoo
    run_cell.new_run = lambda seed: runs.setdefault(seed, new_run(zoo, seed, args.profile))
    return run_cell
