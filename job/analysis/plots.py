"""The run's figures: learning curves per model, a box plot of the fold accuracies (repeats as coloured points); per
final model its confusion matrix and a grid of misclassified test digits; per out-of-fold report the same two of the
folds' held-out images, and a reliability diagram.

Figures are built with matplotlib's object API (Figure, no pyplot), which renders through Agg for PNG and
never needs a display (cluster nodes have none) nor keeps figures alive in pyplot's global registry.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from job.results.contract import Calibration, FinalResult, FoldMistake, Misclassified, OutOfFold, PairResult

DPI = 100
LEARNING_CURVES_SIZE = (10.0, 4.0)  # inches: 1000 x 400 pixels at DPI
BOXPLOT_SIZE = (6.0, 4.5)  # inches: 600 x 450 pixels at DPI
CONFUSION_SIZE = (7.0, 6.0)  # inches: 700 x 600 pixels at DPI
GRID_SIDE = 6  # the misclassified grid shows up to 6 x 6 digits
GRID_SIZE = (9.0, 10.0)  # inches: 900 x 1000 pixels at DPI, room for a title over each digit
RELIABILITY_SIZE = (7.0, 6.0)  # inches: 700 x 600 pixels at DPI
TRAIN_COLOR = "tab:blue"  # the tutorial's colours: train blue, held-out orange
HELD_OUT_COLOR = "tab:orange"
PANELS = (("loss", "Cross-entropy loss"), ("accuracy", "Classification accuracy"))  # the tutorial's titles


def learning_curves(model: str, results: Sequence[PairResult], config_id: str) -> Figure:
    """Loss and accuracy per epoch, train and held-out fold, one line per fold (as the tutorial's diagnostics).

    Results of several repeats draw one line per fold still, the mean over its repeats, over a band from the
    lowest to the highest of every result: the spread is seen, and there are no more lines than folds.
    """
    fig = Figure(figsize=LEARNING_CURVES_SIZE, dpi=DPI, layout="constrained")
    folds = sorted({r.fold for r in results})
    n_repeats = len({r.repeat for r in results})
    for ax, (metric, label) in zip(fig.subplots(1, 2), PANELS, strict=True):
        lines = ((metric, TRAIN_COLOR, "train"), (f"val_{metric}", HELD_OUT_COLOR, "held-out fold"))
        if n_repeats > 1:
            for name, color, _ in lines:
                every = np.array([getattr(r.history, name) for r in results])
                epochs = range(1, every.shape[1] + 1)
                ax.fill_between(epochs, every.min(axis=0), every.max(axis=0), color=color, alpha=0.15, linewidth=0)
        for i, fold in enumerate(folds):
            for name, color, legend in lines:
                curve = np.mean([getattr(r.history, name) for r in results if r.fold == fold], axis=0)
                epochs = range(1, len(curve) + 1)
                # Only the first fold's lines are labelled, so the legend has one entry per colour.
                ax.plot(epochs, curve.tolist(), color=color, marker=".", label=legend if i == 0 else None)
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    what = f"{len(folds)} folds" if n_repeats == 1 else f"{len(folds)} folds, each the mean of {n_repeats} repeats"
    band = "" if n_repeats == 1 else f"; band: lowest to highest of all {len(results)}"
    fig.suptitle(f"{model}: learning curves of {what} (config {config_id}{band})")
    return fig


def boxplot(
    accuracies: dict[str, list[float]],
    repeats: dict[str, list[int]] | None = None,
    used: dict[str, list[int]] | None = None,
) -> Figure:
    """Box-and-whisker of each model's fold accuracies (fractions, drawn in %), side by side on one axis.

    `repeats` gives each accuracy's repeat: with more than one, the points are coloured by repeat (side by side
    within the box), so a repeat that sits apart shows. `used` names a model's repeats the box is of (default all):
    the points of the others (a partial repeat) are drawn hollow beside it, in no box and no mean.
    """
    fig = Figure(figsize=BOXPLOT_SIZE, dpi=DPI, layout="constrained")
    ax = fig.subplots()
    models = [m for m, scores in accuracies.items() if scores]
    of = {m: (repeats or {}).get(m) or [0] * len(accuracies[m]) for m in models}
    inside = {m: set((used or {}).get(m) or of[m]) for m in models}
    boxed = [[100 * a for a, r in zip(accuracies[m], of[m], strict=True) if r in inside[m]] for m in models]
    positions = list(range(1, len(models) + 1))
    distinct = sorted({r for m in models for r in of[m]})
    # A black median and a white mean: matplotlib's orange and green would read as repeats' colours; and no fliers:
    # every point is drawn in its repeat's colour, and a hollow one means a partial repeat.
    colours = {
        "medianprops": {"color": "black"},
        "meanprops": {"markerfacecolor": "white", "markeredgecolor": "black"},
        "showfliers": False,
    }
    ax.boxplot(boxed, positions=positions, showmeans=True, **(colours if len(distinct) > 1 else {}))
    for x, model in zip(positions, models, strict=True):
        if len(distinct) == 1:
            scores = [100 * a for a in accuracies[model]]
            ax.plot([x] * len(scores), scores, linestyle="none", marker="o", color="black", alpha=0.5, markersize=4)
            continue
        for rank, repeat in enumerate(distinct):
            mine = [100 * a for a, r in zip(accuracies[model], of[model], strict=True) if r == repeat]
            offset = (rank - (len(distinct) - 1) / 2) * min(0.08, 0.5 / len(distinct))
            partial = repeat not in inside[model]
            ax.plot(
                [x + offset] * len(mine), mine, linestyle="none", marker="o", markersize=4, alpha=0.8,
                color=f"C{repeat % 10}", markerfacecolor="none" if partial else f"C{repeat % 10}",
                label=f"repeat {repeat}" + (" (partial: not in the box)" if partial else ""),
            )  # fmt: skip
    # set_xticks rather than boxplot's labels= (renamed tick_labels= in matplotlib 3.9).
    ax.set_xticks(positions, [f"{m}\n(n={len(scores)})" for m, scores in zip(models, boxed, strict=True)])
    ax.set_ylabel("held-out accuracy (%)")
    per = "fold" if len(distinct) == 1 else f"fold, {len(distinct)} repeats"
    ax.set_title(f"Held-out accuracy per {per}\n(box: quartiles and median; triangle: mean)")
    if len(distinct) > 1:
        # One legend entry per repeat (and state), however many models drew it.
        handles = dict(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
        ax.legend(handles.values(), handles.keys(), fontsize=8, loc="best")
    ax.grid(axis="y", alpha=0.3)
    return fig


def confusion_matrix(model: str, result: FinalResult) -> Figure:
    """A final model's test-set confusion matrix: a heat map with the count in every cell, true digit down."""
    test = result.test
    return _confusion(
        test.confusion_matrix,
        "test images",
        f"{model} final model: test accuracy {100 * result.score.accuracy:.2f}%\n"
        f"({test.n_correct} of {test.n_images} test images, config {result.config_id})",
    )


def cv_confusion_matrix(model: str, pooled: OutOfFold, config_id: str) -> Figure:
    """The cross-validation confusion matrix: every held-out image of the folds, predicted by its fold's model."""
    return _confusion(
        pooled.confusion_matrix,
        "held-out images",
        f"{model} cross-validation: out-of-fold accuracy {100 * pooled.n_correct / pooled.n_images:.2f}%\n"
        f"({pooled.n_correct} of {pooled.n_images} held-out images, the folds pooled, config {config_id})",
    )


def _confusion(confusion: Sequence[Sequence[int]], images: str, title: str) -> Figure:
    """A confusion matrix ([true][predicted]) as a heat map with the count in every cell, true digit down."""
    matrix = np.array(confusion)
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
    fig.colorbar(image, ax=ax, label=images)
    ax.set_title(title)
    return fig


def misclassified(model: str, mistakes: Sequence[Misclassified], images: np.ndarray) -> Figure:
    """The most confident of a final model's mistakes (up to GRID_SIDE**2), as the test digits they were made on.

    `mistakes` are the result's test.misclassified entries, `images` the uint8 test images their indices point into.
    """
    # The most confident mistakes say the most: a badly written digit, a wrong label, or a blind spot of the model.
    shown = sorted(mistakes, key=lambda m: -m.probability)[: GRID_SIDE**2]
    return _digit_grid(
        shown,
        images,
        f"{model} final model: the {len(shown)} most confident of its {len(mistakes)} misclassified test digits",
    )


def fold_mistakes(model: str, pooled: OutOfFold, images: np.ndarray) -> Figure:
    """The most confident of the folds' mistakes (those the report keeps, up to GRID_SIDE**2), as the training
    digits they were made on by the model of the fold that held them out; `images` the uint8 training images."""
    shown = pooled.mistakes[: GRID_SIDE**2]
    return _digit_grid(
        shown,
        images,
        f"{model} cross-validation: the {len(shown)} most confident of its {pooled.n_mistakes} out-of-fold mistakes",
    )


def _digit_grid(shown: Sequence[Misclassified | FoldMistake], images: np.ndarray, title: str) -> Figure:
    fig = Figure(figsize=GRID_SIZE, dpi=DPI, layout="constrained")
    axes = fig.subplots(GRID_SIDE, GRID_SIDE)
    for ax in axes.flat:
        ax.set_axis_off()  # cells beyond the last mistake stay blank
    for ax, mistake in zip(axes.flat, shown, strict=False):
        ax.imshow(images[mistake.index], cmap="gray", vmin=0, vmax=255)  # as stored: light digit on dark
        title_of = f"true {mistake.label} / pred {mistake.predicted} ({mistake.probability:.2f})"
        ax.set_title(title_of, fontsize=9)
    fig.suptitle(f"{title}\n(above each digit: its true label / the predicted digit (the model's probability for it))")
    return fig


def reliability(model: str, calibration: Calibration) -> Figure:
    """The reliability diagram of the max probability: per bin, the accuracy of its images against their mean
    confidence (a calibrated model's bars meet the diagonal), and below, how many images each bin holds."""
    fig = Figure(figsize=RELIABILITY_SIZE, dpi=DPI, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    bins = [b for b in calibration.bins if b.n]
    lows, widths = [b.low for b in bins], [b.high - b.low for b in bins]
    top.bar(lows, [b.accuracy for b in bins], width=widths, align="edge", color=HELD_OUT_COLOR, edgecolor="black",
            label="accuracy of the bin's images")  # fmt: skip
    top.plot([b.confidence for b in bins], [b.accuracy for b in bins], "o", color="black", markersize=4,
             label="at the bin's mean confidence")  # fmt: skip
    top.plot([0, 1], [0, 1], "--", color="gray", label="calibrated")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(fontsize=8, loc="upper left")
    top.set_title(
        f"{model} cross-validation: reliability of the max probability, ECE {calibration.ece:.4f}\n"
        f"({calibration.binning}, the folds pooled)"
    )
    bottom.bar(lows, [b.n for b in bins], width=widths, align="edge", color=TRAIN_COLOR, edgecolor="black")
    bottom.set_yscale("log")  # most images sit in the last bin
    bottom.set_ylabel("images")
    bottom.set_xlabel("max probability (the model's confidence in its digit)")
    bottom.set_xlim(0, 1)
    return fig
