"""The one validity check refuses a result whose claims cannot all be true, whatever field is edited: every reader
(run's done-check, status and pairs, collect's scan) goes through job.results.store.check_pair.

The results are the committed run folder's (real short runs); each case edits one claim of a copy, keeping the rest
consistent (config id, held-out hash), so that the claim itself is what is refused."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from job import folds
from job.mnist import MNIST_SHA256
from job.protocol import Pair, Protocol
from job.results import store
from job.results.contract import ResultError
from job.results.layout import RunLayout
from job.results.status import status

RUN_FOLDER = Path(__file__).resolve().parent / "data" / "run-folder"
PROTOCOL = Protocol(epochs=2, limit=1000)


def _as_config(result: dict[str, Any], **overrides: Any) -> None:
    """The result retargeted to another config, consistently: its config id and its fold's held-out indices."""
    result["config"].update(overrides)
    protocol = Protocol(**result["config"])
    result["config_id"] = protocol.config_id
    n = result["data"]["n_train"] + result["data"]["n_val"]
    _, held_out = folds.split(n, result["fold"], protocol, result["repeat"])
    result["data"]["val_indices_sha256"] = folds.indices_sha256(held_out)


def _inexact_accuracy(r: dict[str, Any]) -> None:
    r["score"]["accuracy"] = r["history"]["val_accuracy"][-1] = 0.123456789  # 148.1 of 1,200? of 200: no count


def _another_task_id(r: dict[str, Any]) -> None:
    r["task_id"] = 7


def _training_accuracy_of_five(r: dict[str, Any]) -> None:
    r["history"]["accuracy"][0] = 5.0


def _negative_loss(r: dict[str, Any]) -> None:
    r["history"]["loss"][0] = -3.0


def _resumed_from_a_later_epoch(r: dict[str, Any]) -> None:
    r["resume"] = {"count": 1, "from_epochs": [99]}


def _three_times_for_two_epochs(r: dict[str, Any]) -> None:
    r["timings"]["epoch_seconds"] = [1.0, 1.0, 1.0]
    r["timings"]["fit_seconds"] = 3.0


def _fit_seconds_not_the_sum(r: dict[str, Any]) -> None:
    r["timings"]["fit_seconds"] = 1000.0


def _start_yesterday(r: dict[str, Any]) -> None:
    r["timings"]["start_utc"] = "yesterday"


def _start_without_time_zone(r: dict[str, Any]) -> None:
    r["timings"]["start_utc"] = "2026-01-01T10:00:00"


def _ends_before_it_starts(r: dict[str, Any]) -> None:
    r["timings"]["end_utc"] = "2000-01-01T00:00:00+00:00"


def _named_mnist_without_its_hashes(r: dict[str, Any]) -> None:
    r["data"]["name"] = "mnist"


def _mnist_with_six_thousand_images_and_no_limit(r: dict[str, Any]) -> None:
    # The mini subset's 6,000 images named the full MNIST: its hashes are MNIST's, its size is not.
    r["data"].update(name="mnist", sha256=dict(MNIST_SHA256), n_train=4800, n_val=1200)
    _as_config(r, limit=None)


def _custom_with_mnists_hashes(r: dict[str, Any]) -> None:
    r["data"]["sha256"] = dict(MNIST_SHA256)


def _schema_1_with_a_repeat(r: dict[str, Any]) -> None:
    r["schema_version"] = 1
    r.pop("resources")


CASES: dict[Callable[[dict[str, Any]], None], str] = {
    _inexact_accuracy: "which no count of correct images out of 200 gives",
    _another_task_id: "task_id 7, but mlp/fold-0 is task 0",
    _training_accuracy_of_five: "accuracy of epoch 1 is 5.0",
    _negative_loss: "a negative loss",
    _resumed_from_a_later_epoch: "from epochs [99], which a 2-epoch training cannot",
    _three_times_for_two_epochs: "3 epoch times for 2 epochs",
    _fit_seconds_not_the_sum: "fit_seconds 1000.0 is not the sum",
    _start_yesterday: "start_utc 'yesterday' is not an ISO 8601 time",
    _start_without_time_zone: "has no time zone",
    _ends_before_it_starts: "is before start_utc",
    _named_mnist_without_its_hashes: "data named mnist without MNIST's published hashes",
    _mnist_with_six_thousand_images_and_no_limit: "6000 training images of MNIST, its config takes 60000",
    _custom_with_mnists_hashes: "data named custom holds MNIST's hashes",
    _schema_1_with_a_repeat: "a schema_version 1 file holding repeat",
}


@pytest.fixture(scope="module")
def run_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    results = tmp_path_factory.mktemp("claims")
    shutil.copytree(
        RUN_FOLDER / "default" / "mlp", results / "default" / "mlp", ignore=shutil.ignore_patterns("repeat-*")
    )
    return results


@pytest.mark.parametrize("edit", list(CASES), ids=[edit.__name__.strip("_") for edit in CASES])
def test_a_claim_that_cannot_be_true_makes_the_result_unusable_for_every_reader(
    run_copy: Path, edit: Callable[[dict[str, Any]], None]
) -> None:
    layout = RunLayout(run_copy, "default")
    path = layout.pair_paths(Pair("mlp", 0)).result
    original = path.read_bytes()
    try:
        result = json.loads(original)
        store.check_pair(path, layout)  # the untouched result passes
        edit(result)
        path.write_text(json.dumps(result))
        with pytest.raises(ResultError) as refused:
            store.check_pair(path, layout)
        assert CASES[edit] in str(refused.value) and "\n" not in str(refused.value)
        protocol = Protocol(**result["config"]) if edit is _mnist_with_six_thousand_images_and_no_limit else PROTOCOL
        assert not store.completed(path, protocol.config_id, read=lambda p: store.check_pair(p, layout))
        assert status(layout, protocol, queue=lambda ids: {})[0].state == "corrupt"
        assert path in store.scan(layout).problems
    finally:
        path.write_bytes(original)
