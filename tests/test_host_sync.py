"""No training step waits on the host (kd-repro issue 12, section 2).

Every objective (each registered method, K stacked students with per-student α and T, quantized
students) runs a few training steps (the batch from ``iterate_batches``, the objective's forward
pass, backward, optimizer step) under a ``TorchDispatchMode`` that records every aten op. A step
must not call

* ``aten._local_scalar_dense``: what ``.item()``, ``float(t)``, ``int(t)`` and ``bool(t)`` do, a
  device-to-host read that waits for the device;
* ``aten.lift_fresh`` (what ``torch.tensor(...)`` / ``torch.as_tensor(number)`` record): a tensor
  made from Python data, a host-to-device copy on CUDA;
* a copy between the CPU and another device (on a machine with CUDA, where the test runs on
  the GPU; on a CPU there is none to make).

and the number of aten ops per step must be the same on consecutive steps (the first step also
makes the optimizer's state, so steps 2 and 3 are compared). The counts are printed
(``pytest -s``).
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from kd.data import iterate_batches
from kd.data.cifar import RandomCropFlip
from kd.methods import METHODS, build_method
from kd.methods.quantized import QuantizedKD
from kd.models.cifar import CifarResNet, PlainCNN
from kd.train import engine
from kd.train.batched import StackedModels
from kd.train.distill import Distill
from tests.test_methods import CONFIG, student, teacher_argument, tiny_cifar

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
aten = torch.ops.aten
FORBIDDEN = {aten._local_scalar_dense.default: "reads a tensor back to the host",
             aten.lift_fresh.default: "makes a tensor from Python data",
             aten.lift_fresh_copy.default: "makes a tensor from Python data"}
COPIES = {aten._to_copy.default, aten.copy_.default}


class StepOps(TorchDispatchMode):
    """Counts the aten ops dispatched while active and notes the forbidden ones."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()
        self.problems: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops[func] += 1
        if func in FORBIDDEN:
            self.problems.append(f"{func} {FORBIDDEN[func]}")
        out = func(*args, **kwargs)
        if func in COPIES:
            source = args[1] if func is aten.copy_.default else args[0]
            target = args[0] if func is aten.copy_.default else out
            if (source.device.type == "cpu") != (target.device.type == "cpu"):
                self.problems.append(f"{func} copies {source.device} -> {target.device}")
        return out


def step_counts(objective, model, train, steps=3, augment=None) -> list[int]:
    """Train ``steps`` steps on :data:`DEVICE` as :func:`kd.train.engine.fit` does, each under
    :class:`StepOps`; fail on a forbidden op and return the op count of each step."""
    model, train = engine.prepare_model(model, DEVICE).train(), train.to(DEVICE)
    optimizer = engine.OPTIMIZERS[CONFIG.optimizer](
        [p for p in model.parameters() if p.requires_grad], CONFIG)
    objective.bind(train, augmented=augment is not None)
    objective.start_epoch(1)
    generator = torch.Generator(device=DEVICE).manual_seed(0)
    batches = iterate_batches(train, CONFIG.batch_size, generator=generator, augment=augment)
    counts = []
    for step in range(1, steps + 1):
        with StepOps() as ops:
            batch = next(batches)
            loss, terms = objective(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()
            optimizer.step()
        assert not ops.problems, f"step {step}: {sorted(set(ops.problems))}"
        counts.append(sum(ops.ops.values()))
    assert counts[1] == counts[2], f"op counts per step {counts}: not stable"
    return counts


def report(name: str, counts: list[int]) -> None:
    print(f"\n{name:>32}: aten ops per step {counts}")


def several_of_one_architecture():
    """Two teachers of one architecture, so a random draw does not change the step's ops."""
    torch.manual_seed(97)
    return [CifarResNet(8).eval(), CifarResNet(8).eval()]


# each registered method, its teacher's logits cached (not augmented); and two with the teacher
# run on every (augmented) batch: one model, and an ensemble of two
CASES = [(name, False) for name in sorted(METHODS)] + [("kd", True), ("multi_teacher", True)]


@pytest.mark.parametrize("name, augmented", CASES,
                         ids=[f"{n}-{'augmented' if a else 'cached'}" for n, a in CASES])
def test_every_method_steps_without_host_sync(name, augmented):
    teacher = (several_of_one_architecture() if name == "random_teacher"
               else teacher_argument(name))
    method = build_method(name, student(), teacher)
    augment = RandomCropFlip() if augmented else None
    report(f"{name} ({'augmented' if augmented else 'cached'})",
           step_counts(method, method.model, tiny_cifar(64), augment=augment))


def test_stacked_students_with_their_own_alpha_and_temperature_step_without_host_sync():
    torch.manual_seed(0)
    stack = StackedModels([PlainCNN(2), PlainCNN(2)])
    objective = Distill(PlainCNN(4).eval(), [2.0, 4.0], [0.5, 0.9], t_squared=[True, False])
    report("stacked K=2 (augmented)",
           step_counts(objective, stack, tiny_cifar(64), augment=RandomCropFlip()))


def test_a_weight_only_quantized_student_on_labels_steps_without_host_sync():
    method = QuantizedKD(student(), None, weight_bits=4, activation_bits=None)
    report("quantized w4, labels", step_counts(method, method.model, tiny_cifar(64)))
