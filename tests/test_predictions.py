"""A pair's held-out predictions and its kept weights: written beside its result, named and hashed by it, so the one
validity check of a result covers them; read back bounded and checked against what the result says."""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from support import cli, copy_of, script_json, trained_run

from job import folds
from job.protocol import Pair, Protocol
from job.results import predictions, store
from job.results.contract import PairResult, ResultError
from job.results.layout import RunLayout

PROTOCOL = Protocol(epochs=1, limit=1000)
PAIR = Pair("mlp", 1)
TRAIN = ("run", "--model", "mlp", "--fold", "1", "--epochs", "1", "--limit", "1000", "--keep-model")

pytestmark = pytest.mark.slow  # one real pair, trained once for the module


@pytest.fixture(scope="module")
def trained(mnist_full: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_run(tmp_path_factory.mktemp("predictions"), *TRAIN, "--data-dir", str(mnist_full))


@pytest.fixture
def results(trained: Path, tmp_path: Path) -> Path:
    return copy_of(trained, tmp_path)


def _paths(results: Path) -> tuple[RunLayout, Path, Path]:
    layout = RunLayout(results, "default")
    paths = layout.pair_paths(PAIR)
    assert paths.predictions is not None
    return layout, paths.result, paths.predictions


def test_the_predictions_are_the_held_out_images_labels_and_the_scores_count(trained: Path, mnist_full: Path) -> None:
    layout, result_path, _ = _paths(trained)
    result = store.check_pair(result_path, layout)
    held_out = predictions.load(result_path, result)
    assert held_out is not None
    _, expected = folds.split(PROTOCOL.limit, PAIR.fold, PROTOCOL)
    assert np.array_equal(held_out.indices, expected)
    labels = script_json(
        "import json, sys; from job.pair import data;"
        "d = data.load(sys.argv[1]); print(json.dumps(d.y_train[: int(sys.argv[2])].tolist()))",
        str(mnist_full),
        str(PROTOCOL.limit),
    )
    assert np.array_equal(held_out.labels, np.asarray(labels)[expected])
    n_correct = int(np.count_nonzero(held_out.predicted == held_out.labels))
    assert n_correct == result.predictions.n_correct == round(result.score.accuracy * result.data.n_val)
    assert np.array_equal(held_out.predicted, held_out.probabilities.argmax(axis=1))


def test_the_kept_weights_rebuild_the_model_the_result_names(trained: Path) -> None:
    layout, result_path, _ = _paths(trained)
    result = store.check_pair(result_path, layout)
    assert result.model_file is not None and result.weights_sha256 is not None
    # The registry's model with the kept weights loaded is the trained one: its digest is the result's.
    digest = script_json(
        "import json, sys; from job.pair import models, trained;"
        "m = models.build('mlp', steps_per_execution=None, jit=False); m.load_weights(sys.argv[1]);"
        "print(json.dumps(trained.weights_sha256(m)))",
        str(result_path.parent / result.model_file.name),
    )
    assert digest == result.weights_sha256


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-1] + b"x"), "sha256 differs"),
        (lambda p: p.unlink(), "missing|No such file"),
        (lambda p: (p.unlink(), os.mkfifo(p)), r"not a regular file \(a FIFO\)"),
        (lambda p: (p.unlink(), p.symlink_to("/dev/zero")), r"not a regular file \(a character device\)"),
        (lambda p: os.truncate(p, 1 << 40), "more than the predictions of 200 images hold"),
    ],
    ids=["edited", "missing", "fifo", "dev-zero", "oversized"],
)
def test_a_damaged_predictions_file_makes_its_result_invalid_in_one_line(results: Path, damage, message: str) -> None:
    layout, result_path, predictions_path = _paths(results)
    damage(predictions_path)
    with pytest.raises(ResultError, match=message) as error:
        store.check_pair(result_path, layout)
    assert "\n" not in str(error.value)
    status = cli("status", "--results", str(results), "--json", timeout=120)
    assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr
    (pair,) = [p for p in json.loads(status.stdout) if (p["model"], p["fold"]) == ("mlp", 1)]
    assert pair["state"] in ("corrupt", "in the way"), pair


def test_a_damaged_kept_weights_file_makes_its_result_invalid(results: Path) -> None:
    layout, result_path, _ = _paths(results)
    weights = result_path.with_suffix(".weights.h5")
    weights.write_bytes(weights.read_bytes() + b"\0")
    with pytest.raises(ResultError, match="fold-1.weights.h5: not the file fold-1.json names"):
        store.check_pair(result_path, layout)


def _rewrite(results: Path, arrays: dict[str, np.ndarray], compress: bool = False) -> tuple[Path, PairResult]:
    """Replace the predictions file with `arrays` and make the result name its hash (so only `load` can refuse)."""
    layout, result_path, predictions_path = _paths(results)
    buffer = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buffer, **arrays)
    predictions_path.write_bytes(buffer.getvalue())
    raw = json.loads(result_path.read_text())
    raw["predictions"]["sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    result_path.write_text(json.dumps(raw))
    return result_path, store.check_pair(result_path, layout)


def _arrays(results: Path) -> dict[str, np.ndarray]:
    _, _, predictions_path = _paths(results)
    with np.load(predictions_path) as npz:
        return {name: npz[name] for name in npz.files}


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda a: a.update(indices=a["indices"][::-1].copy()), "not the result's held-out images"),
        (lambda a: a.update(predicted=a["labels"].copy()), "correct declared, its digits say otherwise"),
        (lambda a: a.update(labels=a["labels"].astype(np.int64)), r"labels is int64 \(200,\), not uint8"),
        (lambda a: a.update(probabilities=a["probabilities"][:, :9]), r"probabilities is float16 \(200, 9\)"),
        (lambda a: a.update(probabilities=a["probabilities"] * 2), "outside \\[0, 1\\]|does not sum to 1"),
        (lambda a: a.update(extra=np.zeros(1)), "holds extra, indices"),
        (lambda a: a.update(predicted=a["predicted"] + 10), "a digit beyond 9"),
    ],
    ids=["indices", "count", "dtype", "shape", "probabilities", "extra", "digit"],
)
def test_arrays_that_are_not_what_the_result_says_are_refused_on_read(results: Path, edit, message: str) -> None:
    arrays = _arrays(results)
    edit(arrays)
    result_path, result = _rewrite(results, arrays)
    with pytest.raises(ResultError, match=message):
        predictions.load(result_path, result)


def test_a_compressed_or_non_zip_predictions_file_is_refused_before_it_is_inflated(results: Path) -> None:
    result_path, result = _rewrite(results, _arrays(results), compress=True)
    with pytest.raises(ResultError, match="a compressed member"):
        predictions.load(result_path, result)
    _, _, predictions_path = _paths(results)
    np.save(predictions_path.open("wb"), np.zeros(3))  # a lone .npy
    raw = json.loads(result_path.read_text())
    raw["predictions"]["sha256"] = hashlib.sha256(predictions_path.read_bytes()).hexdigest()
    result_path.write_text(json.dumps(raw))
    with pytest.raises(ResultError, match="not a predictions file"):
        predictions.load(result_path, store.check_pair(result_path, RunLayout(results, "default")))
    assert not zipfile.is_zipfile(predictions_path)


def test_a_count_that_is_not_the_score_is_refused_by_the_validity_check(results: Path) -> None:
    layout, result_path, _ = _paths(results)
    raw = json.loads(result_path.read_text())
    raw["predictions"]["n_correct"] -= 1
    result_path.write_text(json.dumps(raw))
    with pytest.raises(ResultError, match="right, not its score's accuracy"):
        store.check_pair(result_path, layout)


def test_a_symlink_where_the_predictions_go_blocks_the_pair_before_training(results: Path, tmp_path: Path) -> None:
    _, result_path, predictions_path = _paths(results)
    result_path.unlink()
    outside = tmp_path / "outside.npz"
    outside.write_bytes(b"keep")
    predictions_path.unlink()
    predictions_path.symlink_to(outside)
    done = cli(*TRAIN, "--results", str(results), timeout=120)
    assert done.returncode == 1 and "is a symlink" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert outside.read_bytes() == b"keep"
