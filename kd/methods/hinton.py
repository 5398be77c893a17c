"""Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network"."""

from __future__ import annotations

from torch import nn

from kd.train.distill import Distill


class HintonKD(Distill):
    """Response-based KD of Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a
    Neural Network": a thin wrapper over :class:`kd.train.distill.Distill`.

        L = (1 − α) · CE(s, y) + α · T² · KL(softmax_T(t) ‖ softmax_T(s))

    Defaults: T = 4, α = 0.9 (the usual CIFAR setting of the distillation benchmarks). Logs
    "ce" and "kd". Other keywords (``t_squared``, ``kd_until_epoch``, ``transfer_logits``) go to
    ``Distill``. No heads: ``method.model`` is the student.
    """

    name = "kd"
    family = "response"
    teachers = "one"

    def __init__(self, student: nn.Module, teacher: nn.Module, *, temperature: float = 4.0,
                 alpha: float = 0.9, **distill_options):
        super().__init__(teacher, temperature, alpha, **distill_options)
        self.student = self.model = student
