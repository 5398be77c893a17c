"""Data sets held whole in memory as uint8 tensors, batched and augmented on the device.

A :class:`Split` is one split of a data set (images ``[N, C, H, W]`` uint8, labels ``[N]`` int64,
and the channel statistics used to normalize it). It is moved to the device once; batches are
index slices of it, and augmentation runs on whole batches there, so no per-sample Python code
runs inside an epoch.

Data sets are read from the data root ``$KD_DATA`` (default ``data/``) in torchvision's layouts.
"""

from __future__ import annotations

import gzip
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

import torch
from torch import Tensor

from kd.errors import ConfigError, DataNotFoundError


def data_root() -> Path:
    """The data root: ``$KD_DATA`` if set, else ``data/`` under the current directory."""
    return Path(os.environ.get("KD_DATA", "data")).expanduser().resolve()


def cache_root() -> Path:
    """Where derived files (decompressed data, cached teachers) go: ``$KD_CACHE`` or ``.cache/kd``."""
    return Path(os.environ.get("KD_CACHE", ".cache/kd")).expanduser().resolve()


def download_allowed() -> bool:
    """torchvision's download is tried unless ``KD_OFFLINE=1`` (tests set it to stay fast)."""
    return os.environ.get("KD_OFFLINE", "0") != "1"


@dataclass(frozen=True)
class Split:
    """One split of a data set, whole, as tensors.

    images: uint8 ``[N, C, H, W]``; labels: int64 ``[N]``; mean/std: per-channel statistics of
    the training split in [0, 1] units, used by :meth:`normalize`.
    """

    images: Tensor
    labels: Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int = 10

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ConfigError(f"images must be uint8 [N, C, H, W], got {self.images.dtype} "
                              f"{tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ConfigError(f"labels shape {tuple(self.labels.shape)} does not match "
                              f"{self.images.shape[0]} images")

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device) -> "Split":
        return replace(self, images=self.images.to(device), labels=self.labels.to(device))

    def subset(self, index: Tensor) -> "Split":
        """The examples selected by a boolean mask or an index tensor, in order."""
        index = index.to(self.labels.device)
        return replace(self, images=self.images[index], labels=self.labels[index])

    def head(self, n: int | None) -> "Split":
        """The first ``n`` examples (all when ``n`` is None)."""
        return self if n is None else self.subset(torch.arange(min(n, len(self))))

    def sample(self, n: int | None, seed: int = 0) -> "Split":
        """``n`` examples drawn without replacement with a fixed seed (all when ``n`` is None).

        Use it rather than :meth:`head` for subsets of data sets stored sorted by class (the
        offline CIFAR-10 copy is: its first 5,000 training images are all airplanes).
        """
        if n is None or n >= len(self):
            return self
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        return self.subset(order[:n].sort().values)

    def without_classes(self, classes: Sequence[int]) -> "Split":
        """Drop every example whose label is in ``classes`` (e.g. the omitted-3 transfer set)."""
        return self.subset(~self.class_mask(classes))

    def only_classes(self, classes: Sequence[int]) -> "Split":
        """Keep only the examples whose label is in ``classes`` (e.g. the 7s-and-8s transfer set)."""
        return self.subset(self.class_mask(classes))

    def class_mask(self, classes: Sequence[int]) -> Tensor:
        """Boolean ``[N]``: which examples have a label in ``classes``."""
        classes = torch.as_tensor(list(classes), dtype=torch.int64)
        if classes.numel() and (classes.min() < 0 or classes.max() >= self.num_classes):
            raise ConfigError(f"classes {classes.tolist()} outside 0..{self.num_classes - 1}")
        return torch.isin(self.labels, classes.to(self.labels.device))

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 images -> float, scaled to [0, 1] and standardized per channel."""
        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1)
        return (images.float().div_(255) - mean) / std


class Batch(NamedTuple):
    x: Tensor  # normalized float inputs
    y: Tensor  # labels
    idx: Tensor  # positions in the split, so cached teacher logits can be looked up


Augment = Callable[[Tensor, torch.Generator], Tensor]


def iterate_batches(split: Split, batch_size: int, *, generator: torch.Generator | None = None,
                    shuffle: bool = True, augment: Augment | None = None,
                    drop_last: bool = False) -> Iterator[Batch]:
    """Yield batches of a split already on its device; shuffling and augmentation stay there."""
    n = len(split)
    order = (torch.randperm(n, generator=generator, device=split.device) if shuffle
             else torch.arange(n, device=split.device))
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        images = split.images[idx]
        if augment is not None:
            images = augment(images, generator)
        yield Batch(split.normalize(images), split.labels[idx], idx)


class RandomTranslate:
    """Shift each image by its own random (dy, dx), |dy|, |dx| <= ``max_shift``, zero-filling.

    Done for the whole batch at once by padding and gathering shifted windows: torchvision's v2
    transforms draw one set of parameters per call, i.e. one shift for the whole batch.
    """

    def __init__(self, max_shift: int = 2):
        self.max_shift = max_shift

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        n, _, h, w = images.shape
        s = self.max_shift
        padded = torch.nn.functional.pad(images, (s, s, s, s))
        offsets = torch.randint(0, 2 * s + 1, (2, n), generator=generator, device=images.device)
        rows = (offsets[0, :, None] + torch.arange(h, device=images.device))[:, None, :, None]
        cols = (offsets[1, :, None] + torch.arange(w, device=images.device))[:, None, None, :]
        batch = torch.arange(n, device=images.device)[:, None, None, None]
        channels = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
        return padded[batch, channels, rows, cols]


# ----------------------------------------------------------------------------------------------
# MNIST

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)


def _mnist_raw_dir(root: Path) -> Path | None:
    """A folder ``<...>/MNIST/raw`` that torchvision can read, gunzipping ``.gz`` files if needed.

    When only the ``.gz`` files are present and their folder is read-only, they are gunzipped
    into ``$KD_CACHE/MNIST/raw`` instead.
    """
    raw = root / "MNIST" / "raw"
    names = [name for pair in MNIST_FILES.values() for name in pair]
    if all((raw / name).is_file() for name in names):
        return raw
    if not all((raw / f"{name}.gz").is_file() for name in names):
        return None
    target = raw if os.access(raw, os.W_OK) else cache_root() / "MNIST" / "raw"
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        if not (target / name).is_file():
            tmp = target / f"{name}.tmp{os.getpid()}"
            with gzip.open(raw / f"{name}.gz", "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, target / name)
    return target


def mnist_torchvision_root(root: Path | None = None) -> Path:
    """A folder that ``torchvision.datasets.MNIST(folder)`` reads, downloading if allowed.

    Raises :class:`DataNotFoundError`, naming the files and ``KD_DATA``, when there is none.
    """
    import torchvision

    root = data_root() if root is None else Path(root)
    raw = _mnist_raw_dir(root)
    if raw is None and download_allowed():
        try:
            for train in (True, False):
                torchvision.datasets.MNIST(str(root), train=train, download=True)
            raw = _mnist_raw_dir(root)
        except Exception:  # offline, or the root is not writable: reported below
            raw = None
    if raw is None:
        wanted = ", ".join(f"{n}[.gz]" for pair in MNIST_FILES.values() for n in pair)
        raise DataNotFoundError(
            f"MNIST not found: expected {wanted} in {root / 'MNIST' / 'raw'} "
            f"(set KD_DATA to the folder that holds MNIST/raw; download failed or was disabled)")
    return raw.parent.parent


def load_mnist(train: bool, root: Path | None = None) -> Split:
    """MNIST from ``root`` (default: the data root) in torchvision's layout ``MNIST/raw/``."""
    import torchvision

    ds = torchvision.datasets.MNIST(str(mnist_torchvision_root(root)), train=train)
    return Split(ds.data.unsqueeze(1).contiguous(), ds.targets.long(), MNIST_MEAN, MNIST_STD)


DATASETS: dict[str, Callable[..., Split]] = {"mnist": load_mnist}
"""Loaders by name, each ``loader(train: bool, root=None) -> Split``; kd.cifar adds CIFAR."""


def load(name: str, train: bool, root: Path | None = None) -> Split:
    import kd.cifar  # noqa: F401  (registers cifar10 and cifar100; it imports this module)

    try:
        loader = DATASETS[name]
    except KeyError:
        raise ConfigError(f"unknown data set {name!r}; known: {sorted(DATASETS)}") from None
    return loader(train, root)
