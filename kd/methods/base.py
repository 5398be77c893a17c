"""The one contract of distillation methods: a student, a teacher, named feature taps, and
weighted loss terms, each logged separately.

A :class:`FeatureDistiller` is an :class:`~kd.train.distill.Objective`:

    L = w_ce · CE(s, y) + w_kd · T² · KL(softmax_T(t) ‖ softmax_T(s)) + Σ_k w_k · term_k

where term_k are the method's feature terms (its :meth:`~FeatureDistiller.feature_terms`).
``objective(model, batch)`` returns L and ``{"ce": ..., "kd": ..., "<term>": ...}``; the engine
logs every entry as ``train_<name>``. "kd" is always computed and logged; it enters L only when
``kd_weight > 0`` (0 by default for the feature methods, which then train on CE + features).

Feature taps are module paths of the student and the teacher (``"layer2"``, ``"features.2"``,
as in ``model.get_submodule``). Each model runs as a :class:`TappedForward`: its forward pass
traced by ``torch.fx`` (as ``torchvision.models.feature_extraction`` does) into a graph that
returns the logits and the output of each tapped module, calling the model's own modules, so no
model is edited and one forward pass gives both. A module called more than once in one forward
pass gives its last output. The teacher runs in eval mode under ``torch.no_grad()`` and none of
its parameters requires grad.

Learnable parts of a method (FitNets' regressor) are ``heads``: modules owned by the distiller.
Since :func:`kd.train.engine.fit` optimizes ``model.parameters()``, a method with heads trains
``method.model``, a :class:`StudentWithHeads` whose forward is the student's forward and whose
parameters are the student's plus the heads'. A method without heads has ``method.model`` =
the student. Always train ``method.model``::

    method = build_method("fitnets", student, teacher)
    model = prepare_model(method.model, device)          # moves the heads too
    fit(model, train, method, config, seed=0)            # regressor trained with the student

Calling the distiller with any other module (e.g. the bare student of a method with heads, whose
regressor would then never be trained) raises :class:`~kd.errors.ConfigError`. A
``torch.compile`` wrapper of ``method.model`` (``TrainConfig(compile=True)``) is accepted: the
distiller then compiles the student's tapped graph with the wrapper's settings, so the taps are
outputs of the compiled graph. (Forward hooks would not do: they are not among the guards of
``torch.compile``, so a graph compiled earlier for another model of the class runs without them.)

Shapes are checked at construction: the student and the teacher run once in eval mode on a
probe batch of 2 zero images of ``input_shape``, the heads are built from the tapped shapes,
and the feature terms are evaluated once, so mismatched taps fail early with a ConfigError.
"""

from __future__ import annotations

from typing import ClassVar, Mapping, Sequence

import torch
from torch import Tensor, nn

from kd.data.core import Batch, Split
from kd.errors import ConfigError
from kd.losses import check_hyperparameters, kd_loss, label_cross_entropy
from kd.train.distill import Objective
from kd.train.taps import TappedForward, submodule, trace_taps
from kd.train.teacher_pass import teacher_forward


class StudentWithHeads(nn.Module):
    """The student plus a distiller's learnable heads: ``forward`` is the student's forward, the
    parameters are both's, so ``engine.fit`` trains the heads with the student. The student is
    ``.student`` (its weights are under ``student.`` in the state dict), the heads ``.heads``."""

    def __init__(self, student: nn.Module, heads: nn.ModuleDict):
        super().__init__()
        self.student = student
        self.heads = heads
        self.supports_channels_last = getattr(student, "supports_channels_last", True)

    def forward(self, x: Tensor) -> Tensor:
        return self.student(x)


def resnet_taps(model: nn.Module) -> dict[str, object]:
    """Default taps of the CIFAR ResNet family (``resnet8..110``, ``wrn*``, ``resnet18_cifar``):
    modules ``layer1, layer2, ...`` (the stages), ``avgpool`` and ``fc`` as direct children.

    Returns ``{"stages": [layer1, ...], "middle": [middle stage], "last": [last stage],
    "pair": [layer1, layer2], "embedding": ["avgpool"]}`` (the pooled embedding fed to ``fc``).
    Any other model raises a ConfigError: pass ``student_taps=``/``teacher_taps=`` explicitly.
    """
    children = dict(model.named_children())
    stages = []
    while f"layer{len(stages) + 1}" in children:
        stages.append(f"layer{len(stages) + 1}")
    if len(stages) < 2 or "avgpool" not in children or "fc" not in children:
        raise ConfigError(f"{type(model).__name__} is not a CIFAR ResNet (children layer1, "
                          f"layer2, ..., avgpool, fc), so there are no default taps for it: pass "
                          f"student_taps= and teacher_taps= (module paths, e.g. 'features.2')")
    return {"stages": stages, "middle": [stages[len(stages) // 2]], "last": [stages[-1]],
            "pair": stages[:2], "embedding": ["avgpool"]}


def default_taps(model: nn.Module) -> dict[str, object]:
    """The model's own ``feature_taps()`` when it has one (the plain CNNs), else
    :func:`resnet_taps`."""
    own = getattr(model, "feature_taps", None)
    return own() if own is not None else resnet_taps(model)


def _as_paths(taps: str | Sequence[str]) -> list[str]:
    paths = [taps] if isinstance(taps, str) else list(taps)
    if not paths or not all(isinstance(p, str) for p in paths):
        raise ConfigError(f"taps must be a module path or a non-empty list of them, got {taps!r}")
    return paths


class FeatureDistiller(Objective):
    """Base of the feature-based methods (see the module docstring for the contract).

    Subclasses set ``name`` (the registry key), ``default_taps`` (an entry of
    :func:`resnet_taps`), ``tap_count`` (taps per side, None = any), and implement
    :meth:`feature_terms` (and :meth:`build_heads` when they learn something).

    student_taps / teacher_taps: module paths (one string or a list), paired in order; when
    only ``student_taps`` is given the teacher uses the same paths; when neither, the models'
    defaults (:func:`default_taps`: CIFAR ResNets and the plain CNNs). weights: the weight of
    each feature term, by name. ce_weight, kd_weight, temperature: the label and soft-target
    terms. input_shape: of one example, for the probe.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = "feature"  # or "relation"
    teachers: ClassVar[str] = "one"
    default_taps: ClassVar[str] = "stages"
    tap_count: ClassVar[int | None] = None
    internal_options: ClassVar[tuple[str, ...]] = ("weights",)  # set by the subclass, not users

    def __init__(self, student: nn.Module, teacher: nn.Module, *, weights: Mapping[str, float],
                 student_taps: str | Sequence[str] | None = None,
                 teacher_taps: str | Sequence[str] | None = None, ce_weight: float = 1.0,
                 kd_weight: float = 0.0, temperature: float = 4.0,
                 input_shape: Sequence[int] = (3, 32, 32)):
        check_hyperparameters(temperature)
        self.weights = {k: float(v) for k, v in weights.items()}
        for term, weight in {"ce": ce_weight, "kd": kd_weight, **self.weights}.items():
            if not weight >= 0:
                raise ConfigError(f"{self.name}: weight of {term!r} must be >= 0, got {weight}")
        self.ce_weight, self.kd_weight, self.temperature = ce_weight, kd_weight, temperature
        self.student = student
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.student_taps, self.teacher_taps = self._resolve_taps(student_taps, teacher_taps)
        self._student_tapped = TappedForward(student, self.student_taps, "student")
        self._teacher_tapped = TappedForward(teacher, self.teacher_taps, "teacher")

        s_features, t_features = self._probe(tuple(input_shape))
        device = next(student.parameters()).device
        self.heads = nn.ModuleDict(self.build_heads([f.shape for f in s_features],
                                                    [f.shape for f in t_features])).to(device)
        self.model = StudentWithHeads(student, self.heads) if len(self.heads) else student
        with torch.no_grad():
            terms = self.feature_terms([f.to(device) for f in s_features],
                                       [f.to(device) for f in t_features])
        if set(terms) != set(self.weights):
            raise ConfigError(f"{self.name}: terms {sorted(terms)} but weights for "
                              f"{sorted(self.weights)}")

    # -- what a method defines -----------------------------------------------------------------

    def build_heads(self, student_shapes: list[torch.Size],
                    teacher_shapes: list[torch.Size]) -> dict[str, nn.Module]:
        """The method's learnable modules, from the tapped feature shapes (none by default)."""
        return {}

    def feature_terms(self, student_features: list[Tensor],
                      teacher_features: list[Tensor]) -> dict[str, Tensor]:
        """The unweighted feature terms, by name (the keys of ``weights``)."""
        raise NotImplementedError

    # -- the objective -------------------------------------------------------------------------

    def _resolve_taps(self, student_taps, teacher_taps) -> tuple[list[str], list[str]]:
        if student_taps is None and teacher_taps is not None:
            raise ConfigError(f"{self.name}: teacher_taps given without student_taps")
        if student_taps is None:
            student = default_taps(self.student)[self.default_taps]
            teacher = default_taps(self.teacher)[self.default_taps]
        else:
            student = _as_paths(student_taps)
            teacher = student if teacher_taps is None else _as_paths(teacher_taps)
        if len(student) != len(teacher):
            raise ConfigError(f"{self.name}: {len(student)} student taps {student} but "
                              f"{len(teacher)} teacher taps {teacher}; pass paired taps")
        if self.tap_count is not None and len(student) != self.tap_count:
            raise ConfigError(f"{self.name} takes {self.tap_count} tap(s) per model, got "
                              f"{student} and {teacher}")
        return list(student), list(teacher)

    @torch.no_grad()
    def _probe(self, input_shape: tuple[int, ...]) -> tuple[list[Tensor], list[Tensor]]:
        was_training = self.student.training
        self.student.eval()
        try:
            return tuple(self._run(tapped, input_shape)
                         for tapped in (self._student_tapped, self._teacher_tapped))
        finally:
            self.student.train(was_training)

    @staticmethod
    def _run(tapped: TappedForward, input_shape: tuple[int, ...]) -> list[Tensor]:
        device = next(tapped.model.parameters()).device
        _, features = tapped(torch.zeros(2, *input_shape, device=device))
        wrong = [p for p, f in zip(tapped.paths, features) if not isinstance(f, Tensor)]
        if wrong:
            raise ConfigError(f"the {tapped.who}'s taps {wrong} must output one tensor each")
        return features

    def bind(self, train: Split, augmented: bool) -> None:
        self.teacher.to(train.device)

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        if getattr(model, "_orig_mod", model) is not self.model:
            raise ConfigError(f"{self.name}: train method.model ({type(self.model).__name__}: "
                              f"the student with the method's heads), not another module")
        # a torch.compile wrapper: the tapped graph is compiled instead, with its settings
        logits, s_features = self._student_tapped(batch.x, getattr(model, "dynamo_ctx", None))
        logits = logits.float()
        with torch.no_grad():
            self.teacher.eval()
            t_logits, t_features = teacher_forward(self.teacher, batch.x, self._teacher_tapped)
        t_logits = t_logits.float()

        ce = label_cross_entropy(logits, batch.y)
        kd = kd_loss(logits, t_logits, self.temperature)
        features = self.feature_terms(s_features, t_features)
        loss = self.ce_weight * ce
        if self.kd_weight:
            loss = loss + self.kd_weight * kd
        for term, value in features.items():
            loss = loss + self.weights[term] * value
        return loss, {"ce": ce, "kd": kd if self.kd_weight else kd.detach(), **features}


__all__ = ["FeatureDistiller", "StudentWithHeads", "TappedForward", "default_taps",
           "resnet_taps", "submodule", "trace_taps"]
