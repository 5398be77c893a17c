"""Every notebook executes headless on smoke results and writes its figures."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from studies import alpha_temperature, capacity_gap, early_stopping, hinton_mnist, method_zoo
from tests.conftest import REPO


def execute(notebook: Path) -> None:
    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(notebook.parent)}}).execute()


def test_hinton_notebook_draws_its_figures_from_smoke_results(mnist_root, tmp_path, monkeypatch):
    hinton_mnist.main(["--profile", "smoke", "--device", "cpu"])
    monkeypatch.setenv("KD_PROFILE", "smoke")
    execute(REPO / "notebooks" / "hinton_mnist.ipynb")
    figures = Path(os.environ["KD_FIGURES"])
    for name in ("hinton_mnist_temperature.png", "hinton_mnist_omitted.png"):
        assert (figures / name).stat().st_size > 10_000, name


def test_hinton_notebook_fails_clearly_without_results(tmp_path):
    with pytest.raises(Exception, match="no results"):
        execute(REPO / "notebooks" / "hinton_mnist.ipynb")


def test_alpha_temperature_notebook_draws_heatmaps_from_smoke_results(fake_cifar10, monkeypatch):
    alpha_temperature.main(["--profile", "smoke", "--device", "cpu"])
    monkeypatch.setenv("KD_PROFILE", "smoke")
    execute(REPO / "notebooks" / "alpha_temperature.ipynb")
    figures = Path(os.environ["KD_FIGURES"])
    for name in ("alpha_temperature_heatmaps.png", "alpha_temperature_curves.png"):
        assert (figures / name).stat().st_size > 10_000, name


def test_capacity_gap_and_early_stopping_notebooks_draw_from_smoke_results(fake_cifar10,
                                                                            monkeypatch):
    capacity_gap.main(["--profile", "smoke", "--device", "cpu"])
    early_stopping.main(["--profile", "smoke", "--device", "cpu"])
    monkeypatch.setenv("KD_PROFILE", "smoke")
    execute(REPO / "notebooks" / "capacity_gap.ipynb")
    execute(REPO / "notebooks" / "early_stopping.ipynb")
    figures = Path(os.environ["KD_FIGURES"])
    for name in ("capacity_gap_teachers.png", "capacity_gap_assistants.png",
                 "early_stopping_checkpoints.png", "early_stopping_eskd.png"):
        assert (figures / name).stat().st_size > 10_000, name


def test_method_zoo_notebook_draws_from_smoke_results(fake_cifar10, monkeypatch):
    method_zoo.main(["--profile", "smoke", "--device", "cpu"])
    monkeypatch.setenv("KD_PROFILE", "smoke")
    execute(REPO / "notebooks" / "method_zoo.ipynb")
    assert (Path(os.environ["KD_FIGURES"]) / "method_zoo.png").stat().st_size > 10_000
    assert (Path(os.environ["KD_FIGURES"]) / "method_zoo_gain.png").stat().st_size > 10_000
