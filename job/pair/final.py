"""The final model: the chosen model trained on all training images with the CV protocol, scored on the test set.

It trains through train.fit like a pair, so it is checkpointed every epoch and resumes after a stop. Its held-out
images are the 10,000 test images: the history's val_* curves are test-set curves, watched but never used to
choose anything (no early stopping), as in the tutorial's final evaluation. With protocol.limit = N it trains on the
first N training images and is still scored on all 10,000 test images, so every final score is on the same test set.

Files, in RESULTS/RUN/final/: MODEL.keras (the model), MODEL.json (its result, naming the model file's sha256),
MODEL.ckpt/ (the checkpoint, while training).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from job import atomic
from job.files import sha256_file
from job.pair import predict
from job.pair.checkpoint import Checkpoint
from job.pair.data import Dataset
from job.pair.models import N_CLASSES
from job.pair.train import Hooks, fit
from job.protocol import Protocol
from job.results.contract import FinalData, Misclassified, Outcome, TestScore
from job.results.store import MAX_MODEL_BYTES, MODEL_HOLDS

# The final training's random stream (weights and shuffling); a pair's stream is its fold, 0 to n_folds - 1.
FINAL_STREAM = 1_000_000


def train(
    model_name: str, protocol: Protocol, dataset: Dataset, checkpoint: Checkpoint, hooks: Hooks | None = None
) -> tuple[Any, Outcome, TestScore, FinalData]:
    """Train on the (limited) training images, score on all test images: the model and the result's sections."""
    x_train, y_train = dataset.x_train[: protocol.limit], dataset.y_train[: protocol.limit]
    # fit() takes one image array and two index sets: the test images go after the training ones.
    images = np.concatenate([x_train, dataset.x_test])
    labels = np.concatenate([y_train, dataset.y_test])
    train_ix, test_ix = np.arange(len(x_train)), np.arange(len(x_train), len(images))
    model, outcome = fit(
        model_name, protocol, images, labels, train_ix, test_ix, checkpoint, stream=FINAL_STREAM, hooks=hooks
    )
    test = evaluate(model, dataset.x_test, dataset.y_test)
    return model, outcome, test, FinalData(**dataset.provenance(), n_train=len(x_train), n_test=len(dataset.x_test))


def evaluate(model: Any, images: np.ndarray, labels: np.ndarray) -> TestScore:
    """Per-class accuracy, confusion matrix and the misclassified images of uint8 `images`."""
    return score_probabilities(predict.probabilities(model, images.astype(np.float32) / 255), labels)


def score_probabilities(probs: np.ndarray, labels: np.ndarray) -> TestScore:
    """Per-class accuracy, confusion matrix and the misclassified images of (N, 10) class probabilities."""
    predicted = probs.argmax(axis=1)
    confusion = np.bincount(labels.astype(np.int64) * N_CLASSES + predicted, minlength=N_CLASSES**2)
    confusion = confusion.reshape(N_CLASSES, N_CLASSES)
    wrong = np.flatnonzero(predicted != labels)
    return TestScore(
        n_images=len(labels),
        n_correct=int(np.trace(confusion)),
        # None for a digit with no test image (possible only in --custom-data sets)
        per_class_accuracy=tuple(float(confusion[d, d] / n) if n else None for d, n in enumerate(confusion.sum(1))),
        confusion_matrix=tuple(tuple(int(c) for c in row) for row in confusion),
        misclassified=tuple(
            Misclassified(int(i), int(labels[i]), int(predicted[i]), float(probs[i, predicted[i]])) for i in wrong
        ),
    )


def save_model(model: Any, path: Path) -> str:
    """Write the model atomically and return its sha256."""
    with atomic.replacing(path) as tmp:  # keeps the .keras suffix Keras insists on
        model.save(tmp)
        digest = sha256_file(tmp, MAX_MODEL_BYTES, MODEL_HOLDS)
    return digest
