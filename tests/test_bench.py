import re

import pytest
import torch
from torchvision.transforms.v2.functional import pil_to_tensor

from kd import data
from kd.experiment import bench
from kd.train.engine import torch_threads
from tests.conftest import write_fake_mnist, write_pickled_layout

RATE = re.compile(r"^  (ours|textbook|stacked|sequential) *: +([\d,]+) (samples|images|student-images)/s")


@pytest.fixture
def one_thread():
    """One intra-op thread keeps these tiny steps at about a second (see
    kd.train.engine.torch_threads)."""
    with torch_threads(1):
        yield


def test_bench_prints_rates_for_both_tasks(tmp_path, monkeypatch, capsys, one_thread):
    # Tiny fakes of both data sets in one root; two batches of 4 images each.
    root = write_pickled_layout(write_fake_mnist(tmp_path / "data", n_train=64, n_test=10),
                                "cifar10", n_train=8)
    monkeypatch.setenv("KD_DATA", str(root))
    monkeypatch.setattr(bench, "ROOFLINE_MODELS", {"mlp 784-1200-1200-10": (
        lambda: bench.MLP(784, (1200, 1200)), (1, 28, 28))})
    monkeypatch.setattr(bench, "matmul_flops", lambda device, dtype, **kw: 1e9)
    bench.main(["--task", "all", "--device", "cpu", "--batch-size", "4", "--batches", "2",
                "--students", "3"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("MNIST") and lines[4].startswith("CIFAR-10")
    assert "first 2 batches" in lines[4] and "cpu (" in lines[4]
    assert lines[8].startswith("CIFAR-10, 3 plain_cnn2 students")
    rates = [float(m.group(2).replace(",", "")) for m in map(RATE.match, lines) if m]
    ratios = [float(line.split(":")[1].strip(" x")) for line in lines if "ratio" in line]
    assert len(rates) == 6 and all(r > 0 for r in rates)
    assert len(ratios) == 3 and all(r > 0 for r in ratios)
    assert lines[5].endswith("images/s") and lines[1].endswith("samples/s")
    assert "stacked" in lines[9] and lines[9].endswith("student-images/s")
    assert lines[12].startswith("Training steps against") and "bf16/fp32" in lines[14]


def test_pil_dataset_serves_what_torchvision_cifar10_would(tmp_path, monkeypatch):
    monkeypatch.setenv("KD_DATA", str(write_pickled_layout(tmp_path, "cifar10", n_train=2)))
    split = data.load("cifar10", train=True)
    dataset = bench.PILImageDataset(split, transform=lambda image: image)
    image, label = dataset[3]
    assert image.size == (32, 32) and image.mode == "RGB" and label == int(split.labels[3])
    assert torch.equal(pil_to_tensor(image), split.images[3])


def test_roofline_prints_each_model_in_both_precisions_against_the_matmul(capsys, one_thread,
                                                                          monkeypatch):
    from kd.experiment import bench as module

    monkeypatch.setattr(module, "matmul_flops", lambda device, dtype, **kw: 1e9)  # no 2048³ here
    rows = module.roofline_rows(torch.device("cpu"),
                                module.argparse.Namespace(batch_size=2, batches=1))
    assert [(r["model"], r["precision"]) for r in rows[:2]] == [
        ("mlp 784-1200-1200-10", "fp32"), ("mlp 784-1200-1200-10", "bf16")]
    assert len(rows) == 2 * len(module.ROOFLINE_MODELS)
    # the MLP's FLOPs by hand: forward 2·(784·1200 + 1200·1200 + 1200·10) per image, backward
    # twice that (gradients of inputs and weights), except the first layer's input gradient
    mlp = rows[0]["flops_per_s"] / rows[0]["images_per_s"]
    forward = 2 * (784 * 1200 + 1200 * 1200 + 1200 * 10)
    assert mlp == pytest.approx(3 * forward - 2 * 784 * 1200, rel=1e-6)
    module.main(["--task", "roofline", "--device", "cpu", "--batch-size", "2", "--batches", "1"])
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("  matmul 2048x2048: fp32 1.0 GFLOP/s, bf16 1.0 GFLOP/s")
    assert len(out) == 2 + len(module.ROOFLINE_MODELS)
    assert all("fp32" in line and "bf16/fp32" in line for line in out[2:])


@pytest.mark.parametrize("module", ["kd.experiment.bench", "kd.experiment.estimate"])
def test_bad_arguments_of_the_benchmarks_are_one_line_and_exit_2(module):
    import subprocess
    import sys

    from tests.conftest import REPO

    option = "--task" if module == "kd.experiment.bench" else "--profile"
    done = subprocess.run([sys.executable, "-m", module, option, "nonsense"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "invalid choice" in done.stderr
