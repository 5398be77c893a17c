"""Training: the loop (:func:`fit`, :class:`TrainConfig`, :func:`predict`), the distillation
objective (:class:`Distill`), and what makes many trainings cheap.

- :mod:`kd.train.engine`: ``fit``, ``fit_lockstep`` (several models on the same batches, each
  teacher's pass shared), ``predict``, devices and precision (fp32 or bf16 autocast);
- :mod:`kd.train.distill`: ``Objective``, ``CrossEntropy``, ``Distill`` (Hinton et al.'s loss);
- :mod:`kd.train.batched`: ``StackedModels`` (K models of one architecture as one, vmapped),
  ``GroupedModels``, ``LoopedModels``;
- :mod:`kd.train.taps`: a model's intermediate features by module path (``torch.fx``);
- :mod:`kd.train.teacher_pass`: one teacher pass shared by the objectives of a lockstep.

``kd.train.batched`` is not imported here: it imports :mod:`kd.models`, which imports this
package (import it as ``kd.train.batched``).
"""

from kd.train.distill import CrossEntropy, Distill, Objective
from kd.train.engine import (FitResult, TrainConfig, fit, fit_lockstep, predict, prepare_model,
                             resolve_device, resolve_precision)

__all__ = ["CrossEntropy", "Distill", "FitResult", "Objective", "TrainConfig", "fit",
           "fit_lockstep", "predict", "prepare_model", "resolve_device", "resolve_precision"]
