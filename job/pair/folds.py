"""The fold split: scikit-learn's KFold exactly as the tutorial calls it, so every node gets the same indices."""

from __future__ import annotations

import hashlib

import numpy as np
from sklearn.model_selection import KFold

from job.pair.protocol import Protocol, check_fold


def split(n_samples: int, fold: int, protocol: Protocol) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices) of one fold of KFold(n_folds, shuffle=True, random_state=split_seed)."""
    check_fold(fold, protocol.n_folds)
    kfold = KFold(protocol.n_folds, shuffle=True, random_state=protocol.split_seed)
    for k, (train_ix, val_ix) in enumerate(kfold.split(np.empty((n_samples, 1)))):
        if k == fold:
            return train_ix, val_ix
    raise AssertionError("unreachable: check_fold bounds the fold")


def indices_sha256(indices: np.ndarray) -> str:
    """A fingerprint of a fold's held-out indices, recorded so a changed split can never go unnoticed."""
    return hashlib.sha256(np.ascontiguousarray(indices, dtype=np.int64).tobytes()).hexdigest()
