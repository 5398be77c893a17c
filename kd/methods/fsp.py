"""Yim, Joo, Bae & Kim (2017), "A Gift from Knowledge Distillation"."""

from __future__ import annotations

from torch import Tensor, nn

from kd.losses import fsp_loss
from kd.methods.base import FeatureDistiller


class FlowOfSolution(FeatureDistiller):
    """FSP-matrix distillation of Yim, Joo, Bae & Kim (2017), "A Gift from Knowledge
    Distillation: Fast Optimization, Network Minimization and Transfer Learning".

        G_ij = (1/(h·w)) Σ_{x,y} f1_i(x, y) f2_j(x, y),   fsp = (1/b) Σ_n ‖G_s,n − G_t,n‖²_F
        L = CE(s, y) + λ · fsp

    for one ordered pair of taps (f1, f2) per model (default: ``layer1`` and ``layer2`` of a CIFAR
    ResNet; maps of different sizes are pooled to the smaller); student and teacher need the
    same channel counts (c1, c2). The paper minimizes the FSP loss in a first stage and then
    trains on the labels; this is the one-stage variant. Default λ = 0.01: the paper weights its
    FSP pairs equally and gives no weight for a joint CE + FSP objective, so this is ours. With
    λ = 1 the FSP term (about 200 at the start for ResNet-14 -> ResNet-8, a sum over 16 x 32
    entries) collapsed both students of our first quick run to chance; λ = 0.1 trained slowly
    and λ = 0.01 like the scratch student (training CE). Tune it for other taps.
    """

    name = "fsp"
    family = "relation"
    default_taps = "pair"
    tap_count = 2

    def __init__(self, student: nn.Module, teacher: nn.Module, *, lam: float = 0.01, **common):
        super().__init__(student, teacher, weights={"fsp": lam}, **common)

    def feature_terms(self, student_features: list[Tensor],
                      teacher_features: list[Tensor]) -> dict[str, Tensor]:
        return {"fsp": fsp_loss(student_features, teacher_features)}
