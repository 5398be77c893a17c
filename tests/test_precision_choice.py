"""Precision by measurement (kd.train.precision) and threads on purpose (kd.experiment.threads)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from kd.experiment import threads
from kd.train import engine, precision
from kd.experiment.cache import ModelCache, spec_key
from kd.data import Split
from kd.train.distill import CrossEntropy
from kd.errors import ConfigError
from kd.models import MLP
from kd.experiment.results import provenance


def tiny_split(n: int = 64) -> Split:
    g = torch.Generator().manual_seed(0)
    return Split(torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8, generator=g),
                 torch.randint(0, 10, (n,), generator=g), (0.5,), (0.25,))


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return MLP(16, (8,))


@pytest.fixture
def measured(monkeypatch):
    """bf16 native, and a measurement that returns given speeds and counts its calls."""
    calls = []

    def fake_measure(model, x, y, **_):
        calls.append(tuple(x.shape))
        return dict(fake_measure.speeds)

    fake_measure.speeds = {"fp32": 100.0, "bf16": 150.0}
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    monkeypatch.setattr(precision, "measure", fake_measure)
    precision._LAST.clear()
    return fake_measure, calls


@pytest.mark.parametrize("speeds, expected, speedup", [
    ({"fp32": 100.0, "bf16": 110.0}, "bf16", 1.1),   # exactly the threshold: bf16
    ({"fp32": 100.0, "bf16": 109.0}, "fp32", 1.09),  # a few per cent: not worth bf16
    ({"fp32": 601.0, "bf16": 314.0}, "fp32", 0.522),  # bf16 slower is never chosen
    ({"fp32": 355.0, "bf16": 585.0}, "bf16", 1.648),
])
def test_decide_picks_bf16_only_when_it_pays(speeds, expected, speedup):
    choice = precision.decide(speeds)
    assert choice == precision.Choice(expected, speedup, measured=True)


def test_named_precisions_are_not_measured(measured):
    _, calls = measured
    x, y = torch.zeros(4, 16), torch.zeros(4, dtype=torch.long)
    assert precision.choose("fp32", tiny_model(), x, y) == precision.Choice("fp32")
    assert precision.choose("bf16", tiny_model(), x, y) == precision.Choice("bf16")
    assert calls == []
    with pytest.raises(ConfigError, match="unknown precision 'fp16'"):
        precision.choose("fp16", tiny_model(), x, y)


def test_auto_is_fp32_without_native_bf16(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    monkeypatch.setattr(precision, "measure", lambda *a, **k: pytest.fail("measured"))
    x, y = torch.zeros(4, 16), torch.zeros(4, dtype=torch.long)
    assert precision.choose("auto", tiny_model(), x, y) == precision.Choice("fp32")


def test_auto_measures_once_per_machine_and_shape(measured):
    fake, calls = measured
    x, y = torch.zeros(4, 16), torch.zeros(4, dtype=torch.long)
    first = precision.choose("auto", tiny_model(), x, y)
    fake.speeds = {"fp32": 100.0, "bf16": 10.0}  # a second measurement would say fp32
    assert precision.choose("auto", tiny_model(), x, y) == first == precision.Choice(
        "bf16", 1.5, measured=True)
    assert calls == [(4, 16)]
    precision.choose("auto", tiny_model(), torch.zeros(8, 16), torch.zeros(8, dtype=torch.long))
    assert calls == [(4, 16), (8, 16)]  # another batch shape is measured on its own
    precision.choose("auto", MLP(16, (9,)), x, y)
    assert len(calls) == 3  # and so is another architecture


def test_a_broken_calibration_file_is_measured_again(measured, capsys):
    _, calls = measured
    precision.calibration_file().parent.mkdir(parents=True, exist_ok=True)
    precision.calibration_file().write_text("{not json")
    x, y = torch.zeros(4, 16), torch.zeros(4, dtype=torch.long)
    assert precision.choose("auto", tiny_model(), x, y).precision == "bf16"
    assert len(calls) == 1 and "cannot be read; measuring again" in capsys.readouterr().out
    assert precision.choose("auto", tiny_model(), x, y).precision == "bf16"
    assert len(calls) == 1  # rewritten whole


def test_measure_leaves_model_and_random_state_untouched():
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(8, 16), torch.randint(0, 10, (8,))
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    speeds = precision.measure(model, x, y, rounds=1, steps=1)
    assert torch.equal(torch.rand(3), expected)
    assert set(speeds) == {"fp32", "bf16"} and min(speeds.values()) > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fit_resolves_auto_and_reports_the_choice(measured):
    config = engine.TrainConfig(epochs=1, batch_size=16, lr=0.1, precision="auto")
    fitted = engine.fit(tiny_model(), tiny_split(), CrossEntropy(), config, seed=0)
    assert (fitted.precision, fitted.bf16_speedup) == ("bf16", 1.5)
    fixed = engine.fit(tiny_model(), tiny_split(), CrossEntropy(),
                       dataclasses.replace(config, precision="fp32"), seed=0)
    assert (fixed.precision, fixed.bf16_speedup) == ("fp32", None)


def test_auto_trains_and_keys_a_model_as_its_measured_precision_would(measured, tmp_path):
    """The spec's precision is made concrete in place before the key, and the weights are
    those of a run told that precision: measuring draws no random numbers."""
    base = engine.TrainConfig(epochs=1, batch_size=16, lr=0.1)
    runs = {}
    for asked in ("auto", "bf16"):
        config = dataclasses.replace(base, precision=asked)
        spec = {"arch": "mlp", "train": dataclasses.asdict(config)}
        torch.manual_seed(0)
        model, _, _ = ModelCache(tmp_path / asked, shipped=None).fit(
            spec, tiny_model(), tiny_split(), CrossEntropy(), config, seed=0)
        runs[asked] = (spec_key(spec), model.state_dict(), spec["train"]["precision"])
    assert runs["auto"][2] == "bf16"
    assert runs["auto"][0] == runs["bf16"][0]
    assert all(torch.equal(runs["auto"][1][k], v) for k, v in runs["bf16"][1].items())


def test_rows_record_the_measured_choice(measured):
    config = engine.TrainConfig(epochs=1, batch_size=16, precision="auto")
    engine.fit(tiny_model(), tiny_split(), CrossEntropy(), config, seed=0)
    row = provenance(torch.device("cpu"), 1.0, "auto")
    assert (row["precision"], row["bf16_speedup"]) == ("bf16", 1.5)
    # a second row of the same training (a stack's next student, a teacher's checkpoint)
    assert provenance(torch.device("cpu"), 1.0, "auto")["precision"] == "bf16"
    assert "bf16_speedup" not in provenance(torch.device("cpu"), 1.0, "fp32")


def test_a_row_that_names_its_models_precision_records_it(measured):
    """A row about a model trained in an earlier process (a cache hit) records the precision
    that model trained in, not the latest training's choice nor its measured speed-up."""
    fake, _ = measured
    fake.speeds = {"fp32": 100.0, "bf16": 50.0}
    config = engine.TrainConfig(epochs=1, batch_size=16, precision="auto")
    engine.fit(tiny_model(), tiny_split(), CrossEntropy(), config, seed=0)  # chooses fp32
    row = provenance(torch.device("cpu"), 1.0, "auto", trained_in="bf16")
    assert row["precision"] == "bf16" and "bf16_speedup" not in row
    precision._LAST.clear()
    assert provenance(torch.device("cpu"), 1.0, "auto", trained_in="fp32")["precision"] == "fp32"
    # a named precision is the study's: every model it trains or reads is keyed by it
    assert provenance(torch.device("cpu"), 1.0, "fp32", trained_in="fp32")["precision"] == "fp32"


def test_study_precision_auto_is_fp32_where_bf16_is_emulated(monkeypatch):
    monkeypatch.setattr(engine, "native_bf16", lambda device: False)
    assert engine.resolve_precision("auto", torch.device("cpu")) == "fp32"
    monkeypatch.setattr(engine, "native_bf16", lambda device: True)
    assert engine.resolve_precision("auto", torch.device("cpu")) == "auto"
    assert engine.resolve_precision("bf16", torch.device("cpu")) == "bf16"


# -- threads ---------------------------------------------------------------------------------

@pytest.mark.parametrize("cores, processes, expected", [(2, 1, 2), (2, 2, 1), (2, 3, 1),
                                                        (16, 3, 5), (1, 1, 1), (4, 0, 4)])
def test_share_of_the_cores(cores, processes, expected):
    assert threads.share(cores, processes) == expected


@pytest.fixture
def registry(tmp_path, monkeypatch):
    monkeypatch.setenv("KD_PROCESSES", str(tmp_path / "processes"))
    monkeypatch.delenv("KD_THREADS", raising=False)
    monkeypatch.setattr(threads, "_CLAIMED", [])  # no claim yet in this process
    before = torch.get_num_threads()
    yield tmp_path / "processes"
    torch.set_num_threads(before)


def test_a_second_live_process_halves_the_threads_and_a_dead_one_does_not(registry,
                                                                         monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    assert threads.claim_threads() == 2 and torch.get_num_threads() == 2
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (registry / str(other.pid)).touch()
        assert threads.claim_threads() == 1 and torch.get_num_threads() == 1
    finally:
        other.kill()
        other.wait()
    assert threads.claim_threads() == 2  # its file names a dead pid: not counted, removed
    assert not (registry / str(other.pid)).exists()


def test_kd_threads_fixes_the_count(registry, monkeypatch):
    monkeypatch.setenv("KD_THREADS", "1")
    assert threads.claim_threads() == 1 and torch.get_num_threads() == 1
    monkeypatch.setenv("KD_THREADS", "two")
    with pytest.raises(ConfigError, match="KD_THREADS='two' is not a positive number"):
        threads.claim_threads()


def test_rows_name_the_threads_of_their_own_cell(registry):
    """A study's threads may change between cells (claim_threads): each row's hardware says the
    count it ran with, not the first cell's."""
    from kd.experiment.results import hardware

    torch.set_num_threads(1)
    assert hardware("cpu").endswith(", 1 threads)")
    torch.set_num_threads(2)
    assert hardware("cpu").endswith(", 2 threads)")


def test_rows_say_where_bf16_is_emulated(monkeypatch):
    """One CPU model name covers machines with and without native bf16 (AMD EPYC: Zen 4 has
    it, Zen 3 does not, 17x apart in a bf16 step): the row says which it was."""
    from kd.experiment import results

    monkeypatch.setattr(results, "cpu_model", lambda: "AMD EPYC")
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    torch.set_num_threads(1)
    monkeypatch.setattr(results, "native_bf16", lambda device: True)
    assert results.hardware("cpu") == "AMD EPYC (2 cores, 1 threads)"
    monkeypatch.setattr(results, "native_bf16", lambda device: False)
    assert results.hardware("cpu") == "AMD EPYC without native bf16 (2 cores, 1 threads)"


def test_a_thread_count_set_by_other_code_is_left_alone(registry, monkeypatch):
    """A test's torch_threads or a Ray task sets the count on purpose: the next claim keeps it."""
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    assert threads.claim_threads() == 2
    with engine.torch_threads(1):
        assert threads.claim_threads() == 1 and torch.get_num_threads() == 1
    assert threads.claim_threads() == 2  # restored to what the last claim set: claims again


def auto_specs(*archs: str) -> list[dict]:
    config = engine.TrainConfig(epochs=1, batch_size=16, lr=0.1, precision="auto")
    return [{"arch": arch, "train": dataclasses.asdict(config)} for arch in archs]


def resolved(cache: ModelCache, specs: list[dict]) -> str:
    config = engine.TrainConfig(epochs=1, batch_size=16, lr=0.1, precision="auto")
    config = cache.concrete_precision(specs, config, tiny_model, tiny_split())
    assert all(spec["train"]["precision"] == config.precision for spec in specs)
    return config.precision


@pytest.mark.parametrize("begun", ["stored", "shipped", "snapshot", "carried snapshot"])
def test_auto_goes_on_in_the_precision_a_training_began_in(measured, tmp_path, begun):
    """A machine that measures fp32 faster resumes a run begun in bf16 in bf16 (the keys it
    began under), wherever the begun work lies; a spec nobody began is measured."""
    fake, calls = measured
    fake.speeds = {"fp32": 100.0, "bf16": 10.0}  # this machine: bf16 emulated, slow
    cache = ModelCache(tmp_path / "cache", shipped=tmp_path / "shipped")
    bf16 = [cache_keys_spec(spec, "bf16") for spec in auto_specs("a", "b")]
    if begun == "stored":
        cache.save(bf16[0], tiny_model().state_dict())
    elif begun == "shipped":
        write_file(cache.shipped / cache.path(bf16[1]).name)
    else:  # a snapshot of the two trained together, in this cache or carried in a checkout
        snapshot = cache.snapshot_path(bf16)
        write_file(snapshot if begun == "snapshot" else cache.carried(snapshot))
    assert resolved(cache, auto_specs("a", "b")) == "bf16" and calls == []
    assert resolved(cache, auto_specs("c")) == "fp32" and len(calls) == 1
    # another group's snapshot does not decide: b alone was never begun in bf16
    if begun in ("snapshot", "carried snapshot"):
        assert resolved(cache, auto_specs("b")) == "fp32"


def test_a_named_precision_is_kept_even_where_another_was_begun(measured, tmp_path):
    cache = ModelCache(tmp_path / "cache", shipped=None)
    cache.save(cache_keys_spec(auto_specs("a")[0], "bf16"), tiny_model().state_dict())
    config = engine.TrainConfig(epochs=1, batch_size=16, lr=0.1, precision="fp32")
    spec = {"arch": "a", "train": dataclasses.asdict(config)}
    assert cache.concrete_precision([spec], config, tiny_model, tiny_split()) is config
    assert spec["train"]["precision"] == "fp32"


def cache_keys_spec(spec: dict, precision: str) -> dict:
    from kd.experiment.cache import with_precision
    concrete = with_precision(spec, precision)
    assert concrete is not spec and spec["train"]["precision"] == "auto"  # a copy
    return concrete


def write_file(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"begun")
