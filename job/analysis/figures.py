"""Figures to look at rather than read, per model: the fold accuracies against the tutorial's published ones, and the
seconds of every epoch of every pair (a slow node or a resumed pair stands out).

Built with matplotlib's object API like job/analysis/plots.py (no pyplot, no display needed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from job.analysis import reference
from job.results.contract import PairResult
from job.results.layout import RunLayout

DPI = 100
SIZE = (8.0, 4.5)  # inches: 800 x 450 pixels at DPI
RUN_COLOR = "tab:blue"
PUBLISHED_COLOR = "tab:gray"
BAND_COLOR = "tab:green"
RESUME_COLOR = "tab:red"
Drawing = tuple[Path, Callable[[], Figure]]  # a figure's path, and how to draw it (as collect's Figure)


def plan(layout: RunLayout, models: Sequence[str], results: Sequence[PairResult], fmt: str) -> list[Drawing]:
    """(path, draw) of this module's two figures for each of `models` (in that order) that has results."""
    drawings: list[Drawing] = []
    for model in models:
        if mine := [r for r in results if r.model == model]:
            drawings.append((layout.fold_accuracy(model, fmt), lambda m=model, rs=mine: fold_accuracy(m, rs)))
            drawings.append((layout.epoch_seconds(model, fmt), lambda m=model, rs=mine: epoch_seconds(m, rs)))
    return drawings


def _protocol(result: PairResult) -> str:
    config = result.config
    images = "all training images" if config.limit is None else f"limit {config.limit}"
    return f"{config.epochs} epochs, {images}"


def fold_accuracy(model: str, results: Sequence[PairResult]) -> Figure:
    """This run's held-out accuracy per fold beside the tutorial's published folds and the band a full run lands in."""
    fig = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    ax = fig.subplots()
    ordered = sorted(results, key=lambda r: (r.fold, r.repeat))
    folds = np.array([r.fold for r in ordered])
    ours = np.array([100 * r.score.accuracy for r in ordered])
    published = reference.PUBLISHED.get(model)
    # Side by side at each fold: this run a little left, the tutorial a little right.
    shift = 0.12 if published else 0.0
    ax.plot(folds - shift, ours, "o", color=RUN_COLOR, markersize=8, label=f"this run ({_protocol(ordered[0])})")
    ax.axhline(ours.mean(), color=RUN_COLOR, linewidth=1, label=f"this run's mean {ours.mean():.3f}%")
    if published:
        theirs = np.array(published.folds)
        ax.plot(
            np.arange(len(theirs)) + shift, theirs, "s", color=PUBLISHED_COLOR, markerfacecolor="none",
            markersize=8, label=f"{reference.SOURCE}, {reference.EPOCHS} epochs",
        )  # fmt: skip
        ax.axhline(
            theirs.mean(), color=PUBLISHED_COLOR, linestyle="--", linewidth=1, label=f"its mean {theirs.mean():.3f}%"
        )
        low, high = published.band
        ax.axhspan(low, high, color=BAND_COLOR, alpha=0.15, label=f"a full run's mean lands in {low}-{high}%")
    ax.set_xticks(sorted({*folds, *(range(len(published.folds)) if published else ())}))
    ax.set_xlabel("fold")
    ax.set_ylabel("held-out accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    known = "" if published else " (no published numbers for this model)"
    ax.set_title(f"{model}: held-out accuracy per fold against the tutorial{known}")
    return fig


def _host(result: PairResult) -> str:
    slurm = result.environment.get("slurm") or {}
    return str(slurm.get("node") or result.environment.get("hostname") or "?")


def epoch_seconds(model: str, results: Sequence[PairResult]) -> Figure:
    """Seconds of each epoch, a line per pair labelled with its node; the first epoch after a resume is circled."""
    fig = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    ax = fig.subplots()
    resumed_label = "first epoch after a resume"
    for result in sorted(results, key=lambda r: (r.fold, r.repeat)):
        seconds = result.timings.epoch_seconds
        epochs = np.arange(1, len(seconds) + 1)
        repeat = f" r{result.repeat}" if result.repeat else ""
        resumes = f", resumed {result.resume.count}x" if result.resume.count else ""
        (line,) = ax.plot(epochs, seconds, marker=".", label=f"fold {result.fold}{repeat} on {_host(result)}{resumes}")
        # from_epochs holds the epochs done when each resume began: the next epoch ran in the new process.
        after = [e + 1 for e in result.resume.from_epochs if e < len(seconds)]
        if after:
            ax.plot(
                after, [seconds[e - 1] for e in after], "o", markersize=13, markerfacecolor="none",
                markeredgecolor=RESUME_COLOR, markeredgewidth=2, label=resumed_label,
            )  # fmt: skip
            resumed_label = None  # one legend entry for all the circles
        line.set_zorder(3)
    ax.set_xlabel("epoch")
    ax.set_ylabel("seconds")
    ax.set_ylim(bottom=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(
        f"{model}: seconds per epoch, one line per pair (epoch 1 also builds the graph)\n"
        "a line above the others: a slow or busy node; a red circle: the first epoch after a resume"
    )
    return fig
