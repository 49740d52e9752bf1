"""A pair's predictions on its held-out images: the file beside its result (RUN/MODEL/fold-K.predictions.npz).

One uncompressed .npz of four arrays, in the order of the held-out indices: `indices` (int32, into the limited
training images), `labels` and `predicted` (uint8 digits), `probabilities` (float16, one row of ten per image; half
precision halves the file and moves a probability by less than 5e-4, far below what calibration bins resolve).
The result records the file's name, sha256, image count and correct count, so the one validity check of a result
(job/results/store.py) covers the file too; `load` checks the arrays against what the result says before anyone
uses them. Written by the pair path, read by collect; imports no TensorFlow.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from job import atomic, folds
from job.errors import JobError
from job.files import read_bounded
from job.results.contract import HeldOutPredictions, PairResult, ResultError

N_CLASSES = 10
_DTYPES = {"indices": np.int32, "labels": np.uint8, "predicted": np.uint8, "probabilities": np.float16}
# Bytes an image takes (index, label, digit, ten probabilities), and the zip and .npy headers of four arrays.
_BYTES_PER_IMAGE = 4 + 1 + 1 + 2 * N_CLASSES
_HEADERS = 4 << 10
# A float16 row of softmax outputs sums to 1 within ten roundings of at most 2**-11 each.
_ROW_SUM_TOLERANCE = 10 * 2**-11


@dataclass(frozen=True)
class HeldOut:
    """The arrays of one pair's predictions file, checked against its result."""

    indices: np.ndarray
    labels: np.ndarray
    predicted: np.ndarray
    probabilities: np.ndarray


def max_bytes(n_images: int) -> int:
    """The size a predictions file of `n_images` images has at most (the bound its reader reads up to)."""
    return n_images * _BYTES_PER_IMAGE + _HEADERS


def save(path: Path, indices: np.ndarray, labels: np.ndarray, probabilities: np.ndarray) -> HeldOutPredictions:
    """Write the predictions atomically and return what the result records of them."""
    predicted = probabilities.argmax(axis=1)  # from the full-precision outputs: the digits the score counted
    arrays = {
        "indices": indices,
        "labels": labels,
        "predicted": predicted,
        "probabilities": probabilities,
    }
    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.ascontiguousarray(arrays[name], dtype=dtype) for name, dtype in _DTYPES.items()})
    data = buffer.getvalue()
    atomic.write_bytes(path, data)
    return HeldOutPredictions(
        file=path.name,
        sha256=hashlib.sha256(data).hexdigest(),
        n_images=len(indices),
        n_correct=int(np.count_nonzero(predicted == labels)),
    )


def load(result_path: Path, result: PairResult) -> HeldOut | None:
    """The predictions beside a valid result (store.check_pair), checked against it; None for a result of a version
    that records none. ResultError, in one line, for a file that is missing, oversized, not its hash, or whose
    arrays are not what the result says."""
    declared = result.predictions
    if declared is None:
        return None
    path = result_path.parent / declared.file
    where = f"{path} ({result_path.name} names it)"
    try:
        raw = read_bounded(path, max_bytes(declared.n_images), f"the predictions of {declared.n_images} images hold")
    except JobError as error:
        raise ResultError(f"{error}; {result_path.name} names it") from None
    if hashlib.sha256(raw).hexdigest() != declared.sha256:
        raise ResultError(f"{where}: not the predictions file its result names (sha256 differs)")
    held_out = _arrays(raw, declared.n_images, where)
    if folds.indices_sha256(held_out.indices) != result.data.val_indices_sha256:
        raise ResultError(f"{where}: its indices are not the result's held-out images")
    if int(np.count_nonzero(held_out.predicted == held_out.labels)) != declared.n_correct:
        raise ResultError(f"{where}: {declared.n_correct} correct declared, its digits say otherwise")
    return held_out


def _arrays(raw: bytes, n_images: int, where: str) -> HeldOut:
    """The four arrays of a predictions file, each of its dtype and shape, digits 0-9, probabilities that are ones."""
    try:
        # np.load would read a lone .npy too; and a compressed member could inflate far beyond the bytes read.
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            if any(member.compress_type != zipfile.ZIP_STORED for member in archive.infolist()):
                raise ResultError(f"{where}: not a predictions file (a compressed member)")
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            if sorted(npz.files) != sorted(_DTYPES):
                raise ResultError(f"{where}: holds {', '.join(sorted(npz.files))}, not {', '.join(sorted(_DTYPES))}")
            arrays = {name: npz[name] for name in _DTYPES}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise ResultError(f"{where}: not a predictions file ({error})") from None
    shapes = {"probabilities": (n_images, N_CLASSES)}
    for name, dtype in _DTYPES.items():
        array, shape = arrays[name], shapes.get(name, (n_images,))
        if array.dtype != dtype or array.shape != shape:
            raise ResultError(f"{where}: {name} is {array.dtype} {array.shape}, not {np.dtype(dtype)} {shape}")
    if arrays["labels"].max(initial=0) >= N_CLASSES or arrays["predicted"].max(initial=0) >= N_CLASSES:
        raise ResultError(f"{where}: a digit beyond 9")
    probabilities = arrays["probabilities"].astype(np.float32)
    if not np.isfinite(probabilities).all() or (probabilities < 0).any() or (probabilities > 1).any():
        raise ResultError(f"{where}: a probability outside [0, 1]")
    if (np.abs(probabilities.sum(axis=1) - 1) > _ROW_SUM_TOLERANCE).any():
        raise ResultError(f"{where}: a row of probabilities that does not sum to 1")
    return HeldOut(**arrays)
