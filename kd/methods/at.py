"""Zagoruyko & Komodakis (2017), "Paying More Attention to Attention"."""

from __future__ import annotations

from torch import Tensor, nn

from kd.losses import attention_loss
from kd.methods.base import FeatureDistiller


class AttentionTransfer(FeatureDistiller):
    """Activation-based attention transfer of Zagoruyko & Komodakis (2017), "Paying More
    Attention to Attention: Improving the Performance of CNNs via Attention Transfer".

        L = CE(s, y) + β · at,   at = Σ_j attention_loss(f_s,j, f_t,j; p) / (h_j · w_j)

    over the matched tap pairs j (default: every stage of a CIFAR ResNet, layer1..layer3), with
    h_j × w_j the size of the compared attention maps; attention_loss sums the squared
    differences of the normalized maps over positions and averages over the batch, so each pair
    contributes the mean over batch and positions. Defaults: β = 1000 and p = 2, the paper's
    CIFAR setting (β = 10³ divided by the number of elements of the attention map and the batch
    size), as also used by the CRD benchmark.
    """

    name = "at"
    default_taps = "stages"

    def __init__(self, student: nn.Module, teacher: nn.Module, *, beta: float = 1000.0,
                 p: float = 2.0, **common):
        self.p = p
        super().__init__(student, teacher, weights={"at": beta}, **common)

    def feature_terms(self, student_features: list[Tensor],
                      teacher_features: list[Tensor]) -> dict[str, Tensor]:
        total = 0
        for f_s, f_t in zip(student_features, teacher_features):
            positions = min(f_s.shape[2], f_t.shape[2]) * min(f_s.shape[3], f_t.shape[3])
            total = total + attention_loss(f_s, f_t, self.p) / positions
        return {"at": total}
