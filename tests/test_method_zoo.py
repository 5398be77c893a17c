"""The method-zoo study: its plan covers every registered method, a smoke run, resume, report."""

import pandas as pd

from kd.methods import METHODS
from studies import method_zoo as study


def test_plan_has_every_method_on_the_first_pair_and_a_cross_family_pair():
    for name in ("smoke", "quick", "paper"):
        profile = study.PROFILES[name]
        cells = study.plan(profile)
        names = [c.name for c in cells]
        assert len(names) == len(set(names))
        first, second = profile.pairs[0], profile.pairs[1]
        assert first.methods is None and (first.teacher != first.student or name == "smoke")
        assert {c.method for c in cells if c.pair == first} == {None, *METHODS}
        assert second.student.startswith("plain_cnn") and first.teacher.startswith("resnet")
        for bits in profile.quantized_bits:
            assert {f"{first.name}/quantized/w{bits}",
                    f"{first.name}/quantized/w{bits}/labels"} <= set(names)
        assert profile.seeds >= 3 or name == "smoke"
    roles = {c.name.split("/", 1)[1]: c.teacher_role
             for c in study.plan(study.PROFILES["quick"]) if c.pair.student == "resnet8"}
    assert roles["scratch"] == roles["mutual"] == roles["quantized/w4/labels"] == "none"
    assert roles["kd"] == roles["quantized/w4"] == "main" and roles["born_again"] == "scratch"
    assert roles["multi_teacher"] == roles["random_teacher"] == "both"
    assert pd.read_csv(study.REFERENCE)["source"].str.contains("RepDistiller").all()


def test_smoke_runs_every_cell_resumes_and_reports(fake_cifar10, tmp_path, capsys):
    study.main(["--profile", "smoke", "--device", "cpu"])
    path = tmp_path / "results" / "method_zoo" / "smoke.csv"
    rows = pd.read_csv(path).set_index("cell")
    assert rows.index.tolist() == [c.name for c in study.plan(study.PROFILES["smoke"])]
    assert rows["test_accuracy"].between(0, 1).all() and rows["wall_s"].notna().all()
    assert rows["test_agreement"].between(0, 1).all() and rows["teacher_accuracy"].notna().all()
    assert (rows["teacher_train_n"] == 512).all() and (rows["train_n"] == 256).all()
    assert rows["final_train_loss"].notna().all()
    # every row describes the bare student: FitNets' regressor and the mutual peer not counted
    assert rows.groupby("pair")["params"].nunique().eq(1).all()
    assert 0 <= rows.loc["resnet8->resnet8/mutual", "peer_test_accuracy"] <= 1
    both = rows["teachers"] == "both"
    assert rows.loc[both, "second_teacher_accuracy"].notna().all() and both.sum() == 4
    study.main(["--profile", "smoke", "--device", "cpu"])  # nothing left to do
    assert len(pd.read_csv(path)) == len(rows)
    capsys.readouterr()
    study.main(["--profile", "smoke", "--report"])
    out = capsys.readouterr().out
    assert "| resnet8->plain_cnn6 | fitnets | feature |" in out
    assert "resnet56 -> resnet20: KD | 70.66" in out and "Teachers: resnet8 (seed 0" in out
    assert "second teacher(s) of the multi-teacher cells" in out
