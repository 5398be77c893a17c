"""Models: the registry :data:`MODELS` (constructors by name) and :func:`build_model`.

- :mod:`kd.models.core`: the registry, MNIST's MLP and LeNet-5, :class:`Ensemble`, helpers;
- :mod:`kd.models.cifar`: CIFAR ResNets, wide ResNets and plain CNNs (registered here).
"""

from kd.models import cifar  # noqa: F401  (registers the CIFAR architectures in MODELS)
from kd.models.core import (MODELS, MLP, Ensemble, LeNet5, build_model, interpolate_state,
                            parameter_count, state_shapes)

__all__ = ["MODELS", "MLP", "Ensemble", "LeNet5", "build_model", "cifar", "interpolate_state",
           "parameter_count", "state_shapes"]
