"""Data sets held whole in memory as uint8 tensors, batched and augmented on the device.

A :class:`Split` is one split of a data set (images ``[N, C, H, W]`` uint8, labels ``[N]`` int64,
and the channel statistics used to normalize it). It is moved to the device once; batches are
index slices of it, and augmentation runs on whole batches there, so no per-sample Python code
runs inside an epoch.

Data sets are read from the data root ``$KD_DATA`` (default ``data/``) in torchvision's layouts.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import sys
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

import torch
from torch import Tensor

from kd.errors import (ConfigError, CorruptFileError, DataNotFoundError, NotWritableError,
                       blocking_file, reason)


def data_root() -> Path:
    """The data root: ``$KD_DATA`` if set, else ``data/`` under the current directory."""
    root = Path(os.environ.get("KD_DATA", "data")).expanduser().resolve()
    if blocking_file(root) is not None:
        raise DataNotFoundError(f"the data root {root} (KD_DATA) {_not_a_folder(root)}: set "
                                f"KD_DATA to the folder that holds the data sets")
    return root


def default_cache_root() -> Path:
    """``$XDG_CACHE_HOME/kd``, else ``~/.cache/kd``: outside the checkout, as torch's and
    pip's caches are, so every clone shares the teachers it has trained."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "kd"


def cache_root() -> Path:
    """Where derived files (decompressed data, cached teachers) go: ``$KD_CACHE``, else
    :func:`default_cache_root`."""
    root = Path(os.environ.get("KD_CACHE") or default_cache_root()).expanduser().resolve()
    if blocking_file(root) is not None:
        raise ConfigError(f"the cache folder {root} (KD_CACHE) {_not_a_folder(root)}: set "
                          f"KD_CACHE to a folder (or unset it for {default_cache_root()})")
    return root


def _not_a_folder(path: Path) -> str:
    blocker = blocking_file(path)
    return "is a file, not a folder" if blocker == path else f"is under {blocker}, a file"


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
    # device -> (mean, std) tensors; each copy of the split (replace, to) starts its own
    _stats: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ConfigError(f"images must be uint8 [N, C, H, W], got {self.images.dtype} "
                              f"{tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ConfigError(f"labels shape {tuple(self.labels.shape)} does not match "
                              f"{self.images.shape[0]} images")
        self.stats(self.device)  # ready before the first batch

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

    def stats(self, device: torch.device | str) -> tuple[Tensor, Tensor]:
        """mean and std as float ``[1, C, 1, 1]`` tensors on ``device``, made once per device:
        a tensor made from Python numbers every batch would be a host-to-device copy on CUDA."""
        device = torch.device(device)
        if device not in self._stats:
            self._stats[device] = tuple(torch.tensor(v, device=device).view(1, -1, 1, 1)
                                        for v in (self.mean, self.std))
        return self._stats[device]

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 images -> float, scaled to [0, 1] and standardized per channel:
        (x / 255 − mean) / std."""
        mean, std = self.stats(images.device)
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


def iterate_member_batches(split: Split, batch_size: int, generators: list[torch.Generator],
                           *, augment: Augment | None = None) -> Iterator[Batch]:
    """One batch stream per member of a stack, each exactly what :func:`iterate_batches` yields
    with that member's generator, stacked: ``x [K, N, ...]``, ``y [K, N]``, ``idx [K, N]``.

    Each member draws its own random numbers in the order its own run would (its shuffle, then
    its augmentation's parameters batch by batch); the gathers, the augmentation (when it can
    be applied to drawn parameters: ``draw`` and ``apply``) and the normalization then run once
    for all K members, so a stack of K pays a few operators per member, not a run's data path."""
    if augment is not None and not hasattr(augment, "draw"):
        streams = [iterate_batches(split, batch_size, generator=g, augment=augment)
                   for g in generators]
        for batches in zip(*streams):
            yield Batch(*(torch.stack(parts) for parts in zip(*batches)))
        return
    orders = torch.stack([torch.randperm(len(split), generator=g, device=split.device)
                          for g in generators])
    for start in range(0, len(split), batch_size):
        idx = orders[:, start:start + batch_size]
        images = split.images[idx]
        if augment is not None:
            drawn = [augment.draw(idx.shape[1], g, split.device) for g in generators]
            flat = augment.apply(images.flatten(0, 1), [torch.cat(p) for p in zip(*drawn)])
            images = flat.unflatten(0, idx.shape)
        yield Batch(split.normalize(images), split.labels[idx], idx)


class RandomTranslate:
    """Shift each image by its own random (dy, dx), |dy|, |dx| <= ``max_shift``, zero-filling.

    Done for the whole batch at once by padding and gathering shifted windows: torchvision's v2
    transforms draw one set of parameters per call, i.e. one shift for the whole batch.
    """

    def __init__(self, max_shift: int = 2):
        self.max_shift = max_shift

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.apply(images, self.draw(images.shape[0], generator, images.device))

    def draw(self, n: int, generator: torch.Generator | None,
             device: torch.device) -> list[Tensor]:
        """The random parameters of n images, each tensor's first dimension the image's."""
        offsets = torch.randint(0, 2 * self.max_shift + 1, (2, n), generator=generator,
                                device=device)
        return [offsets.T]

    def apply(self, images: Tensor, drawn: list[Tensor]) -> Tensor:
        n, _, h, w = images.shape
        s, offsets = self.max_shift, drawn[0].T
        padded = torch.nn.functional.pad(images, (s, s, s, s))
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
MNIST_NAMES = tuple(name for pair in MNIST_FILES.values() for name in pair)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)


def _mnist_raw_dir(root: Path) -> Path | None:
    """A folder ``<...>/MNIST/raw`` of whole idx files that torchvision can read, gunzipping
    ``.gz`` files if needed; None when the files are not there.

    When only the ``.gz`` files are present and their folder is read-only, they are gunzipped
    into ``$KD_CACHE/MNIST/raw`` instead.
    """
    raw = root / "MNIST" / "raw"
    if all((raw / name).is_file() for name in MNIST_NAMES):
        target = raw
    elif all((raw / f"{name}.gz").is_file() for name in MNIST_NAMES):
        target = raw if os.access(raw, os.W_OK) else cache_root() / "MNIST" / "raw"
    else:
        return None
    for name in MNIST_NAMES:
        _ensure_idx(target / name, raw / f"{name}.gz", name)
    return target


def _ensure_idx(path: Path, gz: Path, name: str) -> None:
    """Make ``path`` a whole idx file ``name``: keep it if it is one, else gunzip ``gz`` into it.

    A broken file with a ``.gz`` beside it was gunzipped from it (by us or torchvision), so it
    is rebuilt, saying so; one without is an original, left alone and reported.
    """
    if path.is_file():
        problem = _idx_file_problem(path, name)
        if problem is None:
            return
        if not gz.is_file():
            raise CorruptFileError(f"{path} is {problem}: restore it from the original MNIST "
                                   f"download")
        print(f"warning: {path} is {problem}; gunzipping {gz} again", file=sys.stderr)
    _gunzip(gz, path, name)


def _gunzip(gz: Path, target: Path, name: str) -> None:
    """Decompress ``gz`` (in memory: MNIST's largest file is 47 MB), check it is a whole idx
    file ``name``, and write it through a temporary file, so no half-written file stays."""
    try:
        blob = gzip.decompress(gz.read_bytes())
        problem = _idx_problem(blob, len(blob), name)
    except (OSError, EOFError, zlib.error) as error:  # BadGzipFile is an OSError
        problem = f"not a whole gzip file ({reason(error)})"
    if problem is not None:
        raise CorruptFileError(f"{gz} is {problem}: restore it from the original MNIST download "
                               f"(or delete the four MNIST files and let torchvision download "
                               f"them)")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(blob)
        os.replace(tmp, target)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise NotWritableError(f"cannot write {target} (gunzipped from {gz.name}): "
                               f"{reason(error)}; make {target.parent} writable or set KD_CACHE "
                               f"to a writable folder") from None


# kind -> (magic number, header length): unsigned bytes; images have 3 dimensions, labels 1.
IDX_HEADER = {"images": (0x803, 16), "labels": (0x801, 8)}


def _idx_file_problem(path: Path, name: str) -> str | None:
    """Why the file ``path`` is not a whole MNIST idx file ``name``; None when it is one."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(IDX_HEADER[name.split("-")[1]][1])
        size = path.stat().st_size
    except OSError as error:
        return f"unreadable ({reason(error)})"
    return _idx_problem(header, size, name)


def _idx_problem(header: bytes, size: int, name: str) -> str | None:
    """Why a file of ``size`` bytes that starts with ``header`` is not the idx file ``name``:
    another magic number, images that are not 28x28, or a size its header does not give."""
    kind = name.split("-")[1]
    magic, length = IDX_HEADER[kind]
    if len(header) < length:
        return f"too short for an idx header ({size} bytes)"
    found, *dims = struct.unpack(f">{length // 4}I", header[:length])
    if found != magic:
        return f"not an MNIST {kind} file (magic number {found:#x}, expected {magic:#x})"
    if kind == "images" and dims[1:] != [28, 28]:
        return f"not MNIST images ({dims[1]}x{dims[2]} pixels, expected 28x28)"
    expected = length + math.prod(dims)
    if size != expected:
        return f"{'truncated' if size < expected else 'too long'} ({size} bytes, its header says " \
               f"{expected})"
    return None


def mnist_torchvision_root(root: Path | None = None) -> Path:
    """A folder that ``torchvision.datasets.MNIST(folder)`` reads, downloading if allowed.

    Raises :class:`DataNotFoundError`, naming the files and ``KD_DATA``, when there is none, and
    :class:`CorruptFileError`, naming the file, when one is broken.
    """
    import torchvision

    root = data_root() if root is None else Path(root)
    raw = _mnist_raw_dir(root)
    if raw is None and download_allowed():
        try:
            for train in (True, False):
                torchvision.datasets.MNIST(str(root), train=train, download=True)
        except Exception:  # offline, or the root is not writable: reported below
            pass
        raw = _mnist_raw_dir(root)
    if raw is None:
        wanted = ", ".join(f"{n}[.gz]" for n in MNIST_NAMES)
        raise DataNotFoundError(
            f"MNIST not found: expected {wanted} in {root / 'MNIST' / 'raw'} "
            f"(set KD_DATA to the folder that holds MNIST/raw; download failed or was disabled)")
    return raw.parent.parent


def load_mnist(train: bool, root: Path | None = None) -> Split:
    """MNIST from ``root`` (default: the data root) in torchvision's layout ``MNIST/raw/``."""
    import torchvision

    folder = mnist_torchvision_root(root)
    images, labels = (folder / "MNIST" / "raw" / name
                      for name in MNIST_FILES["train" if train else "test"])
    try:  # the files were checked; this is for what torchvision reads besides them
        ds = torchvision.datasets.MNIST(str(folder), train=train)
    except (RuntimeError, ValueError, TypeError, AssertionError, KeyError, OSError) as error:
        raise CorruptFileError(f"torchvision cannot read {images} or {labels} "
                               f"({reason(error)}): restore them from the original MNIST "
                               f"download") from None
    if len(ds.data) != len(ds.targets):
        raise CorruptFileError(f"{images} holds {len(ds.data)} images but {labels} "
                               f"{len(ds.targets)} labels: restore them from the original MNIST "
                               f"download")
    if len(ds.targets) and (ds.targets.min() < 0 or ds.targets.max() > 9):
        raise CorruptFileError(f"{labels} has labels outside 0..9: restore it from the original "
                               f"MNIST download")
    return Split(ds.data.unsqueeze(1).contiguous(), ds.targets.long(), MNIST_MEAN, MNIST_STD)


DATASETS: dict[str, Callable[..., Split]] = {"mnist": load_mnist}
"""Loaders by name, each ``loader(train: bool, root=None) -> Split``; :mod:`kd.data.cifar` adds
CIFAR (``kd/data/__init__.py`` imports it, so the registry is complete once ``kd.data`` is)."""


def load(name: str, train: bool, root: Path | None = None) -> Split:
    try:
        loader = DATASETS[name]
    except KeyError:
        raise ConfigError(f"unknown data set {name!r}; known: {sorted(DATASETS)}") from None
    return loader(train, root)


def holdout(split: Split, n: int, seed: int = 0) -> tuple[Split, Split]:
    """``(rest, held_out)``: ``n`` examples drawn without replacement with a fixed seed, held
    out as a validation split carved from ``split``, and the others (both in their original
    order). Choices (schedules, weights, best cells) are made on such a split, never on the
    test set."""
    if not 0 < n < len(split):
        raise ConfigError(f"cannot hold out {n} of {len(split)} examples")
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    held = torch.zeros(len(split), dtype=torch.bool)
    held[order[:n]] = True
    return split.subset(~held), split.subset(held)
