"""Label smoothing (Szegedy et al. 2016) as a control for KD: a softened target of the same
strength as KD's, with no teacher signal per example (kd-repro issue 28)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd.data.core import Batch, Split
from kd.errors import ConfigError
from kd.losses import check_hyperparameters, label_cross_entropy
from kd.train.distill import Objective
from kd.train.engine import predict


def smoothing_epsilon(teacher_logits: Tensor, labels: Tensor, alpha: float,
                      temperature: float) -> float:
    """The ε whose smoothed target puts KD's mean mass off the label there, for the teacher's
    logits ``[N, C]`` on N examples with labels ``[N]``:
    ε · (C − 1)/C = α · (1/N) Σ_i (1 − softmax(t_i / T)[y_i])."""
    check_hyperparameters(temperature, alpha)
    p_label = F.softmax(teacher_logits.float() / temperature, dim=-1).gather(1, labels[:, None])
    classes = teacher_logits.shape[-1]
    return min(1.0, alpha * (1 - p_label).mean().item() * classes / (classes - 1))


class LabelSmoothing(Objective):
    """Label smoothing of Szegedy, Vanhoucke, Ioffe, Shlens & Wojna (2016), "Rethinking the
    Inception Architecture for Computer Vision", as a control for KD (Müller, Kornblith &
    Hinton 2019 compare the two): the student learns from one fixed target per label,

        q = (1 − ε) · onehot(y) + ε · u,   u = 1/C on each of the C classes (the label included)
        L = −Σ_c q_c · log softmax(s)_c

    computed by torch's ``F.cross_entropy(s, y, label_smoothing=ε)``, which defines u so.
    No teacher signal reaches any example. A teacher sets ε once, before training (in
    :meth:`bind`, from its logits on the unaugmented training images), so that q moves as much
    mass off the label as KD's target (1 − α) · onehot(y) + α · softmax(t / T) does on average;
    as u includes the label, q puts ε · (C − 1)/C there, so

        ε = C/(C − 1) · α · (1/N) Σ_i (1 − softmax(t_i / T)[y_i])   (:func:`smoothing_epsilon`)

    and "KD minus label smoothing" is the part of KD that is per-example knowledge.
    Or ``epsilon=`` gives ε directly, with no teacher (a teacher and ``epsilon`` together are
    a ConfigError). Defaults: α = 0.9 and T = 4, those of ``kd``. Logs "ce" (the plain
    cross-entropy with the labels; the loss is the smoothed one). ``method.model`` is the
    student; after :meth:`bind`, ``method.epsilon`` is the ε it trains with.
    """

    name = "label_smoothing"
    family = "control"
    teachers = "optional"

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, *,
                 epsilon: float | None = None, alpha: float = 0.9, temperature: float = 4.0):
        check_hyperparameters(temperature, alpha)
        if (teacher is None) == (epsilon is None):
            raise ConfigError("label_smoothing: give a teacher (epsilon is then set from it) or "
                              "epsilon=, not both and not neither")
        if epsilon is not None and not 0.0 <= epsilon <= 1.0:
            raise ConfigError(f"label_smoothing: epsilon must be in [0, 1], got {epsilon}")
        self.student = self.model = student
        self.teacher = None if teacher is None else teacher.eval()
        for p in self.teacher.parameters() if teacher is not None else ():
            p.requires_grad_(False)
        self.epsilon, self.alpha, self.temperature = epsilon, alpha, temperature

    def bind(self, train: Split, augmented: bool) -> None:
        if self.teacher is not None:  # the unaugmented images, whatever the batches will be
            logits = predict(self.teacher.to(train.device), train)
            self.epsilon = smoothing_epsilon(logits, train.labels, self.alpha, self.temperature)

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        logits = model(batch.x).float()
        loss = F.cross_entropy(logits, batch.y, label_smoothing=self.epsilon)
        with torch.no_grad():
            ce = label_cross_entropy(logits, batch.y)
        return loss, {"ce": ce}
