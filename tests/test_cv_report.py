"""collect's out-of-fold report: the ten pairs' held-out predictions pooled per model (confusion matrix, per-digit
accuracy over the folds, the most confident mistakes, calibration), drawn from a real run of the ten pairs trained
once in one process; results of an earlier version (tests/data/run-folder holds version 2) still collect and say
what the report lacks."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import ROOT, cli, copy_of, png_size, trained_run

from job.analysis import out_of_fold, plots
from job.pair import data
from job.protocol import DEFAULT_MODELS
from job.results.contract import Summary
from job.results.layout import RunLayout

pytestmark = pytest.mark.slow  # ten real pairs, trained once for the module; collect draws its figures

N_FOLDS = 5
LIMIT = 1000  # 800 training and 200 held-out images per fold
TRAIN = ("run", "--task-ids", "0-9", "--epochs", "1", "--limit", str(LIMIT), "--custom-data")
FIXTURE = ROOT / "tests" / "data" / "run-folder"  # results of schema version 2: no predictions


@pytest.fixture(scope="module")
def trained(mnist_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RESULTS of the ten pairs, trained in one process."""
    return trained_run(tmp_path_factory.mktemp("cv-report"), *TRAIN, "--data-dir", str(mnist_mini))


@pytest.fixture
def results(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained run to collect into or edit."""
    return copy_of(trained, tmp_path)


def collect(results: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cli("collect", "--results", str(results), *args, env={"COLUMNS": "250"})


@pytest.fixture(scope="module")
def collected(
    trained: Path, mnist_mini: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A copy of the trained run collected once with the training images (for the mistakes' grid): RESULTS and what
    collect printed. The tests that only read it share it; the others edit a copy."""
    results = copy_of(trained, tmp_path_factory.mktemp("collected"))
    return results, collect(results, "--data-dir", str(mnist_mini))


@pytest.fixture
def collected_copy(collected: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> Path:
    return copy_of(collected[0], tmp_path)


def read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def fold_results(folder: Path, model: str) -> list[dict[str, Any]]:
    return [read(folder / model / f"fold-{fold}.json") for fold in range(N_FOLDS)]


def predictions_file(folder: Path, model: str, fold: int) -> dict[str, np.ndarray]:
    with np.load(folder / model / f"fold-{fold}.predictions.npz") as npz:
        return {name: npz[name] for name in npz.files}


# --- the report of a run whose every result has its predictions ---------------------------------------------------


def test_the_pooled_confusion_matrix_is_every_held_out_image_and_the_folds_scores(
    collected: tuple[Path, subprocess.CompletedProcess[str]], mnist_mini: Path
) -> None:
    results, done = collected
    assert (done.returncode, done.stderr) == (0, ""), done.stderr[-3000:]
    folder = results / "default"
    found = read(folder / "summary.json")
    labels = data.load(mnist_mini, custom=True).y_train[:LIMIT]
    markdown = (folder / "summary.md").read_text()
    for model in DEFAULT_MODELS:
        files = fold_results(folder, model)
        report = found["models"][model]["cross_validation"]
        assert (report["n_results"], report["n_with_predictions"], report["notes"]) == (N_FOLDS, N_FOLDS, [])
        pooled = report["pooled"]
        matrix = np.array(pooled["confusion_matrix"])
        # Every held-out image once, and the diagonal the folds' scores as counts, to the image.
        assert matrix.sum() == pooled["n_images"] == sum(f["data"]["n_val"] for f in files) == LIMIT
        right = sum(round(f["score"]["accuracy"] * f["data"]["n_val"]) for f in files)
        assert np.trace(matrix) == pooled["n_correct"] == right
        assert matrix.sum(axis=1).tolist() == np.bincount(labels, minlength=10).tolist()  # the true digits' counts
        for digit, row in enumerate(pooled["per_class"]):
            assert (row["digit"], row["n_images"]) == (digit, matrix[digit].sum())
            assert row["accuracy"] == pytest.approx(matrix[digit, digit] / matrix[digit].sum())
            assert row["min"] <= row["mean"] <= row["max"]
        worst = min(range(10), key=lambda d: (matrix[d, d] / matrix[d].sum(), d))
        assert pooled["worst_class"] == worst
        a, b = pooled["most_confused"]["digits"]
        both = matrix + matrix.T
        np.fill_diagonal(both, 0)
        assert both[a, b] == both.max() and a < b
        assert (pooled["most_confused"]["a_as_b"], pooled["most_confused"]["b_as_a"]) == (matrix[a, b], matrix[b, a])
        calibration = pooled["calibration"]
        assert sum(b["n"] for b in calibration["bins"]) == LIMIT and len(calibration["bins"]) == 15
        assert "15 equal-width bins of the max probability" in calibration["binning"]
        assert pooled["n_mistakes"] == LIMIT - right and len(pooled["mistakes"]) == min(36, LIMIT - right)
        # The headline, the same in the terminal and summary.md.
        headline = next(line for line in done.stdout.splitlines() if line.startswith(f"{model} out-of-fold: "))
        assert f"most confused {a} and {b}" in headline and f"worst class {worst}: " in headline
        assert f"ECE {calibration['ece']:.4f} (15 equal-width bins" in headline
        assert f"- {headline}" in markdown
        for name, size in ((f"cv-confusion-{model}.png", (700, 600)), (f"reliability-{model}.png", (700, 600)),
                           (f"cv-misclassified-{model}.png", (900, 1000))):  # fmt: skip
            assert name in found["figures"] and png_size(folder / name) == size
    assert "## Out-of-fold accuracy per digit" in markdown
    Summary.from_json(found)  # the schema holds it


def test_the_mistakes_and_their_grid_are_the_predictions_files_and_the_training_digits(
    collected: tuple[Path, subprocess.CompletedProcess[str]], mnist_mini: Path
) -> None:
    results, done = collected
    assert done.returncode == 0, done.stderr[-3000:]
    folder = results / "default"
    summary = Summary.from_json(read(folder / "summary.json"))
    pooled = summary.models["cnn"].cross_validation.pooled
    assert pooled is not None and pooled.mistakes
    probabilities = [m.probability for m in pooled.mistakes]
    assert probabilities == sorted(probabilities, reverse=True)
    for mistake in pooled.mistakes:
        held_out = predictions_file(folder, "cnn", mistake.fold)
        (at,) = np.flatnonzero(held_out["indices"] == mistake.index)
        assert (held_out["labels"][at], held_out["predicted"][at]) == (mistake.label, mistake.predicted)
        assert mistake.label != mistake.predicted
        assert mistake.probability == float(held_out["probabilities"][at, mistake.predicted])
    x_train = data.load(mnist_mini, custom=True).x_train
    fig = plots.fold_mistakes("cnn", pooled, x_train)
    drawn = [ax for ax in fig.axes if ax.get_images()]
    assert len(drawn) == len(pooled.mistakes)
    for ax, mistake in zip(drawn, pooled.mistakes, strict=True):
        assert (ax.get_images()[0].get_array() == x_train[mistake.index]).all()
        assert ax.get_title() == f"true {mistake.label} / pred {mistake.predicted} ({mistake.probability:.2f})"
    (ax, _colorbar) = plots.cv_confusion_matrix("cnn", pooled, summary.config_id).axes
    counts = {(round(t.get_position()[1]), round(t.get_position()[0])): int(t.get_text()) for t in ax.texts}
    assert counts == {(t, p): pooled.confusion_matrix[t][p] for t in range(10) for p in range(10)}


def test_without_the_training_images_the_grid_is_left_out_and_said_and_the_mistakes_are_kept(
    collected_copy: Path, tmp_path: Path
) -> None:
    results = collected_copy
    folder = results / "default"
    assert (folder / "cv-misclassified-mlp.png").exists()
    (tmp_path / "empty").mkdir()
    done = collect(results, "--data-dir", str(tmp_path / "empty"))
    assert (done.returncode, done.stderr) == (0, "")
    report = read(folder / "summary.json")["models"]["mlp"]["cross_validation"]
    (note,) = report["notes"]
    assert note.startswith("no cv-misclassified-mlp.png: ") and "no MNIST files there" in note
    assert note in done.stdout and report["pooled"]["mistakes"]  # what a grid needs, kept in summary.json
    assert not (folder / "cv-misclassified-mlp.png").exists()  # not the grid of an earlier collect
    assert (folder / "cv-confusion-mlp.png").exists() and (folder / "reliability-mlp.png").exists()


# --- results without usable predictions ---------------------------------------------------------------------------


def test_results_of_an_earlier_version_collect_and_the_report_says_what_is_missing(tmp_path: Path) -> None:
    results = Path(shutil.copytree(FIXTURE, tmp_path / "results"))
    assert {read(path)["schema_version"] for path in results.glob("default/*/fold-*.json")} == {2}
    done = collect(results, "--allow-partial", "--data-dir", str(ROOT / "tests" / "data" / "mnist-mini"))
    assert (done.returncode, done.stderr) == (0, "")
    found = read(results / "default" / "summary.json")
    for model in DEFAULT_MODELS:
        note = f"out-of-fold report: 0 of 5 {model} folds have predictions (5 results of an earlier version): not drawn"
        assert found["models"][model]["cross_validation"] == {
            "n_results": 5, "n_with_predictions": 0, "notes": [note], "pooled": None,
        }  # fmt: skip
        assert note in done.stdout.splitlines()
        assert not [name for name in found["figures"] if name.startswith(("cv-", "reliability-"))]


def _as_version_2(path: Path) -> None:
    """The result as an earlier version wrote it: no predictions, no weights' digest."""
    result = read(path)
    for key in ("weights_sha256", "predictions", "model_file"):
        result.pop(key)
    result["schema_version"] = 2
    path.write_text(json.dumps(result))


def _other_digits(path: Path) -> None:
    """A predictions file whose hash its result names, but whose labels are not the ones it was scored on."""
    folder, result_path = path.parent, path.parent / "fold-1.json"
    arrays = predictions_file(folder.parent, folder.name, 1)
    arrays["labels"] = (arrays["labels"] + 1) % 10
    np.savez(path, **arrays)
    result = read(result_path)
    result["predictions"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    result_path.write_text(json.dumps(result))


def test_a_result_of_an_earlier_version_among_the_folds_leaves_the_report_undrawn(collected_copy: Path) -> None:
    results = collected_copy
    folder = results / "default"
    assert (folder / "cv-confusion-mlp.png").exists()
    _as_version_2(folder / "mlp" / "fold-3.json")
    done = collect(results)
    assert (done.returncode, done.stderr) == (0, "")
    found = read(folder / "summary.json")
    assert found["models"]["mlp"]["n"] == 5  # its score still counts
    note = "out-of-fold report: 4 of 5 mlp folds have predictions (1 result of an earlier version): not drawn"
    assert found["models"]["mlp"]["cross_validation"]["notes"] == [note] and note in done.stdout
    assert found["models"]["cnn"]["cross_validation"]["pooled"] is not None
    # The earlier collect's figures of the mlp's report are gone: they were of predictions no longer all there.
    assert not [p for p in RunLayout(results, "default").cv_figures("mlp", "png").all() if p.exists()]
    assert all(p.exists() for p in RunLayout(results, "default").cv_figures("cnn", "png").all())


def test_a_predictions_file_that_fails_its_check_is_skipped_in_one_line(results: Path) -> None:
    folder = results / "default"
    bad = folder / "mlp" / "fold-1.predictions.npz"
    _other_digits(bad)
    done = collect(results)
    assert done.returncode == 0 and "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"skipped {bad} (fold-1.json names it): ") and "correct declared" in line
    found = read(folder / "summary.json")
    assert found["complete"] is True and found["models"]["mlp"]["n"] == 5
    (skipped,) = found["skipped"]
    assert skipped["file"] == "mlp/fold-1.predictions.npz" and "correct declared" in skipped["reason"]
    note = "out-of-fold report: 4 of 5 mlp folds have predictions (1 predictions file skipped): not drawn"
    assert found["models"]["mlp"]["cross_validation"]["notes"] == [note]


# --- the expected calibration error, by hand -----------------------------------------------------------------------


def test_the_expected_calibration_error_of_a_small_known_array() -> None:
    # Max probabilities that float16 holds exactly, in the bins of fifteenths: 0.875 and 0.890625 share the 14th bin
    # (13/15, 14/15], 1.0 is the last bin's upper edge, 0.5 is in (7/15, 8/15], 0.25 in (3/15, 4/15].
    confidence = np.array([0.875, 0.890625, 1.0, 1.0, 0.5, 0.5, 0.25], dtype=np.float16).astype(np.float64)
    correct = np.array([True, False, True, True, True, False, False])
    found = out_of_fold.calibration(confidence, correct)
    by_hand = (
        2 / 7 * abs(1 / 2 - (0.875 + 0.890625) / 2)  # (13/15, 14/15]: one right of two
        + 2 / 7 * abs(1 - 1.0)  # (14/15, 1]: both right, both certain
        + 2 / 7 * abs(1 / 2 - 0.5)  # (7/15, 8/15]: one right of two, at one half
        + 1 / 7 * abs(0 - 0.25)  # (3/15, 4/15]: wrong
    )
    assert found.ece == pytest.approx(by_hand, abs=1e-12) and by_hand == pytest.approx(0.1450892857142857)
    assert len(found.bins) == 15 and [b.n for b in found.bins] == [0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 2, 2]
    assert (found.bins[0].low, found.bins[-1].high) == (0.0, 1.0)
    assert found.bins[13].accuracy == 0.5 and found.bins[13].confidence == pytest.approx(0.8828125)
    assert found.bins[0].accuracy is None and found.bins[0].confidence is None
    # A bin's upper edge is in it: 2/15 sits in (1/15, 2/15], not in the next one.
    edge = out_of_fold.calibration(np.linspace(0, 1, 16)[2:3], np.array([True]))
    assert [b.n for b in edge.bins][:3] == [0, 1, 0]
