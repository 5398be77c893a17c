"""Training snapshots (kd.train.snapshot): a run killed after an epoch and resumed from its
snapshot ends with the weights, history and checkpoints of a run that never stopped."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kd.data import Split
from kd.data.cifar import RandomCropFlip
from kd.errors import CorruptFileError
from kd.methods import build_method
from kd.train import engine
from kd.train.distill import CrossEntropy
from kd.train.engine import TrainConfig

CONFIG = TrainConfig(epochs=4, batch_size=16, lr=0.05, momentum=0.9, weight_decay=5e-4,
                     schedule="cosine", warmup_epochs=1.0, checkpoint_epochs=(0, 2, 3))


class Killed(Exception):
    pass


def killed_at(objective, at: int):
    """``objective``, dying when epoch ``at`` starts, as a study does when its process is
    killed between epochs."""
    start_epoch = objective.start_epoch

    def start_or_die(epoch: int) -> None:
        if epoch == at:
            raise Killed
        start_epoch(epoch)

    objective.start_epoch = start_or_die
    return objective


def images(n: int = 64, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g),
                 torch.randint(0, 4, (n,), generator=g), (0.5,) * 3, (0.25,) * 3, num_classes=4)


def net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def run(objective_for, path=None, kill_at=None, model_seed=1, **options):
    """Train a fresh model (initialized from ``model_seed``); its result and state."""
    model = net(model_seed)
    objective = objective_for(model)
    if kill_at is not None:
        objective = killed_at(objective, kill_at)
    torch.manual_seed(123)  # the global stream the run draws from after its initialization
    fitted = engine.fit(model, images(), objective, CONFIG, seed=7, augment=RandomCropFlip(),
                        eval_sets={"test": images(32, 1)}, snapshot=path, snapshot_every_s=0,
                        **options)
    return fitted, model.state_dict()


@pytest.mark.parametrize("kill_at", [2, 4])
def test_a_killed_run_resumes_to_the_weights_of_one_that_never_stopped(tmp_path, kill_at):
    ce = lambda model: CrossEntropy()
    whole, whole_state = run(ce)
    path = tmp_path / "run.snapshot.pt"
    with pytest.raises(Killed):
        run(ce, path, kill_at=kill_at)
    assert path.exists()
    assert torch.load(path, weights_only=False)["epoch"] == kill_at - 1
    # a differently initialized model: the weights must come from the snapshot
    resumed, resumed_state = run(ce, path, model_seed=99)
    assert same_state(resumed_state, whole_state)
    assert resumed.history == whole.history
    assert resumed.checkpoints.keys() == {0, 2, 3}
    for epoch in (0, 2, 3):
        assert same_state(resumed.checkpoints[epoch], whole.checkpoints[epoch])
    assert resumed.wall_s > 0 and not list(tmp_path.glob(".*tmp"))  # no temporary file left


@pytest.mark.parametrize("draws_restored", [True, False])
def test_a_random_teachers_draws_resume_where_they_stopped(tmp_path, monkeypatch,
                                                           draws_restored):
    """Without its draws (False), a resumed random-teacher run ends elsewhere: the test can
    fail."""
    from kd.methods.schemes import RandomTeacher

    teachers = [net(10).eval(), net(11).eval()]
    method = lambda model: build_method("random_teacher", model, teachers, seed=3)
    _, whole_state = run(method)
    path = tmp_path / "run.snapshot.pt"
    with pytest.raises(Killed):
        run(method, path, kill_at=3)
    if not draws_restored:
        monkeypatch.setattr(RandomTeacher, "set_extra_state", lambda self, state: None)
    _, resumed_state = run(method, path, model_seed=99)
    assert same_state(resumed_state, whole_state) == draws_restored


def test_lockstep_runs_resume_together(tmp_path):
    def lockstep(path=None, kill_at=None, model_seed=1):
        models = [net(model_seed), net(model_seed + 1)]
        objectives = [CrossEntropy(), build_method("kd", models[1], net(10).eval())]
        if kill_at is not None:
            objectives[0] = killed_at(objectives[0], kill_at)
        torch.manual_seed(123)
        engine.fit_lockstep(models, images(), objectives, CONFIG, seed=7,
                            augment=RandomCropFlip(), snapshot=path, snapshot_every_s=0)
        return [m.state_dict() for m in models]

    whole = lockstep()
    path = tmp_path / "lockstep.snapshot.pt"
    with pytest.raises(Killed):
        lockstep(path, kill_at=3)
    resumed = lockstep(path, model_seed=50)
    assert all(same_state(a, b) for a, b in zip(resumed, whole))


def test_snapshots_wait_every_s_between_epochs_but_always_keep_the_last(tmp_path):
    path = tmp_path / "run.snapshot.pt"
    with pytest.raises(Killed):
        run(lambda m: CrossEntropy(), path, kill_at=3)
    assert torch.load(path, weights_only=False)["epoch"] == 2
    path.unlink()
    model = net(1)
    engine.fit(model, images(), CrossEntropy(), CONFIG, seed=7, snapshot=path,
               snapshot_every_s=3600)
    assert torch.load(path, weights_only=False)["epoch"] == CONFIG.epochs


@pytest.mark.parametrize("content", [b"", b"not a torch file", None])
def test_a_corrupt_or_foreign_snapshot_is_one_clear_error_and_left_alone(tmp_path, content):
    path = tmp_path / "run.snapshot.pt"
    if content is None:
        torch.save({"version": 1, "epoch": 1, "trainings": []}, path)  # another run's shape
    else:
        path.write_bytes(content)
    before = path.read_bytes()
    with pytest.raises(CorruptFileError, match="delete it to train from the start"):
        run(lambda m: CrossEntropy(), path)
    assert path.read_bytes() == before


def test_a_snapshot_of_another_precision_is_refused(tmp_path):
    path = tmp_path / "run.snapshot.pt"
    with pytest.raises(Killed):
        run(lambda m: CrossEntropy(), path, kill_at=2)
    saved = torch.load(path, weights_only=False)
    saved["trainings"][0]["precision"] = "bf16"
    torch.save(saved, path)
    with pytest.raises(CorruptFileError, match="trained in bf16, not fp32"):
        run(lambda m: CrossEntropy(), path)


def test_the_model_cache_resumes_a_killed_training_and_then_removes_its_snapshot(tmp_path):
    from kd.experiment.cache import ModelCache

    spec = {"arch": "test-net", "seed": 1, "train": {"epochs": CONFIG.epochs}}

    def cached(cache, kill_at=None, model_seed=1):
        objective = CrossEntropy() if kill_at is None else killed_at(CrossEntropy(), kill_at)
        torch.manual_seed(123)
        model, meta, checkpoints = cache.fit(spec, net(model_seed), images(), objective, CONFIG,
                                             seed=7, augment=RandomCropFlip())
        return model.state_dict(), meta, checkpoints

    whole, _, whole_checkpoints = cached(ModelCache(tmp_path / "a", shipped=None))
    cache = ModelCache(tmp_path / "b", shipped=None, snapshot_every_s=0)
    with pytest.raises(Killed):
        cached(cache, kill_at=3)
    snapshot = cache.snapshot_path([spec])
    assert snapshot.exists() and not cache.path(spec).exists()
    resumed, meta, checkpoints = cached(cache, model_seed=99)
    assert same_state(resumed, whole) and not snapshot.exists() and cache.path(spec).exists()
    assert all(same_state(checkpoints[e], whole_checkpoints[e]) for e in (0, 2, 3))
    assert len(meta["train_loss_history"]) == CONFIG.epochs and meta["train_s"] > 0


def test_the_cache_lists_the_trainings_left_part_way(tmp_path, monkeypatch, capsys):
    from kd.experiment import cache as cache_module
    from kd.experiment.cache import ModelCache

    monkeypatch.setenv("KD_CACHE", str(tmp_path))
    cache = ModelCache(shipped=None, snapshot_every_s=0)
    spec = {"arch": "test-net", "seed": 1}
    with pytest.raises(Killed):
        cache.fit(spec, net(1), images(), killed_at(CrossEntropy(), 3), CONFIG, seed=7)
    (cache.root.parent / "snapshots" / "broken.pt").write_bytes(b"")  # skipped, not a crash
    [(name, epochs, seconds)] = cache_module.in_training(cache)
    assert name == cache.snapshot_path([spec]).stem and epochs == 2 and seconds > 0
    cache_module.main(["list"])
    assert f"{name}  in training: 2 epochs done" in capsys.readouterr().out


def test_a_resumed_cells_row_counts_the_killed_processes_time(tmp_path):
    """run_cells' wall_s is the time this process spent on the cell plus the training time a
    snapshot restored (the killed run's), and only the cell's own: time restored before it
    (another cell's, a pre-pass's) is not counted."""
    from types import SimpleNamespace

    from kd.experiment.results import ResultsTable, run_cells
    from kd.train import snapshot

    ce = lambda model: CrossEntropy()
    path = tmp_path / "run.snapshot.pt"
    with pytest.raises(Killed):
        run(ce, path, kill_at=3)
    saved = torch.load(path, weights_only=False)
    saved["wall_s"] = 1000.0  # as if the killed process had trained for 1,000 s
    torch.save(saved, path)
    snapshot._restored_s = 5000.0  # left by earlier work in this process: not the cell's
    table = ResultsTable("study", "smoke", tmp_path / "results")
    cell = SimpleNamespace(name="resumed")
    run_cells(table, [(0, cell)], lambda seed, c: {"loss": run(ce, path)[0].history[-1]["epoch"]},
              torch.device("cpu"), summary=lambda row: "")
    wall = table.read()["wall_s"].iloc[0]
    assert 1000 < wall < 1100
    assert snapshot.restored_time() == 0.0  # read and reset by the harness


def test_a_run_carried_in_the_checkout_goes_on_on_a_machine_without_the_cache(tmp_path):
    """What ``carry`` writes into the shipped folder (a finished model with its checkpoints, a
    killed training's snapshot) is all a fresh machine needs: the killed training resumes to
    the weights of one that never stopped, and the finished one is not trained again."""
    from kd.experiment.cache import ModelCache, carry, in_training, spec_key

    finished = {"arch": "test-net", "seed": 2, "train": {"epochs": CONFIG.epochs}}
    killed = {"arch": "test-net", "seed": 1, "train": {"epochs": CONFIG.epochs}}

    def fit(cache, spec, objective=None, model_seed=1):
        torch.manual_seed(123)
        return cache.fit(spec, net(model_seed), images(), objective or CrossEntropy(), CONFIG,
                         seed=7, augment=RandomCropFlip())

    whole = fit(ModelCache(tmp_path / "whole", shipped=None), killed)[0].state_dict()
    shipped = tmp_path / "checkout" / "results" / "models"
    first = ModelCache(tmp_path / "first", shipped=shipped, snapshot_every_s=0)
    fit(first, finished)
    with pytest.raises(Killed):
        fit(first, killed, killed_at(CrossEntropy(), 3))
    snapshot = first.snapshot_path([killed])
    written = carry([spec_key(finished), spec_key(killed)], first)  # killed: not stored, skipped
    assert sorted(written) == sorted([shipped / f"{spec_key(finished)}.pt",
                                      shipped / "snapshots" / snapshot.name])
    assert carry([spec_key(finished)], first) == [shipped / "snapshots" / snapshot.name]

    fresh = ModelCache(tmp_path / "fresh", shipped=shipped)
    assert [(name, epochs) for name, epochs, _ in in_training(fresh)] == [(snapshot.stem, 2)]
    entry = fresh.load(finished)  # from the checkout, with the checkpoints a student may read
    assert entry is not None and sorted(entry["checkpoints"]) == [0, 2, 3]
    resumed, meta, _ = fit(fresh, killed, model_seed=99)
    assert same_state(resumed.state_dict(), whole)
    assert len(meta["train_loss_history"]) == CONFIG.epochs
    assert not (shipped / "snapshots" / snapshot.name).exists()  # finished: its carry is gone
    assert not fresh.snapshot_path([killed]).exists() and in_training(fresh) == []


def test_a_carried_snapshot_that_cannot_be_read_is_one_error_naming_it(tmp_path):
    """Deleting the cache's copy would not help (the carried one would be copied again): the
    error names the carried file, which is left as it was, and nothing is trained or copied."""
    from kd.experiment.cache import ModelCache

    spec = {"arch": "test-net", "seed": 1}
    cache = ModelCache(tmp_path / "cache", shipped=tmp_path / "shipped")
    carried = cache.carried(cache.snapshot_path([spec]))
    carried.parent.mkdir(parents=True)
    carried.write_bytes(b"PK\x03\x04 half a zip")
    with pytest.raises(CorruptFileError, match=f"{carried} cannot be read.*delete it"):
        cache.fit(spec, net(1), images(), CrossEntropy(), CONFIG, seed=7)
    assert carried.read_bytes() == b"PK\x03\x04 half a zip"
    assert not cache.snapshot_path([spec]).exists() and not cache.path(spec).exists()


def test_a_carried_snapshot_of_a_training_finished_in_another_checkout_is_dropped(tmp_path):
    """A run in a worktree forgets its own carried copy when its training ends; the checkout
    that carried it drops its copy once the model is stored, and keeps those still needed."""
    from kd.experiment.cache import ModelCache, carry, drop_finished, spec_key

    done = {"arch": "test-net", "seed": 1, "train": {"epochs": CONFIG.epochs}}
    going = {"arch": "test-net", "seed": 2, "train": {"epochs": CONFIG.epochs}}
    shipped = tmp_path / "checkout" / "results" / "models"
    cache = ModelCache(tmp_path / "cache", shipped=shipped, snapshot_every_s=0)

    def fit(spec, objective, on=cache):
        torch.manual_seed(123)
        return on.fit(spec, net(1), images(), objective, CONFIG, seed=7, augment=RandomCropFlip())

    for spec in (done, going):
        with pytest.raises(Killed):
            fit(spec, killed_at(CrossEntropy(), 2))
    carried = sorted(carry([], cache))
    assert [p.stem for p in carried] == sorted(
        cache.snapshot_path([s]).stem for s in (done, going))
    assert drop_finished(cache) == []  # neither finished: both carried copies stay
    # the first finishes in a worktree: same cache, another checkout
    fit(done, CrossEntropy(), ModelCache(tmp_path / "cache", shipped=tmp_path / "worktree"))
    assert cache.entry_path(spec_key(done)) is not None
    assert drop_finished(cache) == [shipped / "snapshots" / f"{spec_key(done)}.pt"]
    assert [p.name for p in (shipped / "snapshots").iterdir()] == [
        cache.snapshot_path([going]).name]
    # a fresh machine (no cache) keeps what it resumes from
    assert drop_finished(ModelCache(tmp_path / "fresh", shipped=shipped)) == []


def test_a_carried_lockstep_snapshot_is_dropped_once_its_group_finishes(tmp_path):
    """A lockstep group's snapshot is named by its specs, not a key: the cache notes it as
    finished, and the checkout that carried it drops its copy."""
    from kd.experiment.cache import ModelCache, carry, drop_finished

    specs = [{"arch": "test-net", "seed": s, "train": {"epochs": CONFIG.epochs}} for s in (3, 4)]
    shipped = tmp_path / "checkout" / "results" / "models"
    cache = ModelCache(tmp_path / "cache", shipped=shipped, snapshot_every_s=0)

    def lockstep(on, kill=False):
        torch.manual_seed(123)
        run = lambda i: (net(i), killed_at(CrossEntropy(), 2) if kill else CrossEntropy())
        return on.fit_lockstep(specs, run, images(), CONFIG, seed=7)

    with pytest.raises(Killed):
        lockstep(cache, kill=True)
    carried, keys = carry([], cache)  # the snapshot and, beside it, its members' keys
    assert carried.stem == cache.snapshot_path(specs).stem and drop_finished(cache) == []
    assert keys == cache.members_path(carried)
    assert lockstep(ModelCache(tmp_path / "cache", shipped=tmp_path / "worktree")) == [0, 1]
    assert cache.finished_log.read_text().split() == [carried.stem]
    assert list(cache.snapshots.glob(f"{carried.stem}.*")) == []  # the cache's keys went too
    with cache.finished_log.open("ab") as log:  # a garbled line: read past, matches nothing
        log.write(b"\xff\xfe\x00 half a name")
    assert drop_finished(cache) == [carried] and not carried.exists() and not keys.exists()


def test_each_model_of_a_group_left_part_way_is_listed_by_its_key(tmp_path, monkeypatch,
                                                                   capsys):
    """A lockstep group's snapshot is named by its specs; the keys kept beside it say whose
    epochs it holds, in the cache and carried into a checkout, until the group is stored."""
    from kd.experiment import cache as cache_module
    from kd.experiment.cache import ModelCache, carry, part_way, spec_key

    specs = [{"arch": "test-net", "seed": s, "train": {"epochs": CONFIG.epochs}} for s in (3, 4)]
    alone = {"arch": "test-net", "seed": 5, "train": {"epochs": CONFIG.epochs}}
    monkeypatch.setenv("KD_CACHE", str(tmp_path / "cache"))
    shipped = tmp_path / "checkout" / "results" / "models"
    cache = ModelCache(shipped=shipped, snapshot_every_s=0)

    def lockstep(on, kill_at=None):
        torch.manual_seed(123)
        run = lambda i: (net(i), killed_at(CrossEntropy(), kill_at) if kill_at else CrossEntropy())
        return on.fit_lockstep(specs, run, images(), CONFIG, seed=7)

    with pytest.raises(Killed):
        lockstep(cache, kill_at=3)
    with pytest.raises(Killed):
        cache.fit(alone, net(5), images(), killed_at(CrossEntropy(), 2), CONFIG, seed=7)
    keys = [spec_key(spec) for spec in specs]
    assert part_way(cache) == {keys[0]: 2, keys[1]: 2, spec_key(alone): 1}
    cache_module.main(["list"])
    assert f"{cache.snapshot_path(specs).stem}  in training (2 models together): 2 epochs" in \
        capsys.readouterr().out
    carry([], cache)
    fresh = ModelCache(tmp_path / "fresh", shipped=shipped)  # a machine without the cache
    assert part_way(fresh) == part_way(cache)
    (cache.snapshots / "old-group.pt").write_bytes((cache.snapshot_path(specs)).read_bytes())
    assert part_way(cache)["old-group"] == 2  # begun before keys were kept: its name alone
    assert lockstep(fresh) == [0, 1]
    assert set(part_way(fresh)) == {spec_key(alone)} and not list(
        fresh.snapshots.glob("*.keys")) and not list((shipped / "snapshots").glob("*.keys"))
