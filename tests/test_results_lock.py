"""One writer per results table: a second run of the same study and profile into the same
results folder stops with one line naming the running process, exit code 2, before it trains
anything (under ``--executor ray`` too: the driver holds the lock; ``results merge`` is refused
the same way); a lock left by a killed run does not block a resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kd.errors import TableInUseError
from kd.experiment import results
from kd.experiment.cli import run_main
from kd.experiment.lock import release_locks
from kd.experiment.results import ResultsTable
from studies import hinton_mnist
from tests.conftest import REPO

HOLD = ("import sys, time\n"
        "from kd.experiment.results import ResultsTable\n"
        "ResultsTable('hinton_mnist', 'smoke', sys.argv[1]).lock()\n"
        "print('locked', flush=True)\n"
        "time.sleep(300)\n")


@pytest.fixture
def holder(tmp_path):
    """A live process that holds hinton_mnist/smoke's lock under ``tmp_path / "results"``."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "results")],
                               stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    assert process.stdout.readline().strip() == "locked"
    yield process
    process.kill()
    process.wait()


def test_a_second_run_exits_2_with_one_line_naming_the_first_before_training(tmp_path, holder):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    second = subprocess.run([sys.executable, "-m", "studies.hinton_mnist", "--profile", "smoke",
                             "--device", "cpu", "--results", str(tmp_path / "results")],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert second.returncode == 2, second.stderr
    (line,) = second.stderr.splitlines()
    assert line.startswith("error: ") and f"process {holder.pid} (" in line
    assert " -c " in line and "wait for it to finish" in line and "--results" in line
    assert not (tmp_path / "cache").exists()  # no teacher trained, none loaded
    assert not (tmp_path / "results" / "hinton_mnist" / "smoke.csv").exists()


def test_the_ray_driver_holds_the_same_lock(tmp_path, holder, capsys):
    pytest.importorskip("ray")
    code = run_main(hinton_mnist.main, ["--profile", "smoke", "--device", "cpu",
                                        "--executor", "ray"])
    assert code == 2  # refused in the driver, before a Ray instance is started
    assert f"process {holder.pid} (" in capsys.readouterr().err


def test_merging_into_a_table_being_written_is_refused(tmp_path, holder, capsys):
    ResultsTable("hinton_mnist", "smoke", tmp_path / "r1").append({"cell": "a", "seed": 1})
    code = run_main(results.main, ["merge", "hinton_mnist", "smoke", str(tmp_path / "r1"),
                                   "--results", str(tmp_path / "results")])
    assert code == 2 and f"process {holder.pid} (" in capsys.readouterr().err
    assert not (tmp_path / "results" / "hinton_mnist" / "smoke.csv").exists()


def test_a_lock_left_by_a_killed_run_does_not_block_a_resume(tmp_path, holder):
    table = ResultsTable("hinton_mnist", "smoke", tmp_path / "results")
    with pytest.raises(TableInUseError, match=f"process {holder.pid} "):
        table.lock()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lock = table.path.parent / ".smoke.lock"
    assert lock.exists() and json.loads(Path(f"{lock}.json").read_text())["pid"] == holder.pid
    table.lock()  # the OS released the dead process's flock
    assert json.loads(Path(f"{lock}.json").read_text())["pid"] == os.getpid()


def test_one_process_may_lock_again_and_its_release_frees_the_table(tmp_path):
    table = ResultsTable("study", "smoke", tmp_path)
    table.lock()
    table.lock()  # a study resumed in the same process
    ResultsTable("study", "quick", tmp_path).lock()  # another profile: another table
    holder_file = tmp_path / "study" / ".smoke.lock.json"
    assert json.loads(holder_file.read_text())["argv"][1:] == sys.argv
    release_locks()
    assert not holder_file.exists()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    other = subprocess.run([sys.executable, "-c", "import sys\n"
                            "from kd.experiment.results import ResultsTable\n"
                            "ResultsTable('study', 'smoke', sys.argv[1]).lock()",
                            str(tmp_path)], env=env, cwd=REPO, capture_output=True, text=True)
    assert other.returncode == 0, other.stderr
