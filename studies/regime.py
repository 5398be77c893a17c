"""The regime a verdict was decided in, beside the paper's (rule: ``docs/scorecard_rules.md``).

Ours come from the rows a claim's measure read (:class:`studies.scorecard.Rows`, its ``used``
cells): the data set, the training images of the students and of their teachers, the students'
epochs, the best teacher's accuracy and the same student trained from scratch (or on hard
labels), means over seeds, accuracies in %. The paper's come from
``studies/reference/regimes.csv``, one row per ``paper_regime`` named in ``claims.csv``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from kd.experiment.estimate import DATASET_SIZES

REGIMES = Path(__file__).with_name("reference") / "regimes.csv"
ACCURACY_POINTS = 2.0  # within this many points of the paper's accuracy
DATASET_NAMES = {"mnist": "MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
STUDY_DATASET = {"hinton_mnist": "mnist", "alpha_temperature": "cifar10",  # tables without
                 "method_zoo": "cifar10"}  # a dataset column
FULL_TRAIN = {DATASET_NAMES[k]: sizes[0] for k, sizes in DATASET_SIZES.items()}
TEACHER_ROLES = ("teacher", "teacher_checkpoint", "ta")
PAPER, REDUCED, UNKNOWN = "paper regime", "reduced regime", "unknown"
OURS = ("dataset", "student_train_n", "teacher_train_n", "epochs", "teacher_acc", "scratch_acc")
COLUMNS = [c for name in OURS for c in (name, f"paper_{name}")] + ["regime", "regime_reason"]


def read_regimes(path: Path = REGIMES) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"student_subset": str}).set_index("regime_id")


def column(frame: pd.DataFrame, name: str) -> pd.Series:
    return frame[name] if name in frame else pd.Series(np.nan, index=frame.index)


def cell_names(frame: pd.DataFrame) -> pd.Series:
    return frame["cell"].astype(str)


def is_teacher(frame: pd.DataFrame) -> pd.Series:
    cells = cell_names(frame)
    return (column(frame, "role").isin(TEACHER_ROLES) | (cells == "teacher")
            | cells.str.endswith("/teacher"))


def is_scratch(frame: pd.DataFrame) -> pd.Series:
    """The student alone: role ``scratch``, a ``scratch`` cell, or Hinton's hard-label student."""
    cells = cell_names(frame)
    return ((column(frame, "role") == "scratch") | (cells == "scratch")
            | cells.str.endswith("/scratch") | cells.str.endswith("/hard"))


def accuracy_pct(frame: pd.DataFrame) -> pd.Series:
    """Test accuracy in %: ``test_accuracy``, else from ``test_errors`` of ``test_n``."""
    acc = 100 * column(frame, "test_accuracy").astype(float)
    errors = 100 * (1 - column(frame, "test_errors") / column(frame, "test_n"))
    return acc.fillna(errors.astype(float))


def train_n(frame: pd.DataFrame) -> pd.Series:
    return column(frame, "train_n").fillna(column(frame, "transfer_n")).astype(float)


def cell_mean(values: pd.Series, frame: pd.DataFrame) -> pd.Series:
    """Mean over seeds, one value per cell."""
    return values.groupby(cell_names(frame)).mean().dropna()


def same(frame: pd.DataFrame, like: pd.DataFrame, name: str) -> pd.Series:
    """Rows whose ``name`` is among ``like``'s (everything when either lacks the column)."""
    wanted = column(like, name).dropna()
    if name not in frame or wanted.empty:
        return pd.Series(True, index=frame.index)
    return frame[name].isin(set(wanted))


def dataset_of(frame: pd.DataFrame, study: str) -> str:
    found = column(frame, "dataset").dropna().astype(str).unique()
    names = sorted(DATASET_NAMES.get(d, d) for d in found) or [
        DATASET_NAMES.get(STUDY_DATASET.get(study, ""), "")]
    return " + ".join(n for n in names if n)


def ours(frame: pd.DataFrame, used: set[str], study: str) -> dict:
    """Our regime values from the cells a claim read in one study table (empty without rows)."""
    empty = dict.fromkeys(OURS, math.nan) | {"dataset": "", "epochs": ""}
    if frame is None or frame.empty or not used:
        return empty
    rows = frame[cell_names(frame).isin(used)]
    students = rows[~is_teacher(rows)]
    if students.empty:
        return empty
    teachers = frame[is_teacher(frame)]
    their_teachers = pd.DataFrame({"model": column(students, "teacher")})
    teachers = teachers[same(teachers, their_teachers, "model")
                        & same(teachers, students, "dataset")]
    scratch = frame[is_scratch(frame)]
    for name in ("model", "pair", "dataset"):  # (a zoo's "family" is a method's)
        scratch = scratch[same(scratch, students, name)]
    teacher_acc = next((100 * cell_mean(column(students, c).astype(float), students)
                        for c in ("teacher_accuracy", "teacher_test_accuracy")
                        if column(students, c).notna().any()),
                       cell_mean(accuracy_pct(teachers), teachers))
    teacher_n = column(students, "teacher_train_n").dropna()
    teacher_n = teacher_n if not teacher_n.empty else train_n(teachers).dropna()
    epochs = sorted({int(e) for e in column(students, "epochs").dropna()})
    scratch_acc = cell_mean(accuracy_pct(scratch), scratch)
    return {"dataset": dataset_of(students, study),
            "student_train_n": train_n(students).min(),
            "teacher_train_n": teacher_n.min() if not teacher_n.empty else math.nan,
            "epochs": "/".join(map(str, epochs)),
            "teacher_acc": teacher_acc.max() if not teacher_acc.empty else math.nan,
            "scratch_acc": scratch_acc.mean() if not scratch_acc.empty else math.nan}


def known(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) \
        and value != ""


def label(our: dict, paper: dict, student_subset: str = "") -> tuple[str, str]:
    """(regime, reason) by the rule of docs/scorecard_rules.md; ("", "") without our rows."""
    if not known(our.get("dataset")):
        return "", ""
    failed, missing = [], []
    dataset, paper_dataset = our["dataset"], paper.get("dataset", "")
    if not known(paper_dataset):
        missing.append("the paper's data set is not recorded")
    elif dataset != paper_dataset:
        failed.append(f"other data set ({paper_dataset})")
    full = FULL_TRAIN.get(dataset)
    for who, key, by_design in (("students", "student_train_n", known(student_subset)),
                                ("teacher", "teacher_train_n", False)):
        need = paper.get(key) if known(paper.get(key)) else full
        if not known(our.get(key)) or not known(need):
            missing.append(f"{who}' training images" if who == "students"
                           else "teacher's training images")
        elif not by_design and our[key] < need:
            failed.append(f"{who} on {our[key]:,.0f} of {need:,.0f} images")
    if known(paper_dataset) and dataset == paper_dataset:
        for who, key in (("teacher", "teacher_acc"), ("scratch student", "scratch_acc")):
            if not known(paper.get(key)):
                missing.append(f"the paper's {who} accuracy is not recorded")
            elif not known(our.get(key)):
                missing.append(f"no {who} accuracy of ours")
            elif abs(gap := our[key] - paper[key]) > ACCURACY_POINTS:
                failed.append(f"{who} {abs(gap):.1f} points {'below' if gap < 0 else 'above'}")
    if failed:
        return REDUCED, "; ".join(failed)
    if missing:
        return UNKNOWN, "; ".join(missing)
    return PAPER, ""


def paper_values(claim, regimes: pd.DataFrame) -> tuple[dict, str]:
    """The paper's regime values of a claim (``paper_dataset`` and its ``paper_regime`` row)."""
    paper = dict.fromkeys(OURS, math.nan) | {"dataset": claim.paper_dataset or "", "epochs": ""}
    key = claim.paper_regime
    if not key or key not in regimes.index:
        return paper, ""
    row = regimes.loc[key]
    for name in OURS[1:]:
        value = row.get(f"paper_{name}")
        paper[name] = "" if name == "epochs" and not known(value) else value
    subset = row.get("student_subset")
    return paper, subset if known(subset) else ""


def columns(our: dict, paper: dict, regime: tuple[str, str]) -> dict:
    out = {}
    for name in OURS:
        out[name], out[f"paper_{name}"] = our[name], paper[name]
    out["regime"], out["regime_reason"] = regime
    return out
