"""Training objectives: what the engine minimizes on a batch.

An objective is called as ``objective(model, batch) -> (loss, {term name: value})``; every term
is logged separately by the engine. ``bind(train, augmented)`` runs once before training.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from kd.data.core import Batch, Split
from kd.errors import ConfigError
from kd.losses import check_hyperparameters, label_cross_entropy, soft_target_kl
from kd.train.engine import predict
from kd.train.teacher_pass import teacher_forward


class Objective:
    """Base class: labels-only cross-entropy (one value per student for a stack of K)."""

    def bind(self, train: Split, augmented: bool) -> None:
        """Called by the engine before the first epoch."""

    def start_epoch(self, epoch: int) -> None:
        """Called by the engine before each epoch (the first is 1)."""

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        loss = label_cross_entropy(model(batch.x), batch.y)
        return loss, {"ce": loss}

    def trained_student(self, model: nn.Module) -> nn.Module:
        """The student inside the trained ``model`` (without a method's heads or peers, and
        without a ``torch.compile`` wrapper)."""
        model = getattr(model, "_orig_mod", model)
        return getattr(model, "student", model)


CrossEntropy = Objective


def gather_rows(logits: Tensor, idx: Tensor) -> Tensor:
    """Rows ``idx`` of a transfer set's logits: ``logits`` ``[M, C]`` (one teacher) or ``[K, M, C]``
    (member k's own teacher), ``idx`` ``[N]`` (a batch shared by all) or ``[K, N]`` (one batch
    per member, :func:`kd.data.iterate_member_batches`)."""
    if idx.dim() == 1:
        return logits[..., idx, :]
    if logits.dim() == 2:
        return logits[idx]
    return logits[torch.arange(len(idx), device=idx.device)[:, None], idx]


class Distill(Objective):
    """Response-based distillation from a fixed teacher (Hinton et al. 2015).

        L = (1 − α) · CE(s, y) + α · w · KL(softmax_T(t) ‖ softmax_T(s)),   w = T² (or 1)

    ``t_squared=False`` drops the T² (w = 1), as some papers and tutorials do; the KD term's
    gradient then shrinks like 1/T. For a :class:`kd.train.batched.StackedModels` of K students pass
    ``temperature``, ``alpha`` and ``t_squared`` as sequences of length K (a number is shared
    by all): the loss is then the vector of the K students' losses.

    ``kd_until_epoch=E`` stops the soft term after epoch E (Cho & Hariharan 2019's early-stopped
    knowledge distillation): from epoch E + 1 the student trains on CE alone, and the teacher is
    no longer run.

    The teacher is put in eval mode, moved to the transfer set's device in :meth:`bind`, and
    runs under ``torch.no_grad()``. When the transfer set is
    not augmented, its logits for the whole set are computed once in :meth:`bind` and looked up
    by example index every epoch instead of running the teacher again. The teacher may be a
    :class:`kd.train.batched.StackedModels` of K teachers, student k's own (logits ``[K, N, C]``),
    for a stack of K students that each distil from their own.
    """

    def __init__(self, teacher: nn.Module, temperature: float | Sequence[float],
                 alpha: float | Sequence[float], *, t_squared: bool | Sequence[bool] = True,
                 transfer_logits: Tensor | None = None, kd_until_epoch: int | None = None,
                 cache_logits: bool = True):
        """transfer_logits: the teacher's logits for the whole transfer set, row i for example i,
        when the caller already has them (several students distilled from one teacher).
        cache_logits=False runs the teacher on every batch even when nothing is augmented (a
        teacher whose answer changes from step to step, such as one drawn at random)."""
        self.temperature, self.alpha, t_squared = torch.broadcast_tensors(
            torch.as_tensor(temperature, dtype=torch.float32),
            torch.as_tensor(alpha, dtype=torch.float32), torch.as_tensor(t_squared))
        if self.temperature.dim() > 1:
            raise ConfigError("temperature, alpha and t_squared must be numbers or 1-D sequences")
        for t, a in zip(self.temperature.reshape(-1).tolist(), self.alpha.reshape(-1).tolist()):
            check_hyperparameters(t, a)
        self.kd_weight = torch.where(t_squared, self.temperature ** 2, 1.0)
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.transfer_logits = transfer_logits
        self.cached_logits: Tensor | None = None
        if kd_until_epoch is not None and kd_until_epoch < 0:
            raise ConfigError(f"kd_until_epoch must be >= 0, got {kd_until_epoch}")
        self.kd_until_epoch, self.kd_active = kd_until_epoch, True
        self.cache_logits = cache_logits

    def start_epoch(self, epoch: int) -> None:
        self.kd_active = self.kd_until_epoch is None or epoch <= self.kd_until_epoch

    def bind(self, train: Split, augmented: bool) -> None:
        device = train.device
        self.teacher.to(device)
        self.temperature, self.alpha, self.kd_weight = (
            t.to(device) for t in (self.temperature, self.alpha, self.kd_weight))
        if augmented or not self.cache_logits:
            self.cached_logits = None
        elif self.transfer_logits is not None:
            if self.transfer_logits.shape[-2] != len(train):
                raise ConfigError(f"transfer_logits has {self.transfer_logits.shape[-2]} rows for "
                                  f"a transfer set of {len(train)} examples")
            self.cached_logits = self.transfer_logits.to(device)
        else:
            self.cached_logits = predict(self.teacher, train)

    @torch.no_grad()
    def teacher_logits(self, batch: Batch) -> Tensor:
        if self.cached_logits is not None:
            return gather_rows(self.cached_logits, batch.idx)
        self.teacher.eval()
        return teacher_forward(self.teacher, batch.x)[0].float()

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        if not self.kd_active:
            return super().__call__(model, batch)
        logits, teacher_logits = model(batch.x).float(), self.teacher_logits(batch)
        # K students: K settings of alpha and T, or K teachers (a stack, member k's own), or both
        members = {len(self.alpha)} if self.alpha.dim() else set()
        members |= {teacher_logits.shape[0]} if teacher_logits.dim() == 3 else set()
        if len(members) > 1 or logits.shape != (*members, *teacher_logits.shape[-2:]):
            raise ConfigError(f"student logits {tuple(logits.shape)} do not fit the teacher's "
                              f"{tuple(teacher_logits.shape)} and {self.alpha.numel()} "
                              f"setting(s) of alpha and T")
        ce = label_cross_entropy(logits, batch.y)
        kd = self.kd_weight * soft_target_kl(logits, teacher_logits, self.temperature)
        return (1 - self.alpha) * ce + self.alpha * kd, {"ce": ce, "kd": kd}
