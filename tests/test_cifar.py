import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kd import data
from kd.data import cifar
from kd.errors import DataNotFoundError
from tests.conftest import REPO, write_pickled_layout


def test_cifar10_from_torchvision_layout(tmp_path, monkeypatch):
    root = write_pickled_layout(tmp_path, "cifar10")
    monkeypatch.setenv("KD_DATA", str(root))
    train, test = data.load("cifar10", True), data.load("cifar10", False)
    assert train.images.shape == (100, 3, 32, 32) and train.images.dtype == torch.uint8
    assert len(test) == 10 and train.num_classes == 10 and train.mean == cifar.CIFAR10_MEAN
    with open(root / "cifar-10-batches-py" / "test_batch", "rb") as handle:
        raw = pickle.load(handle)
    assert torch.equal(test.images[3].flatten(), torch.from_numpy(raw["data"][3]))
    assert test.labels.tolist() == [int(v) for v in raw["labels"]]


def test_cifar100_from_torchvision_layout(tmp_path, monkeypatch):
    root = write_pickled_layout(tmp_path, "cifar100", n_train=30)
    monkeypatch.setenv("KD_DATA", str(root))
    train = cifar.load_cifar100(True)
    assert train.images.shape == (30, 3, 32, 32) and train.num_classes == 100
    assert train.labels.max() < 100 and train.mean == cifar.CIFAR100_MEAN


def jpeg_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image.transpose(1, 2, 0)).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_offline_npz(root: Path, n_train: int = 12, n_test: int = 6) -> dict:
    rng = np.random.default_rng(1)
    arrays, originals = {}, {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        images[:, :, :16] = 200  # some structure, so JPEG keeps it recognizably
        jpegs = [np.frombuffer(jpeg_bytes(im), dtype=np.uint8) for im in images]
        arrays[f"{split}_jpeg"] = np.concatenate(jpegs)
        arrays[f"{split}_offsets"] = np.cumsum([0] + [len(j) for j in jpegs]).astype(np.int64)
        arrays[f"{split}_labels"] = (np.arange(n) % 10).astype(np.uint8)
        originals[split] = images
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / cifar.OFFLINE_NPZ, classes=np.array(["c"] * 10), **arrays)
    return originals


def test_cifar10_from_offline_jpeg_npz_is_decoded_once(tmp_path, monkeypatch):
    originals = write_offline_npz(tmp_path / "data")
    monkeypatch.setenv("KD_DATA", str(tmp_path / "data"))
    train = cifar.load_cifar10(True)
    assert train.images.shape == (12, 3, 32, 32) and train.labels.tolist() == [
        i % 10 for i in range(12)]
    # JPEG is lossy: close to the originals, not equal
    error = (train.images.float() - torch.from_numpy(originals["train"]).float()).abs().mean()
    assert error < 40
    assert len(cifar.load_cifar10(False)) == 6
    cached = sorted(p.name.split("-")[0] for p in (tmp_path / "cache" / "cifar10").glob("*.npz"))
    assert cached == ["test", "train"]

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(cifar.Image, "open", no_decoding)
    again = cifar.load_cifar10(True)
    assert torch.equal(again.images, train.images)


def test_missing_cifar_names_the_files(tmp_path, monkeypatch):
    monkeypatch.setenv("KD_DATA", str(tmp_path))
    with pytest.raises(DataNotFoundError) as info:
        data.load("cifar10", True)
    message = str(info.value)
    assert "data_batch_1" in message and cifar.OFFLINE_NPZ in message and "KD_DATA" in message
    with pytest.raises(DataNotFoundError, match="CIFAR100 not found.*cifar-100-python"):
        data.load("cifar100", False)


def real_npz() -> Path | None:
    import os

    path = Path(os.environ.get("KD_DATA", REPO / "data")).resolve() / cifar.OFFLINE_NPZ
    return path if path.is_file() else None


@pytest.mark.skipif(real_npz() is None, reason="offline CIFAR-10 copy not under $KD_DATA")
def test_real_offline_cifar10(monkeypatch):
    monkeypatch.setenv("KD_DATA", str(real_npz().parent))
    test = cifar.load_cifar10(False)
    assert test.images.shape == (10000, 3, 32, 32)
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    train = cifar.load_cifar10(True)
    assert train.images.shape == (50000, 3, 32, 32)
    # the channel means that shared/data/README.md gives for the decoded training split
    means = train.images.float().div(255).mean((0, 2, 3)).tolist()
    assert means == pytest.approx([0.4913, 0.4821, 0.4465], abs=2e-4)


def test_horizontal_flip_flips_each_image_or_leaves_it():
    images = torch.randint(0, 256, (64, 3, 4, 4), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    out = cifar.RandomHorizontalFlip()(images, torch.Generator().manual_seed(1))
    flipped = [torch.equal(o, i.flip(2)) for o, i in zip(out, images)]
    kept = [torch.equal(o, i) for o, i in zip(out, images)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 10 < sum(flipped) < 54
    assert torch.equal(cifar.RandomHorizontalFlip(0.0)(images), images)
    assert torch.equal(cifar.RandomHorizontalFlip(1.0)(images), images.flip(3))


def test_crop_flip_keeps_shape_and_repeats_for_a_seed():
    images = torch.randint(0, 256, (16, 3, 32, 32), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    augment = cifar.RandomCropFlip(4)
    a = augment(images, torch.Generator().manual_seed(5))
    b = augment(images, torch.Generator().manual_seed(5))
    assert a.shape == images.shape and torch.equal(a, b) and not torch.equal(a, images)
