"""One forward pass of a frozen teacher for every objective that reads it on the same batch.

Objectives that distil from one teacher and train in lockstep on one batch stream
(:func:`kd.train.engine.fit_lockstep`) each ask the teacher for its logits, and the feature methods
for the outputs of some of its modules (their taps, :mod:`kd.train.taps`). Inside :func:`sharing`,
:func:`teacher_forward` answers them all from one pass per batch: the teacher runs once as a
graph that taps the union of every path asked for so far, and its answer is kept for as long as
the same input tensor (same object, unmodified, same autocast state) comes back. The union
grows during the first step (a new path costs one more pass then); a path that nests inside
another (``layer1`` and ``layer1.0``) cannot share a graph and is served by its objective's own.

Outside :func:`sharing` nothing is kept: each call is the objective's own pass, as before. A
teacher whose answer changes from call to call (:class:`kd.methods.schemes.RandomTeacher`, which
draws a teacher per call) sets ``stateful_forward = True`` and is always called; its members, plain
teachers, are shared.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import torch
from torch import Tensor, nn

from kd.errors import ConfigError
from kd.train.taps import TappedForward

_SHARED: contextvars.ContextVar[dict | None] = contextvars.ContextVar("kd_teacher_passes",
                                                                      default=None)


@contextlib.contextmanager
def sharing() -> Iterator[dict]:
    """Within: :func:`teacher_forward` shares each teacher's pass between its callers."""
    passes: dict[int, SharedPass] = {}
    token = _SHARED.set(passes)
    try:
        yield passes
    finally:
        _SHARED.reset(token)


def teacher_forward(teacher: nn.Module, x: Tensor, tapped: TappedForward | None = None
                    ) -> tuple[Tensor, list[Tensor]]:
    """``(logits, [feature per tapped path])`` of ``teacher`` on ``x`` (no features without
    ``tapped``, the caller's :class:`~kd.train.taps.TappedForward` of this teacher). Call it under
    ``torch.no_grad()`` with the teacher in eval mode, as every distiller does."""
    passes = _SHARED.get()
    if passes is None or getattr(teacher, "stateful_forward", False):
        return tapped(x) if tapped is not None else (teacher(x), [])
    shared = passes.get(id(teacher))
    if shared is None or shared.teacher is not teacher:
        shared = passes[id(teacher)] = SharedPass(teacher)
    return shared(x, tapped)


def _nested(a: str, b: str) -> bool:
    """One module path inside the other (``layer1`` and ``layer1.0``)."""
    return a.startswith(b + ".") or b.startswith(a + ".")


class SharedPass:
    """One teacher's pass, kept for its last input; see the module docstring."""

    def __init__(self, teacher: nn.Module):
        self.teacher = teacher
        self.paths: list[str] = []  # the union tapped so far
        self.graph: TappedForward | None = None
        self.x: Tensor | None = None  # the last input (held, so no other tensor takes its id)
        self.key: tuple | None = None
        self.logits: Tensor | None = None
        self.features: dict[str, Tensor] = {}

    def __call__(self, x: Tensor, tapped: TappedForward | None) -> tuple[Tensor, list[Tensor]]:
        wanted = list(tapped.paths) if tapped is not None else []
        if any(_nested(p, q) for p in wanted for q in self.paths):
            return tapped(x)  # cannot join the union graph
        new = [p for p in wanted if p not in self.paths]
        if new:
            self.paths += new
            self.graph, self.x = None, None  # the union changed: trace and run again
        key = self._key(x)
        if x is not self.x or key != self.key:
            self._run(x)
            self.x, self.key = x, key
        return self.logits, [self.features[p] for p in wanted]

    @staticmethod
    def _key(x: Tensor) -> tuple:
        """What else decides the answer for the same tensor: in-place changes, autocast, grad."""
        device = x.device.type
        return (x._version, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device),
                torch.is_grad_enabled())

    def _run(self, x: Tensor) -> None:
        if not self.paths:
            self.logits, self.features = self.teacher(x), {}
            return
        if self.graph is None:
            try:
                self.graph = TappedForward(self.teacher, self.paths, "teacher")
                self.graph.graph()
            except ConfigError as error:
                raise ConfigError(f"the teacher's taps {self.paths} cannot share one graph: "
                                  f"{error}") from error
        self.logits, features = self.graph(x)
        self.features = dict(zip(self.paths, features))


__all__ = ["SharedPass", "sharing", "teacher_forward"]
