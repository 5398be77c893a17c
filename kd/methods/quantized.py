"""Polino, Pascanu & Alistarh (2018), "Model Compression via Distillation and Quantization"."""

from __future__ import annotations

from torch import Tensor, nn

from kd.data.core import Batch, Split
from kd.methods.quantize import quantize_student
from kd.train.distill import Distill, Objective
from kd.train.taps import TappedForward


class QuantizedKD(Objective):
    """Quantized distillation after Polino et al. (2018): a student with fake-quantized weights
    (``weight_bits`` per output channel) and activations (``activation_bits``), see
    :mod:`kd.methods.quantize`, trained with the straight-through estimator on

        L = (1 − α) · CE(s_q, y) + α · T² · KL(softmax_T(t) ‖ softmax_T(s_q))

    from a full-precision teacher, or on CE(s_q, y) alone when ``teacher`` is None (the
    quantized student on labels, the baseline to compare against). ``method.model`` is the
    student, quantized in place. Defaults: 4-bit weights, 8-bit activations, T = 4, α = 0.9.

    Given a ``torch.compile`` wrapper of ``method.model`` (``TrainConfig(compile=True)``), it
    compiles a ``torch.fx`` graph of the student's forward pass instead, with the wrapper's
    settings (:class:`~kd.train.taps.TappedForward` without taps): parametrize gives each
    quantized layer a class of its own, so every quantized student would add a recompilation
    of the architecture's one forward function, and after 8 (dynamo's recompile limit) the
    student would train eagerly.
    """

    name = "quantized"
    family = "quantized"
    teachers = "optional"

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, *,
                 weight_bits: int = 4, activation_bits: int | None = 8,
                 temperature: float = 4.0, alpha: float = 0.9, **distill_options):
        self.student = self.model = quantize_student(student, weight_bits, activation_bits)
        self.objective = Objective() if teacher is None else Distill(
            teacher, temperature, alpha, **distill_options)
        self._forward = TappedForward(self.student, [], "student")

    def bind(self, train: Split, augmented: bool) -> None:
        self.objective.bind(train, augmented)

    def start_epoch(self, epoch: int) -> None:
        self.objective.start_epoch(epoch)

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        compiler = getattr(model, "dynamo_ctx", None)  # a torch.compile wrapper
        if compiler is not None and getattr(model, "_orig_mod", None) is self.student:
            graph = self._forward.compiled(compiler)
            model = lambda x: graph(x)[0]  # the logits (there are no taps)
        return self.objective(model, batch)
