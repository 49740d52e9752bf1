"""`mnist-cv ensemble`: the five mlp fold models, trained once for the module with their weights kept, averaged on
the full MNIST test set and scored; the count checked against an independent recomputation; refused in one line
when a fold's weights are missing, edited or swapped; idempotent; shown by collect beside the final model."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from support import cli, script_json

from job.protocol import Pair
from job.results import store
from job.results.contract import ResultError
from job.results.layout import RunLayout
from job.results.lease import Lease

pytestmark = pytest.mark.slow  # five real pairs trained once for the module (~12 s of CPU), each ensemble ~8 s

QUICK = ("--epochs", "1", "--limit", "1000")
N_TEST = 10_000


@pytest.fixture(scope="module")
def trained(mnist_full: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RESULTS with the five mlp folds of repeat 0 and their kept weights, trained in one process."""
    results = tmp_path_factory.mktemp("trained")
    done = cli(
        "run", "--task-ids", "0-4", "--keep-model", *QUICK, "--data-dir", str(mnist_full), "--results", str(results)
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return results


@pytest.fixture(scope="module")
def ensembled(trained: Path, mnist_full: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A copy of the trained run with its mlp ensemble made; and what `ensemble` printed."""
    results = tmp_path_factory.mktemp("ensembled") / "results"
    shutil.copytree(trained, results)
    done = cli("ensemble", "--results", str(results), "--data-dir", str(mnist_full))
    assert done.returncode == 0, done.stderr[-2000:]
    return results, done.stdout


def _copy(results: Path, tmp_path: Path) -> tuple[Path, RunLayout]:
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    return copy, RunLayout(copy, "default")


def _fold(layout: RunLayout, fold: int) -> tuple[Path, Path]:
    paths = layout.pair_paths(Pair("mlp", fold))
    assert paths.model_file is not None
    return paths.result, paths.model_file


# An independent count: the registry's mlp around each kept weights file, Keras's predict, the mean, argmax.
RECOUNT = """
import json, sys
import keras
import numpy as np
from job.pair import data, models
dataset = data.load(sys.argv[1])
images, labels = dataset.x_test.astype(np.float32)[..., None] / 255, dataset.y_test
total, alone = np.zeros((len(labels), 10)), []
for path in sys.argv[2:]:
    keras.backend.clear_session()
    model = models.build("mlp")
    model.load_weights(path)
    probabilities = model.predict(images, batch_size=1000, verbose=0).astype(np.float64)
    alone.append(int(np.count_nonzero(probabilities.argmax(axis=1) == labels)))
    total += probabilities
print(json.dumps({"n_correct": int(np.count_nonzero(total.argmax(axis=1) == labels)), "alone": alone}))
"""


def test_the_ensemble_counts_what_the_averaged_fold_models_get_right(ensembled: tuple[Path, str], mnist_full: Path):
    results, printed = ensembled
    layout = RunLayout(results, "default")
    path = layout.ensemble_paths("mlp").result
    assert path == results / "default" / "ensemble" / "mlp.json"
    result = store.check_ensemble(path, layout)
    test = result.test

    weights = [str(_fold(layout, fold)[1]) for fold in range(5)]
    recount = script_json(RECOUNT, str(mnist_full), *weights)
    assert test.n_correct == recount["n_correct"]
    assert [round(m.score.accuracy * N_TEST) for m in result.members] == recount["alone"]
    assert test.n_images == N_TEST and sum(map(sum, test.confusion_matrix)) == N_TEST
    assert sum(test.confusion_matrix[d][d] for d in range(10)) == test.n_correct == N_TEST - len(test.misclassified)
    assert result.score.accuracy == test.n_correct / N_TEST and result.score.loss > 0
    # The fold results it used, by file and sha256, and the data its folds were trained on.
    for fold, member in enumerate(result.members):
        fold_result = _fold(layout, fold)[0]
        assert (member.fold, member.file) == (fold, f"mlp/fold-{fold}.json")
        assert member.sha256 == hashlib.sha256(fold_result.read_bytes()).hexdigest()
        assert result.data.sha256 == store.check_pair(fold_result, layout).data.sha256
    assert (result.model, result.repeat, result.config_id) == ("mlp", 0, result.config.config_id)
    assert result.environment["packages"]["tensorflow"] and result.timings.seconds > 0
    line = (
        f"mlp/ensemble: 5 folds of repeat 0, test accuracy {test.n_correct / 100:.3f}% (loss {result.score.loss:.4f}), "
        f"{N_TEST - test.n_correct} of {N_TEST} test images misclassified; the folds alone "
    )
    assert printed.startswith(line), printed


def test_a_rerun_is_skipped_and_force_makes_it_again(
    ensembled: tuple[Path, str], mnist_full: Path, tmp_path: Path
) -> None:
    results, layout = _copy(ensembled[0], tmp_path)
    path = layout.ensemble_paths("mlp").result
    before = path.read_bytes()
    again = cli("ensemble", "--results", str(results), "--model", "mlp")
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"mlp/ensemble: already done of these fold results ({path}); --force to redo\n"
    assert path.read_bytes() == before
    force = ("ensemble", "--results", str(results), "--model", "mlp", "--force", "--data-dir", str(mnist_full))
    with Lease.acquire(layout.ensemble_paths("mlp").lease, json.loads(before)["config_id"], doing="made") as lease:
        held = cli(*force)  # while this live process (pytest) makes it
    assert held.returncode == 75 and held.stdout == "", held.stderr
    assert held.stderr.splitlines()[-1] == f"mlp/ensemble: ensemble/mlp is being made by {lease.holder.describe()}"
    assert path.read_bytes() == before and not layout.ensemble_paths("mlp").lease.exists()
    forced = cli(*force)
    assert forced.returncode == 0 and forced.stdout.startswith("mlp/ensemble: 5 folds of repeat 0"), forced.stderr
    redone, first = json.loads(path.read_text()), json.loads(before)
    assert redone["timings"] != first["timings"]
    assert (redone["test"], redone["members"]) == (first["test"], first["members"])  # the same models, the same sums


def test_a_lease_that_is_no_lease_refuses_the_ensemble_in_one_line_and_is_left_alone(
    ensembled: tuple[Path, str], mnist_full: Path, tmp_path: Path
) -> None:
    results, layout = _copy(ensembled[0], tmp_path)
    lease = layout.ensemble_paths("mlp").lease
    lease.write_text("garbage{")
    done = cli("ensemble", "--results", str(results), "--model", "mlp", "--force", "--data-dir", str(mnist_full))
    assert done.returncode == 1 and done.stdout == "", done.stderr
    assert done.stderr.splitlines()[-1].startswith(f"mlp/ensemble: {lease}: not a readable lease")
    assert lease.read_text() == "garbage{"  # someone else's file: left for the user to remove


def test_a_fold_result_changed_since_makes_the_ensemble_stale(ensembled: tuple[Path, str], tmp_path: Path) -> None:
    _, layout = _copy(ensembled[0], tmp_path)
    fold_result = _fold(layout, 3)[0]
    fold_result.write_text(json.dumps(json.loads(fold_result.read_text())))  # the same result, other bytes
    store.check_pair(fold_result, layout)
    with pytest.raises(ResultError, match=r"mlp/fold-3.json changed since the ensemble was made"):
        store.check_ensemble(layout.ensemble_paths("mlp").result, layout)


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda p: p.unlink(), r"fold-2.weights.h5: cannot read \(No such file or directory\); fold-2.json names it"),
        (
            lambda p: p.write_bytes(p.read_bytes() + b"\0"),
            r"fold-2.weights.h5: not the file fold-2.json names \(sha256 differs\)",
        ),
    ],
    ids=["missing", "edited"],
)
def test_a_missing_or_edited_weights_file_is_refused_in_one_line(trained: Path, tmp_path: Path, damage, reason):
    results, layout = _copy(trained, tmp_path)
    damage(_fold(layout, 2)[1])
    done = cli("ensemble", "--results", str(results))
    assert done.returncode == 1 and done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert re.fullmatch(
        f"mlp: no fold ensemble of repeat 0: fold 2 unusable \\(.*{reason}\\); get them with "
        f"{re.escape(f'`mnist-cv run --results {results} --run default --task-ids 2 --keep-model --force`')}",
        line,
    ), line
    assert not layout.ensemble_paths("mlp").result.parent.exists()


def test_folds_without_kept_weights_or_not_done_say_how_to_get_them(trained: Path, tmp_path: Path) -> None:
    results, layout = _copy(trained, tmp_path)
    for fold in (1, 4):  # done without --keep-model: no weights named
        result, weights = _fold(layout, fold)
        raw = json.loads(result.read_text())
        result.write_text(json.dumps({**raw, "model_file": None}))
        weights.unlink()
    done = cli("ensemble", "--results", str(results), "--model", "mlp")
    assert done.returncode == 1, done.stderr
    assert done.stderr == (
        "mlp: no fold ensemble of repeat 0: folds 1, 4 done without kept weights; get them with "
        f"`mnist-cv run --results {results} --run default --task-ids 1,4 --keep-model --force`\n"
    )
    cnn = cli("ensemble", "--results", str(results), "--model", "cnn")
    assert cnn.returncode == 1 and cnn.stderr == (
        "cnn: no fold ensemble of repeat 0: folds 0, 1, 2, 3, 4 not done; get them with "
        f"`mnist-cv run --results {results} --run default --task-ids 5-9 --keep-model`\n"
    )


def test_weights_swapped_under_a_matching_hash_are_refused_by_their_digest(
    trained: Path, mnist_full: Path, tmp_path: Path
) -> None:
    """The result names the file's sha256; the weights it loads must also be the ones its training recorded."""
    results, layout = _copy(trained, tmp_path)
    result, weights = _fold(layout, 0)
    shutil.copy(_fold(layout, 1)[1], weights)
    raw = json.loads(result.read_text())
    raw["model_file"]["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    result.write_text(json.dumps(raw))
    store.check_pair(result, layout)  # the hash alone lets it through
    done = cli("ensemble", "--results", str(results), "--data-dir", str(mnist_full))
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"mlp/ensemble: {weights}: loads other weights than fold-0.json records (changed since it was checked?)"
    )
    assert not layout.ensemble_paths("mlp").result.exists()


def test_a_fifo_where_the_ensemble_goes_is_refused_in_one_line(ensembled: tuple[Path, str], tmp_path: Path) -> None:
    results, layout = _copy(ensembled[0], tmp_path)
    path = layout.ensemble_paths("mlp").result
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(ResultError, match=r"not a regular file \(a FIFO\)"):
        store.check_ensemble(path, layout)
    done = cli("ensemble", "--results", str(results), timeout=60)
    assert done.returncode == 1
    assert (
        done.stderr
        == f"mlp/ensemble: {path} is in the way: it should be a regular file; remove it or use another --run\n"
    )


def test_collect_shows_the_ensemble_beside_the_final_model(
    ensembled: tuple[Path, str], mnist_full: Path, tmp_path: Path
) -> None:
    results, layout = _copy(ensembled[0], tmp_path)
    final = cli("final", "--model", "mlp", "--results", str(results), "--data-dir", str(mnist_full))
    assert final.returncode == 0, final.stderr[-2000:]
    ensemble = store.check_ensemble(layout.ensemble_paths("mlp").result, layout)
    final_accuracy = store.check_final(layout.final_paths("mlp").result, layout).score.accuracy
    done = cli("collect", "--results", str(results), "--allow-partial", "--data-dir", str(mnist_full))
    assert done.returncode == 0, done.stderr[-2000:]
    alone = [m.score.accuracy * 100 for m in ensemble.members]
    line = (
        f"mlp: fold ensemble {ensemble.score.accuracy * 100:.3f}% on the test set (5 folds, "
        f"{N_TEST - ensemble.test.n_correct} of {N_TEST} misclassified, loss {ensemble.score.loss:.4f}; the folds "
        f"alone {min(alone):.3f}-{max(alone):.3f}%), final model {final_accuracy * 100:.3f}%"
    )
    assert line in done.stdout.splitlines(), done.stdout
    assert f"- {line}" in layout.summary_md.read_text().splitlines()
    stats = json.loads(layout.summary_json.read_text())["models"]["mlp"]["ensemble"]
    assert stats == {
        "file": "ensemble/mlp.json",
        "repeat": 0,
        "n_folds": 5,
        "accuracy": ensemble.score.accuracy,
        "loss": ensemble.score.loss,
        "n_test": N_TEST,
        "n_misclassified": N_TEST - ensemble.test.n_correct,
        "fold_accuracies": [m.score.accuracy for m in ensemble.members],
    }
    assert json.loads(layout.summary_json.read_text())["models"]["cnn"]["ensemble"] is None
