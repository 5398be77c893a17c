"""Metrics computed from logits, all on the device, returning Python numbers or tensors.

p = softmax(teacher logits), q = softmax(student logits), n = number of examples.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from kd.errors import ConfigError


def error_count(logits: Tensor, labels: Tensor) -> int | list:
    """Σ 1[argmax logits ≠ y]; logits ``[K, N, C]`` of K models give a list of K counts."""
    return (logits.argmax(-1) != labels).sum(-1).tolist()


def accuracy(logits: Tensor, labels: Tensor) -> float | list:
    """(1/n) Σ 1[argmax logits = y]; logits ``[K, N, C]`` of K models give a list of K."""
    errors = torch.as_tensor(error_count(logits, labels), dtype=torch.float64)
    return (1.0 - errors / labels.numel()).tolist()


def per_class_errors(logits: Tensor, labels: Tensor, num_classes: int | None = None) -> Tensor:
    """Errors among the examples of each true class: ``out[c] = Σ_{i: y_i = c} 1[ŷ_i ≠ c]``."""
    num_classes = logits.shape[1] if num_classes is None else num_classes
    wrong = (logits.argmax(1) != labels).long()
    return torch.zeros(num_classes, dtype=torch.long, device=labels.device).scatter_add_(
        0, labels, wrong)


def agreement(student_logits: Tensor, teacher_logits: Tensor) -> float:
    """Top-1 agreement: (1/n) Σ 1[argmax teacher = argmax student]."""
    return float((student_logits.argmax(1) == teacher_logits.argmax(1)).float().mean())


def predictive_kl(teacher_logits: Tensor, student_logits: Tensor) -> float:
    """Predictive KL: (1/n) Σ KL(p_teacher ‖ p_student), in nats."""
    log_p = F.log_softmax(teacher_logits.float(), 1)
    log_q = F.log_softmax(student_logits.float(), 1)
    return float((log_p.exp() * (log_p - log_q)).sum(1).mean())


def expected_calibration_error(logits: Tensor, labels: Tensor, bins: int = 15) -> float:
    """ECE with equal-width confidence bins: Σ_b (|B_b|/n) |acc(B_b) − conf(B_b)|.

    Confidence is the top softmax probability; bin b holds confidences in ((b−1)/bins, b/bins].
    """
    confidence, prediction = F.softmax(logits.float(), 1).max(1)
    correct = (prediction == labels).float()
    bin_index = (confidence * bins).ceil().long().clamp(1, bins) - 1
    conf_sum = torch.zeros(bins, device=logits.device).scatter_add_(0, bin_index, confidence)
    acc_sum = torch.zeros(bins, device=logits.device).scatter_add_(0, bin_index, correct)
    return float((acc_sum - conf_sum).abs().sum() / labels.numel())


def shift_logits(logits: Tensor, classes: Sequence[int], delta: float) -> Tensor:
    """Add ``delta`` to the logits (i.e. to the output bias) of the given classes."""
    shifted = logits.clone()
    shifted[:, list(classes)] += delta
    return shifted


def fit_logit_shift(logits: Tensor, labels: Tensor, classes: Sequence[int],
                    grid: Tensor | None = None) -> float:
    """The shift of the given classes' logits that makes the fewest errors on (logits, labels).

    Searches ``grid`` (default −20 to 20 in steps of 0.1); among equally good shifts it returns
    the one closest to 0, so a shift is only made when it helps.
    """
    if not list(classes):
        raise ConfigError("fit_logit_shift needs at least one class to shift")
    grid = torch.linspace(-20, 20, 401) if grid is None else grid
    grid = grid[grid.abs().argsort(stable=True)]  # ties go to the smallest |shift|
    errors = torch.stack([torch.tensor(error_count(shift_logits(logits, classes, float(d)), labels))
                          for d in grid])
    return round(float(grid[int(errors.argmin())]), 6)


def ensemble_log_probs(logits: Tensor | Sequence[Tensor]) -> Tensor:
    """Log of an ensemble's predictive distribution, the mean of its members' softmaxes.

        log p̄_c = log (1/m) Σ_k softmax(z_k)_c = logsumexp_k log_softmax(z_k)_c − log m

    logits: m tensors ``[N, C]`` or one stacked ``[m, N, C]``; returns ``[N, C]``. Computed in
    log space (logsumexp), so members that are very sure of different classes do not underflow.
    For m = 1 it is log_softmax(z). The result is a valid set of logits: softmax(log p̄) = p̄.
    """
    import math

    stacked = logits if isinstance(logits, Tensor) else (
        torch.stack(list(logits)) if len(logits) else torch.empty(0))
    if stacked.dim() != 3 or stacked.shape[0] < 1:
        raise ConfigError(f"ensemble_log_probs needs m >= 1 logits [N, C] or one [m, N, C], got "
                          f"{tuple(stacked.shape)}")
    log_probs = F.log_softmax(stacked.float(), dim=-1)
    return torch.logsumexp(log_probs, dim=0) - math.log(stacked.shape[0])


def loss_plateau(losses: Sequence[float], fraction: float = 0.1) -> float | None:
    """How much the training loss still fell at the end of a run: the relative drop from the
    mean loss of the second-to-last ``fraction`` of the epochs to the mean of the last one,

        (mean(previous window) − mean(last window)) / mean(last window).

    A teacher counts as trained to a plateau when this is below ``PLATEAU_DROP`` (the studies'
    stated criterion). None when there are fewer than two epochs per window pair. An epoch's
    entry that is a list (a stack of models) counts by its first model, the student."""
    losses = [loss[0] if isinstance(loss, (list, tuple)) else loss for loss in losses]
    width = max(1, int(len(losses) * fraction))
    if len(losses) < 2 * width or len(losses) < 2:
        return None
    last = sum(losses[-width:]) / width
    previous = sum(losses[-2 * width:-width]) / width
    return (previous - last) / last if last > 0 else None


PLATEAU_DROP = 0.05  # < 5 % lower over the last tenth of the epochs: plateaued
