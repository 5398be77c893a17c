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


def test_bench_records_a_task_with_its_ratio(tmp_path, monkeypatch, one_thread):
    root = write_pickled_layout(tmp_path / "data", "cifar10", n_train=8)
    monkeypatch.setenv("KD_DATA", str(root))
    args = ["--task", "batched", "--device", "cpu", "--batch-size", "4", "--batches", "1",
            "--students", "2", "--student-arch", "resnet8", "--precision", "fp32", "--record"]
    bench.main(args)
    bench.main(args)
    table = bench.ResultsTable("bench", "batched").read()
    assert list(table["seed"]) == [0, 1]
    assert table["cell"].str.startswith("CIFAR-10, 2 resnet8 students").all()
    assert table["ratio"].to_numpy() == pytest.approx(  # kept to three decimals
        (table["first_per_s"] / table["second_per_s"]).to_numpy(), abs=5e-4)
    assert set(table["precision"]) == {"fp32"} and set(table["unit"]) == {"student-images/s"}


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
    monkeypatch.setattr(module.precision_lib, "native_bf16", lambda device: True)
    monkeypatch.setattr(module.precision_lib, "measure",  # measured: bf16 1.5x for the MLP only
                        lambda model, x, y: {"fp32": 1.0, "bf16": 1.5 if x.dim() == 4 and
                                             x.shape[1] == 1 else 0.9})
    rows = module.roofline_rows(torch.device("cpu"),
                                module.argparse.Namespace(batch_size=2, batches=1))
    assert [(r["model"], r["precision"]) for r in rows[:2]] == [
        ("mlp 784-1200-1200-10", "fp32"), ("mlp 784-1200-1200-10", "bf16")]
    assert len(rows) == 2 * len(module.ROOFLINE_MODELS)
    assert [r["auto"] for r in rows[::2]] == ["bf16"] + ["fp32"] * (len(rows) // 2 - 1)
    assert rows[0]["bf16_speedup"] == 1.5 and rows[2]["bf16_speedup"] == 0.9
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
    assert "auto: bf16, measured 1.50x" in out[2] and "auto: fp32, measured 0.90x" in out[3]
    for run in (0, 1):  # --record appends each run's rows, one seed per run
        module.main(["--task", "roofline", "--device", "cpu", "--batch-size", "2", "--batches",
                     "1", "--record"])
    table = module.ResultsTable("bench", "roofline").read()
    assert len(table) == 2 * len(rows) and sorted(set(table["seed"])) == [0, 1]
    first = table[(table["seed"] == 0) & (table["cell"] == "mlp 784-1200-1200-10|bf16")].iloc[0]
    assert (first["precision"], first["auto"], first["bf16_speedup_measured"]) == (
        "bf16", "bf16", 1.5)
    assert first["matmul_gflops_per_s"] == 1.0 and first["threads"] == torch.get_num_threads()


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


@pytest.mark.parametrize("name, group", [
    ("aten::convolution_backward", "convolution"), ("aten::mkldnn_convolution", "convolution"),
    ("aten::native_batch_norm_backward", "batch norm"), ("aten::threshold_backward", "activation"),
    ("aten::clamp_min_", "activation"), ("aten::copy_", "layout and casts"),
    ("aten::_to_copy", "layout and casts"), ("aten::_foreach_add_", "optimizer"),
    ("aten::add_", "optimizer"), ("aten::mm", "other")])
def test_profile_groups_operators_by_kind(name, group):
    from kd.experiment import op_profile

    assert op_profile.group_of(name) == group


def test_profile_task_prints_shares_that_sum_to_one(capsys, one_thread):
    from collections import Counter

    from kd.experiment import op_profile

    shares = op_profile.shares(Counter({"aten::convolution_backward": 60.0,
                                        "aten::native_batch_norm": 30.0, "aten::mm": 10.0}))
    assert shares == {"convolution": 0.6, "batch norm": 0.3, "activation": 0.0,
                      "layout and casts": 0.0, "optimizer": 0.0, "other": 0.1}
    bench.main(["--task", "profile", "--device", "cpu", "--batch-size", "2",
                "--profile-arch", "resnet8"])
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("  resnet8, batch 2")
    for line, precision in ((out[2], "fp32"), (out[4], "bf16")):
        assert line.startswith(f"  {precision}: convolution ")
        assert sum(int(p.rsplit(" ", 1)[1].rstrip("%")) for p in line.split(": ", 1)[1]
                   .split(", ")) == pytest.approx(100, abs=4)  # rounded shares
    assert "top operators:" in out[3]
