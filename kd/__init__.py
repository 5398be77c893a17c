"""kd: a small, tested knowledge-distillation library (and the harness of the kd-repro studies).

The names a user needs are here; see docs/library.md for the layout and an example::

    import kd
    method = kd.build_method("kd", student, teacher, temperature=4.0, alpha=0.9)
    train = kd.data.Split(images, labels, mean=(0.5,) * 3, std=(0.25,) * 3)  # uint8 images
    kd.fit(kd.prepare_model(method.model, device), train, method, kd.TrainConfig(), seed=0)

Subpackages: :mod:`kd.data`, :mod:`kd.models`, :mod:`kd.methods`, :mod:`kd.train`; the study
harness, :mod:`kd.experiment`, is not imported here.
"""

from importlib.metadata import PackageNotFoundError, version

from kd import data, metrics
from kd.errors import ConfigError, KDError
from kd.methods import METHODS, build_method
from kd.metrics import accuracy, agreement, error_count, expected_calibration_error, predictive_kl
from kd.models import MODELS, build_model, parameter_count
from kd.train import (CrossEntropy, Distill, TrainConfig, fit, predict, prepare_model,
                      resolve_device, resolve_precision)

try:
    __version__ = version("kd-repro")
except PackageNotFoundError:  # a source checkout that is not installed
    __version__ = "0.1.0"

__all__ = ["METHODS", "MODELS", "ConfigError", "CrossEntropy", "Distill", "KDError",
           "TrainConfig", "accuracy", "agreement", "build_method", "build_model",
           "data", "error_count", "expected_calibration_error", "fit", "metrics",
           "parameter_count", "predict", "predictive_kl", "prepare_model", "resolve_device",
           "resolve_precision"]
