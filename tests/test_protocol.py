"""The protocol, the fold split and the task-id map: fast, no TensorFlow."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sklearn.model_selection import KFold

from job import folds
from job.errors import UsageError
from job.protocol import Pair, Protocol, all_pairs, pair_for_task, task_for_pair
from job.results.status import array_spec


def test_task_ids_map_to_mlp_then_cnn_folds() -> None:
    assert [pair_for_task(t) for t in range(10)] == [Pair("mlp", f) for f in range(5)] + [
        Pair("cnn", f) for f in range(5)
    ]
    assert all(task_for_pair(pair) == task for task, pair in enumerate(all_pairs()))
    assert task_for_pair(Pair("cnn-small", 0)) is None


@pytest.mark.parametrize("task_id", [-1, 10, 99])
def test_task_ids_outside_the_array_are_refused(task_id: int) -> None:
    with pytest.raises(UsageError, match="outside 0-9"):
        pair_for_task(task_id)


def test_folds_are_sklearns_kfold_disjoint_and_covering() -> None:
    protocol = Protocol()
    reference = list(KFold(5, shuffle=True, random_state=1).split(np.zeros((60_000, 1))))
    held_out = []
    for fold in range(5):
        train_ix, val_ix = folds.split(60_000, fold, protocol)
        np.testing.assert_array_equal(train_ix, reference[fold][0])
        np.testing.assert_array_equal(val_ix, reference[fold][1])
        assert len(val_ix) == 12_000 and not np.intersect1d(train_ix, val_ix).size
        held_out.append(val_ix)
    np.testing.assert_array_equal(np.sort(np.concatenate(held_out)), np.arange(60_000))


def test_fold_fingerprint_is_stable() -> None:
    # Pinned: if sklearn ever changed KFold's shuffling, every recorded result would stop being comparable.
    _, val_ix = folds.split(60_000, 0, Protocol())
    assert val_ix[:5].tolist() == [10, 12, 28, 30, 31]
    assert folds.indices_sha256(val_ix) == "fc25291844f0a88d7e28d8e6c068b8d99f3873b53e4e8e732d1ec5c8e8edbe68"


def test_fold_out_of_range_is_refused() -> None:
    with pytest.raises(UsageError, match="fold 5 is outside 0-4"):
        folds.split(100, 5, Protocol())


def test_every_override_changes_the_config_id() -> None:
    base = Protocol()
    ids = {base.config_id}
    for override in ({"epochs": 2}, {"batch_size": 64}, {"seed": 7}, {"limit": 2000}, {"precision": "mixed_float16"}):
        ids.add(base.with_overrides(**override).config_id)
    assert len(ids) == 6
    assert base.with_overrides(epochs=None).config_id == base.config_id
    assert Protocol.from_dict(base.to_dict()) == base


@pytest.mark.parametrize("override", [{"epochs": 0}, {"batch_size": 0}, {"limit": 10}, {"precision": "fp8"}])
def test_impossible_overrides_are_usage_errors(override: dict) -> None:
    with pytest.raises(UsageError):
        Protocol().with_overrides(**override)


def test_array_spec_collapses_runs() -> None:
    assert array_spec([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert array_spec([9]) == "9"
    assert array_spec([]) == ""


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["run", "--model", "resnet", "--fold", "0"]])
def test_help_and_usage_errors_never_load_tensorflow(args: list[str]) -> None:
    # -X importtime lists every module the interpreter imports, on stderr.
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "job", *args], capture_output=True, text=True)
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time")}
    assert done.returncode in (0, 2) and imported and not imported & {"tensorflow", "keras"}
