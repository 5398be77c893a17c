"""Data: :class:`Split` (a data set's images and labels, kept as uint8 on the device), batching,
batched augmentation, and the data-set registry :data:`DATASETS` used by :func:`load`.

- :mod:`kd.data.core`: splits, batches, MNIST, the registry, the data and cache folders;
- :mod:`kd.data.cifar`: CIFAR-10/100 (registered here) and batched crop + flip;
- :mod:`kd.data.augment`: further batched augmentations (Mixup, rotation, colour jitter, ...).
"""

from kd.data import augment, cifar  # noqa: F401  (cifar registers cifar10 and cifar100)
from kd.data.core import (DATASETS, MNIST_MEAN, MNIST_STD, Augment, Batch, RandomTranslate, Split,
                          cache_root, data_root, download_allowed, holdout, iterate_batches,
                          iterate_member_batches, load, load_mnist, mnist_torchvision_root)

__all__ = ["DATASETS", "MNIST_MEAN", "MNIST_STD", "Augment", "Batch", "RandomTranslate", "Split",
           "augment", "cache_root", "cifar", "data_root", "download_allowed", "holdout",
           "iterate_batches", "iterate_member_batches", "load", "load_mnist",
           "mnist_torchvision_root"]
