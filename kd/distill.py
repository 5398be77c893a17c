"""Training objectives: what the engine minimizes on a batch.

An objective is called as ``objective(model, batch) -> (loss, {term name: value})``; every term
is logged separately by the engine. ``bind(train, augmented)`` runs once before training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd.data import Batch, Split
from kd.engine import predict
from kd.errors import ConfigError
from kd.losses import check_hyperparameters, distillation_terms


class Objective:
    """Base class: labels-only cross-entropy."""

    def bind(self, train: Split, augmented: bool) -> None:
        """Called by the engine before the first epoch."""

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        loss = F.cross_entropy(model(batch.x).float(), batch.y)
        return loss, {"ce": loss}


CrossEntropy = Objective


class Distill(Objective):
    """Response-based distillation from a fixed teacher (Hinton et al. 2015).

        L = (1 − α) · CE(s, y) + α · T² · KL(softmax_T(t) ‖ softmax_T(s))

    The teacher is put in eval mode and runs under ``torch.no_grad()``. When the transfer set is
    not augmented, its logits for the whole set are computed once in :meth:`bind` and looked up
    by example index every epoch instead of running the teacher again.
    """

    def __init__(self, teacher: nn.Module, temperature: float, alpha: float,
                 transfer_logits: Tensor | None = None):
        """transfer_logits: the teacher's logits for the whole transfer set, row i for example i,
        when the caller already has them (several students distilled from one teacher)."""
        check_hyperparameters(temperature, alpha)
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.temperature, self.alpha = temperature, alpha
        self.transfer_logits = transfer_logits
        self.cached_logits: Tensor | None = None

    def bind(self, train: Split, augmented: bool) -> None:
        if augmented:
            self.cached_logits = None
        elif self.transfer_logits is not None:
            if self.transfer_logits.shape[0] != len(train):
                raise ConfigError(f"transfer_logits has {self.transfer_logits.shape[0]} rows for "
                                  f"a transfer set of {len(train)} examples")
            self.cached_logits = self.transfer_logits.to(train.device)
        else:
            self.cached_logits = predict(self.teacher, train)

    @torch.no_grad()
    def teacher_logits(self, batch: Batch) -> Tensor:
        if self.cached_logits is not None:
            return self.cached_logits[batch.idx]
        self.teacher.eval()
        return self.teacher(batch.x).float()

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        ce, kd = distillation_terms(model(batch.x), self.teacher_logits(batch), batch.y,
                                    self.temperature, self.alpha)
        return (1 - self.alpha) * ce + self.alpha * kd, {"ce": ce, "kd": kd}
