"""Distillation losses. Each docstring gives the formula it computes; tests check it by hand.

Notation: s and t are student and teacher logits ``[N, C]``, T the temperature, y the labels,
softmax_T(z) = softmax(z / T), and KL(p ‖ q) = Σ_c p_c (log p_c − log q_c).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kd.errors import ConfigError


def _check_logits(student_logits: Tensor, teacher_logits: Tensor) -> None:
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise ConfigError(f"student and teacher logits must both be [N, C] and of one shape, got "
                          f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")


def check_hyperparameters(temperature: float, alpha: float | None = None) -> None:
    """Raise ValueError unless T > 0 and (when given) α ∈ [0, 1]."""
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}")


def soft_target_kl(student_logits: Tensor, teacher_logits: Tensor,
                   temperature: float | Tensor) -> Tensor:
    """Mean KL between the softened teacher and student distributions, without the T² factor.

        (1/N) Σ_i KL(softmax_T(t_i) ‖ softmax_T(s_i))

    Broadcasts over leading dimensions: ``student_logits`` may be ``[K, N, C]`` (K students),
    ``teacher_logits`` ``[N, C]`` and ``temperature`` a tensor ``[K]``; the result is then ``[K]``.
    Equal, up to the teacher's entropy (constant in the student), to the soft cross-entropy
    CE(softmax_T(t), softmax_T(s)), so it has the same gradient.
    """
    temperature = torch.as_tensor(temperature, dtype=torch.float32, device=student_logits.device)
    temperature = temperature.reshape(temperature.shape + (1, 1))  # over [N, C]
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean(-1)


def label_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy with the labels, (1/N) Σ_i −log softmax(s_i)[y_i].

    Broadcasts like :func:`soft_target_kl`: logits ``[K, N, C]`` give one value per student.
    """
    log_q = F.log_softmax(logits.float(), dim=-1)
    index = targets.expand(log_q.shape[:-1]).unsqueeze(-1)
    return -log_q.gather(-1, index).squeeze(-1).mean(-1)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Soft-target loss of Hinton et al. (2015), scaled by T².

        kd = T² · (1/N) Σ_i KL(softmax_T(t_i) ‖ softmax_T(s_i))

    The T² keeps the gradient's size independent of T: ∂kd/∂s_i = (T/N) (q_i − p_i), with
    q = softmax_T(s), p = softmax_T(t) (the paper's (1/T)(q − p) per example, times T²).
    The teacher's logits get no gradient.
    """
    _check_logits(student_logits, teacher_logits)
    check_hyperparameters(temperature)
    return temperature ** 2 * soft_target_kl(student_logits, teacher_logits, temperature)


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor,
                      temperature: float, alpha: float) -> Tensor:
    """Weighted sum of the label loss and the soft-target loss.

        L = (1 − α) · CE(s, y) + α · kd_loss(s, t, T)

    with CE the mean cross-entropy at temperature 1 and α ∈ [0, 1] the weight of the soft term.
    """
    ce, kd = distillation_terms(student_logits, teacher_logits, targets, temperature, alpha)
    return (1 - alpha) * ce + alpha * kd


def distillation_terms(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor,
                       temperature: float, alpha: float) -> tuple[Tensor, Tensor]:
    """The two unweighted terms of :func:`distillation_loss`, (CE, kd), for separate logging."""
    check_hyperparameters(temperature, alpha)
    _check_logits(student_logits, teacher_logits)
    if targets.shape != student_logits.shape[:1]:
        raise ConfigError(f"targets must be [N] = [{student_logits.shape[0]}], "
                          f"got {tuple(targets.shape)}")
    ce = F.cross_entropy(student_logits.float(), targets)
    return ce, kd_loss(student_logits, teacher_logits, temperature)


__all__ = ["soft_target_kl", "label_cross_entropy", "kd_loss", "distillation_loss", "distillation_terms", "check_hyperparameters"]
