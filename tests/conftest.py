"""Shared fixtures: an isolated cache/results per test, no downloads, MNIST real or fake."""

from __future__ import annotations

import gzip
import os
import signal
import struct
import subprocess
import time
from pathlib import Path

import pickle

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
MNIST_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """Every test: downloads off, its own cache and results folders, and studies in fp32
    unless a test asks for bf16 (``--precision auto`` would pick bf16 on some CPUs only, and the
    suite must behave the same on every machine)."""
    monkeypatch.setenv("KD_OFFLINE", "1")
    monkeypatch.setenv("KD_PRECISION", "fp32")
    monkeypatch.setenv("KD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KD_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("KD_FIGURES", str(tmp_path / "figures"))
    yield
    from kd.experiment.lock import release_locks

    release_locks()  # studies run in-process (not through run_main) keep their tables locked


def real_mnist_root() -> Path | None:
    root = Path(os.environ.get("KD_DATA", REPO / "data")).resolve()
    raw = root / "MNIST" / "raw"
    found = all((raw / n).is_file() or (raw / f"{n}.gz").is_file() for n in MNIST_NAMES)
    return root if found else None


def write_fake_mnist(root: Path, n_train: int = 600, n_test: int = 200, gz: bool = True,
                     seed: int = 0) -> Path:
    """MNIST-format files (idx, optionally gzipped) in torchvision's layout under ``root``.

    Each image is its label drawn as a bright bar in a label-dependent row, plus noise, so a
    model can learn it; every class appears.
    """
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        images = rng.integers(0, 40, size=(n, 28, 28), dtype=np.uint8)
        for i, y in enumerate(labels):
            images[i, 4 + 2 * y: 6 + 2 * y, 4:24] = 255
        blobs = {f"{prefix}-images-idx3-ubyte": struct.pack(">IIII", 2051, n, 28, 28)
                 + images.tobytes(),
                 f"{prefix}-labels-idx1-ubyte": struct.pack(">II", 2049, n) + labels.tobytes()}
        for name, blob in blobs.items():
            if gz:
                with gzip.open(raw / f"{name}.gz", "wb") as handle:
                    handle.write(blob)
            else:
                (raw / name).write_bytes(blob)
    return root


@pytest.fixture
def fake_mnist(tmp_path, monkeypatch) -> Path:
    root = write_fake_mnist(tmp_path / "data")
    monkeypatch.setenv("KD_DATA", str(root))
    return root


@pytest.fixture
def mnist_root(tmp_path, monkeypatch) -> Path:
    """Real MNIST when $KD_DATA has it (CI does), else a small fake in the same layout."""
    root = real_mnist_root()
    if root is None:
        root = write_fake_mnist(tmp_path / "data", n_train=3000, n_test=1000)
    monkeypatch.setenv("KD_DATA", str(root))
    return root


def write_pickled_layout(root: Path, name: str, n_train: int = 20, n_test: int = 10) -> Path:
    """A tiny data set in torchvision's pickled CIFAR layout."""
    from kd.data import cifar

    folder_name, train_files, test_files, label_key, classes, *_ = cifar.LAYOUTS[name]
    folder = root / folder_name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for files, n in ((train_files, n_train), (test_files, n_test)):
        for file in files:
            batch = {"data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8),
                     label_key: list(rng.integers(0, classes, n))}
            with open(folder / file, "wb") as handle:
                pickle.dump(batch, handle)
    return root


@pytest.fixture
def fake_cifar10(tmp_path, monkeypatch) -> Path:
    """KD_DATA pointing at a tiny random CIFAR-10 (600 train, 300 test) in torchvision's layout."""
    root = write_pickled_layout(tmp_path / "fake_cifar", "cifar10", n_train=120, n_test=300)
    monkeypatch.setenv("KD_DATA", str(root))
    return root


@pytest.fixture(scope="session")
def ray_cluster() -> str:
    """One local Ray instance (2 CPUs, no dashboard, a small object store) for every test of
    ``--executor ray``; their address. Skipped when ray is not installed."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[ray]'): "
                                            "the --executor ray tests need it")
    # Ray's processes start with this environment: see tests/ray_stub/rfc3987_syntax.py.
    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "tests" / "ray_stub"),
                                                             path]))
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 object_store_memory=200 * 2**20)
    finally:
        if path is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = path
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def kill_after_rows(command: list[str], results: Path, rows: int, timeout: float) -> None:
    """Start ``command`` (a study) in the repository, wait until ``results`` holds ``rows`` rows
    (or the run ends, or ``timeout`` seconds pass), then SIGKILL it: the kill a resumed study
    must survive."""
    import pandas as pd

    process = subprocess.Popen(command, cwd=REPO, env=dict(os.environ),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if results.exists() and len(pd.read_csv(results)) >= rows:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()


def pytest_configure(config):
    """The test session is a kd process too: beside a running study it takes its share of the
    cores, and the study gives one up at its next cell (kd.experiment.threads), so that neither
    oversubscribes them."""
    from kd.experiment.threads import claim_threads

    claim_threads()
