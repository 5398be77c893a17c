"""--executor ray: the order of the tasks, the same rows as --executor local, a killed driver that
resumes, failed tasks recorded while the others finish, and bad input ending the run.

The tests that run tasks share one local Ray instance of 2 CPUs (the ``ray_cluster`` fixture)
and are skipped when ray is not installed. Each task uses one CPU and so one torch thread; the
local runs they are compared with use one thread too (CPU results repeat exactly at a given
thread count, and differ in the last digits between thread counts)."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from kd.experiment.cli import run_main
from kd.experiment.executor import Unit, cell_units, every
from kd.experiment.results import PROVENANCE_COLUMNS
from kd.train.engine import torch_threads
from studies import capacity_gap, hinton_mnist
from tests.conftest import REPO, kill_after_rows

RAY = ["--device", "cpu", "--executor", "ray"]


def metric_columns(path: Path) -> pd.DataFrame:
    """A results table without provenance or timing columns, in its row order (``trained_on``
    names the threads, one a Ray task and two a local run)."""
    frame = pd.read_csv(path)
    keep = [c for c in frame.columns if c not in (*PROVENANCE_COLUMNS, "trained_on")
            and not c.endswith("_s")]
    return frame[sorted(keep)]


def assert_same_rows(ray_csv: Path, local_csv: Path) -> None:
    ours, theirs = metric_columns(ray_csv), metric_columns(local_csv)
    assert ours["cell"].tolist() == theirs["cell"].tolist()  # rewritten in run order
    pd.testing.assert_frame_equal(ours, theirs, check_exact=True)
    assert pd.read_csv(ray_csv)["precision"].eq("fp32").all()


def run_local(main, tmp_path: Path, monkeypatch, argv: list[str]) -> Path:
    """``main`` with --executor local in this process (one thread), with a cache and results
    of its own, so it trains every model itself; its results root."""
    monkeypatch.setenv("KD_CACHE", str(tmp_path / "local_cache"))
    results = tmp_path / "local_results"
    with torch_threads(1):
        main([*argv, "--device", "cpu", "--results", str(results)])
    return results


# ----------------------------------------------------------------------------------------------
# Without Ray: which task waits for which

def test_a_task_row_puts_its_models_precision_where_a_local_row_does(monkeypatch):
    """A row that names its model's precision gives it up to the provenance columns, so the
    Ray path's row has the local path's columns in the local path's order."""
    import types

    import torch

    from kd.experiment import executor
    command = types.SimpleNamespace(device=torch.device("cpu"), precision="auto")
    job = executor.Job("m", "r", command, grouped=False, cpus=1, gpus=0, token="t", commit="c")
    run = lambda seed, cell: {"test_accuracy": 0.5, "precision": "bf16"}
    monkeypatch.setattr(executor, "_STATE", {"token": "t", "command": command, "run": run})
    [result] = executor._run_unit(job, 3, (types.SimpleNamespace(name="scratch"),))
    row = result["row"]
    assert list(row)[:3] == ["cell", "seed", "test_accuracy"] and row["precision"] == "bf16"
    assert list(row)[3:] == [c for c in PROVENANCE_COLUMNS if c in row]  # provenance last


def test_cells_wait_for_the_first_cell_that_trains_their_models():
    cells = capacity_gap.plan(capacity_gap.FAMILIES["smoke"])
    order = every(cells, 2)
    units = cell_units(order, set(), capacity_gap.models_used)
    index = {(u.cells[0].name, u.seed): k for k, u in enumerate(units)}
    need = lambda name, seed=0: {units[k].cells[0].name for k in units[index[name, seed]].needs}
    assert len(units) == 2 * len(cells) and all(u.needs == () for u in units
                                                 if u.cells[0].role in ("teacher", "scratch"))
    assert need("kd/plain_cnn4/plain_cnn2") == {"teacher/plain_cnn4"}
    assert need("ta/plain_cnn6/plain_cnn4") == {"teacher/plain_cnn6"}
    assert need("kd/plain_cnn6/plain_cnn4/plain_cnn2", 1) == {"teacher/plain_cnn6",
                                                              "ta/plain_cnn6/plain_cnn4"}
    assert all(units[k].seed == 1 for k in units[index["kd/plain_cnn6/plain_cnn2", 1]].needs)
    assert all(n < k for k, u in enumerate(units) for n in u.needs)  # needs come first
    # A done cell's models are in the cache: who uses them waits for nothing.
    done = {("teacher/plain_cnn6", 0)}
    units = cell_units(order, done, capacity_gap.models_used)
    chain = next(u for u in units if u.seed == 0 and u.cells[0].name.count("/") == 3)
    assert [units[k].cells[0].name for k in chain.needs] == ["ta/plain_cnn6/plain_cnn4"]
    # Hinton: the teacher first, every student after it.
    units = cell_units(every(hinton_mnist.plan(hinton_mnist.PROFILES["smoke"]), 1), set(),
                       lambda seed, cell: [("teacher", seed)])
    assert units[0] == Unit(0, (hinton_mnist.Cell("teacher"),)) and all(
        u.needs == (0,) for u in units[1:])


def test_executor_ray_without_ray_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    assert run_main(hinton_mnist.main, ["--profile", "smoke", *RAY]) == 2
    err = capsys.readouterr().err
    assert "pip install -e '.[ray]'" in err and "Traceback" not in err


# ----------------------------------------------------------------------------------------------
# On a local Ray instance

def test_hinton_smoke_on_ray_gives_the_rows_of_a_local_run(ray_cluster, mnist_root, tmp_path,
                                                           monkeypatch, capsys):
    hinton_mnist.main(["--profile", "smoke", *RAY])
    ray_csv = tmp_path / "results" / "hinton_mnist" / "smoke.csv"
    out = capsys.readouterr().out
    assert out.count("test errors") == len(hinton_mnist.plan(hinton_mnist.PROFILES["smoke"]))
    local = run_local(hinton_mnist.main, tmp_path, monkeypatch, ["--profile", "smoke"])
    assert_same_rows(ray_csv, local / "hinton_mnist" / "smoke.csv")
    assert pd.read_csv(ray_csv)["hardware"].str.contains(r"\(\d+ cores, 1 threads\)").all()
    # A second run finds every cell done and adds nothing.
    hinton_mnist.main(["--profile", "smoke", *RAY])
    assert len(pd.read_csv(ray_csv)) == len(pd.read_csv(local / "hinton_mnist" / "smoke.csv"))


def test_capacity_gap_chain_on_ray_gives_the_rows_of_a_local_run(ray_cluster, fake_cifar10,
                                                                 tmp_path, monkeypatch):
    capacity_gap.main(["--profile", "smoke", *RAY])
    ray_csv = tmp_path / "results" / "capacity_gap" / "smoke.csv"
    chain = pd.read_csv(ray_csv).set_index("cell").loc["kd/plain_cnn6/plain_cnn4/plain_cnn2"]
    assert chain["teacher"] == "plain_cnn4"  # the assistant's task ran first and taught it
    local = run_local(capacity_gap.main, tmp_path, monkeypatch, ["--profile", "smoke"])
    assert_same_rows(ray_csv, local / "capacity_gap" / "smoke.csv")


def test_killed_driver_resumes_without_duplicates(ray_cluster, mnist_root, tmp_path):
    results = tmp_path / "results" / "hinton_mnist" / "smoke.csv"
    command = [sys.executable, "-m", "studies.hinton_mnist", "--profile", "smoke", *RAY,
               "--ray-address", ray_cluster]
    kill_after_rows(command, results, rows=1, timeout=180)
    partial = pd.read_csv(results)
    expected = [c.name for c in hinton_mnist.plan(hinton_mnist.PROFILES["smoke"])]
    assert 1 <= len(partial) < len(expected)
    done = subprocess.run(command, cwd=REPO, env=dict(os.environ), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = pd.read_csv(results)
    assert rows["cell"].tolist() == expected and not rows.duplicated(["cell", "seed"]).any()
    kept = rows.set_index("cell").loc[partial["cell"], "finished_at"]  # rows from before the kill
    assert kept.tolist() == partial["finished_at"].tolist()


def test_failed_tasks_are_recorded_and_the_others_finish(ray_cluster, mnist_root, tmp_path,
                                                         monkeypatch, capsys):
    smoke = hinton_mnist.PROFILES["smoke"]
    plan = hinton_mnist.plan
    broken = hinton_mnist.Cell("broken", 30, 1.0, "no_such_transfer_set")  # raises KeyError
    monkeypatch.setattr(hinton_mnist, "plan", lambda profile: [*plan(profile), broken])
    assert run_main(hinton_mnist.main, ["--profile", "smoke", *RAY]) == 0
    folder = tmp_path / "results" / "hinton_mnist"
    rows, failures = pd.read_csv(folder / "smoke.csv"), pd.read_csv(folder / "smoke_failures.csv")
    assert rows["cell"].tolist() == [c.name for c in plan(smoke)]
    assert failures["cell"].tolist() == ["broken"] and failures["seed"].tolist() == [0]
    assert failures["error"].item().startswith("KeyError: 'no_such_transfer_set' (at hinton_mnist.py:")
    assert "FAILED" in capsys.readouterr().err

    # Seed 1 with diverging students: the loss is not finite, each student is recorded failed.
    diverging = dataclasses.replace(smoke, student=dataclasses.replace(
        smoke.student, optimizer="sgd", lr=float("inf"), schedule="constant"))
    monkeypatch.setitem(hinton_mnist.PROFILES, "smoke", diverging)
    monkeypatch.setattr(hinton_mnist, "plan", plan)
    assert run_main(hinton_mnist.main, ["--profile", "smoke", "--seeds", "2", *RAY]) == 0
    rows, failures = pd.read_csv(folder / "smoke.csv"), pd.read_csv(folder / "smoke_failures.csv")
    assert rows.query("seed == 1")["cell"].tolist() == ["teacher"]
    students = failures.query("seed == 1")
    assert sorted(students["cell"]) == sorted(c.name for c in plan(smoke)[1:])
    assert students["error"].str.contains("is not finite").all()
    assert run_main(hinton_mnist.main, ["--profile", "smoke", "--report"]) == 0
    assert capsys.readouterr().out.count("FAILED (no row)") == len(failures)


def test_bad_input_stops_a_ray_run_with_one_line(ray_cluster, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KD_DATA", str(tmp_path / "no_data"))
    assert run_main(hinton_mnist.main, ["--profile", "smoke", *RAY]) == 2
    err = capsys.readouterr().err
    assert "error: MNIST not found" in err and "Traceback" not in err
    assert not (tmp_path / "results" / "hinton_mnist" / "smoke_failures.csv").exists()
