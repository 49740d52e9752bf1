"""What a trained pair leaves beside its result: its predictions on its held-out images, the digest of its weights
and, when asked, the weights themselves (the fold models a fold ensemble averages)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from job import atomic
from job.files import sha256_file
from job.pair import predict
from job.pair.checkpoint import save_weights
from job.results import predictions
from job.results.contract import HeldOutPredictions, ModelFile
from job.results.store import MAX_MODEL_BYTES, MODEL_HOLDS


def weights_sha256(model: Any) -> str:
    """A digest of the trained weights' values (name, dtype, shape, bytes, in the model's order): equal weights give
    equal digests whatever file format or library writes them, so a rerun can be compared to the bit."""
    import keras  # deferred: tensorflow

    digest = hashlib.sha256()
    for variable in model.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(variable))
        digest.update(f"{variable.path}|{value.dtype.str}|{value.shape}\n".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def save_predictions(
    model: Any, images: np.ndarray, labels: np.ndarray, held_out_ix: np.ndarray, path: Path
) -> HeldOutPredictions:
    """Predict the held-out images (uint8) with the trained model and write them beside the result."""
    probabilities = predict.probabilities(model, images[held_out_ix].astype(np.float32) / 255)
    return predictions.save(path, held_out_ix, labels[held_out_ix], probabilities)


def keep_weights(model: Any, path: Path) -> ModelFile:
    """Write the trained weights atomically (the registry rebuilds the model around them) and name them."""
    with atomic.replacing(path) as tmp:  # keeps the .weights.h5 suffix Keras insists on
        save_weights(model, tmp)
        digest = sha256_file(tmp, MAX_MODEL_BYTES, MODEL_HOLDS)
    return ModelFile(name=path.name, sha256=digest)
