"""The method-zoo study: its plan covers every registered method, a smoke run, resume, report."""

import pandas as pd

from kd.methods import METHODS
from studies import method_zoo as study


def test_plan_has_every_method_scheme_and_quantized_student():
    names = [c.name for c in study.plan(study.PROFILES["quick"])]
    assert len(names) == len(set(names))
    assert {f"method/{m}" for m in METHODS} <= set(names)
    assert {"scratch", "mutual", "born_again", "multi_teacher/mean", "multi_teacher/random",
            "quantized/w8/labels", "quantized/w8/kd", "quantized/w4/labels",
            "quantized/w4/kd"} <= set(names)
    assert study.PROFILES["paper"].seeds >= 3
    assert pd.read_csv(study.REFERENCE)["source"].str.contains("RepDistiller").all()


def test_smoke_runs_every_cell_resumes_and_reports(fake_cifar10, tmp_path, capsys):
    study.main(["--profile", "smoke", "--device", "cpu"])
    path = tmp_path / "results" / "method_zoo" / "smoke.csv"
    rows = pd.read_csv(path).set_index("cell")
    assert rows.index.tolist() == [c.name for c in study.plan(study.PROFILES["smoke"])]
    assert rows["test_accuracy"].between(0, 1).all() and rows["wall_s"].notna().all()
    assert rows["test_agreement"].between(0, 1).all() and rows["teacher_accuracy"].notna().all()
    # every row describes the bare student: FitNets' regressor and the mutual peer not counted
    assert rows["params"].nunique() == 1
    assert 0 <= rows.loc["mutual", "peer_test_accuracy"] <= 1
    study.main(["--profile", "smoke", "--device", "cpu"])  # nothing left to do
    assert len(pd.read_csv(path)) == len(rows)
    capsys.readouterr()
    study.main(["--profile", "smoke", "--report"])
    out = capsys.readouterr().out
    assert "| method/fitnets | feature |" in out and "resnet56 -> resnet20: KD | 70.66" in out
