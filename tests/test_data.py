import os

import pytest
import torch

from kd import data
from kd.errors import ConfigError, DataNotFoundError
from tests.conftest import real_mnist_root, write_fake_mnist


def test_fake_gz_only_is_gunzipped_and_loaded(fake_mnist):
    train = data.load_mnist(train=True)
    test = data.load("mnist", train=False)
    assert train.images.shape == (600, 1, 28, 28) and train.images.dtype == torch.uint8
    assert train.labels.shape == (600,) and train.labels.dtype == torch.int64
    assert len(test) == 200 and set(test.labels.tolist()) == set(range(10))
    assert (fake_mnist / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()


def test_read_only_gz_folder_gunzips_into_the_cache(tmp_path, monkeypatch):
    root = write_fake_mnist(tmp_path / "ro")
    # The shared offline copy is read-only; root could write anyway, so pretend it cannot.
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    monkeypatch.setenv("KD_DATA", str(root))
    assert len(data.load_mnist(train=True)) == 600
    assert (data.cache_root() / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    assert not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").exists()


def test_uncompressed_files_are_read_directly(tmp_path, monkeypatch):
    root = write_fake_mnist(tmp_path / "plain", gz=False)
    monkeypatch.setenv("KD_DATA", str(root))
    assert len(data.load_mnist(train=False)) == 200


def test_missing_data_names_the_files_and_kd_data(tmp_path, monkeypatch):
    monkeypatch.setenv("KD_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataNotFoundError) as info:
        data.load_mnist(train=True)
    message = str(info.value)
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "KD_DATA" in message and str(tmp_path / "nowhere") in message
    assert "\n" not in message


def test_unknown_data_set_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown data set"):
        data.load("imagenet", train=True)


@pytest.mark.skipif(real_mnist_root() is None, reason="real MNIST not under $KD_DATA")
def test_real_mnist_shapes_and_counts(monkeypatch):
    monkeypatch.setenv("KD_DATA", str(real_mnist_root()))
    train, test = data.load_mnist(True), data.load_mnist(False)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert int((test.labels == 3).sum()) == 1010
    assert len(train.without_classes([3])) == 60000 - int((train.labels == 3).sum())
    # channel statistics match the constants used to normalize
    assert train.images.float().div(255).mean().item() == pytest.approx(data.MNIST_MEAN[0], abs=1e-3)


def make_split(n=50):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 6, 6), generator=g, dtype=torch.uint8)
    return data.Split(images, torch.arange(n) % 10, (0.5,), (0.25,))


def test_class_filters():
    split = make_split()
    no_three = split.without_classes([3])
    assert len(no_three) == 45 and 3 not in no_three.labels.tolist()
    only = split.only_classes([7, 8])
    assert sorted(set(only.labels.tolist())) == [7, 8] and len(only) == 10
    torch.testing.assert_close(only.images, split.images[(split.labels == 7) | (split.labels == 8)])
    with pytest.raises(ConfigError, match="outside"):
        split.only_classes([10])


def test_split_validates_its_tensors():
    with pytest.raises(ConfigError, match="uint8"):
        data.Split(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long), (0.0,), (1.0,))
    with pytest.raises(ConfigError, match="labels"):
        data.Split(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.long),
                   (0.0,), (1.0,))


def test_batches_cover_every_example_once_and_are_normalized():
    split = make_split(50)
    batches = list(data.iterate_batches(split, 16, generator=torch.Generator().manual_seed(0)))
    assert [len(b.y) for b in batches] == [16, 16, 16, 2]
    idx = torch.cat([b.idx for b in batches])
    assert sorted(idx.tolist()) == list(range(50))
    first = batches[0]
    torch.testing.assert_close(first.y, split.labels[first.idx])
    expected = (split.images[first.idx].float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(first.x, expected)
    assert len(list(data.iterate_batches(split, 16, drop_last=True))) == 3


def test_shuffling_repeats_for_a_seed():
    split = make_split(50)
    order = lambda s: torch.cat([b.idx for b in data.iterate_batches(
        split, 8, generator=torch.Generator().manual_seed(s))])
    assert torch.equal(order(1), order(1)) and not torch.equal(order(1), order(2))


def test_random_translate_shifts_each_image_within_two_pixels():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (64, 1, 10, 10), generator=g, dtype=torch.uint8)
    out = data.RandomTranslate(2)(images, torch.Generator().manual_seed(3))
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    shifts = set()
    for i in range(len(images)):
        matches = [(dy, dx) for dy in range(5) for dx in range(5)
                   if torch.equal(out[i], padded[i, :, dy:dy + 10, dx:dx + 10])]
        assert matches, f"image {i} is not a shift of its input within 2 pixels"
        shifts.add(matches[0])
    assert len(shifts) > 10  # each image draws its own shift
    again = data.RandomTranslate(2)(images, torch.Generator().manual_seed(3))
    assert torch.equal(out, again)


def test_cache_defaults_outside_the_checkout(monkeypatch, tmp_path):
    monkeypatch.delenv("KD_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_root() == tmp_path / "xdg" / "kd"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.cache_root() == tmp_path / "home" / ".cache" / "kd"
    monkeypatch.setenv("KD_CACHE", str(tmp_path / "mine"))
    assert data.cache_root() == tmp_path / "mine"


def test_holdout_carves_a_seeded_validation_split_from_the_rest():
    labels = torch.arange(50) % 10
    split = data.Split(torch.arange(50, dtype=torch.uint8).view(50, 1, 1, 1), labels, (0.0,),
                       (1.0,))
    rest, held = data.holdout(split, 10, seed=3)
    assert len(rest) == 40 and len(held) == 10
    ids = lambda s: s.images.flatten().tolist()
    assert sorted(ids(rest) + ids(held)) == list(range(50)) and ids(held) == sorted(ids(held))
    assert ids(data.holdout(split, 10, seed=3)[1]) == ids(held)
    assert ids(data.holdout(split, 10, seed=4)[1]) != ids(held)
    with pytest.raises(ConfigError, match="cannot hold out 50 of 50"):
        data.holdout(split, 50)
