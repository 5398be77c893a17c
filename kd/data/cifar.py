"""CIFAR-10 and CIFAR-100 as in-memory uint8 splits, and their batched augmentation.

Where the files may be, in the order they are tried (under the data root ``$KD_DATA``):

1. torchvision's layout: ``cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``) or
   ``cifar-100-python/`` (``train``, ``test``);
2. CIFAR-10 only: ``cifar10-jpeg.npz``, the offline copy of this workplace (JPEG bytes, offsets
   and labels per split), decoded once and cached as uint8 arrays under ``$KD_CACHE``;
3. torchvision's download, when allowed (``KD_OFFLINE`` unset);

and otherwise one :class:`~kd.errors.DataNotFoundError` line naming what was wanted.
Importing this module registers ``cifar10`` and ``cifar100`` in :data:`kd.data.DATASETS`.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from kd.data.core import DATASETS, RandomTranslate, Split, cache_root, data_root, download_allowed
from kd.errors import CorruptFileError, DataNotFoundError, NotWritableError, reason

# Channel statistics of the training splits, in [0, 1] units.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)

LAYOUTS = {
    # name: (folder, train files, test files, label key, classes, mean, std, torchvision class)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "labels", 10, CIFAR10_MEAN, CIFAR10_STD, "CIFAR10"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100, CIFAR100_MEAN,
                 CIFAR100_STD, "CIFAR100"),
}
OFFLINE_NPZ = "cifar10-jpeg.npz"


def _read_pickled_layout(folder: Path, files: list[str], label_key: str,
                         classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 3, 32, 32]`` uint8 and labels from torchvision's pickled batches."""
    images, labels = [], []
    for name in files:
        batch_images, batch_labels = _read_pickled_batch(folder / name, label_key, classes)
        images.append(batch_images)
        labels.append(batch_labels)
    return np.concatenate(images), np.concatenate(labels)


def _read_pickled_batch(path: Path, label_key: str, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch; a :class:`CorruptFileError` naming it when it is not one."""
    try:
        with open(path, "rb") as handle:
            batch = pickle.load(handle, encoding="latin1")
        images = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    # Unpickling a broken or foreign file can raise nearly anything (EOFError, UnpicklingError,
    # KeyError, AttributeError, ImportError, ...), and so can a batch without its arrays.
    except Exception as error:
        raise CorruptFileError(f"{path} is not a whole CIFAR batch ({reason(error)}): restore "
                               f"it from the original download") from None
    problem = _labels_problem(labels, len(images), classes)
    if problem is not None:
        raise CorruptFileError(f"{path} {problem}: restore it from the original download")
    return images, labels


def _labels_problem(labels: np.ndarray, n_images: int, classes: int) -> str | None:
    """Labels that do not fit their images, or a class index out of range (which would
    otherwise stop training deep inside the loss)."""
    if labels.shape != (n_images,):
        return f"holds {n_images} images but {labels.size} labels"
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        return f"has labels outside 0..{classes - 1}"
    return None


# What reading a broken .npz raises: not a zip, a truncated member, a missing array, bad JPEG
# bytes (Pillow's errors are OSErrors).
NPZ_ERRORS = (OSError, EOFError, ValueError, KeyError, IndexError, zipfile.BadZipFile, zlib.error)


def _decode_offline_npz(npz: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """Decode one split of the JPEG ``.npz``, caching the uint8 arrays next to other caches."""
    split = "train" if train else "test"
    stat = npz.stat()
    cached = cache_root() / "cifar10" / f"{split}-{stat.st_size}-{int(stat.st_mtime)}.npz"
    if cached.is_file():
        arrays = _read_decoded_cache(cached)
        if arrays is not None:
            return arrays
    try:
        images, labels = _decode_jpeg_split(npz, split)
    except NPZ_ERRORS as error:
        raise CorruptFileError(f"{npz} is not a whole CIFAR-10 JPEG archive ({reason(error)}): "
                               f"restore it from the original copy") from None
    _write_decoded_cache(cached, images, labels)
    return images, labels


def _decode_jpeg_split(npz: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(npz) as arrays:
        blob, offsets = arrays[f"{split}_jpeg"], arrays[f"{split}_offsets"]
        labels = arrays[f"{split}_labels"].astype(np.int64)
    if offsets.shape != (len(labels) + 1,) or offsets[-1] != len(blob):
        raise ValueError(f"{split}_offsets do not match its {len(labels)} labels and "
                         f"{len(blob)} JPEG bytes")
    problem = _labels_problem(labels, len(labels), 10)
    if problem is not None:
        raise ValueError(f"{split}_labels {problem}")
    # Pillow, not torchvision.io: torchvision 0.29 deprecates its image decoders.
    images = np.stack([np.asarray(Image.open(io.BytesIO(blob[offsets[i]:offsets[i + 1]].tobytes()))
                                  .convert("RGB")) for i in range(len(labels))]).transpose(0, 3, 1, 2)
    if images.shape[1:] != (3, 32, 32):
        raise ValueError(f"{split} images of {images.shape[2]}x{images.shape[3]} pixels")
    return images, labels


def _read_decoded_cache(cached: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached decoded split, or None (after saying so, and deleting it) when it is broken:
    it is derived data, decoded again from the archive."""
    try:
        with np.load(cached) as arrays:
            images, labels = arrays["images"], arrays["labels"]
        if images.dtype != np.uint8 or images.shape[1:] != (3, 32, 32) or \
                _labels_problem(labels, len(images), 10) is not None:
            raise ValueError(f"arrays of shapes {images.shape} and {labels.shape}")
        return images, labels
    except NPZ_ERRORS as error:
        print(f"warning: dropping the broken cache file {cached} ({reason(error)}); decoding "
              f"the archive again", file=sys.stderr)
        cached.unlink(missing_ok=True)
        return None


def _write_decoded_cache(cached: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Store the decoded split through a temporary file, so no half-written cache stays."""
    tmp = cached.with_name(f".{cached.stem}.{os.getpid()}.tmp.npz")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, images=images, labels=labels)
        os.replace(tmp, cached)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise NotWritableError(f"cannot write the decoded CIFAR-10 cache {cached}: "
                               f"{reason(error)}; set KD_CACHE to a writable folder") from None


def load_cifar(name: str, train: bool, root: Path | None = None) -> Split:
    folder_name, train_files, test_files, label_key, classes, mean, std, tv_class = LAYOUTS[name]
    root = data_root() if root is None else Path(root)
    folder = root / folder_name
    files = train_files if train else test_files
    arrays = None
    if all((folder / f).is_file() for f in files):
        arrays = _read_pickled_layout(folder, files, label_key, classes)
    elif name == "cifar10" and (root / OFFLINE_NPZ).is_file():
        arrays = _decode_offline_npz(root / OFFLINE_NPZ, train)
    elif download_allowed():
        import torchvision

        try:
            getattr(torchvision.datasets, tv_class)(str(root), train=train, download=True)
        except Exception:  # offline, or the root is not writable: reported below
            pass
        if all((folder / f).is_file() for f in files):
            arrays = _read_pickled_layout(folder, files, label_key, classes)
    if arrays is None:
        offline = f" or {root / OFFLINE_NPZ}" if name == "cifar10" else ""
        raise DataNotFoundError(
            f"{name.upper()} not found: expected {', '.join(files)} in {folder}{offline} "
            f"(set KD_DATA to the folder that holds them; download failed or was disabled)")
    images, labels = arrays
    return Split(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels),
                 mean, std, num_classes=classes)


def load_cifar10(train: bool, root: Path | None = None) -> Split:
    return load_cifar("cifar10", train, root)


def load_cifar100(train: bool, root: Path | None = None) -> Split:
    return load_cifar("cifar100", train, root)


DATASETS.update({"cifar10": load_cifar10, "cifar100": load_cifar100})


class RandomHorizontalFlip:
    """Mirror each image left-right with probability ``p``, each drawing its own coin."""

    axis = 3  # the width of [N, C, H, W]

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.apply(images, self.draw(images.shape[0], generator, images.device))

    def draw(self, n: int, generator: torch.Generator | None,
             device: torch.device) -> list[Tensor]:
        return [torch.rand(n, generator=generator, device=device) < self.p]

    def apply(self, images: Tensor, drawn: list[Tensor]) -> Tensor:
        return torch.where(drawn[0][:, None, None, None], images.flip(self.axis), images)


class RandomCropFlip:
    """The standard CIFAR augmentation, batched: a random 32x32 crop of the image padded by
    ``padding`` zeros (the same as a random shift of up to ``padding`` pixels), then a flip."""

    def __init__(self, padding: int = 4):
        self.crop, self.flip = RandomTranslate(padding), RandomHorizontalFlip()

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.apply(images, self.draw(images.shape[0], generator, images.device))

    def draw(self, n: int, generator: torch.Generator | None,
             device: torch.device) -> list[Tensor]:
        """The crop's offsets, then the flip's coins: the order a call draws them in."""
        return self.crop.draw(n, generator, device) + self.flip.draw(n, generator, device)

    def apply(self, images: Tensor, drawn: list[Tensor]) -> Tensor:
        return self.flip.apply(self.crop.apply(images, drawn[:1]), drawn[1:])
