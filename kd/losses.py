"""Distillation losses. Each docstring gives the formula it computes; tests check it by hand.

Notation: s and t are student and teacher logits ``[N, C]``, T the temperature, y the labels,
softmax_T(z) = softmax(z / T), and KL(p ‖ q) = Σ_c p_c (log p_c − log q_c).

Feature losses (hint, attention, similarity, RKD, FSP): f_s and f_t are student and teacher
features of one batch of b examples, maps ``[b, c, h, w]`` unless said otherwise (the channel
counts c may differ between student and teacher), ‖·‖ the L2 norm and ‖·‖_F the Frobenius norm.
Teacher tensors are detached: only the student (and a hint regressor) gets gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
    CE(softmax_T(t), softmax_T(s)), so it has the same gradient. A Python number T divides
    directly: no tensor is made from it (on CUDA that would be a host-to-device copy per step).
    """
    if isinstance(temperature, Tensor):
        temperature = temperature.to(student_logits.device, torch.float32)
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


def _check_batch(name: str, student: Tensor, teacher: Tensor, min_dim: int = 2) -> None:
    if student.dim() < min_dim or teacher.dim() < min_dim:
        raise ConfigError(f"{name}: student and teacher features must have at least {min_dim} "
                          f"dimensions [b, ...], got {tuple(student.shape)} and "
                          f"{tuple(teacher.shape)}")
    if student.shape[0] != teacher.shape[0]:
        raise ConfigError(f"{name}: student and teacher batch sizes differ, got "
                          f"{tuple(student.shape)} and {tuple(teacher.shape)}")


def _check_maps(name: str, student: Tensor, teacher: Tensor) -> None:
    if student.dim() != 4 or teacher.dim() != 4:
        raise ConfigError(f"{name}: feature maps must be [b, c, h, w], got "
                          f"{tuple(student.shape)} and {tuple(teacher.shape)}")
    _check_batch(name, student, teacher)


def _pool_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Adaptive average pooling of ``[..., h, w]`` to ``size``; no-op when already that size."""
    if tuple(x.shape[-2:]) == size:
        return x
    lead = x.shape[:-2]
    pooled = F.adaptive_avg_pool2d(x.reshape(-1, 1, *x.shape[-2:]), size)
    return pooled.reshape(*lead, *size)


def hint_loss(student_feature: Tensor, teacher_feature: Tensor,
              regressor: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Hint loss of FitNets (Romero et al., 2015): mean squared error after a regressor.

        hint = (1/M) Σ (r(f_s) − f_t)²

    with r the regressor (a learned module, e.g. a 1x1 convolution from the student's channels
    to the teacher's; the identity when None) and the mean over all M entries of f_t (batch,
    channels and positions). r(f_s) and f_t must have one shape. The regressor and the student
    get gradients, the teacher none.
    """
    projected = student_feature if regressor is None else regressor(student_feature)
    if projected.shape != teacher_feature.shape:
        which = "student feature" if regressor is None else "regressor(student feature)"
        raise ConfigError(f"hint_loss: {which} and teacher feature must have one shape, got "
                          f"{tuple(projected.shape)} and {tuple(teacher_feature.shape)}")
    return F.mse_loss(projected.float(), teacher_feature.detach().float())


def _attention_map(feature: Tensor, p: float, size: tuple[int, int]) -> Tensor:
    energy = _pool_to(feature.float().abs().pow(p).mean(1), size)  # [b, h, w]
    return F.normalize(energy.flatten(1), dim=1)


def attention_loss(student_feature: Tensor, teacher_feature: Tensor, p: float = 2) -> Tensor:
    """Attention transfer of Zagoruyko & Komodakis (2017).

        A(f) = vec((1/c) Σ_c |f_c|^p) / ‖vec((1/c) Σ_c |f_c|^p)‖      (one per example)
        at = (1/b) Σ_i ‖A(f_s)_i − A(f_t)_i‖²

    i.e. the squared L2 distance of the normalized attention vectors, summed over positions and
    averaged over the batch. Channel counts may differ. When the spatial sizes differ, each
    un-normalized map (1/c) Σ_c |f_c|^p (not the features) is adaptive-average-pooled to
    (min(h_s, h_t), min(w_s, w_t)), i.e. the larger map down to the smaller, before vec and the
    normalization. Invariant to scaling f_s or f_t by a positive constant. p must be > 0.
    """
    _check_maps("attention_loss", student_feature, teacher_feature)
    if not p > 0:
        raise ConfigError(f"attention_loss: p must be > 0, got {p}")
    size = (min(student_feature.shape[2], teacher_feature.shape[2]),
            min(student_feature.shape[3], teacher_feature.shape[3]))
    a_s = _attention_map(student_feature, p, size)
    a_t = _attention_map(teacher_feature.detach(), p, size)
    return (a_s - a_t).pow(2).sum(1).mean()


def _similarity(feature: Tensor) -> Tensor:
    flat = feature.float().flatten(1)
    gram = flat @ flat.T
    norm = gram.norm(dim=1, keepdim=True)
    # An all-zero example has a zero row; it stays zero, with a zero (not a 1/eps) gradient.
    return gram / norm.clamp_min(1e-12) * (norm > 0)


def similarity_loss(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """Similarity-preserving distillation of Tung & Mori (2019).

        Q = f reshaped to [b, −1],  G̃ = Q Qᵀ  [b, b],  G_i = G̃_i / ‖G̃_i‖  (each row of G̃)
        sp = ‖G_s − G_t‖²_F / b²

    As in the paper, the rows of the b x b Gram matrix are L2-normalized (not the rows of Q);
    the zero row of an all-zero example stays zero.
    Features may have any shape [b, ...] and differ between student and teacher beyond the
    batch dimension. Invariant to scaling f_s or f_t by a positive constant.
    """
    _check_batch("similarity_loss", student_feature, teacher_feature)
    g_s = _similarity(student_feature)
    g_t = _similarity(teacher_feature.detach())
    return (g_s - g_t).pow(2).sum() / student_feature.shape[0] ** 2


def _rkd_relations(embedding: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise distances over their mean non-zero value [b, b], and angle cosines [b, b, b]."""
    e = embedding.float().flatten(1)
    diff = e.unsqueeze(0) - e.unsqueeze(1)  # diff[j, i] = e_i − e_j
    squared = diff.pow(2).sum(-1)
    nonzero = squared > 0  # off the diagonal, unless two embeddings coincide
    # The clamp keeps the gradients finite where e_i = e_j; those entries are then masked out
    # (multiplied by zero), so coinciding embeddings get a zero distance, direction and gradient.
    norm = squared.clamp_min(1e-12).sqrt()
    distance = norm * nonzero
    mean = distance.sum() / nonzero.sum().clamp_min(1)
    distance = distance / mean.clamp_min(1e-12)
    unit = diff / norm.unsqueeze(-1) * nonzero.unsqueeze(-1)  # (e_i − e_j)/‖e_i − e_j‖ or 0
    cosine = unit @ unit.transpose(1, 2)  # cosine[j, i, k]: angle at e_j between e_i and e_k
    return distance, cosine


def rkd_loss(student_embedding: Tensor, teacher_embedding: Tensor,
             distance_weight: float = 25.0, angle_weight: float = 50.0) -> Tensor:
    """Relational knowledge distillation of Park et al. (2019), distance plus angle terms.

    With e the embeddings flattened to [b, −1], d_ij = ‖e_i − e_j‖ and μ the mean of the
    non-zero d_ij (the off-diagonal ones when no two embeddings coincide):

        ψ_D(i, j) = d_ij / μ
        ψ_A(i, j, k) = ⟨u_ji, u_jk⟩,  u_ji = (e_i − e_j)/‖e_i − e_j‖  (0 when e_i = e_j)
        distance = (1/b²) Σ_{i,j} ℓ(ψ_D^s(i, j) − ψ_D^t(i, j))
        angle = (1/b³) Σ_{i,j,k} ℓ(ψ_A^s(i, j, k) − ψ_A^t(i, j, k))
        rkd = distance_weight · distance + angle_weight · angle

    ℓ is the smooth-L1 (Huber) loss, ℓ(x) = x²/2 for |x| < 1 and |x| − 1/2 otherwise; the means
    run over all b² pairs and b³ triplets, degenerate ones included (there both sides agree:
    ψ_D = 0 on the diagonal, ψ_A = 0 when i = j or k = j, 1 when i = k ≠ j). The paper's
    defaults are 25 and 50. Invariant to scaling either embedding. Needs b ≥ 2.
    """
    _check_batch("rkd_loss", student_embedding, teacher_embedding)
    if student_embedding.shape[0] < 2:
        raise ConfigError(f"rkd_loss: needs a batch of at least 2 embeddings, got "
                          f"{tuple(student_embedding.shape)}")
    if not (distance_weight >= 0 and angle_weight >= 0):
        raise ConfigError(f"rkd_loss: weights must be >= 0, got distance_weight="
                          f"{distance_weight} and angle_weight={angle_weight}")
    d_s, a_s = _rkd_relations(student_embedding)
    with torch.no_grad():
        d_t, a_t = _rkd_relations(teacher_embedding.detach())
    distance = F.smooth_l1_loss(d_s, d_t)
    angle = F.smooth_l1_loss(a_s, a_t)
    return distance_weight * distance + angle_weight * angle


def _fsp_matrix(name: str, pair: Sequence[Tensor], detach: bool = False) -> Tensor:
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise ConfigError(f"fsp_loss: {name} features must be a pair (f1, f2) of maps, "
                          f"got {type(pair).__name__}")
    first, second = (f.detach() for f in pair) if detach else pair
    _check_maps(f"fsp_loss ({name} pair)", first, second)
    size = (min(first.shape[2], second.shape[2]), min(first.shape[3], second.shape[3]))
    first, second = _pool_to(first.float(), size), _pool_to(second.float(), size)
    return first.flatten(2) @ second.flatten(2).transpose(1, 2) / (size[0] * size[1])


def fsp_loss(student_features: Sequence[Tensor], teacher_features: Sequence[Tensor]) -> Tensor:
    """Flow-of-solution-procedure loss of Yim et al. (2017), for one pair of layers.

    For a pair of maps f1 [b, c1, h, w] and f2 [b, c2, h, w] the FSP matrix is

        G_ij = (1/(h·w)) Σ_{x,y} f1_i(x, y) f2_j(x, y)      [b, c1, c2]
        fsp = (1/b) Σ_n ‖G_s,n − G_t,n‖²_F

    i.e. the squared differences summed over the c1·c2 entries and averaged over the batch.
    When f1 and f2 of a pair differ in size, both are adaptive-average-pooled to
    (min(h1, h2), min(w1, w2)) (the larger down to the smaller) first. The student's and the
    teacher's pairs need the same (c1, c2), not the same spatial size.
    """
    g_s = _fsp_matrix("student", student_features)
    g_t = _fsp_matrix("teacher", teacher_features, detach=True)
    if g_s.shape != g_t.shape:
        raise ConfigError(f"fsp_loss: student and teacher FSP matrices must have one shape "
                          f"[b, c1, c2], got {tuple(g_s.shape)} and {tuple(g_t.shape)}")
    return (g_s - g_t).pow(2).sum((1, 2)).mean()


__all__ = ["soft_target_kl", "label_cross_entropy", "kd_loss", "distillation_loss",
           "distillation_terms", "check_hyperparameters", "hint_loss", "attention_loss",
           "similarity_loss", "rkd_loss", "fsp_loss"]
