"""How long a study's profile would take on one GPU, estimated on the CPU without training it.

    python -m kd.experiment.bench --task estimate [--study NAME ...] [--profile paper]
                       [--peak-tflops 989] [--mfu 0.4] [--op-overhead-us 5] [--precision bf16]
    python -m kd.experiment.estimate ...            (the same arguments)

Small CIFAR networks do not keep a GPU busy: every operator a training step dispatches costs
some microseconds of host time (Python, the dispatcher, the kernel launch) however little it
computes. A step is therefore bounded below twice, by its FLOPs and by its count of operators.
For a study's profile this lists every training run the study makes, grouped into runs of one
kind, each with

* ``GFLOP/img``: FLOPs per training image of one step (the trained model's forward and backward,
  the teacher's forward when it runs live, the K students of a stack together), by the formulas
  of torch's ``FlopCounterMode`` (``torch.utils.flop_counter.flop_registry``);
* ``ops/step``: operators per training step, every call the dispatcher makes below autograd:
  batch slicing, augmentation and normalization, the objective's forward (teacher included),
  the backward, the optimizer and learning-rate schedule, the loss bookkeeping;
* ``images seen``: runs x epochs x training images;
* ``FLOP-bound`` = FLOPs / (peak x MFU), ``launch-bound`` = steps x ops/step x overhead per
  operator, and the estimate, the larger of the two. Runs add up; the evaluation passes of
  :func:`kd.train.engine.predict` (teachers' logits, test and train scores) are one more row.

How: the study's own ``main`` runs the profile, every cell of every seed, on fake data of the
real sizes (random images, balanced labels), its model cache and results in a temporary folder,
with two stand-ins. :func:`kd.train.engine.fit` records the run (model, objective, training split,
config) and measures its kind: the real ``fit`` trains two steps in batches of ``batch`` images
(default 2; the count of operators barely depends on it) and the second step is counted. A kind
is the trained module's structure, the objective with its teachers, the augmentation, the
optimizer and the precision; each is measured once and reused. :func:`kd.train.engine.predict` runs
the model on ``batch`` images and repeats their logits for the whole split, recording one
evaluation. So the list is what the study trains, derived from its own plan rather than written
by hand, and a model the study trains once (cached teachers) counts once. It takes seconds per
smoke profile; all six paper profiles took 3 minutes of CPU time (5 minutes of wall time on 2
cores shared with other work), most of it the studies' own bookkeeping on data of full size.

Assumptions (defaults for one H100 SXM; each is a flag):

* peak ``989`` TFLOP/s: the H100 SXM's dense bf16 tensor-core peak as NVIDIA's data sheet gives
  it (1,979 with 2:4 sparsity), quoted from memory; ``--peak-tflops``;
* MFU ``0.4``: the share of that peak the FLOP-heavy steps reach; ``--mfu``;
* ``5`` microseconds per operator: eager PyTorch's host time per operator on a fast CPU, so that
  a step of n operators takes at least 5n microseconds however small; ``--op-overhead-us``;
* operators counted in ``bf16`` autocast (what ``--precision auto`` picks on an H100; it adds
  casts), SGD in torch's ``foreach`` form (its default on CUDA; on a CPU it loops over the
  parameters), each ``foreach`` call counted once although it may launch a few kernels;
* FLOPs of a step counted at ``batch`` images and scaled linearly: the relation losses' terms
  that grow with the square or cube of the batch (SP, RKD) are undercounted, by a few per cent
  of a small network's FLOPs at batch 128; a grouped convolution's backward (the stacked
  students under vmap) is counted as twice its forward, where torch's formula counts G times
  too much for G groups; a teacher drawn at random per step is counted as the one drawn;
* nothing overlaps: a run takes the larger bound, runs and evaluations follow one another.
  Not counted: start-up, ``torch.compile``, checkpoint copies, writing files, memory traffic
  (bandwidth-bound elementwise work) and per-epoch bookkeeping.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib
import io
import math
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import conv_flop_count, flop_registry

from kd import data
from kd.errors import ConfigError
from kd.experiment.command import OneLineErrorParser, positive_int
from kd.train import distill, engine
from kd.train.distill import Objective
from kd.train.engine import FitResult, TrainConfig

STUDIES = ("hinton_mnist", "alpha_temperature", "capacity_gap", "early_stopping", "fidelity",
           "method_zoo")
H100_BF16_DENSE_TFLOPS = 989.0  # NVIDIA H100 SXM data sheet, dense (quoted from memory)
DEFAULT_MFU = 0.4
DEFAULT_OP_OVERHEAD_US = 5.0
EVAL_BATCH = 1024  # kd.train.engine.predict's batch on CUDA
BUDGET_MINUTES = 45.0  # the time a paper profile should fit in on one GPU (issue 16)

# The data sets' real sizes: name -> (train, test, image shape, classes)
DATASET_SIZES = {"mnist": (60_000, 10_000, (1, 28, 28), 10),
                 "cifar10": (50_000, 10_000, (3, 32, 32), 10),
                 "cifar100": (50_000, 10_000, (3, 32, 32), 100)}


# ----------------------------------------------------------------------------------------------
# What a run costs, and the arithmetic of the estimate


@dataclass(frozen=True)
class Target:
    """The GPU the estimate is for: peak FLOP/s, the share of it reached, host time per op."""

    peak_tflops: float = H100_BF16_DENSE_TFLOPS
    mfu: float = DEFAULT_MFU
    op_overhead_us: float = DEFAULT_OP_OVERHEAD_US

    def __post_init__(self):
        if not (self.peak_tflops > 0 and 0 < self.mfu <= 1 and self.op_overhead_us >= 0):
            raise ConfigError(f"need peak TFLOP/s > 0, 0 < MFU <= 1, overhead >= 0 in {self}")

    def bounds(self, flops: float, ops: float) -> tuple[float, float]:
        """Seconds: (FLOP-bound, launch-bound) for ``flops`` FLOPs in ``ops`` operators."""
        return flops / (self.peak_tflops * 1e12 * self.mfu), ops * self.op_overhead_us * 1e-6

    def describe(self) -> str:
        return (f"peak {self.peak_tflops:g} TFLOP/s at MFU {self.mfu:g} "
                f"({self.peak_tflops * self.mfu:g} TFLOP/s), {self.op_overhead_us:g} us per "
                f"operator")


@dataclass(frozen=True)
class StepCost:
    """One step (a training step, or one evaluation batch): operators and FLOPs per image."""

    ops: int
    flops_per_image: float
    finite: bool = True  # the measured loss was finite


@dataclass(frozen=True)
class Phase:
    """Epochs trained at one step cost (a run whose KD term stops early has two phases)."""

    epochs: int
    step: StepCost


@dataclass(frozen=True)
class Job:
    """``runs`` runs of one kind: the same module, objective, data size and schedule.

    images: training images per epoch (for an evaluation: images per pass); batch_size: images
    per step (the GPU's evaluation batch for an evaluation, one phase of one epoch)."""

    label: str
    model: str
    runs: int
    images: int
    batch_size: int
    phases: tuple[Phase, ...]
    kind: str = "train"  # or "eval"

    @property
    def epochs(self) -> int:
        return sum(p.epochs for p in self.phases)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.images / self.batch_size)

    @property
    def images_seen(self) -> int:
        return self.runs * self.epochs * self.images

    @property
    def flops(self) -> float:
        return self.runs * sum(p.epochs * self.images * p.step.flops_per_image
                               for p in self.phases)

    @property
    def ops(self) -> int:
        return self.runs * sum(p.epochs * self.steps_per_epoch * p.step.ops for p in self.phases)

    def seconds(self, target: Target) -> tuple[float, float, float]:
        """(FLOP-bound, launch-bound, estimate = the larger) in seconds, all runs together."""
        flop_s, launch_s = target.bounds(self.flops, self.ops)
        return flop_s, launch_s, max(flop_s, launch_s)


@dataclass
class StudyEstimate:
    """Every job of one study's profile, training first, then evaluation."""

    study: str
    profile: str
    jobs: list[Job]
    cells: int = 0  # (cell, seed) rows the study wrote
    failures: list[str] = field(default_factory=list)  # runs whose measured loss was not finite
    output: str = ""  # what the study printed

    def seconds(self, target: Target) -> tuple[float, float, float]:
        parts = [job.seconds(target) for job in self.jobs]
        return tuple(sum(p[i] for p in parts) for i in range(3))


# ----------------------------------------------------------------------------------------------
# Counting


class OpCounter(TorchDispatchMode):
    """Counts the operators dispatched below autograd while ``active``, and their FLOPs by the
    formulas of torch's ``FlopCounterMode`` (ops without a formula add none)."""

    def __init__(self, active: bool = True):
        super().__init__()
        self.active, self.ops, self.flops = active, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.active:
            self.ops += 1
            if func.overloadpacket is torch.ops.aten.convolution_backward and args[9] != 1:
                self.flops += grouped_conv_backward_flops(*args)
            else:
                formula = flop_registry.get(func.overloadpacket)
                if formula is not None:
                    self.flops += formula(*args, **kwargs, out_val=out)
        return out


def grouped_conv_backward_flops(grad_out, x, weight, _bias_sizes, _stride, _padding, _dilation,
                                transposed, _output_padding, _groups, output_mask) -> int:
    """FLOPs of a grouped convolution's backward: the forward's for each gradient computed
    (input, weight). torch 2.14's formula counts the weight gradient of a grouped convolution as
    an ungrouped one, G times too many: the stacked students of
    :class:`kd.train.batched.StackedModels` run as convolutions of G = K groups under vmap."""
    forward = conv_flop_count(list(x.shape), list(weight.shape), list(grad_out.shape),
                              transposed=transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


class _Measured(Exception):
    """Ends the real ``fit`` once the counted step is over."""


class _Probe:
    """An objective's stand-in for one measurement: counts the second call of the objective
    through to the start of the third (one whole step: forward, backward, optimizer, schedule,
    bookkeeping and the next batch's data path), then stops training. ``epoch_shift`` makes
    the objective see later epochs (a KD term that has stopped)."""

    def __init__(self, objective, counter: OpCounter, epoch_shift: int = 0):
        self.objective, self.counter, self.epoch_shift = objective, counter, epoch_shift
        self.calls, self.loss = 0, None

    def __getattr__(self, name):
        return getattr(self.objective, name)

    def bind(self, train, augmented: bool) -> None:
        self.objective.bind(train, augmented)

    def start_epoch(self, epoch: int) -> None:
        self.objective.start_epoch(epoch + self.epoch_shift)

    def __call__(self, model, batch):
        self.calls += 1
        if self.calls == 3:
            self.counter.active = False
            raise _Measured
        self.counter.active = self.calls == 2
        loss, terms = self.objective(model, batch)
        if self.calls == 2:
            self.loss = loss
        return loss, terms

    def finite(self) -> bool:
        return self.loss is None or bool(torch.isfinite(self.loss.detach()).all())


@contextlib.contextmanager
def foreach_optimizers() -> Iterator[None]:
    """Optimizers built by :data:`kd.train.engine.OPTIMIZERS` in torch's ``foreach`` form (one call
    for all parameters; the default on CUDA) unless fused, as they would run on the GPU."""
    originals = dict(engine.OPTIMIZERS)

    def foreach(build):
        def make(params, config):
            optimizer = build(params, config)
            for group in optimizer.param_groups:
                if "foreach" in group and not group.get("fused"):
                    group["foreach"] = True
            return optimizer
        return make

    engine.OPTIMIZERS.update({name: foreach(build) for name, build in originals.items()})
    try:
        yield
    finally:
        engine.OPTIMIZERS.update(originals)


def module_signature(module: nn.Module) -> tuple:
    """Equal for two modules of one structure (classes of every submodule, state shapes)."""
    return (tuple((name, type(m).__name__) for name, m in module.named_modules()),
            tuple((name, tuple(t.shape)) for name, t in module.state_dict().items()
                  if isinstance(t, torch.Tensor)))  # not a RandomTeacher's draws to come


def objective_signature(objective, depth: int = 0) -> tuple:
    """The objective's class, the structure of the models it holds (teachers, heads) and its
    plain settings (flags, counts, names), recursively; not its weights or float settings."""
    parts: list = [type(objective).__name__]
    for name, value in sorted(vars(objective).items()):
        if isinstance(value, nn.Module):
            parts.append((name, module_signature(value)))
        elif (isinstance(value, (list, tuple)) and value
              and all(isinstance(v, nn.Module) for v in value)):
            parts.append((name, tuple(module_signature(v) for v in value)))
        elif isinstance(value, Objective) and depth < 3:
            parts.append((name, objective_signature(value, depth + 1)))
        elif value is None or isinstance(value, (bool, int, str)):
            parts.append((name, value))
    return tuple(parts)


def augment_signature(augment) -> object:
    if augment is None:
        return None
    inner = getattr(augment, "augments", None)
    return (type(augment).__name__,
            tuple(map(augment_signature, inner)) if isinstance(inner, list) else None)


def kd_until_epoch(objective, depth: int = 0) -> int | None:
    """The epoch after which the objective's KD term stops (and its teacher no longer runs)."""
    stop = getattr(objective, "kd_until_epoch", None)
    inner = getattr(objective, "objective", None)
    if stop is None and isinstance(inner, Objective) and depth < 3:
        return kd_until_epoch(inner, depth + 1)
    return stop


def describe_model(model: nn.Module) -> str:
    """What is trained, in a few words: ``PlainCNN 0.03M`` or ``91 x PlainCNN 0.03M``."""
    skeleton = getattr(model, "_skeleton", None)
    if skeleton:  # a kd.train.batched.StackedModels: K models of one architecture
        return f"{len(model)} x {describe_model(skeleton[0])}"
    if isinstance(model, nn.ModuleList) and len(model) > 1:  # LoopedModels
        return " + ".join(describe_model(m) for m in model)
    inner = getattr(model, "student", None)
    if isinstance(inner, nn.Module):  # a student with a method's heads
        params = sum(p.numel() for p in model.parameters())
        return f"{type(inner).__name__} + heads {params / 1e6:.2f}M"
    params = sum(p.numel() for p in model.parameters())
    return f"{type(model).__name__} {params / 1e6:.2f}M"


SEED = re.compile(r"\s*\bseed \d+:?|\s+\d+$|^\d+ x ")


def job_label(desc: str) -> str:
    """A run's progress label without its seed (or pool index) or stack size (the model column
    says ``3 x ...``): runs of every seed group."""
    return SEED.sub("", desc).strip() or desc


# ----------------------------------------------------------------------------------------------
# Running a study's profile with the stand-ins


@functools.cache
def fake_split(name: str, train: bool, scale: float = 1.0) -> data.Split:
    """A split of the real size (times ``scale``) and shape: random images and labels 0..C-1 in
    equal numbers, shuffled, so random subsets and class filters keep their real sizes to
    within a per cent (MNIST's 3s are 10.2 % of its training images, here 10 %). Made once per
    process."""
    if name not in DATASET_SIZES:
        raise ConfigError(f"no size known for data set {name!r}; known: {sorted(DATASET_SIZES)}")
    n_train, n_test, shape, classes = DATASET_SIZES[name]
    n = max(math.ceil((n_train if train else n_test) * scale), 10 * classes)
    generator = torch.Generator().manual_seed(int(train))
    images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=generator)
    labels = (torch.arange(n) % classes)[torch.randperm(n, generator=generator)]
    channels = shape[0]
    return data.Split(images, labels, (0.5,) * channels, (0.25,) * channels, num_classes=classes)


def fake_load(name: str, train: bool, root=None, *, scale: float = 1.0) -> data.Split:
    """:func:`kd.data.load`'s stand-in."""
    return fake_split(name, bool(train), scale)


_REAL_FIT, _REAL_FIT_LOCKSTEP, _REAL_PREDICT = engine.fit, engine.fit_lockstep, engine.predict


class Tracer:
    """The stand-ins of :func:`kd.train.engine.fit` and :func:`kd.train.engine.predict` that record
    what a study trains and evaluates, and measure each kind of step once (``batch`` images)."""

    def __init__(self, batch: int = 2, data_scale: float = 1.0):
        """data_scale < 1 makes the fake data sets smaller: the same code runs faster, with
        fewer steps per epoch (for tests of the code paths; the estimate needs 1)."""
        if batch < 2:
            raise ConfigError("the measuring batch needs at least 2 images (batch norm)")
        self.batch, self.data_scale = batch, data_scale
        self.steps: dict[tuple, StepCost] = {}  # kind of training step -> its cost
        self.forwards: dict[tuple, StepCost] = {}  # (model structure, precision) -> one batch
        self.reset()

    def reset(self) -> None:
        """Forget the recorded runs (not the measured kinds, which stay valid)."""
        self.train_runs: list[tuple] = []
        self.evals: list[tuple] = []
        self.failures: list[str] = []
        self._measuring = False

    # -- kd.train.engine.fit -------------------------------------------------------------------
    def fit(self, model: nn.Module, train: data.Split, objective, config: TrainConfig, *,
            seed: int, eval_sets: dict | None = None, augment=None, desc: str = "train",
            **_) -> FitResult:
        kind = (module_signature(model), objective_signature(objective),
                augment_signature(augment))  # before measuring changes the objective's state
        objective.bind(train, augmented=augment is not None)  # as fit does (teacher logits)
        if config.epochs > 0 and len(train):
            phases = tuple(
                Phase(epochs, self.step_cost(kind, model, train, objective, config, seed,
                                             augment, shift, desc))
                for epochs, shift in self.phases(objective, config))
            key = (*kind, len(train), config.batch_size, phases)
            self.train_runs.append((key, job_label(desc), describe_model(model), len(train),
                                    config.batch_size, phases))
        for split in (eval_sets or {}).values():  # evaluated after every epoch
            self.record_eval(model, split, config.precision, repeats=config.epochs)
        return self.untrained_result(model, config)

    @staticmethod
    def untrained_result(model: nn.Module, config: TrainConfig) -> FitResult:
        """What the stand-ins return for a run: its untrained weights at every checkpoint."""
        state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        return FitResult(history=[{"epoch": config.epochs, "lr": config.lr, "train_loss": 0.0}],
                         checkpoints={e: state for e in config.checkpoint_epochs}, wall_s=0.0)

    def fit_lockstep(self, models, train: data.Split, objectives, config: TrainConfig, *,
                     seed: int, augment=None, desc: str = "train", **_) -> list[FitResult]:
        """:func:`kd.train.engine.fit_lockstep`'s stand-in: one run of one kind, whose step is every
        model's step on one batch, each teacher's pass shared (measured as it runs)."""
        kind = ("lockstep", tuple((module_signature(m), objective_signature(o))
                                  for m, o in zip(models, objectives)),
                augment_signature(augment))
        for objective in objectives:
            objective.bind(train, augmented=augment is not None)
        if any(kd_until_epoch(o) is not None for o in objectives):
            raise ConfigError("the estimate of a lockstep run takes no KD term that stops early")
        if config.epochs > 0 and len(train):
            phases = (Phase(config.epochs, self.step_cost(kind, list(models), train,
                                                          list(objectives), config, seed,
                                                          augment, 0, desc)),)
            described = " + ".join(sorted(set(map(describe_model, models))))
            self.train_runs.append(((*kind, len(train), config.batch_size, phases),
                                    job_label(desc), f"{len(models)} in lockstep: {described}",
                                    len(train), config.batch_size, phases))
        return [self.untrained_result(model, config) for model in models]

    @staticmethod
    def phases(objective, config: TrainConfig) -> list[tuple[int, int]]:
        """(epochs, epoch shift) of each phase: one, or two when the KD term stops early."""
        stop = kd_until_epoch(objective)
        if stop is None or stop >= config.epochs:
            return [(config.epochs, 0)]
        return [(e, shift) for e, shift in ((stop, 0), (config.epochs - stop, stop)) if e > 0]

    def step_cost(self, kind: tuple, model, train, objective, config, seed, augment, shift,
                  desc) -> StepCost:
        key = (*kind, config.optimizer, config.precision, shift > 0)
        if key not in self.steps:
            self.steps[key] = self.measure(model, train, objective, config, seed, augment, shift)
            if not self.steps[key].finite:
                self.failures.append(f"{desc}: the measured step's loss is not finite")
        return self.steps[key]

    def measure(self, model, train, objective, config, seed, augment, shift) -> StepCost:
        """The second step of the real :func:`kd.train.engine.fit` in batches of ``batch`` images
        (of :func:`kd.train.engine.fit_lockstep` when ``model`` and ``objective`` are lists: the
        first model's probe counts from its second step to its third, every model's step on
        that batch in between)."""
        counter = OpCounter(active=False)
        lockstep = isinstance(model, list)
        objectives = objective if lockstep else [objective]
        probe = _Probe(objectives[0], counter, shift)
        settings = dataclasses.replace(config, batch_size=self.batch, checkpoint_epochs=(),
                                       compile=False)
        self._measuring, finite = True, True
        try:
            with foreach_optimizers(), counter:
                if lockstep:
                    _REAL_FIT_LOCKSTEP(model, train, [probe, *objectives[1:]], settings,
                                       seed=seed, augment=augment, desc="estimate")
                else:
                    _REAL_FIT(model, train, probe, settings, seed=seed, augment=augment,
                              desc="estimate")
        except _Measured:
            pass
        except engine.NonFiniteLossError:  # a split too small for 3 steps: fit ran to its end
            finite = False
        finally:
            self._measuring, counter.active = False, False
        return StepCost(counter.ops, counter.flops / self.batch, finite and probe.finite())

    # -- kd.train.engine.predict ---------------------------------------------------------------
    def predict(self, model: nn.Module, split: data.Split, batch_size: int | None = None,
                precision: str = "fp32") -> torch.Tensor:
        """The model's logits for ``batch`` images of the split, repeated for all of it."""
        few = split.head(self.batch)
        logits = self.forward(model, few, batch_size, precision)
        if not self._measuring:
            self.record_eval(model, split, precision)
        index = torch.arange(len(split), device=logits.device) % max(len(few), 1)
        return logits[..., index, :]

    def forward(self, model: nn.Module, few: data.Split, batch_size: int | None,
                precision: str) -> torch.Tensor:
        """The real ``predict`` on a few images; the first time for a model structure, its
        operators and FLOPs per image are counted (one evaluation batch)."""
        key = (module_signature(model), precision)
        if not len(few) or key in self.forwards:
            return _REAL_PREDICT(model, few, batch_size, precision)
        with OpCounter() as counter:
            logits = _REAL_PREDICT(model, few, batch_size, precision)
        self.forwards[key] = StepCost(counter.ops, counter.flops / len(few))
        return logits

    def record_eval(self, model: nn.Module, split: data.Split, precision: str,
                    repeats: int = 1) -> None:
        if len(split) and repeats > 0:
            self.forward(model, split.head(self.batch), None, precision)
            self.evals += [((module_signature(model), precision), describe_model(model),
                            len(split))] * repeats

    # -- the jobs --------------------------------------------------------------------------------
    def jobs(self) -> list[Job]:
        """The recorded runs grouped by kind (training first, in order of first appearance),
        then the evaluations grouped by model and split size."""
        groups: dict[tuple, list[tuple]] = {}
        for key, *run in self.train_runs:
            groups.setdefault(key, []).append(run)
        jobs = []
        for runs in groups.values():
            labels = list(dict.fromkeys(run[0] for run in runs))
            _, model, images, batch_size, phases = runs[0]
            label = labels[0] + (f" (+{len(labels) - 1} alike)" if len(labels) > 1 else "")
            jobs.append(Job(label, model, len(runs), images, batch_size, phases))
        evals: dict[tuple, list[tuple]] = {}
        for key, model, images in self.evals:
            evals.setdefault((key, images), []).append(model)
        for (key, images), models in evals.items():
            jobs.append(Job(f"evaluation: {models[0]}", models[0], len(models), images,
                            EVAL_BATCH, (Phase(1, self.forwards[key]),), kind="eval"))
        return jobs


@contextlib.contextmanager
def stand_ins(tracer: Tracer, cache_dir: str) -> Iterator[None]:
    """Within: ``fit`` and ``predict`` are the tracer's, data sets are :func:`fake_split`, and
    the model cache is ``cache_dir``."""
    import kd.experiment.cache

    patches = [(engine, "fit", tracer.fit), (kd.experiment.cache, "fit", tracer.fit),
               (engine, "fit_lockstep", tracer.fit_lockstep),
               (kd.experiment.cache, "fit_lockstep", tracer.fit_lockstep),
               (engine, "predict", tracer.predict), (distill, "predict", tracer.predict),
               (data, "load", functools.partial(fake_load, scale=tracer.data_scale))]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    saved_cache = os.environ.get("KD_CACHE")
    try:
        for owner, name, value in patches:
            setattr(owner, name, value)
        os.environ["KD_CACHE"] = cache_dir
        yield
    finally:
        for owner, name, value in originals:
            setattr(owner, name, value)
        if saved_cache is None:
            os.environ.pop("KD_CACHE", None)
        else:
            os.environ["KD_CACHE"] = saved_cache


def run_study(study: str, profile: str = "paper", *, tracer: Tracer | None = None,
              precision: str = "bf16", cache_dir: str | None = None,
              seeds: int | None = None) -> StudyEstimate:
    """Run ``studies.<study>``'s ``main`` for ``profile`` with the stand-ins (every cell of every
    seed, or of the first ``seeds``; results and, unless ``cache_dir`` is given, the model cache
    in a temporary folder) and return its jobs. An error of the study propagates, with what it
    printed."""
    module = importlib.import_module(f"studies.{study}")
    tracer = tracer or Tracer()
    tracer.reset()
    printed = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="kd-estimate-") as tmp, engine.torch_threads(1):
        argv = ["--profile", profile, "--device", "cpu", "--precision", precision,
                "--results", os.path.join(tmp, "results")] + (["--seeds", str(seeds)] if seeds
                                                               else [])
        try:
            with (stand_ins(tracer, cache_dir or os.path.join(tmp, "cache")),
                  contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed)):
                module.main(argv)
        except BaseException:
            print(printed.getvalue(), file=sys.stderr)
            raise
        tables = [p for p in Path(tmp, "results").rglob(f"{profile}.csv")]
        cells = sum(max(0, len(p.read_text().splitlines()) - 1) for p in tables)
        failures = [line for p in Path(tmp, "results").rglob("*failures*.csv")
                    for line in p.read_text().splitlines()[1:]]
    return StudyEstimate(study, profile, tracer.jobs(), cells, tracer.failures + failures,
                         printed.getvalue())


def estimate(studies: Sequence[str] = STUDIES, profile: str = "paper", *, batch: int = 2,
             precision: str = "bf16", shared_cache: bool = False) -> list[StudyEstimate]:
    """:func:`run_study` for each study, measured kinds shared; with ``shared_cache`` one model
    cache for all, so a study reuses what an earlier one trained (as on a real machine)."""
    tracer = Tracer(batch)
    with tempfile.TemporaryDirectory(prefix="kd-estimate-cache-") as cache:
        return [run_study(s, profile, tracer=tracer, precision=precision,
                          cache_dir=cache if shared_cache else None) for s in studies]


# ----------------------------------------------------------------------------------------------
# Tables


def duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def count(n: float) -> str:
    return f"{n / 1e9:.2f}G" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,.0f}"


HEADER = ("| runs of one kind | model | runs | epochs | images/epoch | GFLOP/img | ops/step | "
          "images seen | FLOP-bound | launch-bound | estimate |")


def table(result: StudyEstimate, target: Target) -> list[str]:
    """A Markdown table: one line per kind of training run, one for all evaluation, the total."""
    lines = [HEADER, "|" + " --- |" * HEADER.count(" | ") + " --- |"]
    train = [j for j in result.jobs if j.kind == "train"]
    evals = [j for j in result.jobs if j.kind == "eval"]
    for job in train:
        flop_s, launch_s, est = job.seconds(target)
        gflop = " / ".join(f"{p.step.flops_per_image / 1e9:.3f}" for p in job.phases)
        ops = " / ".join(f"{p.step.ops:,}" for p in job.phases)
        epochs = " + ".join(str(p.epochs) for p in job.phases)
        lines.append(f"| {job.label} | {job.model} | {job.runs} | {epochs} | {job.images:,} | "
                     f"{gflop} | {ops} | {count(job.images_seen)} | {duration(flop_s)} | "
                     f"{duration(launch_s)} | {duration(est)} |")
    if evals:
        parts = [j.seconds(target) for j in evals]
        passes = sum(j.runs for j in evals)
        lines.append(f"| evaluation ({passes} passes, batches of {EVAL_BATCH}) | | | | | | | "
                     f"{count(sum(j.images_seen for j in evals))} | "
                     f"{duration(sum(p[0] for p in parts))} | {duration(sum(p[1] for p in parts))}"
                     f" | {duration(sum(p[2] for p in parts))} |")
    flop_s, launch_s, est = result.seconds(target)
    lines.append(f"| **total** | | {sum(j.runs for j in train)} | | | | | "
                 f"{count(sum(j.images_seen for j in train))} | {duration(flop_s)} | "
                 f"{duration(launch_s)} | **{duration(est)}** |")
    return lines


def summary_line(result: StudyEstimate, target: Target, budget_minutes: float) -> str:
    flop_s, launch_s, est = result.seconds(target)
    runs = sum(j.runs for j in result.jobs if j.kind == "train")
    kinds = sum(j.kind == "train" for j in result.jobs)
    within = "within" if est <= budget_minutes * 60 else "over"
    return (f"{result.study} [{result.profile}]: {result.cells} cells, {runs} training runs of "
            f"{kinds} kinds; estimated {duration(est)} on one GPU (FLOP-bound "
            f"{duration(flop_s)}, launch-bound {duration(launch_s)}), {within} "
            f"{budget_minutes:g} min")


def report(results: Sequence[StudyEstimate], target: Target,
           budget_minutes: float = BUDGET_MINUTES) -> str:
    lines = [f"Estimated GPU time (an estimate, not a measurement): {target.describe()}; "
             f"operators and FLOPs counted on this CPU, nothing trained.", ""]
    for result in results:
        lines += [f"### {summary_line(result, target, budget_minutes)}", ""]
        lines += table(result, target) + [""]
        lines += [f"warning: {failure}" for failure in result.failures]
    if len(results) > 1:
        lines += ["| study | profile | cells | training runs | FLOP-bound | launch-bound | "
                  f"estimate | within {budget_minutes:g} min |", "|" + " --- |" * 8]
        for r in results:
            flop_s, launch_s, est = r.seconds(target)
            runs = sum(j.runs for j in r.jobs if j.kind == "train")
            lines.append(f"| {r.study} | {r.profile} | {r.cells} | {runs} | {duration(flop_s)} | "
                         f"{duration(launch_s)} | {duration(est)} | "
                         f"{'yes' if est <= budget_minutes * 60 else 'no'} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser, precision: bool = True) -> None:
    """The estimate's options (``kd.experiment.bench`` has its own ``--precision``)."""
    parser.add_argument("--study", nargs="+", choices=STUDIES, default=list(STUDIES),
                        metavar="STUDY", help=f"studies to estimate: {', '.join(STUDIES)} "
                                              f"(default: all)")
    parser.add_argument("--profile", choices=["smoke", "quick", "paper"], default="paper",
                        help="the studies' profile to estimate")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS,
                        help="the GPU's peak TFLOP/s (default: H100 SXM, bf16, dense)")
    parser.add_argument("--mfu", type=float, default=DEFAULT_MFU,
                        help="share of the peak reached by FLOP-heavy steps")
    parser.add_argument("--op-overhead-us", type=float, default=DEFAULT_OP_OVERHEAD_US,
                        help="host time per dispatched operator, microseconds")
    parser.add_argument("--probe-batch", type=positive_int, default=2,
                        help="images per step when counting (at least 2)")
    parser.add_argument("--budget-minutes", type=float, default=BUDGET_MINUTES,
                        help="flag the profiles whose estimate exceeds this")
    parser.add_argument("--shared-cache", action="store_true",
                        help="one model cache for the studies listed, in order, so a study "
                             "reuses the teachers an earlier one trained")
    if precision:
        parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                            help="what the GPU trains in (auto: bf16, as on an H100)")


def run(args: argparse.Namespace) -> None:
    target = Target(args.peak_tflops, args.mfu, args.op_overhead_us)
    precision = "bf16" if args.precision == "auto" else args.precision
    results = estimate(args.study, args.profile, batch=args.probe_batch, precision=precision,
                       shared_cache=args.shared_cache)
    print(report(results, target, args.budget_minutes))


def main(argv: list[str] | None = None) -> None:
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    from kd.experiment.command import run_main

    raise SystemExit(run_main(main))
