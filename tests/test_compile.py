"""``TrainConfig(compile=True)`` for every method, hooks and quantized students included
(kd-repro issue 12, section 3).

The compiler is dynamo with the ``aot_eager`` backend (``KD_COMPILE_BACKEND``, read by
:func:`kd.train.engine.compile_backend`): it captures the same graphs as inductor and differentiates
them with AOT autograd, but generates no C++, which would take minutes per graph on 2 cores.
"""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

from kd.errors import ConfigError
from kd.methods import METHODS
from kd.methods.base import TappedForward
from kd.methods.quantize import quantize_student
from kd.models.cifar import CifarResNet, PlainCNN
from studies import method_zoo as study
from studies.cifar_zoo import Zoo

BACKEND = "aot_eager"


@pytest.fixture
def fresh_dynamo(monkeypatch):
    """The backend above for engine.fit; dynamo's caches and counters of this test only; and
    an error for any recompilation of a function (a graph reused with a failed guard)."""
    monkeypatch.setenv("KD_COMPILE_BACKEND", BACKEND)
    torch._dynamo.reset()
    counters.clear()
    with torch._dynamo.config.patch(recompile_limit=1, fail_on_recompile_limit_hit=True):
        yield
    torch._dynamo.reset()


class ConvTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3, 10)

    def forward(self, x):
        return self.fc(self.conv(self.conv(x)).mean((2, 3)))


def test_a_tapped_graph_gives_the_modules_outputs_eager_and_compiled(fresh_dynamo):
    """The features are what the tapped modules returned (a module called twice: its second
    output), compiled or not, and models the graph cannot hold fail clearly."""
    torch.manual_seed(0)
    model, x = ConvTwice(), torch.randn(2, 3, 8, 8)
    tapped = TappedForward(model, ["conv"], "student")
    compiler = torch.compile(model, backend=BACKEND).dynamo_ctx
    expected = (model(x), [model.conv(model.conv(x))])
    torch.testing.assert_close(tapped(x), expected)
    torch.testing.assert_close(tapped(x, compiler), expected)
    with pytest.raises(ConfigError, match="inside another tapped module"):
        TappedForward(CifarResNet(8), ["layer1", "layer1.0"], "student").graph()

    class Branches(ConvTwice):
        def forward(self, x):
            return self.fc(x.mean((2, 3))) if x.sum() > 0 else -self.fc(x.mean((2, 3)))

    with pytest.raises(ConfigError, match="cannot be traced by torch.fx"):
        TappedForward(Branches(), ["fc"], "teacher").graph()


def test_quantized_students_compile_to_one_graph_each_and_match_eager(fresh_dynamo):
    """The scales are tensors (no float() graph break: fullgraph=True would raise), and a float,
    a weight-only and a fully quantized student of one class each get their own graph."""
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    students = [PlainCNN(2), quantize_student(PlainCNN(2), 4, None),
                quantize_student(PlainCNN(2), 4, 8)]
    outputs = []
    for model in students:
        model.train()
        with torch._dynamo.config.patch(recompile_limit=3):  # 3 variants of PlainCNN.forward
            compiled = torch.compile(model, backend=BACKEND, fullgraph=True)(x)
        torch.testing.assert_close(compiled, model(x), rtol=1e-4, atol=1e-5)
        outputs.append(compiled)
    assert counters["stats"]["unique_graphs"] == 3
    assert not torch.allclose(outputs[1], outputs[2])  # activations were really quantized


def zoo_rows(profile, teacher_zoo: Zoo, compiled: bool) -> tuple[dict, dict, dict]:
    """Each cell of the smoke profile's first pair trained in plan order: its row, the graphs
    dynamo compiled for it, its wall time."""
    config = dataclasses.replace(profile.student_config, compile=compiled)
    zoo = Zoo("cifar10", config, torch.device("cpu"), train_limit=profile.student_train_limit,
              test_limit=profile.test_limit, augment_students=profile.augment_students)
    run = study.Run(teacher_zoo, zoo, profile, 0)
    rows, graphs, seconds = {}, {}, {}
    for cell in study.plan(profile):
        if cell.pair != profile.pairs[0]:
            continue
        before, start = counters["stats"]["unique_graphs"], time.perf_counter()
        rows[cell.name] = run.run(cell)
        graphs[cell.name] = counters["stats"]["unique_graphs"] - before
        seconds[cell.name] = time.perf_counter() - start
    return rows, graphs, seconds


def test_method_zoo_smoke_cells_train_compiled_in_one_process_and_match_eager(
        fake_cifar10, fresh_dynamo):
    """Every method, compiled, after the scratch and kd cells compiled the bare ResNet-8: the
    feature methods compile their tapped graphs (before, the bare graph was reused and the
    taps' hooks never fired), the quantized students compile without graph breaks, nothing is
    compiled twice (every function once: no recompilation toward dynamo's limit), and what
    the user sees matches eager training."""
    profile = study.PROFILES["smoke"]
    teacher_zoo = Zoo("cifar10", profile.teacher_config, torch.device("cpu"),
                      train_limit=profile.teacher_train_limit, test_limit=profile.test_limit)
    compiled, graphs, seconds = zoo_rows(profile, teacher_zoo, compiled=True)
    eager, _, eager_seconds = zoo_rows(profile, teacher_zoo, compiled=False)
    print("\n" + "\n".join(f"{name:>40}: compiled {graphs[name]} graph(s) in "
                           f"{seconds[name]:.1f} s (eager {eager_seconds[name]:.1f} s)"
                           for name in compiled))

    methods = {name.split("/")[1] for name in compiled}
    assert list(compiled)[:2] == ["resnet8->resnet8/scratch", "resnet8->resnet8/kd"]
    assert methods == {"scratch", *METHODS}
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert graphs["resnet8->resnet8/scratch"] >= 1
    for name in ("fitnets", "at", "sp", "rkd", "fsp", "mutual", "quantized/w4"):
        assert graphs[f"resnet8->resnet8/{name}"] >= 1, name  # a graph of its own
    for name, row in compiled.items():
        other = eager[name]
        assert row["test_accuracy"] == pytest.approx(other["test_accuracy"], abs=0.03), name
        assert row["test_agreement"] == pytest.approx(other["test_agreement"], abs=0.03), name
        assert row["final_train_loss"] == pytest.approx(other["final_train_loss"], rel=1e-3,
                                                        abs=1e-4), name
