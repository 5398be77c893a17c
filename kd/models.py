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
"""Model constructors by name; later studies register their architectures here."""


def build_model(name: str, **kwargs) -> nn.Module:
    import kd.cifar_models  # noqa: F401  (registers the CIFAR architectures; imports this module)

    try:
        return MODELS[name](**kwargs)
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; known: {sorted(MODELS)}") from None


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
