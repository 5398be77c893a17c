"""Romero et al. (2015), "FitNets: Hints for Thin Deep Nets"."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kd.errors import ConfigError
from kd.losses import hint_loss
from kd.methods.base import FeatureDistiller


class FitNets(FeatureDistiller):
    """Hint training of Romero et al. (2015), "FitNets: Hints for Thin Deep Nets", one stage.

        L = CE(s, y) + β · hint,   hint = (1/M) Σ (r(f_s) − f_t)²

    f_s, f_t: the student's guided layer and the teacher's hint layer (one tap each; default the
    middle stage of a CIFAR ResNet, ``layer2``), r a learned 1x1 convolution (with bias) from the
    student's channels to the teacher's, the mean over all M entries of f_t. The maps must have
    one spatial size. The paper trains the hint first and then KD; this is the common one-stage
    variant. Default β = 10. Tian et al.'s (2020) CRD benchmark uses β = 100, but with our plain
    1x1 regressor (no batch norm) and lr 0.1 that weight made the hint term 99 % of the loss and
    collapsed ResNet-14 -> ResNet-8 students to chance (training CE stuck at ln 10) in both
    seeds of our first quick run; β = 10 and 1 trained (CE falling like the scratch student's).
    The regressor is the head ``"regressor"``, trained through ``method.model``.
    """

    name = "fitnets"
    default_taps = "middle"
    tap_count = 1

    def __init__(self, student: nn.Module, teacher: nn.Module, *, beta: float = 10.0, **common):
        super().__init__(student, teacher, weights={"hint": beta}, **common)

    def build_heads(self, student_shapes, teacher_shapes) -> dict[str, nn.Module]:
        (s,), (t,) = student_shapes, teacher_shapes
        if len(s) != 4 or len(t) != 4 or s[2:] != t[2:]:
            raise ConfigError(f"fitnets: the tapped maps must be [b, c, h, w] of one spatial "
                              f"size, got {tuple(s)} and {tuple(t)}")
        return {"regressor": nn.Conv2d(s[1], t[1], kernel_size=1)}

    def feature_terms(self, student_features: list[Tensor],
                      teacher_features: list[Tensor]) -> dict[str, Tensor]:
        return {"hint": hint_loss(student_features[0], teacher_features[0],
                                  self.heads["regressor"])}
