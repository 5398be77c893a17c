"""How far a long capacity-gap + early-stopping run has got, and how long it has left: every
training the two studies plan (:mod:`studies.zoo_budget`), looked up in the model cache by its
key, and the trainings left part-way in its snapshots.

    python -m studies.zoo_progress                 # the large profile
    python -m studies.zoo_progress --detail        # and every training, done or not
    python -m studies.zoo_progress --record        # and write it to results/zoo_progress/,
                                                   # and warn of rows of one model that disagree
    python -m studies.zoo_progress --carry         # and copy the run into results/models

``--record`` replaces ``results/zoo_progress/<profile>.csv`` (one row per planned training,
keyed by its cache key, with when and from which commit it was recorded), which ``make docs``
turns into the README's line on how far ``make large`` has got: a reader's checkout has no
model cache to ask. ``--carry`` copies the finished models (with their checkpoints) and the
snapshots of trainings left part-way into ``results/models`` (:func:`kd.experiment.cache.carry`):
committed, they let the run go on from a fresh checkout whose machine lost the model cache,
which a session's stop may do.

Hours left are the sizing's (``zoo_budget``, from the roofline's idle speeds), in all and per
seed (the large verdicts read the first seeds to complete: :mod:`studies.verdict_seeds`), and,
beside them, scaled by how the finished teachers' measured training time (``train_s`` in their
cache meta) compares with their sizing: the pace this machine has kept so far. Students trained
in lockstep share one time, so the pace is the teachers'; it is also told per precision and
machine, as the sizing assumed bf16 and a CPU that emulates it trains in fp32 at another pace. A
key is looked up in both precisions (``auto`` writes the one it chose into the key), a student's
with its teacher's key as found, so the listing does not need to know which won.
Students training in lockstep keep one snapshot for the group (``python -m kd.experiment.cache
list`` shows it) and their keys beside it, so each counts its epochs done; a group begun under
code older than those keys counts as not started until its models are stored.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pandas as pd
import torch

from kd.experiment.cache import ModelCache, carry, drop_finished, part_way, spec_key
from kd.experiment.cli import run_main
from kd.experiment.command import OneLineErrorParser, with_training
from kd.experiment.results import ResultsTable, git_commit
from studies import capacity_gap, early_stopping, zoo_budget, zoo_rows
from studies.cifar_zoo import CIFAR_DATASETS, ZOO_PROFILES, Teacher, Zoo, make_zoo
from studies.zoo_budget import Planned

PRECISIONS = ("bf16", "fp32")
STUDY = "zoo_progress"  # its folder under results/


def families_of(name: str) -> dict:
    return {f.name: f for f in (*capacity_gap.FAMILIES[name], *early_stopping.FAMILIES[name])}


def training_key(zoo: Zoo, t: Planned, families: dict, teacher_key: str | None) -> str:
    """The cache key the studies give ``t`` in ``zoo`` (its precision) when its teacher's key is
    ``teacher_key``, as :meth:`Zoo.teacher_training` and :meth:`Zoo.student_training` spell it."""
    if t.role == "teacher":
        return spec_key(zoo.teacher_training(t.arch, t.seed).spec)
    place = zoo.for_arch(families[t.family], t.arch)
    teacher = None
    if t.teacher is not None:
        at = "" if t.teacher_epoch is None else f"@{t.teacher_epoch}"
        teacher = Teacher(t.teacher.arch, None, teacher_key + at, None)
    kd_until = t.kd_epochs if teacher is not None and t.kd_epochs < t.epochs else None
    return spec_key(place.student_training(t.arch, t.seed, teacher, kd_until).spec)


def progress(name: str, dataset: str = CIFAR_DATASETS[0],
             cache: ModelCache | None = None) -> pd.DataFrame:
    """One row per planned training: seed, role, arch, taught by, its KD epochs, its key (in the
    precision found, else the first), done, epochs done (part-way: its snapshot's), the
    precision it trains in (blank before it begins), sized hours, measured hours and the
    machine it trained on when done."""
    cache = cache or ModelCache()
    profile = ZOO_PROFILES[name].resolved()
    planned = zoo_budget.trainings(name, profile, profile.seeds + profile.spare_seeds)
    passes = zoo_budget.teacher_passes(planned, profile)
    speeds = zoo_budget.measured_speeds()
    families = families_of(name)
    epochs_begun = part_way(cache)
    zoos = {p: make_zoo(with_training(profile, precision=p), dataset, torch.device("cpu"))
            for p in PRECISIONS}
    found: dict[Planned, tuple[str, str | None, Path | None]] = {}

    def look_up(t: Planned) -> tuple[str, str | None, Path | None]:
        """``t``'s key, the precision it began in (None: not begun) and its stored file. A
        student's key holds its teacher's, and under ``auto`` the two may differ in precision
        (an fp32 teacher, begun on a CPU without native bf16, teaching a bf16 student), so the
        teacher's key is the one found, not the one of the student's precision."""
        if t not in found:
            teacher_key = look_up(t.teacher)[0] if t.teacher is not None else None
            options = {p: training_key(zoos[p], t, families, teacher_key) for p in PRECISIONS}
            stored = {p: path for p, k in options.items() if (path := cache.entry_path(k))}
            begun = next(iter(stored), None) or next(
                (p for p, k in options.items() if k in epochs_begun), None)
            found[t] = (options[begun or PRECISIONS[0]], begun, stored.get(begun))
        return found[t]

    rows = []
    for t in planned:
        key, precision, done = look_up(t)
        meta = torch.load(done, map_location="cpu", weights_only=True)["meta"] if done else {}
        rows.append({"seed": t.seed, "role": t.role, "arch": t.arch, "taught_by": t.taught_by,
                     "kd_epochs": t.kd_epochs, "key": key, "done": done is not None,
                     "epochs_done": t.epochs if done else epochs_begun.get(key, 0),
                     "epochs": t.epochs, "precision": precision,
                     "sized_h": zoo_budget.hours(t, speeds, passes.get(t, 0)),
                     "measured_h": meta.get("train_s", float("nan")) / 3600,
                     "trained_on": meta.get("trained_on")})
    return without_spares_not_begun(pd.DataFrame(rows), profile.seeds)


def without_spares_not_begun(table: pd.DataFrame, seeds: int) -> pd.DataFrame:
    """``table`` without the spare seeds (``seeds`` and after: ``ZooProfile.spare_seeds``) of
    which no training is done or part-way: a spare runs only in place of a seed that cannot
    finish, so it counts once it has begun."""
    begun = table[table["done"].astype(bool) | (table["epochs_done"] > 0)]["seed"]
    return table[(table["seed"] < seeds) | table["seed"].isin(set(begun))].reset_index(drop=True)


def finished_teachers(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of teachers that have finished: the pace is theirs."""
    return table[(table["role"] == "teacher") & table["done"].astype(bool)]


def pace(table: pd.DataFrame) -> float | None:
    """Measured over sized hours of the finished teachers (None before one finishes)."""
    teachers = finished_teachers(table)
    return float(teachers["measured_h"].sum() / teachers["sized_h"].sum()) \
        if not teachers.empty else None


def paces(table: pd.DataFrame) -> pd.DataFrame:
    """The pace of the finished teachers per precision and machine (``teachers``, ``pace``):
    the sizing assumed bf16 where the CPU has it, so a machine that emulates it, and trains in
    fp32, keeps another pace. A table recorded before the precision column counts as one
    precision."""
    teachers = finished_teachers(table)
    blank = pd.Series(dtype=object)
    teachers = teachers.assign(precision=teachers.get("precision", blank),
                               trained_on=teachers.get("trained_on", blank))
    return teachers.fillna({"precision": "?", "trained_on": "this machine"}).groupby(
        ["precision", "trained_on"]).agg(
        teachers=("done", "size"), measured_h=("measured_h", "sum"),
        sized_h=("sized_h", "sum")).assign(
        pace=lambda g: g["measured_h"] / g["sized_h"]).reset_index()


def each_pace(group, left_h: float) -> str:
    """One row of :func:`paces` in words, with the hours ``left_h`` would take at its pace."""
    return (f"{group.pace:.2f}x for {group.teachers} in {group.precision} on "
            f"{group.trained_on}, {left_h * group.pace:.1f} h at that pace")


def hours_left(table: pd.DataFrame) -> float:
    """Sized hours of what is not done; a training left part-way has that share behind it."""
    return float(hours_left_by_seed(table).sum())


def hours_left_by_seed(table: pd.DataFrame) -> pd.Series:
    """:func:`hours_left` of each seed with anything left: the large verdicts read the first
    seeds to complete (studies.verdict_seeds), so what matters is each seed's remainder."""
    left = table[~table["done"].astype(bool)]
    hours = left["sized_h"] * (1 - left["epochs_done"] / left["epochs"])
    return hours.groupby(left["seed"]).sum()


def seeds_left(table: pd.DataFrame) -> str:
    """``seed 0 1.5 h, seed 1 2.0 h``: sized hours left per seed."""
    return ", ".join(f"seed {seed} {h:.1f} h" for seed, h in hours_left_by_seed(table).items())


def summary(table: pd.DataFrame) -> str:
    table = table.assign(part_way=(table["epochs_done"] > 0) & ~table["done"])
    by_seed = table.groupby(["seed", "role"]).agg(
        done=("done", "sum"), planned=("done", "size"), part_way=("part_way", "sum"))
    left_h = hours_left(table)
    lines = [by_seed.reset_index().to_string(index=False), "",
             f"{int(table['done'].sum())} of {len(table)} trainings done; "
             f"{left_h:.1f} h left as sized (idle speeds; {seeds_left(table)})"]
    ratio = pace(table)
    if ratio is not None:
        lines.append(f"finished teachers took {ratio:.2f}x their sizing: about "
                     f"{left_h * ratio:.1f} h left at that pace")
        groups = paces(table)
        if len(groups) > 1:
            lines += [f"  {each_pace(g, left_h)}" for g in groups.itertuples()]
    return "\n".join(lines)


def record(table: pd.DataFrame, name: str, root: Path | None = None) -> Path:
    """Replace ``<results>/zoo_progress/<name>.csv`` by ``table`` (atomically), stamped with the
    time and the commit that recorded it; returns its path."""
    results = ResultsTable(STUDY, name, root)
    results.replace(table.rename(columns={"key": "cell"}).assign(
        recorded_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
        git_commit=git_commit()))
    return results.path


def status_line(table: pd.DataFrame) -> str:
    """One sentence for the README from a recorded table: trainings done, teachers among them,
    and hours left as sized and at the finished teachers' pace, with the date it holds for."""
    done = table["done"].astype(bool)
    teachers = table["role"] == "teacher"
    seeds = sorted(table.loc[done & teachers, "seed"].unique())
    left_h = hours_left(table)
    text = (f"{int(done.sum())} of {len(table)} trainings done ({int((done & teachers).sum())} "
            f"of {int(teachers.sum())} teachers: seed(s) {', '.join(map(str, seeds)) or 'none'}); "
            f"{left_h:.1f} h left as sized ({seeds_left(table)})")
    ratio = pace(table)
    if ratio is not None:
        groups = paces(table)
        if len(groups) == 1:
            text += (f", about {left_h * ratio:.1f} h at the pace the finished teachers "
                     f"kept on {groups['trained_on'].iloc[0]}: {ratio:.2f}x their sizing")
        else:
            each = "; ".join(each_pace(g, left_h) for g in groups.itertuples())
            text += (f", about {left_h * ratio:.1f} h at the pace the finished teachers kept: "
                     f"{ratio:.2f}x their sizing ({each})")
    when = pd.Timestamp(table["recorded_at"].iloc[0]).strftime("%Y-%m-%d %H:%M UTC")
    return f"{text}; recorded {when}"


def main(argv: list[str] | None = None) -> None:
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=list(ZOO_PROFILES), default="large")
    parser.add_argument("--dataset", choices=CIFAR_DATASETS, default=CIFAR_DATASETS[0])
    parser.add_argument("--detail", action="store_true", help="every training, done or not")
    parser.add_argument("--record", action="store_true",
                        help=f"write the table to <results>/{STUDY}/<profile>.csv for make docs")
    parser.add_argument("--carry", action="store_true",
                        help="copy the finished trainings (with their checkpoints) and those "
                             "left part-way into results/models, to commit: a machine "
                             "without this model cache goes on from them")
    parser.add_argument("--results", default=None,
                        help="results root (default $KD_RESULTS or results/)")
    args = parser.parse_args(argv)
    if args.record:  # a corrupt or unwritable table fails before the cache is read
        ResultsTable(STUDY, args.profile, args.results).check_writable()
    cache = ModelCache()
    table = progress(args.profile, args.dataset, cache)
    if args.record:
        print(f"wrote {record(table, args.profile, args.results)}")
        # recorded before rows are committed: rows of a model retrained otherwise show here
        if zoo_rows.report(args.profile, zoo_rows.tables(args.profile, args.results)):
            print("warning: the rows above describe two models under one name (studies.zoo_rows)")
    if args.carry:
        for path in carry(table.loc[table["done"], "key"].tolist(), cache):
            print(f"carried {path} ({path.stat().st_size / 1e6:.1f} MB)")
        for path in drop_finished(cache):
            print(f"dropped {path}: its training has finished and is carried")
    print(f"capacity_gap + early_stopping [{args.profile}]: the model cache "
          f"({cache.root})")
    print(summary(table))
    if args.detail:
        print()
        print(table.round({"sized_h": 2, "measured_h": 2}).to_string(index=False))


if __name__ == "__main__":
    raise SystemExit(run_main(main))
