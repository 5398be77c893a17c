"""kd as a library: the README's example runs as a user would paste it (on its own tiny random
images), the docs carry the same code, and ``import kd`` gives the public names without the
study harness."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import torch
from torch import nn

import kd
from kd.train.engine import torch_threads
from tests.conftest import REPO

EXAMPLE = re.compile(r"<!-- example:begin -->\n```python\n(.*?)```\n<!-- example:end -->", re.S)


def example(path) -> str:
    (code,) = EXAMPLE.findall(path.read_text())
    return code


def test_the_readme_example_distils_a_torchvision_model(capsys):
    code = example(REPO / "README.md")
    assert code == example(REPO / "docs" / "library.md")
    namespace: dict = {}
    with torch_threads(1):
        exec(compile(code, "README.md example", "exec"), namespace)
    students = namespace["students"]
    assert set(students) == {"kd", "fitnets"}
    for student in students.values():
        assert type(student).__name__ == "MobileNetV3"  # the student alone, no FitNets regressor
        # it took 2 epochs of 2 batches (32 images, batches of 16) in training mode
        norms = [m for m in student.modules() if isinstance(m, nn.BatchNorm2d)]
        assert norms and all(int(m.num_batches_tracked) == 4 for m in norms)
        assert student.eval()(torch.zeros(3, 3, 64, 64)).shape == (3, 10)
    printed = capsys.readouterr().out
    assert "'kd': torch.Size([32, 10])" in printed and "'fitnets': torch.Size([32, 10])" in printed


def test_import_kd_gives_the_public_names_and_not_the_harness():
    probe = ("import json, sys, kd\n"
             "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
             "('pandas', 'matplotlib', 'ray', 'studies') or m.startswith('kd.experiment'))\n"
             "print(json.dumps({'all': kd.__all__, 'version': kd.__version__, 'heavy': heavy}))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["heavy"] == []
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", found["version"])
    assert {"fit", "TrainConfig", "build_method", "METHODS", "Distill", "MODELS", "build_model",
            "metrics", "accuracy"} <= set(found["all"])
    assert all(hasattr(kd, name) for name in kd.__all__)
    assert kd.METHODS["fitnets"] is kd.methods.FitNets and "resnet8" in kd.MODELS
    assert isinstance(kd.build_model("resnet8"), nn.Module)
    assert (REPO / "kd" / "py.typed").exists()
    assert '"py.typed"' in (REPO / "pyproject.toml").read_text()
