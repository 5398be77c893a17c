"""Distillation methods by name (kd-repro issue 6, "one contract").

Each method is one short file (its paper, formula and default hyper-parameters in the class
docstring); :data:`METHODS` maps names to classes and :func:`build_method` builds one::

    method = build_method("at", student, teacher, beta=500)
    model = prepare_model(method.model, device)
    fit(model, train, method, config, seed=0)
    student = method.trained_student(model)

Every method is an :class:`~kd.train.distill.Objective` whose ``method.model`` is what to train: the
student, the student with the method's learnable heads (see :mod:`kd.methods.base`), or the
student stacked with its peers (mutual learning). Each class says what it is:

* ``family``: response, feature, relation (the kind of knowledge), online, self (the scheme),
  multi-teacher, quantized (Gou et al. 2021's survey); control (no knowledge per example:
  ``label_smoothing``, a regularizer of KD's strength);
* ``teachers``: what ``build_method``'s ``teacher`` argument must be: ``"one"`` model,
  ``"several"`` (a list of at least 2), ``"none"`` (None) or ``"optional"`` (a model or None).

Teacher-assistant chains are ``kd`` twice (teacher -> assistant -> student); the capacity-gap
study builds them.
"""

from __future__ import annotations

import inspect

from torch import nn

from kd.errors import ConfigError
from kd.methods.at import AttentionTransfer
from kd.methods.base import FeatureDistiller, StudentWithHeads, default_taps, resnet_taps
from kd.methods.born_again import BornAgain
from kd.methods.fitnets import FitNets
from kd.methods.fsp import FlowOfSolution
from kd.methods.hinton import HintonKD
from kd.methods.label_smoothing import LabelSmoothing
from kd.methods.multi_teacher import LogMeanTeacherKD, MeanTeacherKD, RandomTeacherKD
from kd.methods.mutual import DeepMutualLearning
from kd.methods.quantized import QuantizedKD
from kd.methods.rkd import RelationalKD
from kd.methods.sp import SimilarityPreserving

METHODS: dict[str, type] = {}

# what build_method's ``teacher`` must be, by a method's ``teachers``
TEACHER_KINDS = {
    "one": ("a model", lambda t: isinstance(t, nn.Module)),
    "several": ("a list of at least 2 models", lambda t: isinstance(t, (list, tuple))
                and len(t) >= 2 and all(isinstance(m, nn.Module) for m in t)),
    "none": ("None", lambda t: t is None),
    "optional": ("a model or None", lambda t: t is None or isinstance(t, nn.Module)),
}


def register(cls: type) -> type:
    """Add a method class to :data:`METHODS` under ``cls.name``; a name may be used once."""
    if not cls.name or cls.name in METHODS:
        raise ConfigError(f"method name {cls.name!r} is empty or already registered")
    if getattr(cls, "teachers", None) not in TEACHER_KINDS or not getattr(cls, "family", ""):
        raise ConfigError(f"method {cls.name!r} must set family and teachers (one of "
                          f"{sorted(TEACHER_KINDS)})")
    METHODS[cls.name] = cls
    return cls


for _cls in (HintonKD, FitNets, AttentionTransfer, SimilarityPreserving, RelationalKD,
             FlowOfSolution, DeepMutualLearning, BornAgain, MeanTeacherKD, LogMeanTeacherKD,
             RandomTeacherKD, QuantizedKD, LabelSmoothing):
    register(_cls)


def accepted_options(cls: type) -> list[str]:
    """The keyword overrides a method accepts (its own, then its bases' behind ``**kwargs``)."""
    names: list[str] = []
    internal = getattr(cls, "internal_options", ())
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(klass.__init__).parameters.values()
        names += [p.name for p in parameters if p.kind == p.KEYWORD_ONLY and p.name not in names
                  and p.name not in internal]
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return names


def method_settings(name: str, **overrides) -> dict:
    """Every option :func:`build_method` would build ``name`` with: its defaults (walking the
    class and its bases as :func:`accepted_options` does), replaced by ``overrides``. Models
    (a mutual-learning peer) appear by class name. A cache key made from this changes when any
    default changes, not only when an override does."""
    cls = METHODS[name]
    settings: dict = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(klass.__init__).parameters.values()
        settings.update({p.name: p.default for p in parameters if p.kind == p.KEYWORD_ONLY
                         and p.default is not p.empty and p.name not in settings})
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    settings.update(overrides)
    describe = lambda v: type(v).__name__ if isinstance(v, nn.Module) else v
    return {k: [describe(m) for m in v] if isinstance(v, (list, tuple)) else describe(v)
            for k, v in sorted(settings.items())}


def build_method(name: str, student: nn.Module, teacher=None, **overrides):
    """The method ``name`` for this student and teacher(s), its defaults replaced by
    ``overrides``.

    Raises ConfigError for an unknown name (listing the known ones), a teacher argument of the
    wrong kind (see the module docstring) or an unknown override (listing the accepted ones)."""
    try:
        cls = METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown distillation method {name!r}; known: {sorted(METHODS)}") from None
    wanted, fits = TEACHER_KINDS[cls.teachers]
    if not fits(teacher):
        raise ConfigError(f"method {name!r} takes {wanted} as its teacher, got "
                          f"{type(teacher).__name__}")
    accepted = accepted_options(cls)
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        raise ConfigError(f"method {name!r} has no option(s) {unknown}; accepted: {accepted}")
    return cls(student, teacher, **overrides)


__all__ = ["METHODS", "method_settings", "TEACHER_KINDS", "build_method", "register", "accepted_options",
           "FeatureDistiller", "StudentWithHeads", "default_taps", "resnet_taps", "HintonKD",
           "FitNets", "AttentionTransfer", "SimilarityPreserving", "RelationalKD",
           "FlowOfSolution", "DeepMutualLearning", "BornAgain", "MeanTeacherKD", "LogMeanTeacherKD",
           "RandomTeacherKD", "QuantizedKD", "LabelSmoothing"]
