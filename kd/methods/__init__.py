"""Distillation methods by name (kd-repro issue 6, "one contract").

Each method is one short file (its paper, formula and default hyper-parameters in the class
docstring); :data:`METHODS` maps names to classes and :func:`build_method` builds one::

    method = build_method("at", student, teacher, beta=500)
    fit(prepare_model(method.model, device), train, method, config, seed=0)

Every method is an :class:`~kd.distill.Objective` whose ``method.model`` is what to train (the
student, or the student with the method's learnable heads, see :mod:`kd.methods.base`).
"""

from __future__ import annotations

import inspect

from torch import nn

from kd.errors import ConfigError
from kd.methods.at import AttentionTransfer
from kd.methods.base import FeatureDistiller, StudentWithHeads, resnet_taps
from kd.methods.fitnets import FitNets
from kd.methods.fsp import FlowOfSolution
from kd.methods.hinton import HintonKD
from kd.methods.rkd import RelationalKD
from kd.methods.sp import SimilarityPreserving

METHODS: dict[str, type] = {}


def register(cls: type) -> type:
    """Add a method class to :data:`METHODS` under ``cls.name``; a name may be used once."""
    if not cls.name or cls.name in METHODS:
        raise ConfigError(f"method name {cls.name!r} is empty or already registered")
    METHODS[cls.name] = cls
    return cls


for _cls in (HintonKD, FitNets, AttentionTransfer, SimilarityPreserving, RelationalKD,
             FlowOfSolution):
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


def build_method(name: str, student: nn.Module, teacher: nn.Module, **overrides):
    """The method ``name`` for this student and teacher, its defaults replaced by ``overrides``.

    Raises ConfigError for an unknown name (listing the known ones) or an unknown override
    (listing the accepted ones)."""
    try:
        cls = METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown distillation method {name!r}; known: {sorted(METHODS)}") from None
    accepted = accepted_options(cls)
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        raise ConfigError(f"method {name!r} has no option(s) {unknown}; accepted: {accepted}")
    return cls(student, teacher, **overrides)


__all__ = ["METHODS", "build_method", "register", "accepted_options", "FeatureDistiller",
           "StudentWithHeads", "resnet_taps", "HintonKD", "FitNets", "AttentionTransfer",
           "SimilarityPreserving", "RelationalKD", "FlowOfSolution"]
