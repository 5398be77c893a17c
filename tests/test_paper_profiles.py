"""The paper profiles' code paths, which nothing else runs on a CPU (issue 16, section 4).

Each study's ``main`` runs its paper profile, every cell of the first seed, with the models of
the profile (ResNet-110 and its family, the 91 stacked students, ensembles of five ResNet-56
teachers, teacher-assistant chains, every method of the zoo), through
:mod:`kd.experiment.estimate`'s stand-ins: fake data (a fiftieth of the real sizes), and each
distinct kind of training run trained for two real steps of :func:`kd.train.engine.fit` on two
images (the others of its kind reuse the count), each evaluation a real forward pass on two
images. Everything else of the profile (plans, teachers and their checkpoints, the model cache,
method construction, scoring, result rows) runs as it would on a GPU. No ``--compile``.
"""

import re

import pytest

from kd.experiment import estimate
from kd.train.engine import torch_threads

# what each paper profile must have trained, in the labels of its runs
EXPECTED = {
    "hinton_mnist": ["teacher", "800x2", "300x2", "30x2", "no_3", "only_7_8"],
    "alpha_temperature": ["teacher", "91 student(s)"],
    "capacity_gap": ["teacher resnet110", "resnet56 from resnet110", "resnet14 from resnet110",
                     "plain_cnn8 from plain_cnn10",
                     # the students of every teacher as one stack (their seeds too, when all
                     # seeds run); the 4 of the assistants, too few to stack, one at a time
                     "resnet8 from resnet14/resnet20/resnet32/resnet44/resnet56/resnet110",
                     "resnet8 from resnet56"],
    "early_stopping": ["teacher resnet110", "resnet8 from resnet20/resnet56/resnet110",
                       "teacher plain_cnn10"],
    "fidelity": ["teacher", "ensemble/m5", "ensemble/m5/mixup", "augment/all", "epochs/x4",
                 "mnist teacher", "mnist student"],
    "method_zoo": ["teacher resnet56", "teacher resnet32", "resnet32 from resnet56",
                   "resnet56->resnet20/kd_via_resnet32", "resnet56->plain_cnn6/kd_via_resnet20",
                   "resnet56->resnet20/mutual", "resnet56->plain_cnn6/born_again",
                   "resnet56->resnet20/quantized/w8/labels",
                   # the students of the pair's teacher(s), every feature method among them
                   "resnet56->resnet20/11 students in lockstep",
                   "resnet56->plain_cnn6/11 students in lockstep"],
}
TODO = re.compile(r"; (\d+) (?:student )?cells")


@pytest.fixture(scope="module")
def tracer():
    """Shared by the studies, so a kind of run measured for one is not trained again."""
    return estimate.Tracer(batch=2, data_scale=0.02)


@pytest.mark.parametrize("study", estimate.STUDIES)
def test_paper_profile_runs_every_kind_of_cell(study, tracer):
    with torch_threads(1):
        result = estimate.run_study(study, "paper", tracer=tracer, precision="fp32", seeds=1)
    assert not result.failures, result.failures
    planned = int(TODO.search(result.output).group(1))
    teacher_row = study == "alpha_temperature"  # its teacher's row is not among the cells
    assert result.cells == planned + teacher_row > 0, result.output
    train = [job for job in result.jobs if job.kind == "train"]
    labels = [job.label.split(" (+")[0] for job in train]
    assert set(EXPECTED[study]) <= {job.label for job in train} | set(labels), labels
    assert all(p.step.ops > 0 and p.step.flops_per_image > 0 and p.step.finite
               for job in train for p in job.phases)
    if study == "alpha_temperature":
        assert any(job.model.startswith("91 x ") for job in train)
    if study == "hinton_mnist":  # the 11 students of a width (hard labels, every T) as one stack
        assert sum(job.model.startswith("11 x ") for job in train) == 3
    if study == "method_zoo":  # kd, 5 feature methods, 3 multi-teacher, 2 quantized
        assert sum(job.model.startswith("11 in lockstep: ") for job in train) == 2
    if study == "early_stopping":  # early-stopped KD: the teacher stops at epoch 80 of 150
        assert any([p.epochs for p in job.phases] == [80, 70] for job in train)
    table = estimate.report([result], estimate.Target())
    assert f"### {study} [paper]" in table and "| **total** |" in table
