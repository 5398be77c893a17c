"""The scorecard's pictures: one verdict matrix, and one forest plot per study.

* :func:`matrix`: claims (rows, grouped by study) × profiles (quick, full, large, paper); colour =
  sign verdict, a mark for the size verdict (✓ agrees, ✗ differs, ○ other data set), hatching
  where the verdict was not decided in the paper's regime, † where the Benjamini–Hochberg
  correction turns it inconclusive; the title says how many wrong calls chance alone would give.
* :func:`study_forest`: one axis per claim, its profiles stacked on the one x scale, so an effect
  is seen moving from quick to full to large; the paper's value as a grey diamond.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

MATRIX_PROFILES = ("quick", "full", "large", "paper")
VERDICT_COLOURS = {"reproduced": "#2ca02c", "contradicted": "#d62728", "absent": "#1f77b4",
                   "inconclusive": "#ff7f0e", "precondition not met": "#9467bd",
                   "report": "#444444", "not run": "#d9d9d9", "not planned": "#f0f0f0",
                   "cut": "#e8dcc8"}  # cut from the profile by its budget
SIZE_MARKS = {"agrees": "✓", "differs": "✗", "other data set": "○"}
REGIME_HATCH = {"reduced regime": "///", "unknown": "..."}
CORRECTED = "inconclusive (after correction)"


def matrix_profiles(scorecard: pd.DataFrame) -> list[str]:
    extra = [p for p in dict.fromkeys(scorecard["profile"]) if p not in MATRIX_PROFILES]
    return [*MATRIX_PROFILES, *extra]


def split_studies(studies: list[str], sizes: dict[str, int]) -> tuple[list[str], list[str]]:
    """Two columns of whole studies, as even in rows as the order allows."""
    total = sum(sizes.values())
    best = min(range(len(studies) + 1), key=lambda k: abs(
        2 * sum(sizes[s] for s in studies[:k]) - total))
    return studies[:best], studies[best:]


def draw_panel(ax, scorecard: pd.DataFrame, studies: list[str], profiles: list[str]) -> None:
    from matplotlib.patches import Rectangle

    cells = scorecard.set_index(["claim", "profile"])
    y, labels = 0, []
    for study in studies:
        ax.text(-0.1, y + 0.55, study.replace("_", " "), ha="right", va="center", fontsize=10,
                fontweight="bold")
        y += 1
        for claim in dict.fromkeys(scorecard.loc[scorecard["study"] == study, "claim"]):
            labels.append((y, claim))
            for x, profile in enumerate(profiles):
                row = cells.loc[(claim, profile)] if (claim, profile) in cells.index else None
                verdict = "not run" if row is None else row["verdict"]
                hatch = None if row is None else REGIME_HATCH.get(row["regime"])
                ax.add_patch(Rectangle((x + 0.04, y + 0.06), 0.92, 0.88, lw=0,
                                       facecolor=VERDICT_COLOURS.get(verdict, "k"),
                                       alpha=0.5 if hatch else 1.0))
                if hatch:  # a lighter shade, hatched: not decided in the paper's regime
                    ax.add_patch(Rectangle((x + 0.04, y + 0.06), 0.92, 0.88, lw=0, fill=False,
                                           hatch=hatch, edgecolor="white"))
                if row is None:
                    continue
                mark = SIZE_MARKS.get(row["size_verdict"], "")
                mark += " †" if row["verdict_adjusted"] == CORRECTED else ""
                if mark:
                    ax.text(x + 0.5, y + 0.5, mark, ha="center", va="center", fontsize=12,
                            color="k", fontweight="bold")
            y += 1
    for row_y, claim in labels:
        ax.text(-0.1, row_y + 0.5, claim, ha="right", va="center", fontsize=9)
    ax.set(xlim=(0, len(profiles)), ylim=(y, 0))
    ax.set_xticks(np.arange(len(profiles)) + 0.5, profiles, fontsize=10)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)


def calls_title(counts: pd.DataFrame) -> str:
    """Expected false calls per profile (5 % × claims decided) and the correction's changes."""
    parts = [f"{p}: {r.expected_false_calls:.2f} of {r.decided:.0f} decided, "
             f"{r.changed_by_correction:.0f} changed by BH"
             for p, r in counts.iterrows()]
    return "Wrong calls chance alone would give (5 % × claims decided) — " + "; ".join(parts)


def matrix(scorecard: pd.DataFrame, counts: pd.DataFrame, path: Path | None = None):
    """The verdict matrix (module docstring); ``counts`` from
    :func:`studies.scorecard.expected_false_calls`."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    profiles = matrix_profiles(scorecard)
    studies = list(dict.fromkeys(scorecard["study"]))
    sizes = {s: 1 + scorecard.loc[scorecard["study"] == s, "claim"].nunique() for s in studies}
    halves = [h for h in split_studies(studies, sizes) if h]
    fig, axes = plt.subplots(1, len(halves), figsize=(16, 10), squeeze=False)
    for ax, half in zip(axes[0], halves):
        draw_panel(ax, scorecard, half, profiles)
    shown = set(scorecard["verdict"]) | {"not run"}
    handles = [Patch(facecolor=c, label=v) for v, c in VERDICT_COLOURS.items() if v in shown]
    handles += [Patch(facecolor="0.6", edgecolor="white", hatch=h, label=f"{r} (lighter)")
                for r, h in REGIME_HATCH.items()]
    handles += [Patch(facecolor="white", edgecolor="white", label=f"{m}  size {v}")
                for v, m in SIZE_MARKS.items()]
    handles += [Patch(facecolor="white", edgecolor="white",
                      label="†  inconclusive after the BH correction")]
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=9.5, frameon=False)
    fig.suptitle("Claims × profiles: colour = sign verdict, mark = size verdict, hatching = "
                 "regime\n" + calls_title(counts), fontsize=11)
    fig.subplots_adjust(left=0.14, right=0.98, top=0.9, bottom=0.1, wspace=0.5)
    save(fig, path)
    return fig


def study_forest(scorecard: pd.DataFrame, study: str, path: Path | None = None):
    """One axis per claim of ``study``, its profiles (quick, full, large, paper order) stacked."""
    import matplotlib.pyplot as plt

    rows = scorecard[scorecard["study"] == study]
    claims = list(dict.fromkeys(rows["claim"]))
    order = [p for p in matrix_profiles(scorecard) if p in set(rows["profile"])]
    ncols = 3 if len(claims) > 12 else 2
    nrows = -(-len(claims) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(16, 0.6 + 1.25 * nrows), squeeze=False)
    for ax, claim in zip(axes.flat, claims):
        claim_axis(ax, rows[rows["claim"] == claim].set_index("profile"), order)
    for ax in axes.flat[len(claims):]:
        ax.set_visible(False)
    fig.suptitle(f"{study.replace('_', ' ')}: each claim on one scale, its profiles stacked "
                 "(95 % intervals coloured by verdict; ◆ the paper's value; black line the "
                 "reference, grey the margin)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97 if nrows > 3 else 0.93))
    save(fig, path)
    return fig


def claim_axis(ax, rows: pd.DataFrame, order: list[str]) -> None:
    first = rows.iloc[0]
    ref, margin, paper = first["reference"], first["margin"], first["paper_value"]
    points = [v for v in (ref, paper, *rows["ci_low"], *rows["ci_high"], *rows["effect"])
              if pd.notna(v)]
    if pd.notna(margin):
        ax.axvspan(ref - margin, ref + margin, color="0.92", lw=0)
        points += [ref - margin, ref + margin]
    ax.axvline(ref, color="k", lw=0.8)
    if pd.notna(paper):
        ax.plot(paper, -0.6, marker="D", color="0.45", ms=6, clip_on=False)
        ax.axvline(paper, color="0.45", ls=":", lw=1)
    labels = []
    for y, profile in enumerate(order):
        row = rows.loc[profile]
        colour = VERDICT_COLOURS.get(row["verdict"], "k")
        if pd.notna(row["effect"]):
            if pd.notna(row["ci_low"]):
                ax.plot([row["ci_low"], row["ci_high"]], [y, y], color=colour, lw=2.4)
            ax.plot(row["effect"], y, "o", color=colour, ms=5)
        mark = SIZE_MARKS.get(row["size_verdict"], "")
        labels.append(f"{profile} · {row['verdict']} {mark}".strip())
    low, high = (min(points), max(points)) if points else (-1.0, 1.0)
    pad = 0.08 * (high - low) or 1.0
    ax.set(xlim=(low - pad, high + pad), ylim=(len(order) - 0.5, -0.9))
    ax.set_yticks(range(len(order)), labels, fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    ax.set_title(f"{first['claim']} ({first['unit']})",
                 fontsize=9.5, loc="left")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def save(fig, path: Path | None) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
