"""Tung & Mori (2019), "Similarity-Preserving Knowledge Distillation"."""

from __future__ import annotations

from torch import Tensor, nn

from kd.losses import similarity_loss
from kd.methods.base import FeatureDistiller


class SimilarityPreserving(FeatureDistiller):
    """Similarity-preserving KD of Tung & Mori (2019), "Similarity-Preserving Knowledge
    Distillation".

        L = CE(s, y) + γ · sp,   sp = ‖G_s − G_t‖²_F / b²

    with G the row-normalized b x b Gram matrix of the batch's flattened features at the last
    feature layer (default: the last stage of a CIFAR ResNet, ``layer3``, before pooling).
    Default γ = 3000, the paper's CIFAR-10 setting.
    """

    name = "sp"
    family = "relation"
    default_taps = "last"
    tap_count = 1

    def __init__(self, student: nn.Module, teacher: nn.Module, *, gamma: float = 3000.0,
                 **common):
        super().__init__(student, teacher, weights={"sp": gamma}, **common)

    def feature_terms(self, student_features: list[Tensor],
                      teacher_features: list[Tensor]) -> dict[str, Tensor]:
        return {"sp": similarity_loss(student_features[0], teacher_features[0])}
