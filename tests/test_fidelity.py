"""The fidelity study (Stanton et al. 2021): its metrics by hand, ensembles, interpolation,
augmentations, the smoke study end to end, and its notebook."""

import math
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from kd import metrics
from kd.data.augment import (ColorJitter, Compose, Mixup, RandomRotation, RandomVerticalFlip, mix,
                             mix_labels, mixup_with_partners)
from kd.data.cifar import RandomCropFlip
from kd.experiment.cli import run_main
from kd.models import Ensemble, LeNet5, build_model, interpolate_state, parameter_count
from studies import fidelity as study
from tests.conftest import REPO

# ----------------------------------------------------------------------------------------------
# Metrics by hand


def test_agreement_and_predictive_kl_by_hand():
    teacher = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 0.0]])  # argmax 0, 1, 0
    student = torch.tensor([[1.0, 2.0, 0.0], [0.0, 5.0, 0.0], [3.0, 0.0, 0.0]])  # argmax 1, 1, 0
    assert metrics.agreement(student, teacher) == pytest.approx(2 / 3)
    # p_t = (1/2, 1/4, 1/4), p_s = (1/4, 1/2, 1/4): KL = 1/2 ln 2 + 1/4 ln(1/2) = ln(2) / 4;
    # the second example is matched exactly (KL 0), so the mean is ln(2) / 8.
    p_t, p_s = torch.tensor([0.5, 0.25, 0.25]), torch.tensor([0.25, 0.5, 0.25])
    t = torch.stack([p_t.log() + 1.0, p_s.log()])  # logits up to a per-row constant
    s = torch.stack([p_s.log() - 2.0, p_s.log()])
    assert metrics.predictive_kl(t, s) == pytest.approx(math.log(2) / 8, abs=1e-6)


def test_ensemble_log_probs_is_the_log_of_the_mean_softmax():
    p1, p2 = torch.tensor([[0.5, 0.25, 0.25]]), torch.tensor([[0.1, 0.6, 0.3]])
    z1, z2 = p1.log() + 3.0, p2.log() - 1.0  # logits are defined up to a shift
    expected = torch.tensor([[0.3, 0.425, 0.275]]).log()
    assert torch.allclose(metrics.ensemble_log_probs([z1, z2]), expected, atol=1e-6)
    assert torch.allclose(metrics.ensemble_log_probs(torch.stack([z1, z2])), expected, atol=1e-6)
    z = torch.randn(5, 4)
    assert torch.allclose(metrics.ensemble_log_probs([z]), torch.log_softmax(z, 1), atol=1e-6)
    # members sure of different classes: no underflow, log(1/2) each
    sure = metrics.ensemble_log_probs([torch.tensor([[1000.0, 0.0]]),
                                       torch.tensor([[0.0, 1000.0]])])
    assert torch.allclose(sure, torch.full((1, 2), math.log(0.5)))
    with pytest.raises(ValueError):
        metrics.ensemble_log_probs([])


def test_ensemble_module_averages_its_members_and_m1_keeps_the_prediction():
    members = [LeNet5().eval() for _ in range(3)]
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        out = Ensemble(members)(x)
        expected = metrics.ensemble_log_probs([m(x) for m in members])
        assert torch.allclose(out, expected) and torch.allclose(out.exp().sum(1), torch.ones(4))
        single = Ensemble(members[:1])(x)
        assert torch.allclose(single, torch.log_softmax(members[0](x), 1), atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Models


def test_lenet5_shape_parameters_and_registry():
    model = build_model("lenet5")
    assert isinstance(model, LeNet5)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert parameter_count(model) == 156 + 2416 + 48120 + 10164 + 850


def test_interpolate_state_endpoints_are_exact_and_midpoint_is_the_mean():
    torch.manual_seed(0)
    a, b = build_model("resnet8"), build_model("resnet8")
    with torch.no_grad():  # make the BN buffers differ too
        for module in b.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_()
                module.num_batches_tracked.fill_(3)
    sa, sb = a.state_dict(), b.state_dict()
    for lam, target in ((1.0, sa), (0.0, sb)):
        mixed = interpolate_state(sa, sb, lam)
        for name, value in mixed.items():
            if value.is_floating_point():
                assert torch.equal(value, target[name]), (lam, name)
    mid = interpolate_state(sa, sb, 0.5)
    for name, value in mid.items():
        if value.is_floating_point():
            assert torch.allclose(value, (sa[name] + sb[name]) / 2, atol=1e-6), name
        else:  # integer buffers come from the first state
            assert torch.equal(value, sa[name]), name
    b.load_state_dict(mid)  # a valid state dict of the architecture
    with pytest.raises(ValueError):
        interpolate_state(sa, sb, 1.5)


# ----------------------------------------------------------------------------------------------
# Augmentations


def images(n: int = 8, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, channels, 32, 32), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def test_mixup_labels_follow_lambda_and_the_partner_permutation():
    x, labels = images(), torch.tensor([0, 1, 2, 3, 4, 5, 6, 7]) % 5
    mixed, partner, lam = mixup_with_partners(x, torch.Generator().manual_seed(1), alpha=0.4)
    assert sorted(partner.tolist()) == list(range(8)) and ((lam >= 0) & (lam <= 1)).all()
    expected = lam.view(-1, 1, 1, 1) * x.float() + (1 - lam.view(-1, 1, 1, 1)) * x[partner].float()
    assert torch.allclose(mixed, expected)
    soft = mix_labels(labels, partner, lam, num_classes=5)
    assert torch.allclose(soft.sum(1), torch.ones(8))
    for i in range(8):
        by_hand = torch.zeros(5)
        by_hand[labels[i]] += lam[i]
        by_hand[labels[partner[i]]] += 1 - lam[i]
        assert torch.allclose(soft[i], by_hand), i
    # λ = 1 leaves every image as it was
    assert torch.equal(mix(x, partner, torch.ones(8)), x.float())


@pytest.mark.parametrize("augment", [Mixup(1.0), RandomRotation(30.0), RandomVerticalFlip(),
                                     ColorJitter(0.4, 0.4, 0.4), RandomCropFlip(),
                                     Compose([RandomCropFlip(), RandomRotation(30.0),
                                              RandomVerticalFlip(), ColorJitter(), Mixup()])],
                         ids=["mixup", "rotation", "vflip", "jitter", "crop_flip", "all"])
def test_augmentations_keep_shape_and_range_and_repeat_for_a_seed(augment):
    x = images()
    run = lambda seed: augment(x, torch.Generator().manual_seed(seed))
    out = run(0)
    assert out.shape == x.shape and (out.dtype == torch.uint8 or out.is_floating_point())
    assert out.min() >= 0 and out.max() <= 255
    assert torch.equal(out, run(0))
    assert not torch.equal(out, run(1))
    grey = augment(images(channels=1), torch.Generator().manual_seed(0))  # MNIST-like too
    assert grey.shape == (8, 1, 32, 32)


def test_augmentations_are_random_per_image_and_neutral_at_zero_strength():
    same = images(1).expand(16, -1, -1, -1).contiguous()  # 16 copies of one image
    rotated = RandomRotation(30.0)(same, torch.Generator().manual_seed(0))
    assert len({tuple(r.flatten()[:50].tolist()) for r in rotated}) == 16
    x = images()
    g = torch.Generator()
    assert torch.equal(RandomRotation(0.0)(x, g), x.float())
    assert torch.equal(RandomVerticalFlip(1.0)(x, g), x.flip(2))
    assert torch.allclose(ColorJitter(0.0, 0.0, 0.0)(x, g), x.float(), atol=1e-3)


# ----------------------------------------------------------------------------------------------
# The study


def test_plan_covers_every_setting_of_the_paper_profile():
    paper = study.PROFILES["paper"]
    assert paper.seeds >= 3 and paper.arch == "resnet56" and paper.train_limit is None
    assert paper.ensemble_sizes == (1, 3, 5) and set(paper.augments) == set(study.AUGMENTS)
    assert paper.lambdas == (0.0, 0.125, 0.25, 0.375, 0.5, 0.75, 1.0)
    pairs = study.plan(paper, paper.seeds)
    teachers = sorted(seed for seed, cell in pairs if cell.name == "teacher")
    assert teachers == list(range(5 + paper.seeds - 1))  # seed s uses pool teachers s..s+m-1
    for profile in study.PROFILES.values():
        names = [c.name for c in study.student_cells(profile)]
        assert len(names) == len(set(names))
        assert {"ensemble/m1", "augment/none", "init/lam0", "mnist/student"} <= set(names)
    assert "init/lam0.375" in [c.name for c in study.student_cells(paper)]


def test_full_profile_tests_every_claim_with_five_seeds():
    full = study.PROFILES["full"]
    names = {c.name for c in study.student_cells(full)}
    assert full.seeds >= 5 and full.teacher.epochs > study.PROFILES["quick"].teacher.epochs
    # the claims read: m3 vs m1, every single harder augmentation and all, x4 vs x1, lambdas on
    # both sides of 0.375 and the teacher's init, MNIST
    assert {"ensemble/m1", "ensemble/m3", "augment/crop_flip", "augment/all", "epochs/x4",
            "init/lam0.25", "init/lam0.375", "init/teacher_init", "mnist/student"} <= names
    assert {f"augment/{a}" for a in study.HARDER} <= names
    teachers = sorted(seed for seed, cell in study.plan(full, full.seeds) if cell.name == "teacher")
    assert teachers == list(range(full.seeds + 2))  # ensembles of 3 from a pool of 7


def test_reference_numbers_are_data_with_sources():
    reference = pd.read_csv(study.REFERENCE)
    assert reference["source"].str.contains("Stanton et al. 2021").all()
    assert reference["dataset"].notna().all() and (reference["low"] <= reference["high"]).all()
    assert {"CIFAR-100, preactivation ResNet-56", "ImageNet, ResNet-50", "MNIST, LeNet-5"} == set(
        reference["dataset"])
    every_cell = {c.name for p in study.PROFILES.values() for c in study.student_cells(p)}
    assert {c for cells in reference["cell"] for c in cells.split()} <= every_cell | {"teacher"}


@pytest.fixture
def fidelity_data(mnist_root, fake_cifar10, tmp_path, monkeypatch) -> Path:
    """KD_DATA holding both the tiny fake CIFAR-10 and MNIST (real when present)."""
    root = tmp_path / "fidelity_data"
    root.mkdir()
    (root / "cifar-10-batches-py").symlink_to(fake_cifar10 / "cifar-10-batches-py")
    (root / "MNIST").symlink_to(mnist_root / "MNIST")
    monkeypatch.setenv("KD_DATA", str(root))
    return root


def test_smoke_study_runs_resumes_and_reports(fidelity_data, tmp_path, capsys):
    study.main(["--profile", "smoke", "--device", "cpu"])
    path = tmp_path / "results" / study.STUDY / "smoke.csv"
    rows = pd.read_csv(path)
    smoke = study.PROFILES["smoke"]
    assert list(zip(rows["cell"], rows["seed"])) == [(c.name, s) for s, c in study.plan(smoke, 1)]
    always = ["test_accuracy", "test_ece", "train_accuracy", "params", "model_key", "train_s",
              "wall_s", "hardware", "git_commit", "finished_at"]
    distilled = always + ["train_agreement", "test_agreement", "train_kl", "test_kl",
                          "teacher_test_accuracy", "teacher_keys", "m", "augment"]
    students = rows[rows["role"] == "student"]
    assert students[distilled].notna().all().all()
    assert rows[always].notna().all().all()
    assert students[["test_agreement", "train_agreement"]].stack().between(0, 1).all()
    # one model, four cells: self-distillation with crop + flip, base epochs, random init
    shared = students.set_index("cell").loc[["ensemble/m1", "augment/crop_flip", "epochs/x1",
                                             "init/lam0"], "model_key"]
    assert shared.nunique() == 1 and students["model_key"].nunique() == len(students) - 3
    by_cell = rows.set_index("cell")
    assert len(by_cell.loc["ensemble/m2", "teacher_keys"].split()) == 2
    assert by_cell.loc["mnist/teacher", "train_n"] == 200
    assert by_cell.loc["mnist/student", "train_n"] == 2000

    study.main(["--profile", "smoke", "--device", "cpu"])  # resume: nothing left to do
    assert len(pd.read_csv(path)) == len(rows)

    capsys.readouterr()
    study.main(["--profile", "smoke", "--report"])
    out = capsys.readouterr().out
    for text in ("| self-distillation (m = 1), test agreement | CIFAR-100, preactivation "
                 "ResNet-56 | 72.5–74.5 |", "| 77.17 |", "> 99", "84–86", "ImageNet, ResNet-50",
                 "| init/lam1 |", "(1 seed)"):
        assert text in out, text


def test_report_without_results_and_missing_data_exit_with_code_2(tmp_path, monkeypatch, capsys):
    assert run_main(study.main, ["--profile", "smoke", "--report"]) == 2
    assert "no smoke results" in capsys.readouterr().err
    monkeypatch.setenv("KD_DATA", str(tmp_path / "empty"))
    assert run_main(study.main, ["--profile", "smoke", "--dataset", "cifar100",
                                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CIFAR100 not found" in err[0]


def execute(notebook: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(notebook.parent)}}).execute()


def test_fidelity_notebook_draws_its_figures_from_smoke_results(fidelity_data, monkeypatch):
    study.main(["--profile", "smoke", "--device", "cpu"])
    monkeypatch.setenv("KD_PROFILE", "smoke")
    execute(REPO / "notebooks" / "fidelity.ipynb")
    figures = Path(os.environ["KD_FIGURES"])
    for name in ("fidelity_agreement_accuracy.png", "fidelity_train_test.png", "fidelity_init.png",
                 "fidelity_epochs.png"):
        assert (figures / name).stat().st_size > 10_000, name


def test_fidelity_notebook_fails_clearly_without_results():
    with pytest.raises(Exception, match="no results"):
        execute(REPO / "notebooks" / "fidelity.ipynb")
