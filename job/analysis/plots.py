"""The run's figures: learning curves per model, a box plot of the fold accuracies, and per final model its
confusion matrix and a grid of misclassified test digits.

Figures are built with matplotlib's object API (Figure, no pyplot), which renders through Agg for PNG and
never needs a display (cluster nodes have none) nor keeps figures alive in pyplot's global registry.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from job.results.contract import FinalResult, Misclassified, PairResult

DPI = 100
LEARNING_CURVES_SIZE = (10.0, 4.0)  # inches: 1000 x 400 pixels at DPI
BOXPLOT_SIZE = (6.0, 4.5)  # inches: 600 x 450 pixels at DPI
CONFUSION_SIZE = (7.0, 6.0)  # inches: 700 x 600 pixels at DPI
GRID_SIDE = 6  # the misclassified grid shows up to 6 x 6 digits
GRID_SIZE = (9.0, 10.0)  # inches: 900 x 1000 pixels at DPI, room for a title over each digit
TRAIN_COLOR = "tab:blue"  # the tutorial's colours: train blue, held-out orange
HELD_OUT_COLOR = "tab:orange"
PANELS = (("loss", "Cross-entropy loss"), ("accuracy", "Classification accuracy"))  # the tutorial's titles


def learning_curves(model: str, results: Sequence[PairResult], config_id: str) -> Figure:
    """Loss and accuracy per epoch, train and held-out fold, one line per fold (as the tutorial's diagnostics)."""
    fig = Figure(figsize=LEARNING_CURVES_SIZE, dpi=DPI, layout="constrained")
    folds = sorted(results, key=lambda r: r.fold)
    for ax, (metric, label) in zip(fig.subplots(1, 2), PANELS, strict=True):
        for i, result in enumerate(folds):
            train, held_out = getattr(result.history, metric), getattr(result.history, f"val_{metric}")
            epochs = range(1, len(train) + 1)
            # Only the first fold's lines are labelled, so the legend has one entry per colour.
            ax.plot(epochs, train, color=TRAIN_COLOR, marker=".", label="train" if i == 0 else None)
            ax.plot(
                epochs,
                held_out,
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


def confusion_matrix(model: str, result: FinalResult) -> Figure:
    """A final model's test-set confusion matrix: a heat map with the count in every cell, true digit down."""
    test = result.test
    matrix = np.array(test.confusion_matrix)  # [true][predicted]
    fig = Figure(figsize=CONFUSION_SIZE, dpi=DPI, layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    dark = matrix.max() / 2  # light text on the cells darker than this (the diagonal), dark text elsewhere
    for (true, predicted), count in np.ndenumerate(matrix):
        color = "white" if count > dark else "black"
        ax.text(predicted, true, str(count), ha="center", va="center", fontsize=8, color=color)
    digits = range(len(matrix))
    ax.set_xticks(digits)
    ax.set_yticks(digits)
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    fig.colorbar(image, ax=ax, label="test images")
    ax.set_title(
        f"{model} final model: test accuracy {100 * result.score.accuracy:.2f}%\n"
        f"({test.n_correct} of {test.n_images} test images, config {result.config_id})"
    )
    return fig


def misclassified(model: str, mistakes: Sequence[Misclassified], images: np.ndarray) -> Figure:
    """The most confident of a final model's mistakes (up to GRID_SIDE**2), as the test digits they were made on.

    `mistakes` are the result's test.misclassified entries, `images` the uint8 test images their indices point into.
    """
    # The most confident mistakes say the most: a badly written digit, a wrong label, or a blind spot of the model.
    shown = sorted(mistakes, key=lambda m: -m.probability)[: GRID_SIDE**2]
    fig = Figure(figsize=GRID_SIZE, dpi=DPI, layout="constrained")
    axes = fig.subplots(GRID_SIDE, GRID_SIDE)
    for ax in axes.flat:
        ax.set_axis_off()  # cells beyond the last mistake stay blank
    for ax, mistake in zip(axes.flat, shown, strict=False):
        ax.imshow(images[mistake.index], cmap="gray", vmin=0, vmax=255)  # as stored: light digit on dark
        title = f"true {mistake.label} / pred {mistake.predicted} ({mistake.probability:.2f})"
        ax.set_title(title, fontsize=9)
    fig.suptitle(
        f"{model} final model: the {len(shown)} most confident of its {len(mistakes)} misclassified test digits\n"
        "(above each digit: its true label / the predicted digit (the model's probability for it))"
    )
    return fig
