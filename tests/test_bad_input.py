"""Corrupt and foreign files, and bad arguments: one line on stderr naming the file and what to
do, exit code 2, and every file that was there before left byte for byte as it was.

Studies run in-process through :func:`kd.experiment.cli.run_main` with the smoke profile; every case
fails before any training starts, so the file stays fast.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kd import data
from kd.data import cifar
from kd.experiment.cache import ModelCache
from kd.experiment.cli import run_main
from kd.models import MLP
from kd.train.distill import CrossEntropy
from kd.train.engine import TrainConfig
from studies import capacity_gap, hinton_mnist
from tests.conftest import REPO, write_fake_mnist, write_pickled_layout
from tests.test_cifar import write_offline_npz

SMOKE = ["--profile", "smoke", "--device", "cpu"]


def one_error_line(capsys, main, argv: list[str] | None = None) -> str:
    """Run ``main`` as the command line does: exit 2 and exactly one line on stderr; that line."""
    code = run_main(main, argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture
def no_data(tmp_path, monkeypatch) -> None:
    """KD_DATA pointing nowhere: a study that got as far as loading data (the step before any
    training) would fail with "MNIST not found" instead of the error under test."""
    monkeypatch.setenv("KD_DATA", str(tmp_path / "no-data"))


def load_mnist_main(argv=None) -> None:
    data.load("mnist", train=True)


def load_cifar10_main(argv=None) -> None:
    data.load("cifar10", train=True)


def snapshot(folder: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def assert_unchanged(before: dict[Path, bytes], folder: Path) -> None:
    """Every file of ``before`` has its bytes, and no temporary file was left behind."""
    for path, blob in before.items():
        assert path.read_bytes() == blob, f"{path} changed"
    assert not [p for p in folder.rglob("*") if ".tmp" in p.name]


def cut(path: Path, keep: float = 0.5) -> None:
    blob = path.read_bytes()
    path.write_bytes(blob[:int(len(blob) * keep)])


# -- MNIST --------------------------------------------------------------------------------------

def small_mnist(root: Path, gz: bool = True) -> Path:
    return write_fake_mnist(root, n_train=60, n_test=20, gz=gz)


@pytest.mark.parametrize("damage,expected", [
    (cut, "not a whole gzip file"),
    (lambda p: p.write_bytes(b"not gzip at all" * 10), "not a whole gzip file"),
    # a whole gzip file of the wrong content: the labels where the images belong
    (lambda p: p.write_bytes(p.with_name("train-labels-idx1-ubyte.gz").read_bytes()),
     "not an MNIST images file")])
def test_broken_mnist_gz_stops_the_study(tmp_path, monkeypatch, capsys, damage, expected):
    root = small_mnist(tmp_path / "data")
    gz = root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    damage(gz)
    monkeypatch.setenv("KD_DATA", str(root))
    before = snapshot(tmp_path)
    line = one_error_line(capsys, hinton_mnist.main, SMOKE)
    assert str(gz) in line and expected in line and "restore it" in line
    assert_unchanged(before, tmp_path)
    assert not (gz.parent / "train-images-idx3-ubyte").exists()


@pytest.mark.parametrize("damage,expected", [
    (cut, "truncated"),
    (lambda p: p.write_bytes(p.read_bytes() + b"\0"), "too long"),
    (lambda p: p.write_bytes(b"\0\0"), "too short for an idx header"),
    (lambda p: p.write_bytes(p.with_name("t10k-labels-idx1-ubyte").read_bytes()),
     "not an MNIST images file")])
def test_broken_raw_idx_file_is_named_and_kept(tmp_path, monkeypatch, capsys, damage, expected):
    root = small_mnist(tmp_path / "data", gz=False)
    broken = root / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    damage(broken)
    monkeypatch.setenv("KD_DATA", str(root))
    before = snapshot(tmp_path)
    line = one_error_line(capsys, load_mnist_main)
    assert str(broken) in line and expected in line and "original MNIST download" in line
    assert_unchanged(before, tmp_path)


def test_broken_gunzipped_copy_is_rebuilt_from_its_gz(tmp_path, monkeypatch, capsys):
    root = small_mnist(tmp_path / "data")
    monkeypatch.setenv("KD_DATA", str(root))
    first = data.load_mnist(train=True)
    plain = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    whole = plain.read_bytes()
    cut(plain)  # e.g. a disk that filled up
    gz_files = {p: p.read_bytes() for p in plain.parent.glob("*.gz")}
    capsys.readouterr()
    again = data.load_mnist(train=True)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ") and str(plain) in err[0]
    assert torch.equal(again.images, first.images) and plain.read_bytes() == whole
    assert all(p.read_bytes() == blob for p, blob in gz_files.items())


def idx_labels(labels: list[int]) -> bytes:
    return struct.pack(">II", 2049, len(labels)) + bytes(labels)


@pytest.mark.parametrize("labels,expected", [
    ([1] * 59, "holds 60 images but"), ([1] * 59 + [12], "has labels outside 0..9")])
def test_mnist_labels_that_do_not_fit(tmp_path, monkeypatch, capsys, labels, expected):
    root = small_mnist(tmp_path / "data", gz=False)
    broken = root / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    broken.write_bytes(idx_labels(labels))
    monkeypatch.setenv("KD_DATA", str(root))
    before = snapshot(tmp_path)
    line = one_error_line(capsys, load_mnist_main)
    assert str(broken) in line and expected in line
    assert_unchanged(before, tmp_path)


@pytest.mark.parametrize("where", ["data root", "a parent of it"])
def test_kd_data_that_is_a_file(tmp_path, monkeypatch, capsys, where):
    file = tmp_path / "mnist.tar"
    file.write_bytes(b"some archive")
    monkeypatch.setenv("KD_DATA", str(file if where == "data root" else file / "data"))
    line = one_error_line(capsys, hinton_mnist.main, SMOKE)
    expected = f"{file} (KD_DATA) is a file" if where == "data root" else f"under {file}, a file"
    assert expected in line and "set KD_DATA to the folder" in line
    assert file.read_bytes() == b"some archive"


# -- CIFAR --------------------------------------------------------------------------------------

@pytest.mark.parametrize("damage,expected", [
    (cut, "not a whole CIFAR batch"),
    (lambda p: p.write_bytes(b""), "not a whole CIFAR batch"),
    (lambda p: p.write_bytes(b"\x80\x04garbage"), "not a whole CIFAR batch"),
    (lambda p: p.write_bytes(gzip.compress(p.read_bytes())), "not a whole CIFAR batch"),
    (lambda p: torch.save({"labels": [1]}, p), "not a whole CIFAR batch"),
    (lambda p: p.write_bytes(pickle.dumps({"data": np.zeros((3, 3072), np.uint8),
                                            "labels": [1, 2]})), "3 images but 2 labels"),
    (lambda p: p.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8),
                                            "labels": [0, 10]})), "has labels outside 0..9")])
def test_broken_pickled_cifar_batch(tmp_path, monkeypatch, capsys, damage, expected):
    root = write_pickled_layout(tmp_path / "data", "cifar10", n_train=4, n_test=2)
    broken = root / "cifar-10-batches-py" / "data_batch_3"
    damage(broken)
    monkeypatch.setenv("KD_DATA", str(root))
    before = snapshot(tmp_path)
    line = one_error_line(capsys, load_cifar10_main)
    assert str(broken) in line and expected in line and "restore it" in line
    assert_unchanged(before, tmp_path)


def drop_key(path: Path) -> None:
    with np.load(path) as arrays:
        kept = {k: arrays[k] for k in arrays.files if k != "train_offsets"}
    with open(path, "wb") as handle:
        np.savez(handle, **kept)


def wrong_offsets(path: Path) -> None:
    with np.load(path) as arrays:
        changed = {k: arrays[k] for k in arrays.files}
    changed["train_offsets"] = changed["train_offsets"][:-2]
    with open(path, "wb") as handle:
        np.savez(handle, **changed)


def labels_out_of_range(path: Path) -> None:
    with np.load(path) as arrays:
        changed = {k: arrays[k] for k in arrays.files}
    changed["train_labels"][0] = 10
    with open(path, "wb") as handle:
        np.savez(handle, **changed)


@pytest.mark.parametrize("damage", [cut, lambda p: p.write_bytes(b"junk" * 100), drop_key,
                                    wrong_offsets, labels_out_of_range])
def test_broken_offline_cifar_npz(tmp_path, monkeypatch, capsys, damage):
    write_offline_npz(tmp_path / "data")
    npz = tmp_path / "data" / cifar.OFFLINE_NPZ
    damage(npz)
    monkeypatch.setenv("KD_DATA", str(tmp_path / "data"))
    before = snapshot(tmp_path)
    line = one_error_line(capsys, load_cifar10_main)
    assert str(npz) in line and "not a whole CIFAR-10 JPEG archive" in line
    assert_unchanged(before, tmp_path)
    assert not (tmp_path / "cache" / "cifar10").exists() or not any(
        (tmp_path / "cache" / "cifar10").iterdir())


def other_arrays(path: Path) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, images=np.zeros((2, 3, 8, 8), np.uint8), labels=np.zeros(2, np.int64))


@pytest.mark.parametrize("damage", [cut, lambda p: p.write_bytes(b""), other_arrays])
def test_broken_decoded_cifar_cache_is_dropped_and_rebuilt(tmp_path, monkeypatch, capsys, damage):
    write_offline_npz(tmp_path / "data")
    monkeypatch.setenv("KD_DATA", str(tmp_path / "data"))
    first = cifar.load_cifar10(True)
    (cached,) = (tmp_path / "cache" / "cifar10").glob("train-*.npz")
    whole = cached.read_bytes()
    damage(cached)
    npz_before = (tmp_path / "data" / cifar.OFFLINE_NPZ).read_bytes()
    capsys.readouterr()
    again = cifar.load_cifar10(True)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ") and str(cached) in err[0]
    assert torch.equal(again.images, first.images) and cached.read_bytes() == whole
    assert (tmp_path / "data" / cifar.OFFLINE_NPZ).read_bytes() == npz_before


# -- results tables -----------------------------------------------------------------------------

HEADER = b"study,profile,cell,seed,test_errors\n"
BROKEN_TABLES = {
    "empty": (b"", "is empty (0 bytes)"),
    "half-written last line": (HEADER + b"hinton_mnist,smoke,teacher,0,12\nhinton_mnist,smo",
                               "half-written line"),
    "a long row": (HEADER + b"hinton_mnist,smoke,teacher,0,12,3,4\n",
                   "has 7 fields on line 2, its header 5"),
    "a short row": (HEADER + b"hinton_mnist,smoke,teacher,0,12\nhinton_mnist,smoke,T2,0\n",
                    "has 4 fields on line 3, its header 5"),
    "NUL bytes": (HEADER + b"hinton_mnist,smoke,teacher,0,12\n" + b"\0" * 64 + b"\n",
                  "contains NUL bytes"),
    "not text": (b"\xff\xfe\x81\x9f\n" * 20, "cannot be parsed as CSV"),
    "another schema": (b"epoch,loss\n1,0.5\n", "has no study, profile, cell, seed column"),
    "a blank key": (HEADER + b"hinton_mnist,smoke,teacher,0,12\nhinton_mnist,smoke,,0,3\n",
                    "without study, profile, cell or seed (line 3)"),
    "a seed that is not a number": (HEADER + b"hinton_mnist,smoke,teacher,first,12\n",
                                    "seeds that are not integers"),
    "another study": (HEADER + b"fidelity,smoke,teacher,0,12\n", "holds rows of fidelity/smoke"),
    "another profile": (HEADER + b"hinton_mnist,quick,teacher,0,12\n",
                        "holds rows of hinton_mnist/quick, not hinton_mnist/smoke"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_TABLES))
@pytest.mark.parametrize("report", [False, True])
def test_foreign_or_broken_results_table_is_never_written(tmp_path, capsys, no_data, case,
                                                          report):
    content, expected = BROKEN_TABLES[case]
    table = tmp_path / "results" / "hinton_mnist" / "smoke.csv"
    table.parent.mkdir(parents=True)
    table.write_bytes(content)
    before = snapshot(tmp_path)
    line = one_error_line(capsys, hinton_mnist.main, SMOKE + ["--report"] * report)
    assert str(table) in line and expected in line and "left as it is" in line
    assert_unchanged(before, tmp_path)


def test_results_table_that_is_a_folder(tmp_path, capsys, no_data):
    table = tmp_path / "results" / "hinton_mnist" / "smoke.csv"
    (table / "inside").mkdir(parents=True)
    line = one_error_line(capsys, hinton_mnist.main, SMOKE)
    assert f"cannot read results table {table} (Is a directory)" in line
    assert (table / "inside").is_dir()


def test_broken_results_table_end_to_end_has_no_traceback(tmp_path, no_data):
    table = tmp_path / "results" / "hinton_mnist" / "smoke.csv"
    table.parent.mkdir(parents=True)
    table.write_bytes(HEADER + b"hinton_mnist,smoke,teacher,0,1")
    done = subprocess.run([sys.executable, "-m", "studies.hinton_mnist", *SMOKE], cwd=REPO,
                          env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert str(table) in done.stderr and "Traceback" not in done.stderr
    assert table.read_bytes() == HEADER + b"hinton_mnist,smoke,teacher,0,1"


@pytest.mark.parametrize("where", ["--results", "the study's folder"])
def test_results_under_a_file_fail_before_training(tmp_path, capsys, no_data, where):
    file = tmp_path / "notes.txt"
    file.write_bytes(b"keep me")
    if where == "--results":
        argv = SMOKE + ["--results", str(file)]
    else:
        argv, file = SMOKE, tmp_path / "results" / "hinton_mnist"
        file.parent.mkdir()
        file.write_bytes(b"keep me")
    line = one_error_line(capsys, hinton_mnist.main, argv)
    assert f"{file} is a file, not a folder" in line and "--results" in line
    assert file.read_bytes() == b"keep me"


def test_read_only_results_folder_fails_before_training(tmp_path, monkeypatch, capsys, no_data):
    folder = tmp_path / "results" / "hinton_mnist"
    folder.mkdir(parents=True)
    folder.chmod(0o555)
    if os.geteuid() == 0:  # root may write anyway: make the permission check see what others do
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: (
            False if Path(path) == folder else real_access(path, mode, **kw)))
    try:
        line = one_error_line(capsys, hinton_mnist.main, SMOKE)
    finally:
        folder.chmod(0o755)
    assert f"{folder} is not writable" in line and "--results" in line


def test_kd_cache_that_is_a_file_fails_before_training(tmp_path, monkeypatch, capsys, no_data):
    file = tmp_path / "cache.bin"
    file.write_bytes(b"not a folder")
    monkeypatch.setenv("KD_CACHE", str(file))
    line = one_error_line(capsys, hinton_mnist.main, SMOKE)
    assert f"{file} (KD_CACHE) is a file, not a folder" in line and "set KD_CACHE" in line
    assert file.read_bytes() == b"not a folder"


# -- the model cache ------------------------------------------------------------------------------

@pytest.mark.parametrize("damage,why", [
    (cut, "training it again"), (lambda p: p.write_bytes(b""), "training it again"),
    (lambda p: torch.save(torch.ones(3), p), "not a model-cache entry")])
def test_broken_model_cache_entry_is_said_and_retrained(tmp_path, capsys, damage, why):
    cache = ModelCache(tmp_path / "models_root")
    spec = {"arch": "mlp", "seed": 0}
    model = MLP(4, (3,), num_classes=2)
    cache.save(spec, model.state_dict(), {"train_s": 1.0})
    path = cache.path(spec)
    damage(path)
    broken = path.read_bytes()
    assert cache.load(spec) is None and path.read_bytes() == broken
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and str(path) in err[0] and why in err[0]

    train = data.Split(torch.randint(0, 256, (16, 1, 2, 2), dtype=torch.uint8),
                       torch.arange(16) % 2, (0.5,), (0.25,), num_classes=2)
    config = TrainConfig(epochs=1, batch_size=8, optimizer="adam", lr=1e-2)
    _, meta, _ = cache.fit(spec, MLP(4, (3,), num_classes=2), train, CrossEntropy(), config,
                           seed=0)
    assert "train_s" in meta and cache.load(spec)["meta"] == meta  # retrained and stored again


# -- arguments ----------------------------------------------------------------------------------

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")


@pytest.mark.parametrize("main,args,expected", [
    (hinton_mnist.main, ["--device", "foo"], "unknown device 'foo'"),
    pytest.param(hinton_mnist.main, ["--device", "cuda"], "CUDA is not available", marks=NO_CUDA),
    pytest.param(hinton_mnist.main, ["--device", "cuda:7"], "CUDA is not available",
                 marks=NO_CUDA),
    (hinton_mnist.main, ["--profile", "huge"], "invalid choice: 'huge'"),
    (hinton_mnist.main, ["--seeds", "0"], "expected a positive integer, got 0"),
    (hinton_mnist.main, ["--seeds", "two"], "expected a positive integer, got 'two'"),
    (hinton_mnist.main, ["--seeds", "3:1"], "expected 0 <= A < B in A:B, got '3:1'"),
    (hinton_mnist.main, ["--seeds", "2:2"], "expected 0 <= A < B in A:B, got '2:2'"),
    (hinton_mnist.main, ["--seeds=-1:2"], "expected 0 <= A < B in A:B, got '-1:2'"),
    (hinton_mnist.main, ["--seeds", "a:b"], "expected N or A:B (seeds A to B-1), got 'a:b'"),
    (hinton_mnist.main, ["--no-such-option"], "unrecognized arguments: --no-such-option"),
    (capacity_gap.main, ["--dataset", "imagenet"], "invalid choice: 'imagenet'")])
def test_bad_arguments_are_one_line(tmp_path, capsys, no_data, main, args, expected):
    line = one_error_line(capsys, main, ["--profile", "smoke", *args])
    assert expected in line
    assert not (tmp_path / "results").exists()
