"""Models. The contract: ``model(x)`` returns logits ``[N, C]``; intermediate features are named
submodules, reachable with ``torchvision.models.feature_extraction`` (no model needs editing).
A model may define ``post_step()``, which the engine calls after every optimizer step (used for
weight constraints such as max-norm).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from kd.errors import ConfigError
from kd.train.teacher_pass import teacher_forward


class MLP(nn.Module):
    """Fully connected ReLU network ``in -> hidden[0] -> ... -> num_classes``.

    input_dropout / hidden_dropout: dropout rates on the input and on each hidden layer's output.
    max_norm: if set, after each step every unit's incoming weight vector is rescaled to have
    L2 norm at most ``max_norm`` (the constraint of Srivastava et al. 2014 used with dropout).
    Hidden layers are named ``hidden1``, ``hidden2``, ...; the output layer ``classifier``.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int = 10, *,
                 input_dropout: float = 0.0, hidden_dropout: float = 0.0,
                 max_norm: float | None = None):
        super().__init__()
        for rate in (input_dropout, hidden_dropout):
            if not 0.0 <= rate < 1.0:
                raise ConfigError(f"dropout rate must be in [0, 1), got {rate}")
        if any(w < 1 for w in hidden):
            raise ConfigError(f"hidden widths must be positive, got {list(hidden)}")
        if max_norm is not None and max_norm <= 0:
            raise ConfigError(f"max_norm must be positive, got {max_norm}")
        self.max_norm = max_norm
        self.flatten = nn.Flatten()
        self.input_dropout = nn.Dropout(input_dropout)
        widths = [in_features, *hidden]
        for i, (n_in, n_out) in enumerate(zip(widths, widths[1:]), start=1):
            self.add_module(f"hidden{i}", nn.Sequential(
                nn.Linear(n_in, n_out), nn.ReLU(inplace=True), nn.Dropout(hidden_dropout)))
        self.classifier = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_dropout(self.flatten(x))
        for name, module in self.named_children():
            if name.startswith("hidden"):
                x = module(x)
        return self.classifier(x)

    @torch.no_grad()
    def post_step(self) -> None:
        if self.max_norm is None:
            return
        for module in self.modules():
            if isinstance(module, nn.Linear):
                # Each row of the weight is one unit's incoming weights.
                module.weight.copy_(torch.renorm(module.weight, p=2, dim=0, maxnorm=self.max_norm))


MODELS: dict[str, Callable[..., nn.Module]] = {"mlp": MLP}
"""Model constructors by name; :mod:`kd.models.cifar` registers its architectures here
(``kd/models/__init__.py`` imports it, so the registry is complete once ``kd.models`` is)."""


def build_model(name: str, **kwargs) -> nn.Module:
    try:
        return MODELS[name](**kwargs)
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; known: {sorted(MODELS)}") from None


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) for 28x28 images, with ReLU and max-pooling:

        conv 6@5x5 (pad 2) → pool 2 → conv 16@5x5 → pool 2 → fc 120 → fc 84 → classifier

    61,706 parameters for 10 classes. Layers are named ``conv1``, ``conv2``, ``fc1``, ``fc2``,
    ``classifier``.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        relu = lambda: nn.ReLU(inplace=True)
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, 6, 5, padding=2), relu(), nn.MaxPool2d(2))
        self.conv2 = nn.Sequential(nn.Conv2d(6, 16, 5), relu(), nn.MaxPool2d(2))
        self.fc1 = nn.Sequential(nn.Flatten(), nn.Linear(16 * 5 * 5, 120), relu())
        self.fc2 = nn.Sequential(nn.Linear(120, 84), relu())
        self.classifier = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.fc2(self.fc1(self.conv2(self.conv1(x)))))


MODELS["lenet5"] = LeNet5


class Ensemble(nn.Module):
    """m trained models as one teacher. ``forward`` returns the log of the mean of the members'
    softmaxes at temperature τ (default 1), scaled back by τ:

        z̄ = τ · log p̄_τ,   p̄_τ = (1/m) Σ_k softmax(z_k / τ)   (:func:`kd.metrics.ensemble_log_probs`)

    These are valid logits: softmax(z̄ / τ) = p̄_τ. So :class:`kd.train.distill.Distill` at
    temperature T = τ fits the student to the mean of the members' tempered softmaxes (You et
    al. 2017); with τ = 1 it fits softmax(log p̄ / T), the tempered predictive distribution of
    the ensemble.
    """

    def __init__(self, members: Sequence[nn.Module], temperature: float = 1.0):
        super().__init__()
        if not members:
            raise ConfigError("an Ensemble needs at least one member")
        if not temperature > 0:
            raise ConfigError(f"an Ensemble's temperature must be > 0, got {temperature}")
        self.members = nn.ModuleList(members)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from kd.metrics import ensemble_log_probs  # kd.metrics does not import this module

        t = self.temperature
        # each member's pass is shared with other students of it (kd.train.teacher_pass)
        return t * ensemble_log_probs([teacher_forward(member, x)[0] / t
                                       for member in self.members])


def state_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """The model's state-dict names and tensor shapes: equal for two models of one
    architecture."""
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def interpolate_state(a_state: dict, b_state: dict, lam: float) -> dict:
    """θ = λ·θ_a + (1 − λ)·θ_b for every floating tensor of two state dicts of one architecture;
    other entries (integer buffers such as BatchNorm's ``num_batches_tracked``) are a's.

    Uses ``torch.lerp(θ_b, θ_a, λ)``, which computes b + λ(a − b) below λ = 0.5 and
    a − (1 − λ)(a − b) from 0.5 up, so λ = 0 gives b and λ = 1 gives a bit for bit.
    """
    if a_state.keys() != b_state.keys():
        raise ConfigError("interpolate_state needs two state dicts with the same keys")
    if not 0.0 <= lam <= 1.0:
        raise ConfigError(f"interpolation weight must be in [0, 1], got {lam}")
    return {name: torch.lerp(b_state[name].to(a.device, a.dtype), a, lam)
            if a.is_floating_point() else a.clone() for name, a in a_state.items()}
