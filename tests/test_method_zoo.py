"""The method-zoo study: its plan covers every registered method, a smoke run, resume, report."""

import pandas as pd
import pytest

from kd.methods import METHODS
from studies import method_zoo as study


def test_plan_has_every_method_on_the_first_pair_and_a_cross_family_pair():
    for name in ("smoke", "quick", "full", "paper"):
        profile = study.PROFILES[name]
        cells = study.plan(profile)
        names = [c.name for c in cells]
        assert len(names) == len(set(names))
        first, second = profile.pairs[0], profile.pairs[1]
        assert first.teacher != first.student or name == "smoke"
        # the smoke profile runs every method; the others the survey's, without the control
        # (so quick's and full's cells are those they always had)
        methods = METHODS if name == "smoke" else study.SURVEY_METHODS
        assert {c.method for c in cells if c.pair == first} == {None, *methods}
        assert ("label_smoothing" in methods) == (name == "smoke")
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
    paper = study.plan(study.PROFILES["paper"])
    chains = [c for c in paper if c.teacher_role == "assistant"]
    assert [c.name for c in chains] == ["resnet56->resnet20/kd_via_resnet32",
                                        "resnet56->plain_cnn6/kd_via_resnet20"]
    assert {c.family for c in chains} == {"teacher-assistant"}
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
    # the control's epsilon, set from the teacher: in (0, C/(C - 1) alpha] = (0, 1] for 10
    # classes; no other row has one
    epsilon = rows["label_smoothing_epsilon"]
    assert 0 < epsilon["resnet8->resnet8/label_smoothing"] <= 1 and epsilon.notna().sum() == 1
    assert rows.loc["resnet8->resnet8/label_smoothing", "family"] == "control"
    # every row describes the bare student: FitNets' regressor and the mutual peer not counted
    assert rows.groupby("pair")["params"].nunique().eq(1).all()
    assert 0 <= rows.loc["resnet8->resnet8/mutual", "peer_test_accuracy"] <= 1
    both = rows["teachers"] == "both"
    several = sum(cls.teachers == "several" for cls in METHODS.values())  # every one on 2 pairs
    assert rows.loc[both, "second_teacher_accuracy"].notna().all() and both.sum() == 2 * several
    chain = rows.loc["resnet8->plain_cnn6/kd_via_resnet8"]
    assert chain["teachers"] == "assistant" and chain["model"] == "plain_cnn6"
    # the students' schedule was chosen on 64 held-out training images, never the test set
    selection = pd.read_csv(path.with_name("smoke_selection.csv"))
    assert len(selection) == 2 * 2 * 2 and (selection["validation_n"] == 64).all()
    assert (selection["fit_n"] == 256 - 64).all()
    means = selection.groupby("candidate", sort=False)["validation_accuracy"].mean()
    assert rows["student_schedule"].eq(means.idxmax()).all()
    assert rows["schedule_selected_on"].str.startswith("validation: ").all()
    study.main(["--profile", "smoke", "--device", "cpu"])  # nothing left to do
    assert len(pd.read_csv(path)) == len(rows)
    capsys.readouterr()
    study.main(["--profile", "smoke", "--report"])
    out = capsys.readouterr().out
    assert "| resnet8->plain_cnn6 | fitnets | feature |" in out
    assert "resnet56 -> resnet20: KD | 70.66" in out and "Teachers: resnet8 (seed 0" in out
    assert "second teacher(s) of the multi-teacher cells" in out


def test_a_chain_is_taught_by_the_assistant_distilled_from_the_teacher(fake_cifar10):
    import torch

    from studies.cifar_zoo import Zoo

    profile, cpu = study.PROFILES["smoke"], torch.device("cpu")
    teacher_zoo = Zoo("cifar10", profile.teacher_config, cpu, train_limit=512, test_limit=128)
    student_zoo = Zoo("cifar10", profile.student_config, cpu, train_limit=256, test_limit=128,
                      augment_students=False)
    run = study.Run(teacher_zoo, student_zoo, profile, 0)
    cell = next(c for c in study.plan(profile) if c.teacher_role == "assistant")
    (assistant,) = run.teachers(cell)
    teacher = run.teacher("resnet8", 0)
    assert assistant.arch == "resnet8" and assistant.key != teacher.key
    # the same key as the model distilled from that teacher (its key names the teacher's)
    assert assistant.key == student_zoo.distilled("resnet8", 0, teacher)[0].key
    assert assistant.key != student_zoo.distilled("resnet8", 0, None)[0].key


def test_a_changed_method_default_changes_the_cells_cache_key(monkeypatch):
    """FitNets' beta and FSP's lambda once changed without changing any key."""
    from kd.experiment.cache import spec_key
    from kd.methods.fitnets import FitNets

    profile = study.PROFILES["smoke"]
    run = study.Run(None, type("FakeZoo", (), {
        "base_spec": lambda self, arch, seed, config: {"arch": arch, "seed": seed},
        "augment_students": False, "config": None})(), profile, 0)
    cell = next(c for c in study.plan(profile) if c.method == "fitnets")
    before = spec_key(run.spec(cell, []))
    assert run.spec(cell, [])["method_settings"]["beta"] == 10.0
    monkeypatch.setitem(FitNets.__init__.__kwdefaults__, "beta", 100.0)
    assert spec_key(run.spec(cell, [])) != before


def test_born_again_starts_afresh_and_random_teacher_draws_follow_the_seed(fake_cifar10):
    import types

    import torch

    from studies.cifar_zoo import Zoo

    profile, cpu = study.PROFILES["smoke"], torch.device("cpu")
    zoo = Zoo("cifar10", profile.student_config, cpu, train_limit=64, test_limit=32,
              augment_students=False)
    cells = {c.method: c for c in study.plan(profile) if c.pair == profile.pairs[0]}
    as_teacher = lambda seed: types.SimpleNamespace(model=zoo.new_model("resnet8", seed))
    for seed in (0, 1):
        run = study.Run(None, zoo, profile, seed)
        scratch_init = zoo.new_model("resnet8", seed).state_dict()
        born = run.method(cells["born_again"], [as_teacher(seed)])
        weights = born.student.state_dict()
        assert not torch.equal(weights["conv1.weight"], scratch_init["conv1.weight"])
        assert run.student_seed(cells["born_again"]) == seed + study.BORN_AGAIN_SEED
        assert run.student_seed(cells["kd"]) == seed  # the other cells share the seed's init
        chooser = run.method(cells["random_teacher"], [as_teacher(5), as_teacher(6)]).teacher
        expected = torch.Generator().manual_seed(seed).get_state()
        assert torch.equal(chooser.generator.get_state(), expected)


def test_full_profile_has_five_seeds_an_assistant_chain_and_a_validation_choice():
    full = study.PROFILES["full"]
    assert full.seeds >= 5 and full.teacher_train_limit is None and full.validation_n > 0
    assert len(full.student_candidates) >= 2 and full.teacher_seed == 0
    chains = [c.name for c in study.plan(full) if c.teacher_role in study.ASSISTANT_ROLES]
    # mz-ta-chain, then mz-ta-chain-teacher-data (its assistant on the teacher's data)
    assert chains == ["resnet14->plain_cnn6/kd_via_resnet8",
                      "resnet14->plain_cnn6/kd_via_resnet8/teacher_data"]
    assert {c.family for c in study.plan(full) if c.name in chains} == {"teacher-assistant"}
    assert not any(p.assistant_on_teacher_data for n, p in study.PROFILES.items() if n != "full")


def test_a_teacher_data_assistant_learns_on_the_teachers_data_once_for_every_seed(fake_cifar10):
    import dataclasses

    import torch

    from studies.cifar_zoo import Zoo

    profile = dataclasses.replace(study.PROFILES["smoke"], assistant_on_teacher_data=True)
    cpu = torch.device("cpu")
    teacher_zoo = Zoo("cifar10", profile.teacher_config, cpu, train_limit=512, test_limit=128)
    student_zoo = Zoo("cifar10", profile.student_config, cpu, train_limit=256, test_limit=128,
                      augment_students=False)
    cell = next(c for c in study.plan(profile) if c.teacher_role == "assistant_teacher_data")
    assert cell.name == "resnet8->plain_cnn6/kd_via_resnet8/teacher_data"
    runs = [study.Run(teacher_zoo, student_zoo, profile, seed) for seed in (0, 1)]
    (assistant,), (again,) = runs[0].teachers(cell), runs[1].teachers(cell)
    teacher = runs[0].teacher("resnet8", 0)
    assert assistant.key == again.key  # the teacher's seed: one assistant for both seeds
    assert assistant.key == teacher_zoo.distilled("resnet8", 0, teacher)[0].key
    students_data = runs[0].teachers(next(c for c in study.plan(profile)
                                          if c.teacher_role == "assistant"))[0]
    assert assistant.key not in {students_data.key, teacher.key}
    row = runs[1].run(cell)
    assert row["teachers"] == "assistant_teacher_data" and row["model"] == "plain_cnn6"
    assert row["assistant_accuracy"] == teacher_zoo.accuracy(assistant)
    assert runs[1].run(next(c for c in study.plan(profile) if c.method == "kd")
                       )["assistant_accuracy"] is None
    # the report counts the shared assistant once, the per-seed ones per seed
    rows = pd.DataFrame([
        {"cell": "p/kd_via_a/teacher_data", "teachers": "assistant_teacher_data",
         "assistant_accuracy": 0.7, "seed": s} for s in (0, 1)] + [
        {"cell": "p/kd_via_a", "teachers": "assistant", "assistant_accuracy": 0.6 + 0.02 * s,
         "seed": s} for s in (0, 1)]).assign(
        teacher="t", teacher_seed=0, teacher_train_n=1, teacher_accuracy=0.8,
        teacher_train_s=60.0, second_teacher_accuracy=None)
    line = study.teachers_line(rows)
    assert "assistant of kd_via_a/teacher_data 70.00 (1 assistant)" in line
    assert "assistant of kd_via_a 61.00 ± 1.41 (2 assistants)" in line


LARGE_CELLS = ["resnet32->resnet8/scratch", "resnet32->resnet8/kd",
               "resnet32->resnet8/random_teacher", "resnet32->resnet8/label_smoothing",
               "resnet32->resnet8/fitnets", "resnet32->resnet8/at"]


def test_large_profile_is_one_pair_on_all_images_with_the_control_and_three_seeds():
    large = study.PROFILES["large"]
    assert [c.name for c in study.plan(large)] == LARGE_CELLS
    assert large.seeds == 3 and len(study.planned("large")) == 3 * len(LARGE_CELLS)
    assert large.teacher_train_limit is large.student_train_limit is large.test_limit is None
    assert large.augment_students and large.large_recipes and not large.student_candidates
    roles = {c.name.split("/")[1]: c.teacher_role for c in study.plan(large)}
    assert roles == {"scratch": "none", "kd": "main", "random_teacher": "both",
                     "label_smoothing": "main", "fitnets": "main", "at": "main"}
    assert large.second_teacher == "resnet20" and large.teacher_seed == 0
    assert not any(p.large_recipes for n, p in study.PROFILES.items() if n != "large")
    assert study.PROFILES["full"].resolved() is study.PROFILES["full"]


def test_large_profile_takes_the_pinned_recipes(monkeypatch):
    from studies import recipe

    monkeypatch.setitem(recipe.LARGE_RECIPES, "student", "cos-lr0.1-bs128-wd5e-4-e30")
    monkeypatch.setitem(recipe.LARGE_RECIPES, "teacher", "cos-lr0.1-bs128-wd5e-4-e60")
    resolved = study.PROFILES["large"].resolved()
    assert resolved.student_config == recipe.LARGE_CANDIDATES["cos-lr0.1-bs128-wd5e-4-e30"]
    assert resolved.teacher_config.epochs == 60
    assert study.PROFILES["large"].student_config is None  # resolved again on every run


def test_large_profile_stops_before_training_until_the_recipes_are_pinned(tmp_path, capsys,
                                                                         monkeypatch):
    from kd.experiment.command import run_main
    from studies import recipe

    assert study.PROFILES["large"].student_config is None  # resolved when it runs
    monkeypatch.setattr(recipe, "LARGE_RECIPES", {"student": None, "teacher": None})
    assert run_main(study.main, ["--profile", "large", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "student recipe is not chosen yet" in err
    monkeypatch.setitem(recipe.LARGE_RECIPES, "student", "cos-lr0.1-bs128-wd5e-4-e60")
    assert run_main(study.main, ["--profile", "large", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "teacher recipe is not chosen yet" in err
    assert not (tmp_path / "results" / "method_zoo" / "large.csv").exists()
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.pt"))


def test_large_sizing_by_hand(tmp_path):
    """Speeds (images/s) ResNet-8 2,000, ResNet-32 500 (fp32 250), ResNet-20 1,000; 30 student
    and 60 teacher epochs of 50,000 images:
      teachers 60·50,000/500 + 60·50,000/1,000 = 6,000 + 3,000 s;
      a seed: 6 students 6·30·50,000/2,000 = 4,500 s; ResNet-32 passes 30·50,000/(3·500)
      = 1,000 s; ResNet-20 on half the batches 30·50,000/(3·1,000)/2 = 250 s; epsilon
      2·50,000/(3·250) = 133.3 s; so 5,883.3 s a seed, 17,650 s for 3;
      total 26,650 s = 7.403 h (per-seed teachers: 3·9,000 + 17,650 = 44,650 s)."""
    speeds = {("resnet8", "bf16"): 2000, ("resnet32", "bf16"): 500, ("resnet32", "fp32"): 250,
              ("resnet20", "bf16"): 1000, ("resnet8", "fp32"): 1}
    rows = [{"model": m, "precision": p, "images_per_s": v, "threads": 2,
             "finished_at": "2026-12-05T13:33:55"} for (m, p), v in speeds.items()]
    rows.append({"model": "resnet8", "precision": "bf16", "images_per_s": 9, "threads": 1,
                 "finished_at": "2026-12-05T13:40:00"})  # another thread count: not read
    rows.append({"model": "resnet8", "precision": "bf16", "images_per_s": 7, "threads": 2,
                 "finished_at": "2026-12-05T12:00:00"})  # an older run: not read
    path = tmp_path / "roofline.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    sizing = study.large_sizing(30, 60, roofline=path)
    assert sizing["hours"].sum() * 3600 == pytest.approx(26_650)
    assert sizing["runs"].tolist() == [1, 1, 18, 3, 3, 6]
    per_seed = study.large_sizing(30, 60, teachers_per_seed=True, roofline=path)
    assert per_seed["hours"].sum() * 3600 == pytest.approx(44_650)
    table = study.large_sizing_table((30,), (60,), roofline=path)
    assert table["hours"].tolist() == pytest.approx([26_650 / 3600, 44_650 / 3600])


def test_the_large_profile_trains_on_the_recipes_it_resolves(fake_cifar10, tmp_path,
                                                             monkeypatch):
    """The large path on tiny data: its recipes (stand-ins here, 1 and 2 epochs) reach the
    students and the teachers, every model sees all the training images, each row says where
    the recipes came from, and the control's epsilon is in its row."""
    import dataclasses

    from kd.experiment.cache import entries

    student = dataclasses.replace(study.steps(1, ()), lr=0.07)
    teacher = study.steps(2, ())
    monkeypatch.setattr(study, "large_config",
                        lambda role: {"student": student, "teacher": teacher}[role])
    monkeypatch.setitem(study.LARGE_RECIPES, "student", "s-recipe")
    monkeypatch.setitem(study.LARGE_RECIPES, "teacher", "t-recipe")
    tiny = dataclasses.replace(study.PROFILES["large"], seeds=1, second_teacher="resnet8",
                               pairs=(study.Pair("resnet8", "resnet8",
                                                 ("kd", "random_teacher", "label_smoothing")),))
    monkeypatch.setitem(study.PROFILES, "large", tiny)
    study.main(["--profile", "large", "--device", "cpu"])
    rows = pd.read_csv(tmp_path / "results" / "method_zoo" / "large.csv").set_index("cell")
    assert rows.index.tolist() == [c.name for c in study.plan(tiny)]
    assert (rows["lr"] == 0.07).all() and (rows["epochs"] == 1).all()
    assert (rows["train_n"] == rows["teacher_train_n"]).all()  # all the images for every model
    assert rows["schedule_selected_on"].str.contains("students s-recipe, teachers t-recipe").all()
    assert 0 < rows.loc["resnet8->resnet8/label_smoothing", "label_smoothing_epsilon"] <= 1
    teachers = [spec for _, spec, _ in entries() if spec["role"] == "teacher"]
    assert len(teachers) == 2 and {spec["train"]["epochs"] for spec in teachers} == {2}
    assert {spec["seed"] for spec in teachers} == {0, 100}  # shared: seed 0 and its second
