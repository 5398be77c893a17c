"""Several teachers for one student: their mean (You et al. 2017) or one drawn per step
(Fukuda et al. 2017)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from kd.methods.hinton import HintonKD
from kd.methods.schemes import RandomTeacher
from kd.models.core import Ensemble


class MeanTeacherKD(HintonKD):
    """Multi-teacher KD with the teachers' averaged soft targets, as in You, Xu, Xu & Tao
    (2017), "Learning from Multiple Teacher Networks": the mean of the members' tempered
    softmaxes is the target,

        p̄_T = (1/m) Σ_k softmax(z_k / T)
        L = (1 − α) · CE(s, y) + α · T² · KL(p̄_T ‖ softmax_T(s))

    The m teachers are one :class:`kd.models.Ensemble` at temperature T (its logits T · log p̄_T
    give back p̄_T at T), so this is :class:`HintonKD` with that teacher; its logits are cached
    when nothing is augmented. Defaults: T = 4, α = 0.9, as for ``kd``.
    """

    name = "multi_teacher"
    family = "multi-teacher"
    teachers = "several"

    def __init__(self, student: nn.Module, teacher: Sequence[nn.Module], *,
                 temperature: float = 4.0, **options):
        super().__init__(student, Ensemble(list(teacher), temperature), temperature=temperature,
                         **options)


class LogMeanTeacherKD(HintonKD):
    """Multi-teacher KD from the ensemble's predictive distribution, tempered afterwards: the
    members' softmaxes are averaged at T = 1 and the log of that mean is the teacher's logits,

        p̄ = (1/m) Σ_k softmax(z_k)
        L = (1 − α) · CE(s, y) + α · T² · KL(softmax(log p̄ / T) ‖ softmax_T(s))

    (:class:`kd.models.Ensemble` at τ = 1 as one teacher). This is not You et al.'s (2017)
    target, which averages the tempered softmaxes (``multi_teacher``); at T = 1 the two agree.
    It was this project's ``multi_teacher`` before they were told apart. Defaults: T = 4,
    α = 0.9.
    """

    name = "multi_teacher_logmean"
    family = "multi-teacher"
    teachers = "several"

    def __init__(self, student: nn.Module, teacher: Sequence[nn.Module], **options):
        super().__init__(student, Ensemble(list(teacher)), **options)


class RandomTeacherKD(HintonKD):
    """Multi-teacher KD with one teacher drawn uniformly at random for each mini-batch, as in
    Fukuda et al. (2017), "Efficient Knowledge Distillation from an Ensemble of Teachers":

        k ~ U{1..m} per step
        L = (1 − α) · CE(s, y) + α · T² · KL(softmax_T(z_k) ‖ softmax_T(s))

    The draw is seeded (``seed``), so runs repeat; the teachers run on every batch (no cached
    logits: the answer changes from step to step). Defaults: T = 4, α = 0.9, seed 0.
    """

    name = "random_teacher"
    family = "multi-teacher"
    teachers = "several"
    internal_options = ("cache_logits",)  # always False here

    def __init__(self, student: nn.Module, teacher: Sequence[nn.Module], *, seed: int = 0,
                 **options):
        chooser = RandomTeacher(list(teacher), torch.Generator().manual_seed(seed))
        super().__init__(student, chooser, cache_logits=False, **options)
