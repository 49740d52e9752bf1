"""A model's out-of-fold report: the held-out predictions of its folds pooled, so that every image of a repeat is
predicted once, by the model of the fold that did not train on it. From them: the cross-validation confusion
matrix, each digit's accuracy with its spread over the folds, the most confident mistakes, and how well the max
probability is calibrated (expected calibration error over equal-width bins, Guo et al. 2017).

Works on the results and their checked predictions (job/results/predictions.py) that collect read; reads no files,
draws nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from job.results.contract import (
    Calibration,
    CalibrationBin,
    ClassAccuracy,
    ConfusedPair,
    CrossValidationReport,
    FoldMistake,
    OutOfFold,
    PairResult,
)
from job.results.predictions import N_CLASSES, HeldOut
from job.results.store import Record

N_BINS = 15
BINNING = f"{N_BINS} equal-width bins of the max probability"  # each (low, high]
KEPT_MISTAKES = 36  # the most confident mistakes kept: as many as collect's grid shows (6 x 6)


def report(records: Sequence[Record], predictions: Mapping[Path, HeldOut]) -> CrossValidationReport:
    """The report of one model's (non-empty) `records`, those its headline numbers are of; `predictions` holds the
    checked predictions by result path. Pooled only when every record has its predictions: a pooled matrix short of
    a fold is not the cross-validation's."""
    model = records[0].result.model
    have = [r for r in records if r.path in predictions]
    if len(have) < len(records):
        earlier = sum(r.result.predictions is None for r in records)
        unusable = len(records) - len(have) - earlier
        why = [
            *([f"{earlier} result{'s' * (earlier != 1)} of an earlier version"] if earlier else []),
            *([f"{unusable} predictions file{'s' * (unusable != 1)} skipped"] if unusable else []),
        ]
        note = (
            f"out-of-fold report: {len(have)} of {len(records)} {model} folds have predictions "
            f"({', '.join(why)}): not drawn"
        )
        return CrossValidationReport(len(records), len(have), (note,), None)
    return CrossValidationReport(
        len(records), len(have), (), pooled([(r.result, predictions[r.path]) for r in records])
    )


def pooled(folds: Sequence[tuple[PairResult, HeldOut]]) -> OutOfFold:
    """The numbers of the folds' predictions taken together (each fold's images once)."""
    labels = np.concatenate([h.labels for _, h in folds]).astype(np.intp)
    predicted = np.concatenate([h.predicted for _, h in folds]).astype(np.intp)
    confusion = np.zeros((N_CLASSES, N_CLASSES), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = tuple(_class_accuracy(digit, confusion, folds) for digit in range(N_CLASSES))
    scored = [c for c in per_class if c.accuracy is not None]
    confidence = np.concatenate([_max_probability(h) for _, h in folds])
    return OutOfFold(
        n_images=int(confusion.sum()),
        n_correct=int(np.trace(confusion)),
        confusion_matrix=tuple(tuple(int(n) for n in row) for row in confusion),
        per_class=per_class,
        most_confused=_most_confused(confusion),
        worst_class=min(scored, key=lambda c: (c.accuracy, c.digit)).digit if scored else None,
        calibration=calibration(confidence, predicted == labels),
        n_mistakes=int(np.count_nonzero(predicted != labels)),
        mistakes=_most_confident_mistakes(folds),
    )


def calibration(confidence: np.ndarray, correct: np.ndarray) -> Calibration:
    """Expected calibration error of the max probabilities `confidence` (one per image; `correct` says whether its
    digit was right): the images put in N_BINS equal-width bins by confidence, ECE = sum over the bins of
    (images in it / all images) * |its accuracy - its mean confidence|."""
    edges = np.linspace(0.0, 1.0, N_BINS + 1)
    # digitize(right=True) on the inner edges: bin b holds (edges[b], edges[b + 1]], and 0 falls in the first.
    which = np.digitize(confidence, edges[1:-1], right=True)
    total, ece, bins = len(confidence), 0.0, []
    for b in range(N_BINS):
        inside = which == b
        n = int(np.count_nonzero(inside))
        mean_confidence = float(confidence[inside].mean()) if n else None
        accuracy = float(correct[inside].mean()) if n else None
        if n:
            ece += n / total * abs(accuracy - mean_confidence)
        bins.append(CalibrationBin(float(edges[b]), float(edges[b + 1]), n, mean_confidence, accuracy))
    return Calibration(BINNING, ece, tuple(bins))


def _max_probability(held_out: HeldOut) -> np.ndarray:
    return held_out.probabilities.astype(np.float64).max(axis=1)


def _class_accuracy(digit: int, confusion: np.ndarray, folds: Sequence[tuple[PairResult, HeldOut]]) -> ClassAccuracy:
    n = int(confusion[digit].sum())
    # Per fold, over the folds that held the digit at all (a small --limit may leave one without).
    per_fold = np.array(
        [np.mean(h.predicted[h.labels == digit] == digit) for _, h in folds if (h.labels == digit).any()]
    )
    spread = (
        (float(per_fold.mean()), float(per_fold.std(ddof=0)), float(per_fold.min()), float(per_fold.max()))
        if len(per_fold)
        else (None, None, None, None)
    )
    return ClassAccuracy(digit, n, int(confusion[digit, digit]) / n if n else None, *spread)


def _most_confused(confusion: np.ndarray) -> ConfusedPair | None:
    """The two digits taken for each other most often, both directions summed; the lowest digits on a tie."""
    both_ways = np.triu(confusion + confusion.T, k=1)
    if not both_ways.any():
        return None
    a, b = (int(i) for i in np.unravel_index(int(both_ways.argmax()), both_ways.shape))
    return ConfusedPair((a, b), int(confusion[a, b]), int(confusion[b, a]))


def _most_confident_mistakes(folds: Sequence[tuple[PairResult, HeldOut]]) -> tuple[FoldMistake, ...]:
    """The KEPT_MISTAKES mistakes made with the highest probability for the wrong digit, highest first; ties in the
    order of repeat, fold and index, so that a rerun keeps the same ones."""
    mistakes = []
    for result, held_out in folds:
        for i in np.flatnonzero(held_out.predicted != held_out.labels):
            digit = int(held_out.predicted[i])
            mistakes.append(
                FoldMistake(
                    result.repeat, result.fold, int(held_out.indices[i]), int(held_out.labels[i]), digit,
                    float(held_out.probabilities[i, digit]),
                )
            )  # fmt: skip
    mistakes.sort(key=lambda m: (-m.probability, m.repeat, m.fold, m.index))
    return tuple(mistakes[:KEPT_MISTAKES])
