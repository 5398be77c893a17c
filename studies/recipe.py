"""The `large` profile's training recipe, chosen on training images held out for it.

The `large` profiles (issue 28) train every model on all the training images until its loss
plateaus, and must reach accuracies near the papers' (ResNet-8 from scratch >= 85 % on CIFAR-10)
on a 2-core CPU. A recipe that does so in few epochs is chosen here, never on the test set:
``validation_n`` of the 50,000 CIFAR-10 training images are held out (seed 0), each candidate
trains the profile's architecture on the others (crop + flip, seed 0, ``--precision auto``) and
is scored by its final-epoch accuracy on the held-out images. One row per candidate in
``results/recipe/<profile>.csv`` (resumable like a study's), with its training-loss plateau
(:func:`kd.metrics.loss_plateau`), images/s and wall time.

The rule, fixed before any candidate ran (commit of this file): among the candidates of the
profile's base epoch budget (the fewest epochs listed), the highest validation accuracy wins,
the first listed on a tie; a candidate with more epochs replaces it only if it is better by at
least ``extra_epochs_margin`` points (what more epochs must buy to be worth their time), and
then the best of those. One seed: a 5,000-image validation accuracy has a sampling error of
about 0.5 points, so candidates closer than that are not told apart, and the rule then keeps
the cheaper or earlier one.

A profile with a ``target`` (the teachers', ``large-teacher``) runs its candidates one at a
time in the listed order, cheapest first, and stops at the first whose validation accuracy
reaches the target: that one is chosen. If none does, the rule above chooses among them all.
(Fixed, with the teacher candidates, before any of them ran: a teacher is expensive, and the
issue asks a teacher to reach a target rather than to be the best one money can buy.)

Both chosen recipes fall short of issue 28's accuracies on the held-out images (each report
below says by how much). Why, as far as we can tell without the runs to test it: the papers'
recipes train 150 (Mirzadeh et al.) to 182 epochs (torchdistill), ours 60 (what the budget
affords); a longer schedule bought the ResNet-32 less than the margin here, so the remaining
gap is not epochs alone; and our CIFAR-10 copy is JPEG-compressed, where the papers used the
PNG originals.

    python -m studies.recipe --profile large            # ResNet-8, about 2 h on 1 core
    python -m studies.recipe --profile large-teacher    # ResNet-32, 1.3 h per 60 epochs on 2
    python -m studies.recipe --profile large --report   # the candidates and the choice
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pandas as pd

from kd import data, metrics
from kd.data.cifar import RandomCropFlip
from kd.errors import ConfigError
from kd.experiment.cache import ModelCache, spec_key
from kd.experiment.cli import open_study, run_main
from kd.experiment.results import markdown_table, run_cells, run_footer
from kd.models import build_model
from kd.train import engine
from kd.train.distill import CrossEntropy
from kd.train.engine import TrainConfig

STUDY = "recipe"
SELECTION_SEED = 0

# SGD with Nesterov momentum, one warm-up epoch: the probe of issue 28 (81.15 % test after 30
# epochs, 82.77 % after 60). The others change one thing each: batch and learning rate
# together, weaker weight decay (a 78k-parameter ResNet-8 under-fits rather than over-fits), a
# linear decay from a higher peak, a smaller batch with more steps, and twice the epochs.
BASE = TrainConfig(epochs=30, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9,
                   nesterov=True, weight_decay=5e-4, schedule="cosine", warmup_epochs=1.0)
LARGE_CANDIDATES = {
    "cos-lr0.1-bs128-wd5e-4-e30": BASE,
    "cos-lr0.2-bs256-wd5e-4-e30": dataclasses.replace(BASE, batch_size=256, lr=0.2),
    "cos-lr0.1-bs128-wd1e-4-e30": dataclasses.replace(BASE, weight_decay=1e-4),
    "lin-lr0.2-bs128-wd5e-4-e30": dataclasses.replace(BASE, lr=0.2, schedule="linear"),
    "cos-lr0.05-bs64-wd5e-4-e30": dataclasses.replace(BASE, batch_size=64, lr=0.05),
    "cos-lr0.1-bs128-wd5e-4-e60": dataclasses.replace(BASE, epochs=60),
}


# What the `large` profiles train with, pinned in a commit of its own once the rule above has
# chosen on the held-out images (None until then: a large profile refuses to run without it).
# "student": chosen by the rule on all six rows of results/recipe/large.csv (its validation
# accuracy is below the 85 % issue 28 asks of a scratch ResNet-8: see docs/recipe.md).
# "teacher": chosen by the rule on results/recipe/large-teacher.csv: neither candidate reached
# the 91 % target on the held-out images (60 epochs 88.58 %, 100 epochs 89.08 %), and the
# 100-epoch one bought less than the 1-point margin, so the 60-epoch recipe (see docs/recipe.md).
# "student": ResNet-8 and the other small students (profile "large"); "teacher": the ResNet
# teachers (profile "large-teacher", on a ResNet-32).
LARGE_RECIPES: dict[str, str | None] = {"student": "cos-lr0.1-bs128-wd5e-4-e60",
                                        "teacher": "cos-lr0.1-bs128-wd5e-4-e60"}
# The teachers (ResNet-14/20/32) start from the students' chosen recipe, then the same with
# more epochs: issue 28 asks the largest (ResNet-32) to reach 91 % (torchdistill's 182-epoch
# step recipe: 93.0 on the PNG images), and the 60-epoch recipe bought ResNet-8 1.4 points over
# 30 epochs.
TEACHER_CANDIDATES: dict[str, TrainConfig] = {
    "cos-lr0.1-bs128-wd5e-4-e60": LARGE_CANDIDATES["cos-lr0.1-bs128-wd5e-4-e60"],
    "cos-lr0.1-bs128-wd5e-4-e100": dataclasses.replace(BASE, epochs=100),
}


def large_config(role: str) -> TrainConfig:
    """The chosen recipe of ``role`` ("student" or "teacher") for the `large` profiles; a
    :class:`~kd.errors.ConfigError` naming what to run while it is not chosen yet."""
    name = LARGE_RECIPES.get(role)
    if name is None:
        selection = "large" if role == "student" else f"large-{role}"
        raise ConfigError(f"the large profiles' {role} recipe is not chosen yet: run "
                          f"python -m studies.recipe --profile {selection} (the rule in "
                          f"studies/recipe.py chooses it), then pin it in LARGE_RECIPES")
    return {**LARGE_CANDIDATES, **TEACHER_CANDIDATES}[name]


def recipe_name(config: TrainConfig) -> str | None:
    """The candidate ``config`` trains by (whatever its precision, compilation and checkpoints),
    for the rows of the large profiles; None for a schedule that is no candidate."""
    bare = lambda c: dataclasses.replace(c, precision="fp32", compile=False, checkpoint_epochs=())
    return next((name for name, candidate in {**LARGE_CANDIDATES, **TEACHER_CANDIDATES}.items()
                 if bare(candidate) == bare(config)), None)


@dataclass(frozen=True)
class Profile:
    description: str
    arch: str
    candidates: dict[str, TrainConfig]
    train_limit: int | None  # training images before the hold-out (None: all 50,000)
    validation_n: int
    extra_epochs_margin: float = 1.0  # accuracy points
    target: float | None = None  # validation accuracy that ends the search (run in order)
    goal: float | None = None  # issue 28's accuracy, reported against (no part of the rule)

    @property
    def seeds(self) -> int:
        return 1


PROFILES = {
    "smoke": Profile("resnet8, 256 images (64 held out), candidates of 1 and 2 epochs", "resnet8",
                     {"a": TrainConfig(epochs=1, batch_size=32, lr=0.05),
                      "b": TrainConfig(epochs=2, batch_size=32, lr=0.05)},
                     train_limit=256, validation_n=64),
    "large": Profile("resnet8 on 45,000 training images, 5,000 held out, six candidates",
                     "resnet8", LARGE_CANDIDATES, train_limit=None, validation_n=5_000,
                     goal=0.85),
    "large-teacher": Profile("resnet32 on 45,000 training images, 5,000 held out, candidates in "
                             "order until one reaches 91 %", "resnet32", TEACHER_CANDIDATES,
                             train_limit=None, validation_n=5_000, target=0.91),
    "smoke-teacher": Profile("resnet8, 256 images (64 held out), in order until one reaches 0 %",
                             "resnet8", {"a": TrainConfig(epochs=1, batch_size=32, lr=0.05),
                                         "b": TrainConfig(epochs=2, batch_size=32, lr=0.05)},
                             train_limit=256, validation_n=64, target=0.0),
}


@dataclass(frozen=True)
class Cell:
    name: str  # the candidate's name


def choose(rows: pd.DataFrame, profile: Profile) -> str | None:
    """The rule of the module docstring, on the rows of the profile's candidates."""
    if rows.empty:
        return None
    scores = rows.set_index("cell")["validation_accuracy"]
    listed = [name for name in profile.candidates if name in scores]
    if not listed:
        return None
    for name in profile.candidates if profile.target is not None else ():
        if name not in scores:
            return None  # the search goes on from here
        if scores[name] >= profile.target:
            return name
    base_epochs = min(c.epochs for c in profile.candidates.values())
    best = lambda names: max(names, key=lambda n: (scores[n], -listed.index(n)))
    base = [n for n in listed if profile.candidates[n].epochs == base_epochs]
    longer = [n for n in listed if profile.candidates[n].epochs > base_epochs]
    chosen = best(base) if base else None
    margin = profile.extra_epochs_margin / 100
    if longer and (chosen is None or scores[best(longer)] >= scores[chosen] + margin):
        chosen = best(longer)
    return chosen


def report(rows: pd.DataFrame, profile: Profile | None = None) -> str:
    profile = profile or PROFILES[rows["profile"].iloc[0]]
    shown = rows[["cell", "epochs", "batch_size", "lr", "weight_decay", "schedule",
                  "validation_accuracy", "train_loss_plateau", "images_per_s", "train_s"]]
    missing = [n for n in profile.candidates if n not in set(rows["cell"])]
    lines = [f"recipe [{rows['profile'].iloc[0]}]: {profile.description}", "",
             *markdown_table(shown, number="{:.4g}"), ""]
    chosen = choose(rows, profile)
    if profile.target is not None and chosen is not None and missing:
        note = f" (it reached {profile.target:.0%} first; not run: {', '.join(missing)})"
    elif chosen is None and profile.target is not None:
        note = f" (no candidate has reached {profile.target:.0%} yet; next: {missing[0]})"
    else:
        note = (f" (not run yet: {', '.join(missing)}; the choice may change)" if missing
                else "")
    lines.append(f"chosen: {chosen}{note}")
    aim = profile.target if profile.target is not None else profile.goal
    if chosen is not None:
        row = rows.set_index("cell").loc[chosen]
        if aim is not None and aim > row["validation_accuracy"]:
            lines.append(f"the chosen one is {100 * (aim - row['validation_accuracy']):.2f} "
                         f"points short of issue 28's {aim:.0%} on the held-out images")
        lines.append(plateau_line(row["train_loss_plateau"]))
    uncounted = rows[rows["train_s"] > rows["wall_s"] + 1]
    if not uncounted.empty:
        lines.append(f"resumed from a snapshot before rows counted a killed process's time "
                     f"(kd.train.snapshot.restored_time): {', '.join(uncounted['cell'])}; the "
                     f"wall_s of their rows, and the total below, leave out "
                     f"{(uncounted['train_s'] - uncounted['wall_s']).sum() / 60:.0f} min of "
                     f"training (train_s holds all of it)")
    return "\n".join([*lines, "", run_footer(rows)])


def accuracy_targets() -> dict[tuple[str, str], float]:
    """Issue 28's accuracies for the large zoo runs, by (role in a study's rows, architecture):
    the teachers' target and the scratch students' goal of the recipe profiles."""
    teacher, student = PROFILES["large-teacher"], PROFILES["large"]
    return {("teacher", teacher.arch): teacher.target, ("scratch", student.arch): student.goal}


def target_status(rows: pd.DataFrame) -> list[tuple[str, str, float, int, float, float]]:
    """(role, arch, mean test accuracy %, seeds, target, points short) of each model of
    :func:`accuracy_targets` the rows hold: final epoch, mean over seeds."""
    out = []
    for (role, arch), target in accuracy_targets().items():
        found = rows[(rows["role"] == role) & (rows["model"] == arch)]
        if not found.empty:
            mean = 100 * found["test_accuracy"].mean()
            out.append((role, arch, mean, found["seed"].nunique(), target, 100 * target - mean))
    return out


def shortfall(short: float) -> str:
    return "met" if short <= 0 else f"{short:.2f} points short"


def target_lines(rows: pd.DataFrame) -> list[str]:
    """How the rows' final-epoch test accuracy, mean over seeds, stands against
    :func:`accuracy_targets` (none where the rows hold no such model), and why where short."""
    status = target_status(rows)
    lines = [f"- {role} {arch}: {mean:.2f} % (mean of {n} seed(s), final epoch, test set) "
             f"against issue 28's {target:.0%}: {shortfall(short)}"
             for role, arch, mean, n, target, short in status]
    if any(short > 0 for *_, short in status):
        epochs = sorted({large_config(r).epochs for r in ("teacher", "student")})
        lines.append(f"  Why, as far as we can tell (docs/recipe.md): {'/'.join(map(str, epochs))}"
                     f" epochs against the papers' 150 to 182, and a JPEG copy of CIFAR-10.")
    return lines


def target_summary(rows: pd.DataFrame) -> str:
    """:func:`target_lines` in one line (the README's)."""
    return ", ".join(f"{role} {arch} {mean:.2f} % over {n} seed(s) ({target:.0%}: "
                     f"{shortfall(short)})" for role, arch, mean, n, target, short
                     in target_status(rows))


def plateau_line(drop: float) -> str:
    """Whether the chosen recipe's training loss plateaued by the studies' stated criterion."""
    verdict = "plateaued" if drop < metrics.PLATEAU_DROP else "NOT plateaued"
    return (f"its training loss fell {drop:.3f} (relative) over the last tenth of its epochs: "
            f"{verdict} by kd.metrics.PLATEAU_DROP (< {metrics.PLATEAU_DROP:g}). Under a "
            f"schedule that decays to zero the loss keeps falling to the last epoch as the "
            f"learning rate anneals, so this criterion, written for step schedules, reads such "
            f"a run as still learning.")


def main(argv: list[str] | None = None) -> None:
    command = open_study(argv, study=STUDY, description=__doc__.split("\n\n")[0],
                         profiles=PROFILES, report=lambda rows: report(rows))
    if command is None:
        return
    profile, table, device = command.profile, command.table, command.device
    train = data.load("cifar10", train=True).sample(profile.train_limit)
    fit_split, validation = (s.to(device) for s in data.holdout(train, profile.validation_n,
                                                                SELECTION_SEED))
    done = table.done()
    todo = [(SELECTION_SEED, Cell(n)) for n in profile.candidates
            if (n, SELECTION_SEED) not in done]

    def snapshot(name: str):  # keyed by what decides the training, whatever the results root
        key = spec_key({"profile": command.args.profile, "cell": name, "arch": profile.arch,
                        "config": dataclasses.asdict(profile.candidates[name]),
                        "train_limit": profile.train_limit, "validation_n": profile.validation_n,
                        "seed": SELECTION_SEED})
        return ModelCache().snapshots / f"recipe-{key}.pt"

    def forget_finished():  # a candidate's snapshot is not needed once its row is written
        for name, _ in table.done():
            snapshot(name).unlink(missing_ok=True)

    forget_finished()

    def in_order():
        """The pending candidates; a profile with a target stops at the first to reach it."""
        for pending in todo:
            if profile.target is not None and choose(table.read(), profile) is not None:
                return
            yield pending
    print(f"{STUDY} [{command.args.profile}] {profile.description}; {len(todo)} candidates on "
          f"{device} -> {table.path}")

    def run(seed: int, cell: Cell) -> dict:
        config = dataclasses.replace(profile.candidates[cell.name],
                                     precision=command.precision)
        engine.seed_everything(seed)
        model = engine.prepare_model(build_model(profile.arch, num_classes=10), device)
        fitted = engine.fit(model, fit_split, CrossEntropy(), config, seed=seed,
                            augment=RandomCropFlip(), desc=cell.name,
                            snapshot=snapshot(cell.name))  # a killed candidate resumes
        losses = [epoch["train_loss"] for epoch in fitted.history]
        return {"arch": profile.arch, "fit_n": len(fit_split), "validation_n": len(validation),
                **{k: getattr(config, k) for k in ("epochs", "batch_size", "lr", "weight_decay",
                                                   "schedule", "nesterov", "warmup_epochs")},
                "validation_accuracy": metrics.accuracy(engine.predict(model, validation),
                                                        validation.labels),
                "final_train_loss": losses[-1] if losses else None,
                "train_loss_plateau": metrics.loss_plateau(losses),
                "images_per_s": round(config.epochs * len(fit_split) / fitted.wall_s, 1),
                "train_s": round(fitted.wall_s, 1)}

    run_cells(table, in_order(), run, device,
              lambda row: f"validation accuracy {row['validation_accuracy']:.4f}",
              precision=command.precision)
    forget_finished()
    print(report(table.read(), profile))


if __name__ == "__main__":
    raise SystemExit(run_main(main))
