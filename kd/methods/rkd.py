"""Park et al. (2019), "Relational Knowledge Distillation"."""

from __future__ import annotations

from torch import Tensor, nn

from kd.losses import rkd_loss
from kd.methods.base import FeatureDistiller


class RelationalKD(FeatureDistiller):
    """Relational KD of Park, Kim, Lu & Cho (2019), "Relational Knowledge Distillation".

        L = CE(s, y) + λ_D · distance + λ_A · angle

    distance and angle: the smooth-L1 mismatches of the normalized pairwise distances and of the
    triplet angle cosines of the batch's embeddings (see :func:`kd.losses.rkd_loss`), taken at
    the penultimate embedding (default: ``avgpool`` of a CIFAR ResNet, the pooled vector fed to
    ``fc``). Logged as "rkd_distance" and "rkd_angle". Defaults: λ_D = 25, λ_A = 50 (the
    paper's). Needs batches of at least 2.
    """

    name = "rkd"
    family = "relation"
    default_taps = "embedding"
    tap_count = 1

    def __init__(self, student: nn.Module, teacher: nn.Module, *, distance_weight: float = 25.0,
                 angle_weight: float = 50.0, **common):
        super().__init__(student, teacher, weights={"rkd_distance": distance_weight,
                                                    "rkd_angle": angle_weight}, **common)

    def feature_terms(self, student_features: list[Tensor],
                      teacher_features: list[Tensor]) -> dict[str, Tensor]:
        e_s, e_t = student_features[0], teacher_features[0]
        return {"rkd_distance": rkd_loss(e_s, e_t, distance_weight=1.0, angle_weight=0.0),
                "rkd_angle": rkd_loss(e_s, e_t, distance_weight=0.0, angle_weight=1.0)}
