"""The run's figures: learning curves per model and a box plot of the fold accuracies.

Figures are built with matplotlib's object API (Figure, no pyplot), which renders through Agg for PNG and
never needs a display (cluster nodes have none) nor keeps figures alive in pyplot's global registry.
"""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 100
LEARNING_CURVES_SIZE = (10.0, 4.0)  # inches: 1000 x 400 pixels at DPI
BOXPLOT_SIZE = (6.0, 4.5)  # inches: 600 x 450 pixels at DPI
TRAIN_COLOR = "tab:blue"  # the tutorial's colours: train blue, held-out orange
HELD_OUT_COLOR = "tab:orange"
PANELS = (("loss", "Cross-entropy loss"), ("accuracy", "Classification accuracy"))  # the tutorial's titles


def learning_curves(model: str, results: list[dict[str, Any]], config_id: str) -> Figure:
    """Loss and accuracy per epoch, train and held-out fold, one line per fold (as the tutorial's diagnostics)."""
    fig = Figure(figsize=LEARNING_CURVES_SIZE, dpi=DPI, layout="constrained")
    folds = sorted(results, key=lambda r: r["fold"])
    for ax, (metric, label) in zip(fig.subplots(1, 2), PANELS, strict=True):
        for i, result in enumerate(folds):
            history = result["history"]
            epochs = range(1, len(history[metric]) + 1)
            # Only the first fold's lines are labelled, so the legend has one entry per colour.
            ax.plot(epochs, history[metric], color=TRAIN_COLOR, marker=".", label="train" if i == 0 else None)
            ax.plot(
                epochs,
                history[f"val_{metric}"],
                color=HELD_OUT_COLOR,
                marker=".",
                label="held-out fold" if i == 0 else None,
            )
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    fig.suptitle(f"{model}: learning curves of {len(folds)} folds (config {config_id})")
    return fig


def boxplot(accuracies: dict[str, list[float]]) -> Figure:
    """Box-and-whisker of each model's fold accuracies (fractions, drawn in %), side by side on one axis."""
    fig = Figure(figsize=BOXPLOT_SIZE, dpi=DPI, layout="constrained")
    ax = fig.subplots()
    models = [m for m, scores in accuracies.items() if scores]
    percent = [[100 * a for a in accuracies[m]] for m in models]
    positions = list(range(1, len(models) + 1))
    ax.boxplot(percent, positions=positions, showmeans=True)
    for x, scores in zip(positions, percent, strict=True):
        ax.plot([x] * len(scores), scores, linestyle="none", marker="o", color="black", alpha=0.5, markersize=4)
    # set_xticks rather than boxplot's labels= (renamed tick_labels= in matplotlib 3.9).
    ax.set_xticks(positions, [f"{m}\n(n={len(accuracies[m])})" for m in models])
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title("Held-out accuracy per fold\n(box: quartiles and median; triangle: mean)")
    ax.grid(axis="y", alpha=0.3)
    return fig
