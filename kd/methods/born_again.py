"""Furlanello, Lipton, Tschannen, Itti & Anandkumar (2018), "Born Again Neural Networks"."""

from __future__ import annotations

from torch import nn

from kd.errors import ConfigError
from kd.methods.hinton import HintonKD
from kd.models.core import state_shapes


class BornAgain(HintonKD):
    """Self-distillation of Furlanello et al. (2018), "Born Again Neural Networks": the student
    is distilled from a trained model of its own architecture (generation g + 1 from g),

        L = (1 − α) · CE(s, y) + α · T² · KL(softmax_T(t) ‖ softmax_T(s))

    Defaults: T = 1 and α = 1 (the paper's): the teacher's predictions are the only target. A
    teacher of another architecture is a ConfigError. Chains of generations:
    :func:`kd.methods.schemes.born_again`.
    """

    name = "born_again"
    family = "self"

    def __init__(self, student: nn.Module, teacher: nn.Module, *, temperature: float = 1.0,
                 alpha: float = 1.0, **options):
        if state_shapes(student) != state_shapes(teacher):
            raise ConfigError("born_again: the teacher must be a trained model of the student's "
                              "own architecture (same state-dict names and shapes)")
        super().__init__(student, teacher, temperature=temperature, alpha=alpha, **options)
