"""Distillation schemes beyond one fixed teacher: online (mutual) learning, a teacher drawn at
random per step from several, and self-distillation over born-again generations.

* :class:`MutualLearning` (Zhang et al. 2018, deep mutual learning): K students train together,
  each on the labels and on the others' current predictions,

      L_k = CE(s_k, y) + (1/(K − 1)) Σ_{j ≠ k} KL(softmax(s_j) ‖ softmax(s_k)),

  the peers' predictions held fixed (detached) in student k's term. The K students are one
  :class:`kd.train.batched.StackedModels` or :class:`kd.train.batched.LoopedModels`, so one step
  updates all of them.
* :class:`RandomTeacher` (one of the multi-teacher schemes in Gou et al. 2021's survey): each
  forward pass asks one teacher, drawn uniformly from its generator; an average teacher is
  :class:`kd.models.Ensemble` (the log of the mean of the softmaxes).
* :func:`born_again` (Furlanello et al. 2018): generation g + 1, of the teacher's own
  architecture, is distilled from generation g; generation 0 is the given teacher.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from kd.data.core import Batch, Split
from kd.errors import ConfigError
from kd.losses import label_cross_entropy, soft_target_kl
from kd.train import engine
from kd.train.distill import Distill, Objective
from kd.train.engine import TrainConfig
from kd.train.teacher_pass import teacher_forward


class MutualLearning(Objective):
    """Deep mutual learning of the K students of a stacked model (logits ``[K, N, C]``).

    ``temperature`` softens the peers' and the student's predictions in the KL term (1 in the
    paper). The loss is the vector of the K students' losses; "ce" and "kl" are logged per
    student.
    """

    def __init__(self, temperature: float = 1.0):
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        logits = model(batch.x).float()
        if logits.dim() != 3 or logits.shape[0] < 2:
            raise ConfigError(f"mutual learning needs a group of at least 2 students (a "
                              f"StackedModels or LoopedModels: logits [K, N, C]), got logits "
                              f"{tuple(logits.shape)}")
        k = logits.shape[0]
        ce = label_cross_entropy(logits, batch.y)
        peers = logits.detach()
        # kl[j, k] = KL(peer j ‖ student k); the diagonal (a student and itself) is zero
        kl = soft_target_kl(logits.unsqueeze(0), peers.unsqueeze(1), self.temperature)
        kl_to_peers = kl.sum(0) / (k - 1)
        return ce + kl_to_peers, {"ce": ce, "kl": kl_to_peers}


class RandomTeacher(nn.Module):
    """Several teachers behind one forward: each call returns the logits of one teacher, drawn
    uniformly at random from ``generator`` (a CPU generator, seeded, so runs repeat).

    The draws are made ``DRAWS_AT_ONCE`` at a time: the same sequence as one draw per call (the
    CPU generator fills a tensor element by element), but no call reads a tensor back.
    """

    DRAWS_AT_ONCE = 256
    stateful_forward = True  # never shared by kd.train.teacher_pass: each call draws anew

    def __init__(self, teachers: Sequence[nn.Module], generator: torch.Generator | None = None):
        super().__init__()
        if not teachers:
            raise ConfigError("RandomTeacher needs at least one teacher")
        self.teachers = nn.ModuleList(teachers)
        self.generator = generator or torch.Generator().manual_seed(0)
        self.last_choice: int | None = None
        self._draws: list[int] = []  # the next choices, last one first

    def get_extra_state(self) -> dict:
        """The draws to come, for a training snapshot to resume them (:mod:`kd.train.snapshot`)."""
        return {"generator": self.generator.get_state(), "draws": list(self._draws)}

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self._draws = list(state["draws"])

    def forward(self, x: Tensor) -> Tensor:
        if not self._draws:
            draws = torch.randint(len(self.teachers), (self.DRAWS_AT_ONCE,),
                                  generator=self.generator)
            self._draws = draws.flip(0).tolist()
        self.last_choice = self._draws.pop()
        return teacher_forward(self.teachers[self.last_choice], x)[0]


def born_again(teacher: nn.Module, new_student: Callable[[], nn.Module], generations: int,
               train: Split, config: TrainConfig, *, temperature: float = 1.0,
               alpha: float = 1.0, seed: int = 0, augment=None,
               eval_sets: dict[str, Split] | None = None) -> list[tuple[nn.Module, list]]:
    """Train ``generations`` born-again students, each distilled from the one before.

    new_student: builds a fresh model (placed on the device) for each generation. Returns
    ``[(model, history), ...]`` for generations 1 .. n. Defaults follow the paper: the soft
    term alone (α = 1) at T = 1.
    """
    if generations < 1:
        raise ConfigError(f"born_again needs at least one generation, got {generations}")
    out, current = [], teacher
    for generation in range(1, generations + 1):
        engine.seed_everything(seed + generation)
        student = new_student()
        fitted = engine.fit(student, train, Distill(current, temperature, alpha), config,
                            seed=seed + generation, augment=augment, eval_sets=eval_sets,
                            desc=f"born-again generation {generation}")
        out.append((student, fitted.history))
        current = student
    return out


__all__ = ["MutualLearning", "RandomTeacher", "born_again"]
