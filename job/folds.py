"""The fold split: scikit-learn's KFold exactly as the tutorial calls it, rebuilt in numpy so every node gets the same
indices without importing scikit-learn (about a second of every task's start-up).

`KFold(k, shuffle=True, random_state=s).split(X)` shuffles `arange(n)` with `np.random.RandomState(s).shuffle`, cuts
it into k consecutive folds of n // k images, the first n % k of them one larger, and yields each fold's held-out
indices and the rest, both sorted (it goes through a boolean mask). tests/test_repeats.py checks this against
scikit-learn for every repeat.
"""

from __future__ import annotations

import hashlib

import numpy as np

from job.errors import UsageError
from job.protocol import Protocol, check_fold, check_repeat


def split(n_samples: int, fold: int, protocol: Protocol, repeat: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices) of one fold of KFold(n_folds, shuffle=True, random_state=split_seed + repeat),
    both sorted."""
    k = protocol.n_folds
    check_fold(fold, k)
    check_repeat(repeat, protocol)
    if n_samples < k:
        raise UsageError(f"{n_samples} images cannot be split into {k} folds")
    order = np.arange(n_samples)
    np.random.RandomState(protocol.split_seed + repeat).shuffle(order)
    size, larger = divmod(n_samples, k)
    start = fold * size + min(fold, larger)
    held_out = np.zeros(n_samples, dtype=bool)
    held_out[order[start : start + size + (fold < larger)]] = True
    return np.flatnonzero(~held_out), np.flatnonzero(held_out)


def indices_sha256(indices: np.ndarray) -> str:
    """A fingerprint of a fold's held-out indices, recorded so a changed split can never go unnoticed."""
    return hashlib.sha256(np.ascontiguousarray(indices, dtype=np.int64).tobytes()).hexdigest()
