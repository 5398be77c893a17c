"""Zhang, Xiang, Hospedales & Lu (2018), "Deep Mutual Learning"."""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from kd.errors import ConfigError
from kd.methods.schemes import MutualLearning
from kd.train.batched import LoopedModels, StackedModels


def reinitialized(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` whose layers are re-initialized by their ``reset_parameters``, drawn
    from ``seed`` without touching the global random state."""
    peer = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in peer.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return peer


class DeepMutualLearning(MutualLearning):
    """Online distillation of Zhang et al. (2018), "Deep Mutual Learning": no teacher; the
    student and its K − 1 peers train together from scratch, each on the labels and on the
    others' current predictions,

        L_k = CE(s_k, y) + (1/(K − 1)) Σ_{j ≠ k} KL(softmax_T(s_j) ‖ softmax_T(s_k))

    (see :class:`kd.methods.schemes.MutualLearning`). ``method.model`` holds the student and its
    peers (one optimizer step updates all): a :class:`kd.train.batched.LoopedModels` (one model
    after another; the faster on a CPU) or, with ``vectorized=True``, a
    :class:`kd.train.batched.StackedModels` (vmap; peers of the student's architecture).
    :meth:`trained_student` takes the student, the first of the group, back out.
    peers: models with the student's classes (default: one copy of the student
    re-initialized with ``peer_seed``). Defaults: one peer, T = 1 (the paper's).
    """

    name = "mutual"
    family = "online"
    teachers = "none"

    def __init__(self, student: nn.Module, teacher: None = None, *,
                 peers: Sequence[nn.Module] | None = None, peer_seed: int = 1,
                 temperature: float = 1.0, vectorized: bool = False):
        if teacher is not None:
            raise ConfigError("mutual learning has no teacher: pass teacher=None")
        super().__init__(temperature)
        peers = [reinitialized(student, peer_seed)] if peers is None else list(peers)
        if not peers:
            raise ConfigError("mutual learning needs at least one peer")
        self.student = student
        group = StackedModels if vectorized else LoopedModels
        self.model = group([student, *peers])

    def trained_student(self, model: nn.Module) -> nn.Module:
        model = super().trained_student(model)  # the group, unwrapped from torch.compile
        return model.unstack([copy.deepcopy(self.student) for _ in range(len(model))])[0]
