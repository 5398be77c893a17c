import pandas as pd
import pytest
import torch

from kd.experiment.cache import ModelCache, spec_key
from kd.experiment.executor import every
from kd.experiment.results import (ResultsTable, pending, seed_range, git_commit, markdown_table,
                                   mean_std, one_per_teacher, provenance)


def test_rows_append_with_key_first_and_provenance_last(tmp_path):
    table = ResultsTable("study", "smoke", tmp_path)
    table.append({"cell": "a", "seed": 0, "test_errors": 5, **provenance(torch.device("cpu"), 1.234)})
    table.append({"cell": "b", "seed": 0, "temperature": 2.0, "test_errors": 4,
                  **provenance(torch.device("cpu"), 2.0)})
    frame = pd.read_csv(tmp_path / "study" / "smoke.csv")
    assert list(frame.columns[:4]) == ["study", "profile", "cell", "seed"]
    assert list(frame.columns[-7:]) == ["wall_s", "device", "precision", "hardware", "torch",
                                        "git_commit", "finished_at"]
    assert frame["precision"].tolist() == ["fp32", "fp32"]
    assert frame["cell"].tolist() == ["a", "b"] and frame["test_errors"].tolist() == [5, 4]
    assert frame["profile"].unique().tolist() == ["smoke"]
    assert table.done() == {("a", 0), ("b", 0)}
    assert frame["wall_s"].tolist() == [1.23, 2.0]


def test_discard_removes_one_row_and_failures_live_beside_the_table(tmp_path):
    table = ResultsTable("study", "smoke", tmp_path)
    for cell, seed in (("a", 0), ("a", 1), ("b", 0)):
        table.append({"cell": cell, "seed": seed})
    table.discard("a", 0)
    table.discard("zz", 0)  # nothing to remove: nothing changes
    assert table.done() == {("a", 1), ("b", 0)}
    failures = table.failures()
    assert failures.path == tmp_path / "study" / "smoke_failures.csv"
    failures.append({"cell": "c", "seed": 0, "error": "nan"})
    assert table.done() == {("a", 1), ("b", 0)} and failures.done() == {("c", 0)}


def test_reorder_puts_rows_in_run_order_and_leaves_an_ordered_table_untouched(tmp_path):
    table = ResultsTable("study", "smoke", tmp_path)
    for cell, seed, value in (("b", 0, 2.5), ("x", 0, 9.0), ("a", 1, 1.5), ("a", 0, 0.5)):
        table.append({"cell": cell, "seed": seed, "value": value})
    table.reorder([("a", 0), ("a", 1), ("b", 0)])  # x is not in the order: it goes last
    rows = table.read()
    assert list(zip(rows["cell"], rows["seed"])) == [("a", 0), ("a", 1), ("b", 0), ("x", 0)]
    assert rows["value"].tolist() == [0.5, 1.5, 2.5, 9.0]  # each row moved whole
    before = table.path.stat().st_mtime_ns
    table.reorder([("a", 0), ("a", 1), ("b", 0)])
    assert table.path.stat().st_mtime_ns == before  # already in order: not rewritten


def test_duplicate_rows_are_refused(tmp_path):
    table = ResultsTable("study", "smoke", tmp_path)
    table.append({"cell": "a", "seed": 0})
    with pytest.raises(ValueError, match="already"):
        table.append({"cell": "a", "seed": 0})
    table.append({"cell": "a", "seed": 1})
    assert len(table.read()) == 2


def test_a_crash_while_writing_leaves_the_old_file_whole(tmp_path, monkeypatch):
    table = ResultsTable("study", "smoke", tmp_path)
    table.append({"cell": "a", "seed": 0, "x": 1})
    before = table.path.read_bytes()

    def crash(self, handle, **kwargs):
        handle.write("study,profile,cell,seed\nstudy,smoke,b,")  # half a row, then death
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(pd.DataFrame, "to_csv", crash)
    with pytest.raises(RuntimeError):
        table.append({"cell": "b", "seed": 0, "x": 2})
    assert table.path.read_bytes() == before
    assert [p.name for p in table.path.parent.iterdir()] == ["smoke.csv"]


def test_provenance_records_where_and_what():
    row = provenance(torch.device("cpu"), 3.0)
    assert row["device"] == "cpu" and row["torch"] == torch.__version__
    assert "cores" in row["hardware"]
    assert row["git_commit"] == git_commit() and row["git_commit"]


def test_model_cache_hit_miss_and_invalidation(tmp_path):
    cache = ModelCache(tmp_path)
    spec = {"arch": "mlp", "widths": [4, 4], "seed": 0, "train": {"epochs": 3}}
    assert cache.load(spec) is None  # miss
    state = {"w": torch.arange(3.0)}
    cache.save(spec, state, {"train_s": 1.5})
    hit = cache.load({"seed": 0, "train": {"epochs": 3}, "widths": [4, 4], "arch": "mlp"})
    assert torch.equal(hit["state_dict"]["w"], state["w"]) and hit["meta"]["train_s"] == 1.5
    changed = {**spec, "train": {"epochs": 4}}  # another schedule: another key, a miss
    assert spec_key(changed) != spec_key(spec) and cache.load(changed) is None


def test_model_cache_treats_a_corrupt_file_as_a_miss(tmp_path):
    cache = ModelCache(tmp_path)
    spec = {"seed": 1}
    cache.save(spec, {"w": torch.ones(2)})
    cache.path(spec).write_bytes(b"not a checkpoint")
    assert cache.load(spec) is None
    cache.save(spec, {"w": torch.zeros(2)})
    assert torch.equal(cache.load(spec)["state_dict"]["w"], torch.zeros(2))


def test_shipped_teachers_are_found_without_checkpoints_and_the_cache_comes_first(tmp_path):
    from kd.experiment.cache import ship

    trained = ModelCache(tmp_path / "trained", shipped=None)
    spec = {"arch": "mlp", "seed": 0}
    trained.save(spec, {"w": torch.ones(3)}, {"train_s": 2.0},
                 checkpoints={5: {"w": torch.zeros(3)}})
    path = ship(spec, trained, shipped=tmp_path / "shipped")
    assert path.name == f"{spec_key(spec)}.pt"
    assert not list((tmp_path / "shipped").glob(".*"))  # no temporary file left behind
    fresh = ModelCache(tmp_path / "empty", shipped=tmp_path / "shipped")
    hit = fresh.load(spec)
    assert torch.equal(hit["state_dict"]["w"], torch.ones(3)) and hit["meta"]["train_s"] == 2.0
    assert hit["checkpoints"] == {}  # weights only, unless asked for
    assert ship(spec, trained, shipped=tmp_path / "with", checkpoints=True) and ModelCache(
        tmp_path / "empty", shipped=tmp_path / "with").load(spec)["checkpoints"][5]["w"].sum() == 0
    fresh.save(spec, {"w": torch.full((3,), 7.0)})  # a local entry wins over the shipped one
    assert fresh.load(spec)["state_dict"]["w"][0] == 7.0
    assert fresh.load({"arch": "other"}) is None
    with pytest.raises(FileNotFoundError, match="no trained model"):
        ship({"arch": "other"}, trained, shipped=tmp_path / "shipped")


def test_a_checkpoint_equal_to_the_final_weights_is_stored_once(tmp_path):
    """The last epoch's checkpoint is the final weights: an entry holds them once (400 kB of
    weights, not 800), and both read back, equal, apart and whole."""
    cache = ModelCache(tmp_path, shipped=None)
    final = {"w": torch.randn(100_000), "n": torch.tensor(3)}
    early = {"w": torch.zeros(100_000), "n": torch.tensor(1)}
    twin = {k: v.clone() for k, v in final.items()}  # equal, another tensor
    path = cache.save({"arch": "mlp"}, final, checkpoints={1: early, 3: twin})
    assert 800_000 < path.stat().st_size < 1_000_000  # the final weights and one checkpoint
    entry = cache.load({"arch": "mlp"})
    assert torch.equal(entry["checkpoints"][3]["w"], final["w"])
    assert torch.equal(entry["checkpoints"][1]["w"], early["w"])
    assert torch.equal(entry["state_dict"]["w"], final["w"])
    nearly = {"w": final["w"] + 1e-3, "n": torch.tensor(3)}  # not equal: kept apart
    path = cache.save({"arch": "mlp"}, final, checkpoints={3: nearly})
    assert path.stat().st_size > 800_000
    assert torch.equal(cache.load({"arch": "mlp"})["checkpoints"][3]["w"], nearly["w"])


def test_git_commit_is_dirty_for_code_changes_but_not_for_outputs(tmp_path):
    import subprocess

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "a.csv").write_text("x\n1\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "-A")
    git("commit", "-qm", "init")
    clean = git_commit(tmp_path)
    assert len(clean) == 12 and not clean.endswith("+dirty")
    (tmp_path / "results" / "a.csv").unlink()  # a study rewriting its results
    assert git_commit.__wrapped__(tmp_path) == clean
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit.__wrapped__(tmp_path) == clean + "+dirty"


def test_markdown_table_formats_floats_only_with_the_given_format():
    frame = pd.DataFrame({"quantity": ["a", "b"], "paper": [0.5, "not run"], "n": [3, 4]})
    assert markdown_table(frame, number="{:.2f}") == [
        "| quantity | paper | n |", "| --- | --- | --- |",
        "| a | 0.50 | 3 |", "| b | not run | 4 |"]
    assert markdown_table(frame)[2] == "| a | 0.5 | 3 |"


def test_cache_command_lists_and_ships_entries(tmp_path, monkeypatch, capsys):
    from kd.experiment import cache as module
    from kd.experiment.cli import run_main

    monkeypatch.setenv("KD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(module, "SHIPPED_ROOT", tmp_path / "shipped")
    spec = {"data": "mnist", "arch": {"hidden": [4]}, "seed": 0, "train": {"precision": "bf16"}}
    ModelCache(shipped=None).save(spec, {"w": torch.ones(2)})
    assert run_main(module.main, ["list"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(spec_key(spec)) and "data=mnist" in out and "seed=0" in out
    assert "precision=bf16" in out  # part of the key: what another machine must train in
    assert run_main(module.main, ["ship", spec_key(spec)]) == 0
    assert (tmp_path / "shipped" / f"{spec_key(spec)}.pt").exists()
    assert run_main(module.main, ["ship", "feedbeef"]) == 2
    assert "no readable entry feedbeef" in capsys.readouterr().err


def test_a_teacher_shared_by_the_seeds_counts_once():
    rows = pd.DataFrame({"cell": ["teacher"] * 3 + ["student"] * 3, "seed": [0, 1, 2] * 2,
                         "teacher_seed": [0, 0, 0] * 2,
                         "test_errors": [79, 79, 79, 120, 124, 122]})
    teachers = one_per_teacher(rows[rows["cell"] == "teacher"])
    assert len(teachers) == 1
    assert mean_std(teachers["test_errors"], of="teacher") == "79.0 (1 teacher)"
    own = rows.assign(teacher_seed=rows["seed"])  # each seed its own teacher: all kept
    assert len(one_per_teacher(own[own["cell"] == "teacher"])) == 3
    assert len(one_per_teacher(rows.drop(columns="teacher_seed"))) == 6


def test_seeds_are_a_count_from_zero_or_a_range(tmp_path):
    class Cell:
        def __init__(self, name):
            self.name = name
    cells = [Cell("a"), Cell("b")]
    table = ResultsTable("study", "smoke", tmp_path)
    table.append({"study": "study", "profile": "smoke", "cell": "a", "seed": 2, "x": 1.0})
    assert seed_range(3) == range(3) and seed_range(range(1, 3)) == range(1, 3)
    assert [(s, c.name) for s, c in pending(cells, 3, table)] == [
        (0, "a"), (0, "b"), (1, "a"), (1, "b"), (2, "b")]
    assert [(s, c.name) for s, c in pending(cells, range(2, 4), table)] == [
        (2, "b"), (3, "a"), (3, "b")]
    assert [(s, c.name) for s, c in every(cells, range(1, 2))] == [(1, "a"), (1, "b")]


def test_a_copy_without_git_takes_its_commit_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("KD_GIT_COMMIT", raising=False)
    assert git_commit(tmp_path / "a") == "unknown"  # not a repository (each root cached once)
    monkeypatch.setenv("KD_GIT_COMMIT", "abc123")
    assert git_commit(tmp_path / "b") == "abc123"


def test_notebooks_show_the_first_complete_table(tmp_path):
    from kd.experiment.results import profile_to_show
    planned = lambda profile: [("teacher", 0), ("student", 0), ("student", 1)]
    write = lambda profile, pairs: pd.DataFrame(pairs, columns=["cell", "seed"]).to_csv(
        tmp_path / f"{profile}.csv", index=False)
    assert profile_to_show(tmp_path, planned) is None
    write("quick", [("teacher", 0), ("student", 0), ("student", 1)])
    write("paper", [("teacher", 0), ("student", 0)])  # a partial run: seed 1 missing
    assert profile_to_show(tmp_path, planned) == "quick"
    write("full", [("student", 1), ("teacher", 0), ("student", 0), ("extra", 2)])
    assert profile_to_show(tmp_path, planned) == "full"  # complete, in any order
    write("large", [("teacher", 0), ("student", 0)])  # running: the complete full is shown
    assert profile_to_show(tmp_path, planned) == "full"
    write("large", [("teacher", 0), ("student", 0), ("student", 1)])
    assert profile_to_show(tmp_path, planned) == "large"  # the papers' regime, once complete
    (tmp_path / "large.csv").unlink()
    (tmp_path / "quick.csv").unlink(), (tmp_path / "full.csv").unlink()
    assert profile_to_show(tmp_path, planned) == "paper"  # partial, but the only one
    write("large", [("teacher", 0)])  # partial too, fewer rows: the fuller partial one
    assert profile_to_show(tmp_path, planned) == "paper"
    # a reader that draws some seeds only (large's verdict seeds): counted as it reads them
    write("large", [("teacher", 0), ("student", 0), ("student", 1), ("teacher", 1)])
    assert profile_to_show(tmp_path, planned) == "large"
    whole = lambda profile: pd.read_csv(tmp_path / f"{profile}.csv")
    none_of_large = lambda profile: whole(profile).iloc[:0 if profile == "large" else None]
    assert profile_to_show(tmp_path, planned, read=none_of_large) == "paper"
    seed_1 = lambda profile: whole(profile).query("seed == 1")
    assert profile_to_show(tmp_path, planned, read=seed_1) == "large"  # paper reads none


def test_tables_of_split_seeds_merge_unchanged_and_refuse_duplicates(tmp_path, capsys):
    from kd.experiment.results import main
    for seed in (0, 1):
        table = ResultsTable("study", "paper", tmp_path / f"r{seed}")
        table.append({"cell": "teacher", "seed": seed, "test_errors": 60 + seed,
                      **provenance(torch.device("cpu"), 1.0)})
        table.append({"cell": "student", "seed": seed, "temperature": 2.0,
                      "test_errors": 90 + seed, **provenance(torch.device("cpu"), 1.0)})
    target = tmp_path / "results"
    main(["merge", "study", "paper", str(tmp_path / "r0"), str(tmp_path / "r1"),
          "--results", str(target)])
    assert "4 rows added" in capsys.readouterr().out
    merged = pd.read_csv(target / "study" / "paper.csv")
    parts = pd.concat([pd.read_csv(tmp_path / f"r{s}" / "study" / "paper.csv") for s in (0, 1)],
                      ignore_index=True)
    pd.testing.assert_frame_equal(merged, parts[merged.columns], check_dtype=False)
    assert list(merged.columns[:4]) == ["study", "profile", "cell", "seed"]
    before = (target / "study" / "paper.csv").read_bytes()
    # merging seed 1 again: one line, exit 2, the table as it was
    from kd.experiment.cli import run_main
    assert run_main(main, ["merge", "study", "paper", str(tmp_path / "r1"),
                           "--results", str(target)]) == 2
    assert "is in both" in capsys.readouterr().err
    assert (target / "study" / "paper.csv").read_bytes() == before
    assert run_main(main, ["merge", "study", "paper", str(tmp_path / "nowhere"),
                           "--results", str(target)]) == 2
    assert "no table" in capsys.readouterr().err
    # another profile's table in a source folder is refused by its own check
    other = ResultsTable("study", "quick", tmp_path / "q")
    other.append({"cell": "teacher", "seed": 2, "test_errors": 1})
    (tmp_path / "q" / "study" / "quick.csv").rename(tmp_path / "q" / "study" / "paper.csv")
    assert run_main(main, ["merge", "study", "paper", str(tmp_path / "q"),
                           "--results", str(target)]) == 2
    assert "study/quick" in capsys.readouterr().err
    assert (target / "study" / "paper.csv").read_bytes() == before


def test_discard_removes_rows_to_score_again_all_or_none(tmp_path, capsys, monkeypatch):
    from kd.experiment.cli import run_main
    from kd.experiment.results import main
    table = ResultsTable("study", "large", tmp_path)
    for seed in (0, 1):
        for cell in ("teacher", "student"):
            table.append({"cell": cell, "seed": seed, "test_errors": 1,
                          **provenance(torch.device("cpu"), 1.0)})
    before = table.path.read_bytes()
    # one cell without a row: one line, exit 2, nothing removed
    assert run_main(main, ["discard", "study", "large", "1", "teacher", "nowhere",
                           "--results", str(tmp_path)]) == 2
    assert "no row of seed 1 for nowhere" in capsys.readouterr().err
    assert table.path.read_bytes() == before
    writes = []
    write = ResultsTable._write
    monkeypatch.setattr(ResultsTable, "_write",
                        lambda self, frame: (writes.append(len(frame)), write(self, frame)))
    main(["discard", "study", "large", "1", "teacher", "student", "--results", str(tmp_path)])
    assert "2 rows of seed 1 removed" in capsys.readouterr().out
    assert table.done() == {("teacher", 0), ("student", 0)}
    assert writes == [2]  # one atomic write removes both: a kill leaves all rows or none gone
