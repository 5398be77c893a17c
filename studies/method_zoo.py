"""The method families of the KD survey (Gou et al. 2021), side by side on teacher/student pairs.

Each pair is a teacher and a student architecture (one pair of one family, one across families).
Its cells (each one trained student and one row), all with the same student initialization and
batches within a seed:

* ``<pair>/scratch``: the student on labels alone;
* ``<pair>/<method>``: every method of the survey's families in :data:`kd.methods.METHODS`
  (:data:`SURVEY_METHODS`) with its own defaults: response (``kd``), feature (``fitnets``,
  ``at``), relation (``sp``, ``rkd``, ``fsp``), online (``mutual``: the student and one peer,
  no teacher; the peer's accuracy is ``peer_test_accuracy``), self (``born_again``: from the
  pair's scratch student), multi-teacher (``multi_teacher``, ``random_teacher``: the pair's
  teacher and a second one);
* ``<pair>/label_smoothing`` (profiles that list it: smoke, large): the control for
  regularization of issue 28, label smoothing of KD's strength (its ε, set once from the pair's
  teacher, is ``label_smoothing_epsilon``), so that KD minus the control is the part of KD that
  is knowledge;
* ``<pair>/quantized/w<b>`` and ``<pair>/quantized/w<b>/labels``: the student with
  fake-quantized b-bit weights and 8-bit activations, distilled or on labels alone;
* ``<pair>/kd_via_<assistant>`` (pairs with an assistant): a teacher-assistant chain (Mirzadeh
  et al. 2020), KD from the assistant, itself distilled from the teacher. The quick profile has
  none (no ResNet lies between ResNet-8 and ResNet-14; the capacity-gap study runs TA chains).
  The assistant learns like the pair's students (their images and schedule);
* ``<pair>/kd_via_<assistant>/teacher_data`` (profiles with ``assistant_on_teacher_data``): the
  same chain with an assistant distilled on the teacher's images and schedule, once for every
  seed (Mirzadeh et al. train their assistants on all the data; where the students see a
  subset, an assistant of the students' images knows little more than the student).

Teachers are trained on labels with crop + flip on the teacher data (for the small profiles a
larger random subset than the students'; the students' subset is part of it) and cached, as are
the students. RepDistiller's CIFAR-100 numbers (``studies/reference/method_zoo.csv``) are shown
as another data set's.

The ``large`` profile (issue 28) trains every model on all 50,000 images with the schedules of
:mod:`studies.recipe` (``large_config``), resolved only when it runs: until they are pinned it
stops with one line (exit 2) before training anything. :func:`large_sizing` sizes it from the
measured speeds in ``results/bench/roofline.csv``, without training.

A profile with several candidate student schedules chooses one on a validation split carved
from the students' training images (:func:`select_student_config`), never on the test set; the
selection's own rows go to ``<profile>_selection.csv`` and every row of the study names the
schedule it used and what it was selected on.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from kd import data, metrics
from kd.data.cifar import RandomCropFlip
from kd.errors import NonFiniteLossError
from kd.experiment.cache import spec_key
from kd.experiment.cli import open_study, run_main
from kd.experiment.command import with_compile, with_training
from kd.experiment.executor import every, run_cells_on_ray
from kd.experiment.results import (ResultsTable, markdown_table, mean_std, pending, run_cells,
                                   run_footer)
from kd.methods import METHODS, accepted_options, build_method, method_settings
from kd.methods.label_smoothing import smoothing_epsilon
from kd.train import engine
from kd.train.distill import CrossEntropy
from kd.train.engine import TrainConfig
from studies.cifar_zoo import (CIFAR_DATASETS, MIRZADEH_SGD, Teacher, Zoo,
                               teacher_checkpoints_for)
from studies.recipe import LARGE_RECIPES, large_config
from studies.sizing import CIFAR10_TRAIN, FORWARD_SHARE, ROOFLINE, measured_speeds

STUDY = "method_zoo"
REFERENCE = Path(__file__).with_name("reference") / f"{STUDY}.csv"
SECOND_TEACHER_SEED = 100  # added to the teacher seed: the multi-teacher cells' second teacher
PEER_SEED = 500  # added to the seed: the mutual-learning peer's initialization
# added to the seed: a born-again student's own initialization and batch order (Furlanello et
# al. start each generation afresh, not from its teacher's initial weights and batches)
BORN_AGAIN_SEED = 700
# what a pair with methods=None runs: the survey's families, not the controls (listed by name)
SURVEY_METHODS = tuple(name for name, cls in METHODS.items() if cls.family != "control")


@dataclass(frozen=True)
class Pair:
    teacher: str
    student: str
    methods: tuple[str, ...] | None = None  # None: SURVEY_METHODS
    assistant: str | None = None  # a teacher-assistant chain teacher -> assistant -> student

    @property
    def name(self) -> str:
        return f"{self.teacher}->{self.student}"


@dataclass(frozen=True)
class Profile:
    description: str
    seeds: int
    pairs: tuple[Pair, ...]
    second_teacher: str  # the architecture of the multi-teacher cells' second teacher
    teacher_config: TrainConfig | None  # None: the large recipe (large_recipes)
    student_config: TrainConfig | None
    quantized_bits: tuple[int, ...]
    teacher_seed: int | None  # one teacher for every seed; None: each seed trains its own
    augment_students: bool
    teacher_train_limit: int | None = None
    student_train_limit: int | None = None
    test_limit: int | None = None
    # named candidate schedules for the students, chosen on validation data; empty: use
    # student_config as it is
    student_candidates: dict[str, TrainConfig] = dataclasses.field(default_factory=dict)
    validation_n: int = 0  # students' training images held out to choose among the candidates
    # train a seed's students of a pair's teacher(s) in lockstep, each teacher pass shared
    # (kd.train.engine.fit_lockstep); the same students as one at a time, up to rounding
    lockstep: bool = True
    # a second chain per assistant pair, its assistant distilled on the teacher's images and
    # schedule (the teacher's seed, shared by every seed like the teacher): the cells
    # <pair>/kd_via_<assistant>/teacher_data
    assistant_on_teacher_data: bool = False
    # the schedules are studies.recipe.large_config("teacher") and ("student"), resolved when
    # the profile runs (resolved()): a ConfigError until the recipe module pins them
    large_recipes: bool = False
    # epochs at which the teachers' weights are kept: none are read here, but the large
    # profile keeps those of capacity_gap's and early_stopping's, so that its seed-0 teachers
    # are theirs (one cache key) and are not trained twice
    teacher_checkpoints: tuple[int, ...] = ()

    def resolved(self) -> "Profile":
        """The profile with its large recipes in place (itself when it has none); a
        :class:`~kd.errors.ConfigError` while they are not pinned."""
        if not self.large_recipes:
            return self
        student, teacher = large_config("student"), large_config("teacher")
        return dataclasses.replace(self, student_config=student, teacher_config=teacher,
                                   teacher_checkpoints=teacher_checkpoints_for(teacher))


def steps(epochs: int, milestones: tuple[int, ...]) -> TrainConfig:
    return dataclasses.replace(MIRZADEH_SGD, epochs=epochs, milestones=milestones)


PROFILES = {
    "smoke": Profile(
        description="seconds: ResNet-8 teachers (512 images) -> ResNet-8 and plain CNN-6 "
                    "students (256 images), 1 epoch, 128 test images",
        seeds=1, pairs=(Pair("resnet8", "resnet8", tuple(METHODS)),  # the controls too
                        Pair("resnet8", "plain_cnn6", assistant="resnet8")),
        second_teacher="resnet8", teacher_config=steps(1, ()), student_config=steps(1, ()),
        student_candidates={"batch 128": steps(1, ()),
                            "batch 32": dataclasses.replace(steps(1, ()), batch_size=32)},
        validation_n=64, quantized_bits=(4,), teacher_seed=0, augment_students=False,
        teacher_train_limit=512, student_train_limit=256, test_limit=128),
    "quick": Profile(
        description="a 2-core CPU: ResNet-14 teacher (and ResNet-8 as the second teacher) "
                    "trained once on 20,000 random training images (8 epochs, crop + flip); "
                    "ResNet-8 and plain CNN-6 students on 3,000 of those images (6 epochs, "
                    "batches of 32 at lr 0.05, no augmentation); full test set; 3 seeds; the "
                    "cross-family pair runs the response, feature and relation methods only",
        seeds=3,
        pairs=(Pair("resnet14", "resnet8"),
               Pair("resnet14", "plain_cnn6", ("kd", "fitnets", "at", "sp", "rkd", "fsp"))),
        second_teacher="resnet8", teacher_config=steps(8, (4, 6)),
        # The schedule is chosen on 600 of the students' 3,000 images (select_student_config).
        # Batches of 32 were first picked by the test accuracy of seed 0 (scratch 48.9 against
        # 44.0 %, KD 52.6 against 43.8 %); that choice is redone on validation data here.
        student_config=dataclasses.replace(steps(6, (4, 5)), batch_size=32, lr=0.05),
        student_candidates={
            "batch 32, lr 0.05": dataclasses.replace(steps(6, (4, 5)), batch_size=32, lr=0.05),
            "batch 128, lr 0.1": steps(6, (4, 5))},
        validation_n=600, quantized_bits=(4,), teacher_seed=0,
        augment_students=False, teacher_train_limit=20_000, student_train_limit=3_000),
    # Sized before any full run from this CPU's bf16 speeds in the quick rerun (ResNet-14
    # teacher about 750 training images/s with crop + flip, students about 1,000 with their
    # evaluation): teachers ~30 min, schedule choice ~6 min, ~18 min a seed. The teachers on
    # all 50,000 images, 20 epochs (lr ÷10 at 10 and 15) so their loss plateaus
    # (kd.metrics.PLATEAU_DROP); students on 8,000 of them, 10 epochs, their schedule chosen on
    # 800 held out; 5 seeds; a ResNet-8 assistant for the cross-family pair, so that the
    # teacher-assistant claim is tested.
    "full": Profile(
        description="a 2-core CPU in about 2 hours (bf16): ResNet-14 teacher (and ResNet-8 as "
                    "the second teacher) trained once on all 50,000 training images (20 epochs, "
                    "crop + flip); ResNet-8 and plain CNN-6 students on 8,000 of them (10 "
                    "epochs, schedule chosen on 800 held out, no augmentation), a ResNet-8 "
                    "assistant for the plain CNN-6, distilled on the students' images and "
                    "(once) on the teacher's; full test set; 5 seeds",
        seeds=5,
        pairs=(Pair("resnet14", "resnet8"),
               Pair("resnet14", "plain_cnn6", ("kd", "fitnets", "at", "sp", "rkd", "fsp"),
                    assistant="resnet8")),
        second_teacher="resnet8", teacher_config=steps(20, (10, 15)),
        student_config=dataclasses.replace(steps(10, (6, 8)), batch_size=32, lr=0.05),
        student_candidates={
            "batch 32, lr 0.05": dataclasses.replace(steps(10, (6, 8)), batch_size=32, lr=0.05),
            "batch 128, lr 0.1": steps(10, (6, 8))},
        validation_n=800, quantized_bits=(4,), teacher_seed=0,
        augment_students=False, teacher_train_limit=None, student_train_limit=8_000,
        # added after the first full run: its assistant, distilled on the students' 8,000
        # images, ended below the student taught by the teacher directly (claim
        # mz-ta-chain-teacher-data, written before this cell ran)
        assistant_on_teacher_data=True),
    "paper": Profile(
        description="a GPU: ResNet-56 -> ResNet-20 and ResNet-56 -> plain CNN-6 on all of "
                    "CIFAR-10, Mirzadeh et al.'s 150-epoch schedule, crop + flip for every "
                    "model, ResNet-32 as the second teacher, teacher-assistant chains through "
                    "ResNet-32 and ResNet-20, each seed its own teachers, 3 seeds",
        seeds=3, pairs=(Pair("resnet56", "resnet20", assistant="resnet32"),
                        Pair("resnet56", "plain_cnn6", assistant="resnet20")),
        second_teacher="resnet32", teacher_config=MIRZADEH_SGD, student_config=MIRZADEH_SGD,
        quantized_bits=(8, 4), teacher_seed=None, augment_students=True),
    # Issue 28's regime, priority 2 (its subset): one pair, a ResNet-32 teacher (for the >= 90 %
    # asked: torchdistill's CIFAR-10 recipe brings it to 93.0 %, ResNet-20 to 91.9; the row's
    # teacher_accuracy says what ours reached) and ResNet-20 as the random teacher's second;
    # every model on all 50,000 images with crop + flip. One teacher per architecture for
    # every seed: teachers per seed would add two teachers per seed, about twice the study's
    # hours (large_sizing), and the issue asks them of the capacity-gap, early-stopping and
    # assistant claims, not of these.
    "large": Profile(
        description="issue 28's regime on a 2-core CPU: ResNet-32 -> ResNet-8 (ResNet-20 the "
                    "random teacher's second), teachers trained once (seed 0), every model on "
                    "all 50,000 training images with crop + flip, the schedules of "
                    "studies.recipe's large recipes; scratch, KD, random teacher, the "
                    "label-smoothing control, FitNets, AT; full test set; 3 seeds",
        seeds=3, pairs=(Pair("resnet32", "resnet8", ("kd", "random_teacher", "label_smoothing",
                                                     "fitnets", "at")),),
        second_teacher="resnet20", teacher_config=None, student_config=None,
        quantized_bits=(), teacher_seed=0, augment_students=True, large_recipes=True),
}


@dataclass(frozen=True)
class Cell:
    name: str  # "<pair>/<label>"
    pair: Pair
    method: str | None  # a key of METHODS; None: the scratch student
    options: tuple[tuple[str, object], ...] = ()
    teachers: str | None = None  # the role below when not the method's own

    @property
    def family(self) -> str:
        if self.teachers in ASSISTANT_ROLES:
            return "teacher-assistant"
        return METHODS[self.method].family if self.method else "baseline"

    @property
    def teacher_role(self) -> str:
        """Which model(s) teach this cell: main, both (main and second), scratch (the pair's
        scratch student), assistant (distilled from main like the students),
        assistant_teacher_data (distilled from main on the teacher's data), none."""
        if self.teachers or self.method is None:
            return self.teachers or "none"
        cls = METHODS[self.method]
        return "scratch" if cls.family == "self" else {
            "one": "main", "optional": "main", "several": "both", "none": "none"}[cls.teachers]


def pair_cells(pair: Pair, profile: Profile) -> list[Cell]:
    cells = [Cell(f"{pair.name}/scratch", pair, None)]
    for method in pair.methods or SURVEY_METHODS:
        if method != "quantized":
            cells.append(Cell(f"{pair.name}/{method}", pair, method))
            continue
        for bits in profile.quantized_bits:
            options = (("weight_bits", bits),)
            cells += [Cell(f"{pair.name}/quantized/w{bits}", pair, method, options),
                      Cell(f"{pair.name}/quantized/w{bits}/labels", pair, method, options,
                           teachers="none")]
    if pair.assistant:
        cells.append(Cell(f"{pair.name}/kd_via_{pair.assistant}", pair, "kd",
                          teachers="assistant"))
    if pair.assistant and profile.assistant_on_teacher_data:
        cells.append(Cell(f"{pair.name}/kd_via_{pair.assistant}/teacher_data", pair, "kd",
                          teachers="assistant_teacher_data"))
    return cells


def plan(profile: Profile) -> list[Cell]:
    return [cell for pair in profile.pairs for cell in pair_cells(pair, profile)]


LOCKSTEP_ROLES = ("main", "both")  # cells that run the pair's teacher on their own batches
ASSISTANT_ROLES = ("assistant", "assistant_teacher_data")


class Run:
    """One seed: its teachers and scratch students, and each cell's student trained (or
    loaded) through the cache.

    ``lockstep``: the names of this seed's pending cells. The first of them that distils from
    the pair's teacher (:data:`LOCKSTEP_ROLES`) trains every pending one of its pair in
    lockstep (:meth:`train_in_lockstep`); the cells then find their students in the cache."""

    def __init__(self, teacher_zoo: Zoo, student_zoo: Zoo, profile: Profile, seed: int,
                 lockstep: frozenset[str] = frozenset()):
        self.teacher_zoo, self.zoo = teacher_zoo, student_zoo
        self.profile, self.seed = profile, seed
        self.teacher_seed = seed if profile.teacher_seed is None else profile.teacher_seed
        self.lockstep = lockstep

    def teacher(self, arch: str, seed: int) -> Teacher:
        return self.trained_teacher(arch, seed)[0]

    @functools.cache
    def trained_teacher(self, arch: str, seed: int) -> tuple[Teacher, dict]:
        """A teacher and its training meta (``train_s``, recorded when it was trained)."""
        return self.teacher_zoo.teacher(arch, seed)[:2]

    @functools.cache
    def scratch(self, arch: str) -> tuple[Teacher, dict]:
        return self.zoo.distilled(arch, self.seed, None)

    def teachers(self, cell: Cell) -> list[Teacher]:
        main = lambda: [self.teacher(cell.pair.teacher, self.teacher_seed)]
        second = lambda: [self.teacher(self.profile.second_teacher,
                                       self.teacher_seed + SECOND_TEACHER_SEED)]
        return {"main": main, "both": lambda: main() + second(), "none": list,
                "scratch": lambda: [self.scratch(cell.pair.student)[0]],
                "assistant": lambda: [self.assistant(cell.pair)],
                "assistant_teacher_data": lambda: [self.assistant_on_teacher_data(cell.pair)],
                }[cell.teacher_role]()

    def assistant(self, pair: Pair) -> Teacher:
        """The pair's assistant distilled from its teacher like a student (KD, T = 4, α = 0.9,
        the student's data and schedule; cached, as in the capacity-gap study)."""
        teacher = self.teacher(pair.teacher, self.teacher_seed)
        return self.zoo.distilled(pair.assistant, self.seed, teacher)[0]

    @functools.cache
    def assistant_on_teacher_data(self, pair: Pair) -> Teacher:
        """The pair's assistant distilled from its teacher on the teacher's images and schedule
        (KD, T = 4, α = 0.9, crop + flip, the teacher live on every batch), with the teacher's
        seed: one assistant for every seed where the profile shares its teachers."""
        teacher = self.teacher(pair.teacher, self.teacher_seed)
        return self.teacher_zoo.distilled(pair.assistant, self.teacher_seed, teacher)[0]

    def student_seed(self, cell: Cell) -> int:
        """The seed of a cell's student initialization and batch order: the seed's own, shared
        by its cells, except a born-again student's (its teacher is the seed's scratch
        student)."""
        return self.seed + BORN_AGAIN_SEED * (cell.family == "self")

    def method(self, cell: Cell, teachers: list[Teacher]):
        options = dict(cell.options)
        if cell.method == "mutual":  # the peer gets the architecture's own initialization
            options["peers"] = [self.zoo.new_model(cell.pair.student, self.seed + PEER_SEED)]
        if "seed" in accepted_options(METHODS[cell.method]):  # random_teacher's draws
            options.setdefault("seed", self.seed)
        models = [t.model for t in teachers]
        teacher = models if len(models) > 1 else next(iter(models), None)
        student = self.zoo.new_model(cell.pair.student, self.student_seed(cell))
        return build_method(cell.method, student, teacher, **options)

    def spec(self, cell: Cell, teachers: list[Teacher]) -> dict:
        """Everything that decides a cell's student: data, architecture, seed, training config,
        teachers, augmentation, and every option of its method with the defaults filled in
        (so a changed default is a new key)."""
        options = dict(cell.options)
        if "seed" in accepted_options(METHODS[cell.method]):
            options.setdefault("seed", self.seed)
        return {**self.zoo.base_spec(cell.pair.student, self.student_seed(cell), self.zoo.config),
                "role": STUDY, "method": cell.method,
                "method_settings": method_settings(cell.method, **options),
                "teachers": [t.key for t in teachers],
                "augment": "crop4+flip" if self.zoo.augment_students else "none"}

    def train(self, cell: Cell) -> tuple[Teacher, dict, float | None]:
        """The cell's trained student, its training meta and the peer's test accuracy."""
        if cell.method is None:
            return *self.scratch(cell.pair.student), None
        if cell.name in self.lockstep and cell.teacher_role in LOCKSTEP_ROLES:
            self.train_in_lockstep(cell.pair)
        teachers = self.teachers(cell)
        method = self.method(cell, teachers)
        spec = self.spec(cell, teachers)
        model, meta, _ = self.zoo.cache.fit(
            spec, engine.prepare_model(method.model, self.zoo.device), self.zoo.train, method,
            self.zoo.config, seed=self.student_seed(cell), desc=f"{cell.name} seed {self.seed}",
            augment=self.augment())
        logits = engine.predict(model, self.zoo.test)
        peer = None
        if logits.dim() == 3:  # a stack (mutual learning): the student first, then its peer
            peer = metrics.accuracy(logits[1], self.zoo.test.labels)
            logits = logits[0]
        student = method.trained_student(model)
        return Teacher(cell.pair.student, student, spec_key(spec), logits), meta, peer

    def augment(self) -> RandomCropFlip | None:
        return RandomCropFlip() if self.zoo.augment_students else None

    @functools.cache
    def train_in_lockstep(self, pair: Pair) -> None:
        """Train this seed's pending students of ``pair`` that distil from its teacher (and the
        second teacher) in lockstep on the seed's batches, into the cache: each teacher runs
        once per batch for all of them instead of once per student."""
        cells = [c for c in pair_cells(pair, self.profile)
                 if c.name in self.lockstep and c.teacher_role in LOCKSTEP_ROLES]
        if len(cells) < 2:
            return
        assert {self.student_seed(c) for c in cells} == {self.seed}  # one batch stream

        def new_run(i: int):
            method = self.method(cells[i], self.teachers(cells[i]))
            return engine.prepare_model(method.model, self.zoo.device), method

        try:
            self.zoo.cache.fit_lockstep(
                [self.spec(c, self.teachers(c)) for c in cells], new_run, self.zoo.train,
                self.zoo.config, seed=self.seed, augment=self.augment(),
                desc=f"{pair.name}/{len(cells)} students in lockstep seed {self.seed}")
        except NonFiniteLossError as error:  # one diverged: find which, one run at a time
            print(f"  {pair.name} seed {self.seed}: the lockstep stopped ({error}); its "
                  f"students train one at a time")

    def run(self, cell: Cell) -> dict:
        teacher = self.teacher(cell.pair.teacher, self.teacher_seed)
        trained, meta, peer = self.train(cell)
        final_loss = meta.get("final_train_loss")
        teacher_meta = self.trained_teacher(cell.pair.teacher, self.teacher_seed)[1]
        return {"pair": cell.pair.name, "method": cell.method or "scratch",
                "family": cell.family, "teachers": cell.teacher_role,
                "teacher": cell.pair.teacher, "teacher_seed": self.teacher_seed,
                "teacher_accuracy": self.teacher_zoo.accuracy(teacher),
                "teacher_train_n": len(self.teacher_zoo.train),
                "teacher_train_s": teacher_meta.get("train_s"),
                "teacher_train_loss_plateau": metrics.loss_plateau(
                    teacher_meta.get("train_loss_history", [])),
                **self.zoo.describe(trained, meta),
                "final_train_loss": final_loss[0] if isinstance(final_loss, list) else final_loss,
                "peer_test_accuracy": peer,
                "second_teacher_accuracy": self.second_accuracy(cell),
                "assistant_accuracy": self.assistant_accuracy(cell),
                **self.smoothing(cell),
                **self.zoo.agreement(trained, teacher)}

    def smoothing(self, cell: Cell) -> dict:
        """A label-smoothing cell's ε, as its method set it from the teacher's logits on the
        students' unaugmented training images (recomputed here: a cached student was not
        bound); no column for the other cells."""
        if cell.method != "label_smoothing" or cell.teacher_role != "main":
            return {}
        settings = method_settings(cell.method, **dict(cell.options))
        if settings["epsilon"] is not None:
            return {"label_smoothing_epsilon": settings["epsilon"]}
        (teacher,) = self.teachers(cell)
        return {"label_smoothing_epsilon": smoothing_epsilon(
            self.zoo.train_logits(teacher), self.zoo.train.labels, settings["alpha"],
            settings["temperature"])}

    def assistant_accuracy(self, cell: Cell) -> float | None:
        if cell.teacher_role not in ASSISTANT_ROLES:
            return None
        return self.teacher_zoo.accuracy(self.teachers(cell)[0])

    def second_accuracy(self, cell: Cell) -> float | None:
        teachers = self.teachers(cell) if cell.teacher_role == "both" else []
        return self.teacher_zoo.accuracy(teachers[1]) if teachers else None


# ----------------------------------------------------------------------------------------------
# Choosing the students' schedule on validation data

SELECTION_SEED = 0  # the seed of the held-out split and of the selection's students
SELECTION_METHODS = (None, "kd")  # scratch and KD students of every pair


def select_student_config(profile: Profile, teacher_zoo: Zoo, student_zoo: Zoo,
                          table: ResultsTable) -> tuple[str, str]:
    """Choose the students' schedule among ``profile.student_candidates``; return its name
    and what it was selected on.

    The rule, fixed before any run: hold out ``profile.validation_n`` of the students'
    training images (seed 0); train the scratch and KD students of every pair with each
    candidate on the rest (seed 0, the pair's main teacher); choose the candidate with the
    highest mean validation accuracy over those students (the first listed on a tie). Each
    validation accuracy is a row of ``<profile>_selection.csv`` (resumed like the study's)."""
    fit_split, validation = data.holdout(student_zoo.train, profile.validation_n,
                                         SELECTION_SEED)
    selection = ResultsTable(table.study, table.profile, table.root, suffix="_selection")
    cells = [SelectionCell(name, pair, method) for name in profile.student_candidates
             for pair in profile.pairs for method in SELECTION_METHODS]
    todo = list(pending(cells, 1, selection))
    run = Run(teacher_zoo, student_zoo, profile, SELECTION_SEED)

    def train(seed: int, cell: SelectionCell) -> dict:
        model = student_zoo.new_model(cell.pair.student, seed)
        teacher = run.teacher(cell.pair.teacher, run.teacher_seed).model
        objective = (CrossEntropy() if cell.method is None
                     else build_method(cell.method, model, teacher))
        engine.fit(getattr(objective, "model", model), fit_split, objective,
                   profile.student_candidates[cell.candidate], seed=seed,
                   desc=f"select {cell.name}")
        return {"candidate": cell.candidate, "pair": cell.pair.name,
                "method": cell.method or "scratch", "fit_n": len(fit_split),
                "validation_n": len(validation),
                "validation_accuracy": metrics.accuracy(engine.predict(model, validation),
                                                        validation.labels)}

    if todo:
        print(f"  choosing the students' schedule on {len(validation)} held-out training "
              f"images: {len(todo)} runs -> {selection.path}")
    run_cells(selection, todo, train, student_zoo.device,
              lambda row: f"validation accuracy {row['validation_accuracy']:.4f}",
              precision=student_zoo.config.precision)
    scores = selection.read().groupby("candidate", sort=False)["validation_accuracy"].mean()
    chosen = max(profile.student_candidates, key=lambda name: scores.get(name, -1.0))
    return chosen, (f"validation: mean accuracy of the scratch and KD students on "
                    f"{len(validation)} of the {len(student_zoo.train)} student images held "
                    f"out (seed {SELECTION_SEED}), against {', '.join(profile.student_candidates)}")


@dataclass(frozen=True)
class SelectionCell:
    candidate: str
    pair: Pair
    method: str | None

    @property
    def name(self) -> str:
        return f"{self.candidate}/{self.pair.name}/{self.method or 'scratch'}"


# ----------------------------------------------------------------------------------------------
# Report

def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """One line per cell; the gain is over the same seed's scratch student of the pair (same
    initialization and batches, so the pairing removes much of the seed-to-seed noise)."""
    scratch = rows[rows["method"] == "scratch"].set_index(["pair", "seed"])["test_accuracy"]
    gain = (rows["test_accuracy"] - scratch.reindex(list(zip(rows["pair"], rows["seed"])))
            .to_numpy()) * 100
    out = []
    for (pair, cell), g in rows.assign(gain=gain).groupby(["pair", "cell"], sort=False):
        out.append({"pair": pair, "method": cell.split("/", 1)[1],
                    "family": g["family"].iloc[0],
                    "test accuracy %": mean_std(g["test_accuracy"] * 100, 2),
                    "gain over scratch (points)": mean_std(g["gain"], 2),
                    "agreement with teacher %": mean_std(g["test_agreement"] * 100, 1),
                    "train s": mean_std(g["train_s"], 0)})
    return pd.DataFrame(out)


def teachers_line(rows: pd.DataFrame) -> str:
    """The teachers' accuracies and the main teachers' training time (recorded when each was
    trained; a cached teacher's time is not in the cells' wall time)."""
    teachers = rows.drop_duplicates(["teacher", "teacher_seed"])
    parts = [f"{r.teacher} (seed {r.teacher_seed}, {r.teacher_train_n} training images) "
             f"{r.teacher_accuracy * 100:.2f} %, trained in {r.teacher_train_s / 60:.1f} min"
             for r in teachers.itertuples()]
    second = rows["second_teacher_accuracy"].dropna()
    if len(second):
        accuracies = ", ".join(f"{a * 100:.2f} %" for a in second.drop_duplicates())
        parts.append(f"second teacher(s) of the multi-teacher cells {accuracies}")
    if "assistant_accuracy" in rows:  # tables from before the column have none
        for cell, g in rows.dropna(subset="assistant_accuracy").groupby("cell", sort=False):
            # one assistant for every seed (teacher_data, shared teachers) is counted once
            values = g["assistant_accuracy"]
            if g["teachers"].iloc[0] == "assistant_teacher_data":
                values = values.drop_duplicates()
            parts.append(f"assistant of {cell.split('/', 1)[1]} "
                         f"{mean_std(values * 100, 2, of='assistant')}")
    return "Teachers: " + "; ".join(parts) + "."


def report(rows: pd.DataFrame) -> str:
    lines = [teachers_line(rows), ""] + markdown_table(summary(rows))
    reference = pd.read_csv(REFERENCE)
    lines += ["\nReference (RepDistiller, CIFAR-100; another data set, not run here):\n"]
    lines += markdown_table(
        reference[["quantity", "value"]].set_axis(["quantity", "test accuracy %"], axis=1),
        number="{:.2f}")
    lines.append("\n" + run_footer(rows))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Sizing the large profile, without training

def roofline_speeds(path: Path = ROOFLINE, threads: int = 2) -> dict[tuple[str, str], float]:
    """Training images/s by (model, precision): :func:`studies.sizing.measured_speeds`."""
    return {(model, precision): rate for precision in ("bf16", "fp32")
            for model, rate in measured_speeds(path, threads, precision).items()}


def large_sizing(student_epochs: int, teacher_epochs: int, *, teachers_per_seed: bool = False,
                 roofline: Path = ROOFLINE, threads: int = 2) -> pd.DataFrame:
    """The large profile's trainings, one line per kind, with their estimated hours on this
    CPU from the measured bf16 training speeds (:func:`roofline_speeds`), at
    ``student_epochs`` and ``teacher_epochs`` epochs of all 50,000 images:

    * each teacher: epochs x 50,000 / its images/s, once (the profile's shared teachers) or
      once per seed (``teachers_per_seed``);
    * each student, per seed: epochs x 50,000 / the student's images/s;
    * the teachers' passes of a seed's students, which train in lockstep (one pass of a
      teacher per batch for all of them): the pair's teacher on every batch, the second
      teacher on the batches the random teacher draws it (half), each pass FORWARD_SHARE of
      that teacher's training step;
    * the label-smoothing ε: two fp32 passes of the teacher over the training images (the
      method's, and the row's).

    Not counted: evaluation on the test set, start-up, writing files, the precision probe."""
    profile, n = PROFILES["large"], CIFAR10_TRAIN
    speed = roofline_speeds(roofline, threads)
    train_s = lambda arch, epochs: epochs * n / speed[(arch, "bf16")]
    forward_s = lambda arch, epochs, precision="bf16": (
        epochs * n * FORWARD_SHARE / speed[(arch, precision)])
    teacher_copies = profile.seeds if teachers_per_seed else 1
    lines = []
    for pair in profile.pairs:
        cells = pair_cells(pair, profile)
        for arch in (pair.teacher, profile.second_teacher):
            lines.append((f"teacher {arch}", teacher_copies, teacher_epochs,
                          train_s(arch, teacher_epochs)))
        lines.append((f"student {pair.student} ({len(cells)} cells)", len(cells) * profile.seeds,
                      student_epochs, train_s(pair.student, student_epochs)))
        roles = {cell.teacher_role for cell in cells if cell.method != "label_smoothing"}
        if roles & set(LOCKSTEP_ROLES):
            lines.append((f"{pair.teacher} passes for the lockstep students", profile.seeds,
                          student_epochs, forward_s(pair.teacher, student_epochs)))
        if "both" in roles:
            lines.append((f"{profile.second_teacher} passes for random_teacher (half the "
                          f"batches)", profile.seeds, student_epochs,
                          forward_s(profile.second_teacher, student_epochs) / 2))
        if any(cell.method == "label_smoothing" for cell in cells):
            lines.append((f"{pair.teacher} fp32 passes for the label-smoothing epsilon",
                          2 * profile.seeds, 1, forward_s(pair.teacher, 1, "fp32")))
    frame = pd.DataFrame(lines, columns=["training", "runs", "epochs", "s_each"])
    return frame.assign(hours=frame["runs"] * frame["s_each"] / 3600)


def large_sizing_table(student_epochs=(30, 60), teacher_epochs=(60, 100, 150),
                       roofline: Path = ROOFLINE) -> pd.DataFrame:
    """Total hours of the large profile for each pair of epoch counts, with the teachers
    shared (the profile) and trained per seed (for comparison)."""
    return pd.DataFrame([
        {"student epochs": s, "teacher epochs": t, "teachers": which,
         "hours": large_sizing(s, t, teachers_per_seed=per_seed, roofline=roofline)["hours"].sum()}
        for s in student_epochs for t in teacher_epochs
        for which, per_seed in (("shared", False), ("per seed", True))])


def planned(name: str) -> list[tuple[str, int]]:
    """Every ``(cell, seed)`` the profile runs: what a complete table holds."""
    return [(cell.name, seed) for seed, cell in every(plan(PROFILES[name]), PROFILES[name].seeds)]


def main(argv: list[str] | None = None) -> None:
    command = open_study(argv, study=STUDY, description=__doc__.split("\n\n")[0],
                         profiles=PROFILES, report=report, datasets=CIFAR_DATASETS)
    if command is None:
        return
    # the large recipes, before anything trains (one line and exit 2 while not pinned)
    profile = with_training(with_compile(command.profile.resolved(), command.args.compile),
                            precision=command.precision)
    command = dataclasses.replace(command, profile=profile)
    args, table, device = command.args, command.table, command.device
    todo = list(pending(plan(profile), args.seeds or profile.seeds, table))
    print(f"{STUDY} [{args.profile}] {profile.description}; {len(todo)} cells on {device} -> "
          f"{table.path}")
    teacher_zoo, (new_teacher_zoo, students) = None, zoos(command)
    schedule, selected_on = "profile", "none (a single schedule)"
    if profile.large_recipes:
        selected_on = (f"studies.recipe: students {LARGE_RECIPES['student']}, teachers "
                       f"{LARGE_RECIPES['teacher']} (each chosen on held-out training images)")
    if todo and profile.student_candidates:  # chosen here, before the cells (also under Ray)
        teacher_zoo = new_teacher_zoo()
        schedule, selected_on = select_student_config(
            profile, teacher_zoo, students(profile.student_config), table)
        print(f"  students' schedule: {schedule} (chosen on {selected_on})")
    # the choice travels with the command, to cell_runner here or on a Ray worker
    command = dataclasses.replace(command, args=argparse.Namespace(
        **vars(args), student_schedule=schedule, schedule_selected_on=selected_on))
    summary = lambda row: f"test accuracy {row['test_accuracy']:.4f}"
    if command.executor == "ray":
        run_cells_on_ray(command, every(plan(profile), args.seeds or profile.seeds),
                         cell_runner, summary,
                         lambda seed, cell: models_used(profile, seed, cell))
        return
    run_cells(table, todo, cell_runner(command, teacher_zoo, todo), device, summary,
              precision=command.precision)


def zoos(command) -> tuple[Callable[[], Zoo], Callable[[TrainConfig], Zoo]]:
    """Makers of the teachers' zoo and of the students' zoo of a given schedule."""
    args, profile = command.args, command.profile
    zoo = lambda config, limit, **kw: Zoo(args.dataset, config, command.device,
                                          train_limit=limit, test_limit=profile.test_limit,
                                          **kw)
    students = lambda config: zoo(config, profile.student_train_limit,
                                  augment_students=profile.augment_students)
    return lambda: zoo(profile.teacher_config, profile.teacher_train_limit,
                       teacher_checkpoints=profile.teacher_checkpoints), students


def cell_runner(command, teacher_zoo: Zoo | None = None,
                todo: list[tuple[int, Cell]] | None = None) -> Callable[[int, Cell], dict]:
    """``run(seed, cell) -> row`` for a study command (here, or on a Ray worker) whose
    arguments carry the students' schedule chosen by :func:`main`. Given the pending ``todo``
    (a local run) and a profile with ``lockstep``, a seed's students of one teacher train in
    lockstep (:meth:`Run.train_in_lockstep`)."""
    profile, args = command.profile, command.args
    new_teacher_zoo, students = zoos(command)
    teacher_zoo = teacher_zoo or new_teacher_zoo()
    schedule = args.student_schedule
    student_zoo = students(profile.student_candidates[schedule] if schedule != "profile"
                           else profile.student_config)
    pending_names = lambda seed: frozenset(
        c.name for s, c in (todo or []) if s == seed and profile.lockstep)
    runs: dict[int, Run] = {}

    def run(seed: int, cell: Cell) -> dict:
        if seed not in runs:
            runs[seed] = Run(teacher_zoo, student_zoo, profile, seed, pending_names(seed))
        return {"student_schedule": schedule, "schedule_selected_on": args.schedule_selected_on,
                **runs[seed].run(cell)}
    return run


def models_used(profile: Profile, seed: int, cell: Cell) -> list[tuple]:
    """The shared models a cell trains or loads: the pair's teacher (every row reports it), the
    second teacher, the pair's scratch student, the assistant."""
    teacher_seed = seed if profile.teacher_seed is None else profile.teacher_seed
    used = [("teacher", cell.pair.teacher, teacher_seed)]
    if cell.teacher_role == "both":
        used.append(("teacher", profile.second_teacher, teacher_seed + SECOND_TEACHER_SEED))
    if cell.teacher_role == "scratch" or cell.method is None:
        used.append(("scratch", cell.pair.student, seed))
    if cell.teacher_role == "assistant":
        used.append(("assistant", cell.pair.teacher, cell.pair.assistant, seed))
    if cell.teacher_role == "assistant_teacher_data":
        used.append(("assistant_teacher_data", cell.pair.teacher, cell.pair.assistant,
                     teacher_seed))
    return used


if __name__ == "__main__":
    raise SystemExit(run_main(main))
