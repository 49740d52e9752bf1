"""`collect` on copies of tests/data/run-folder/ (real short runs of the ten pairs and of a final MLP, committed:
tests/data/make_run_folder.py), cut to repeat 0 and edited by hand (missing, corrupt, mixed). What a plain collect
of the whole folder writes is tests/test_read_side.py's."""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import shutil
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import ROOT, cli_without_reader, png_size

from job.analysis import plots, summary
from job.cli import main
from job.pair import data
from job.protocol import DEFAULT_MODELS, Protocol
from job.results import store
from job.results.contract import FinalResult, Score
from job.results.layout import RunLayout
from job.results.store import check_final

pytestmark = pytest.mark.slow  # each test runs collect, which draws its figures: seconds each

FIXTURE = ROOT / "tests" / "data" / "run-folder"
MINI = ROOT / "tests" / "data" / "mnist-mini"
EPOCHS = 2  # the folder's protocol: two points per learning curve
LIMIT = 1000  # 800 training and 200 held-out images per fold
N_TEST = 1000  # the subset's test images, on which the final model was scored


def copy_of_the_run(tmp_path: Path, *, final: bool) -> Path:
    """A private copy of the committed results, to edit by hand: the ten pairs of repeat 0 and, if `final`, the
    final model (without repeat 1 and the launchers' records, which tests/test_read_side.py covers)."""
    results = Path(shutil.copytree(FIXTURE, tmp_path / "results"))
    folder = results / "default"
    for part in ("mlp/repeat-1", "logs", *(["final"] * (not final))):
        shutil.rmtree(folder / part)
    (folder / "submissions.jsonl").unlink()
    return results


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    return copy_of_the_run(tmp_path, final=False)


@pytest.fixture
def final_dir(tmp_path: Path) -> Path:
    return copy_of_the_run(tmp_path, final=True)


def collector(
    results_dir: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., tuple[int, str, str]]:
    """Run `collect --results RESULTS ARGS` in this process: (exit code, stdout, stderr)."""
    monkeypatch.setenv("COLUMNS", "200")  # rich's table width: wide enough that no cell wraps
    monkeypatch.delenv("MNIST_CV_DATA", raising=False)  # the test images come from where the final result says:
    monkeypatch.chdir(ROOT)  # tests/data/mnist-mini, relative to the checkout

    def call(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = main(["collect", "--results", str(results_dir), *args])
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code
        out, err = capsys.readouterr()
        return code, out, err

    return call


@pytest.fixture
def collect(
    results_dir: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., tuple[int, str, str]]:
    return collector(results_dir, capsys, monkeypatch)


@pytest.fixture
def collect_final(
    final_dir: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., tuple[int, str, str]]:
    return collector(final_dir, capsys, monkeypatch)


def run_dir(results_dir: Path) -> Path:
    return results_dir / "default"


def read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def edit(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    result = read(path)
    change(result)
    path.write_text(json.dumps(result))


def accuracies(folder: Path, model: str) -> list[float]:
    """The held-out accuracies of a model, straight from its files."""
    return [read(path)["score"]["accuracy"] for path in sorted((folder / model).glob("fold-*.json"))]


def records(results_dir: Path, model: str) -> list[store.Record]:
    """A model's pair results as collect reads them: (path, typed result), each checked."""
    layout = RunLayout(results_dir, "default")
    paths = sorted((layout.folder / model).glob("*.json"))
    return [store.Record(path, store.check_pair(path, layout)) for path in paths]


def typed_final(results_dir: Path) -> FinalResult:
    layout = RunLayout(results_dir, "default")
    return check_final(layout.final_paths("mlp").result, layout)


def stderr_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


# --- a complete run ---------------------------------------------------------------------------------------------


def test_complete_run_is_complete_and_prints_the_tutorials_line(collect: Callable, results_dir: Path) -> None:
    code, out, err = collect()
    assert (code, err) == (0, "")
    folder = run_dir(results_dir)
    found = read(folder / "summary.json")
    assert found["complete"] is True and found["missing"] == [] and found["skipped"] == []
    assert list(found["models"]) == list(DEFAULT_MODELS)
    for model in DEFAULT_MODELS:
        scores = accuracies(folder, model)
        # The tutorial's own line, from the independently computed numbers.
        expected = f"Accuracy: mean={100 * statistics.fmean(scores):.3f} std={100 * statistics.pstdev(scores):.3f}, n=5"
        assert f"{model}: {expected}" in out
    assert "Nadeau-Bengio corrected resampled t-test" in out


def test_tutorial_published_folds_give_its_mean_and_population_std() -> None:
    folds = {"mlp": [97.408, 97.308, 97.450, 97.858, 97.417], "cnn": [98.908, 98.992, 99.125, 99.267, 99.067]}
    for model, (mean, std) in {"mlp": (97.488, 0.191), "cnn": (99.072, 0.122)}.items():
        # The tutorial's published accuracies in place of ours, fold by fold.
        results = [
            r._replace(result=dataclasses.replace(r.result, score=Score(accuracy=a / 100, loss=0.1)))
            for r, a in zip(records(FIXTURE, model), folds[model], strict=True)
        ]
        stats = summary.model_stats(results)
        assert (round(100 * stats.mean, 3), round(100 * stats.std, 3), stats.n) == (mean, std, 5)


def test_learning_curves_draw_every_fold_with_a_legend_of_two() -> None:
    results = [r.result for r in records(FIXTURE, "cnn")]
    fig = plots.learning_curves("cnn", results, results[0].config_id)
    loss, accuracy = fig.axes
    for ax, metric in ((loss, "loss"), (accuracy, "accuracy")):
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("epoch", metric)
        assert len(ax.get_lines()) == 2 * 5  # train and held-out, per fold
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train", "held-out fold"]
        colors = {line.get_color() for line in ax.get_lines()}
        assert colors == {plots.TRAIN_COLOR, plots.HELD_OUT_COLOR}
        assert tuple(ax.get_lines()[1].get_ydata()) == getattr(results[0].history, f"val_{metric}")


@pytest.mark.parametrize(("fmt", "magic"), [("pdf", b"%PDF"), ("svg", b"<?xml")])
def test_other_formats(collect: Callable, results_dir: Path, fmt: str, magic: bytes) -> None:
    assert collect("--format", fmt)[0] == 0
    folder = run_dir(results_dir)
    for name in ("learning-curves-mlp", "learning-curves-cnn", "boxplot"):
        assert (folder / f"{name}.{fmt}").read_bytes().startswith(magic)
    assert not list(folder.glob("*.png"))


def test_corrected_t_test_matches_an_independent_computation(collect: Callable, results_dir: Path) -> None:
    from scipy import special, stats

    assert collect()[0] == 0
    folder = run_dir(results_dir)
    comparison = read(folder / "summary.json")["comparison"]
    mlp, cnn = accuracies(folder, "mlp"), accuracies(folder, "cnn")
    data = read(folder / "mlp" / "fold-0.json")["data"]
    ratio = data["n_val"] / data["n_train"]
    assert ratio == 200 / 800
    # The plain paired t divides by sqrt(var/k); Nadeau-Bengio's by sqrt(var * (1/k + n_val/n_train)).
    plain = stats.ttest_rel(cnn, mlp).statistic
    k = 5
    t = plain * math.sqrt((1 / k) / (1 / k + ratio))
    assert comparison["test"] == "Nadeau-Bengio corrected resampled t-test"
    assert (comparison["baseline"], comparison["candidate"], comparison["k"], comparison["df"]) == ("mlp", "cnn", 5, 4)
    assert comparison["mean_difference"] == pytest.approx(statistics.fmean(cnn) - statistics.fmean(mlp), abs=1e-12)
    assert comparison["test_train_ratio"] == pytest.approx(ratio)
    assert comparison["t"] == pytest.approx(t, rel=1e-9)
    assert comparison["p_value"] == pytest.approx(2 * special.stdtr(k - 1, -abs(t)), rel=1e-9)


def test_comparison_without_variance_or_pairs_gives_no_t() -> None:
    mlp = records(FIXTURE, "mlp")
    gain = [Score(accuracy=r.result.score.accuracy + 0.01, loss=r.result.score.loss) for r in mlp]
    shifted = [
        r._replace(result=dataclasses.replace(r.result, model="cnn", score=s)) for r, s in zip(mlp, gain, strict=True)
    ]
    same_gain = summary.compare({"mlp": mlp, "cnn": shifted}, "mlp", "cnn")
    assert same_gain.mean_difference == pytest.approx(0.01) and same_gain.t is None
    assert "t is undefined" in same_gain.notes[0]
    one_fold = summary.compare({"mlp": mlp, "cnn": shifted[:1]}, "mlp", "cnn")
    assert (one_fold.k, one_fold.t, one_fold.p_value) == (1, None, None)


def test_rerun_writes_the_same_summary_and_leaves_no_temp_files(collect: Callable, results_dir: Path) -> None:
    folder = run_dir(results_dir)
    assert collect()[0] == 0
    first = (folder / "summary.json").read_bytes()
    assert collect()[0] == 0
    assert (folder / "summary.json").read_bytes() == first
    assert not [p for p in folder.rglob(".*")], "a temp file was left behind"
    assert oct((folder / "summary.json").stat().st_mode & 0o777) != oct(0o600)  # readable by the group, as umask says


# --- missing and damaged pairs ----------------------------------------------------------------------------------


def test_missing_pair_fails_and_names_it(collect: Callable, results_dir: Path) -> None:
    folder = run_dir(results_dir)
    (folder / "cnn" / "fold-2.json").unlink()
    code, out, err = collect()
    assert code == 1
    assert stderr_lines(err) == [
        "mnist-cv collect: error: 1 of 10 pairs missing (cnn/fold-2; task ids 7): run them, or pass --allow-partial"
    ]
    assert "fold 2 (no result)" in out
    assert not (folder / "summary.json").exists()


def test_allow_partial_summarises_what_exists(collect: Callable, results_dir: Path) -> None:
    folder = run_dir(results_dir)
    (folder / "cnn" / "fold-2.json").unlink()
    code, out, err = collect("--allow-partial")
    assert code == 0, err
    found = read(folder / "summary.json")
    scores = accuracies(folder, "cnn")
    assert found["complete"] is False and (found["n_expected"], found["n_found"]) == (10, 9)
    assert found["missing"] == [{"model": "cnn", "fold": 2, "repeat": 0, "task_id": 7, "reason": "no result"}]
    cnn = found["models"]["cnn"]
    assert (cnn["n"], cnn["missing_folds"], [f["fold"] for f in cnn["folds"]]) == (4, [2], [0, 1, 3, 4])
    assert cnn["mean"] == pytest.approx(statistics.fmean(scores)) and cnn["std"] == pytest.approx(
        statistics.pstdev(scores)
    )
    assert (found["comparison"]["k"], found["comparison"]["folds"]) == (4, [0, 1, 3, 4])
    assert "n=4" in out and "1 of 10 pairs missing" in out


def _corrupt(path: Path) -> None:
    path.write_text("{not json")


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _invalid(path: Path) -> None:
    edit(path, lambda r: r["score"].update(accuracy=1.5))


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (_corrupt, "corrupt or truncated JSON"),
        (_truncate, "corrupt or truncated JSON"),
        (_invalid, "not a valid result"),
    ],
)
def test_unusable_file_is_reported_in_one_line_and_counted_missing(
    collect: Callable, results_dir: Path, damage: Callable[[Path], None], says: str
) -> None:
    path = run_dir(results_dir) / "mlp" / "fold-1.json"
    damage(path)
    code, out, err = collect()
    assert code == 1
    skipped, error = stderr_lines(err)
    assert skipped.startswith(f"skipped {path}: {says}")
    assert error.startswith("mnist-cv collect: error: 1 of 10 pairs missing (mlp/fold-1; task ids 1)")
    assert "fold 1 (unusable)" in out

    code, out, err = collect("--allow-partial")
    assert code == 0 and "Traceback" not in err
    found = read(run_dir(results_dir) / "summary.json")
    assert found["models"]["mlp"]["n"] == 4
    assert found["missing"] == [{"model": "mlp", "fold": 1, "repeat": 0, "task_id": 1, "reason": "unusable"}]
    assert [s["file"] for s in found["skipped"]] == ["mlp/fold-1.json"] and says in found["skipped"][0]["reason"]


def test_a_copy_at_another_pairs_path_is_not_that_pair(collect: Callable, results_dir: Path) -> None:
    folder = run_dir(results_dir)
    shutil.copy(folder / "mlp" / "fold-0.json", folder / "mlp" / "fold-3.json")
    code, _, err = collect()
    assert code == 1
    assert (
        stderr_lines(err)[0]
        == f"skipped {folder / 'mlp' / 'fold-3.json'}: holds mlp/fold-0, not the pair its path names"
    )


def test_a_pairs_checkpoint_is_in_progress_and_temp_files_are_ignored(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = Path(shutil.copytree(FIXTURE, tmp_path / "results"))  # with repeat 1 and its interrupted pair
    shutil.rmtree(run_dir(results) / "final")
    repeat_1 = run_dir(results) / "mlp" / "repeat-1"
    assert (repeat_1 / "fold-2.ckpt").is_dir() and not (repeat_1 / "fold-2.json").exists()
    (repeat_1 / ".fold-3.json.x1y2.tmp").write_text('{"half a fi')
    code, out, err = collector(results, capsys, monkeypatch)("--allow-partial")
    assert (code, err) == (0, "")
    assert "repeat 1 fold 2 (in progress), repeat 1 fold 3 (no result)" in out


def test_no_run_folder(collect: Callable) -> None:
    code, out, err = collect("--run", "nope")
    assert (code, out) == (1, "")
    (line,) = stderr_lines(err)
    assert line.startswith("mnist-cv collect: error: no run folder ") and line.endswith("nope")


# --- results that must not be mixed -----------------------------------------------------------------------------


def _other_seed(result: dict[str, Any]) -> None:
    """What `run --seed 2` would have written (the config id is the hash of the config)."""
    result["config"]["seed"] = 2
    result["config_id"] = Protocol.from_dict(result["config"]).config_id


@pytest.fixture
def mixed_configs(results_dir: Path) -> tuple[Path, str, str]:
    """The run folder with cnn/fold-0 of another seed: (folder, the others' config id, its config id)."""
    folder = run_dir(results_dir)
    edit(folder / "cnn" / "fold-0.json", _other_seed)
    return folder, read(folder / "mlp" / "fold-0.json")["config_id"], read(folder / "cnn" / "fold-0.json")["config_id"]


def test_mixed_configs_are_refused_naming_the_files(collect: Callable, mixed_configs: tuple[Path, str, str]) -> None:
    folder, main_id, other_id = mixed_configs
    code, out, err = collect("--allow-partial")
    assert (code, out) == (1, "")
    rest = ", ".join([*(f"cnn/fold-{k}.json" for k in range(1, 5)), *(f"mlp/fold-{k}.json" for k in range(5))])
    assert stderr_lines(err) == [
        f"mnist-cv collect: error: results of 2 configs are mixed ({other_id}: cnn/fold-0.json; {main_id}: {rest}): "
        "choose one with --config ID"
    ]
    assert not (folder / "summary.json").exists()


def test_config_flag_chooses_one_config(collect: Callable, mixed_configs: tuple[Path, str, str]) -> None:
    folder, main_id, other_id = mixed_configs

    assert collect("--config", main_id)[0] == 1  # cnn/fold-0 of this config is still missing
    code, _, err = collect("--config", main_id, "--allow-partial")
    assert code == 0, err
    found = read(folder / "summary.json")
    assert (found["config_id"], found["models"]["cnn"]["n"], found["models"]["mlp"]["n"]) == (main_id, 4, 5)
    assert found["missing"] == [{"model": "cnn", "fold": 0, "repeat": 0, "task_id": 5, "reason": f"config {other_id}"}]
    assert found["skipped"] == [{"file": "cnn/fold-0.json", "reason": f"config {other_id}"}]

    code, _, err = collect("--config", other_id, "--allow-partial")
    assert code == 0, err
    found = read(folder / "summary.json")
    assert (found["models"]["cnn"]["n"], found["models"]["mlp"]["n"], found["comparison"]["k"]) == (1, 0, 0)
    assert found["figures"][:2] == ["learning-curves-cnn.png", "boxplot.png"]

    code, _, err = collect("--config", "0123456789ab")
    assert code == 1 and stderr_lines(err)[0].startswith("mnist-cv collect: error: no result of config 0123456789ab")
    code, _, err = collect("--config", "seed2")
    assert code == 2 and "not a config id" in err


def test_mixed_data_is_refused_even_with_a_config(collect: Callable, results_dir: Path) -> None:
    folder = run_dir(results_dir)
    edit(folder / "mlp" / "fold-3.json", lambda r: r["data"]["sha256"].update({"train-labels-idx1-ubyte": "0" * 64}))
    config_id = read(folder / "mlp" / "fold-3.json")["config_id"]
    for args in ((), ("--config", config_id, "--allow-partial")):
        code, _, err = collect(*args)
        (line,) = stderr_lines(err)
        assert code == 1 and "come from 2 different datasets" in line and "mlp/fold-3.json)" in line


def test_same_data_from_an_npz_is_the_same_data(collect: Callable, results_dir: Path) -> None:
    folder = run_dir(results_dir)
    edit(folder / "cnn" / "fold-1.json", lambda r: r["data"]["sha256"].update({"mnist.npz": "1" * 64}))
    assert collect()[0] == 0


def test_extra_model_is_summarised_but_never_missing(collect: Callable, results_dir: Path) -> None:
    folder = run_dir(results_dir)
    (folder / "cnn-small").mkdir()
    for fold in (0, 1):
        result = read(folder / "cnn" / f"fold-{fold}.json")
        result.update(model="cnn-small", task_id=None)
        (folder / "cnn-small" / f"fold-{fold}.json").write_text(json.dumps(result))
    code, out, err = collect()
    assert code == 0, err
    found = read(folder / "summary.json")
    assert list(found["models"]) == ["mlp", "cnn", "cnn-small"] and found["complete"] is True
    assert found["models"]["cnn-small"]["n"] == 2
    assert png_size(folder / "learning-curves-cnn-small.png") == (1000, 400)
    assert "cnn-small: Accuracy:" in out


# --- a final model ----------------------------------------------------------------------------------------------


def final_result(results_dir: Path) -> dict[str, Any]:
    return read(run_dir(results_dir) / "final" / "mlp.json")


def test_final_model_is_shown_beside_the_cv_estimate(collect_final: Callable, final_dir: Path) -> None:
    code, out, err = collect_final()
    assert (code, err) == (0, "")
    folder = run_dir(final_dir)
    found, final = read(folder / "summary.json"), final_result(final_dir)
    test = final["test"]
    # The numbers of the final model's file, and the count of mistakes independently from its confusion matrix.
    n_wrong = N_TEST - sum(test["confusion_matrix"][d][d] for d in range(10))
    assert found["models"]["mlp"]["final"] == {
        "file": "final/mlp.json",
        "accuracy": final["score"]["accuracy"],
        "loss": final["score"]["loss"],
        "n_train": LIMIT,
        "n_test": N_TEST,
        "n_misclassified": n_wrong,
        "config_id": found["config_id"],
        "same_config": True,
        "notes": [],
    }
    assert len(test["misclassified"]) == n_wrong and found["models"]["cnn"]["final"] is None
    # The same row in the terminal and in summary.md, the CV estimate beside the test accuracy.
    mlp = found["models"]["mlp"]
    cells = [
        "mlp",
        f"{100 * mlp['mean']:.3f} ± {100 * mlp['std']:.3f}",
        f"{100 * final['score']['accuracy']:.3f}",
        f"{final['score']['loss']:.4f}",
        f"{n_wrong} of {N_TEST}",
        f"{LIMIT} images",
        f"{found['config_id']} (same as CV)",
    ]
    assert f"| {' | '.join(cells)} |" in (folder / "summary.md").read_text()
    row = next(line for line in out.splitlines() if "same as CV" in line)
    assert [cell.strip() for cell in row.strip("│ ").split("│")] == cells
    assert found["figures"][-2:] == ["confusion-mlp.png", "misclassified-mlp.png"]
    assert png_size(folder / "confusion-mlp.png") == (700, 600)
    assert png_size(folder / "misclassified-mlp.png") == (900, 1000)


def test_final_figures_show_the_confusion_matrix_and_the_real_misclassified_digits() -> None:
    final = typed_final(FIXTURE)
    confusion = final.test.confusion_matrix
    (ax, _colorbar) = plots.confusion_matrix("mlp", final).axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted digit", "true digit")
    assert f"test accuracy {100 * final.score.accuracy:.2f}%" in ax.get_title()
    # Count texts at (x = predicted, y = true), as the result's [true][predicted] matrix holds them.
    counts = {(round(t.get_position()[1]), round(t.get_position()[0])): int(t.get_text()) for t in ax.texts}
    assert counts == {(true, pred): confusion[true][pred] for true in range(10) for pred in range(10)}

    x_test = data.load(MINI, custom=True).x_test
    mistakes = final.test.misclassified
    fig = plots.misclassified("mlp", mistakes, x_test)
    drawn = [ax for ax in fig.axes if ax.get_images()]
    most_confident = sorted(mistakes, key=lambda m: -m.probability)[:36]
    assert len(drawn) == 36 == len(fig.axes)
    for ax, mistake in zip(drawn, most_confident, strict=True):
        assert (ax.get_images()[0].get_array() == x_test[mistake.index]).all()
        label, predicted, probability = mistake.label, mistake.predicted, mistake.probability
        assert ax.get_title() == f"true {label} / pred {predicted} ({probability:.2f})"
        assert label != predicted


def _empty_folder(folder: Path) -> Path:
    return folder


def _other_test_images(folder: Path) -> Path:
    """The subset with one test image's pixel changed: the files load, but not as the images the model was scored on."""
    for name in data.MNIST_FILES:
        if name != data.TEST_IMAGES:
            (folder / f"{name}.gz").symlink_to(MINI / f"{name}.gz")
    pixels = bytearray(gzip.decompress((MINI / f"{data.TEST_IMAGES}.gz").read_bytes()))
    pixels[-1] ^= 0xFF
    (folder / data.TEST_IMAGES).write_bytes(pixels)
    return folder


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (_empty_folder, "no MNIST files there"),
        (_other_test_images, "are not those the model was scored on"),
    ],
)
def test_grid_is_left_out_with_a_note_when_the_test_images_are_not_at_hand(
    collect_final: Callable,
    final_dir: Path,
    tmp_path: Path,
    make: Callable[[Path], Path],
    says: str,
) -> None:
    folder = run_dir(final_dir)
    assert collect_final()[0] == 0 and (folder / "misclassified-mlp.png").exists()
    (tmp_path / "data").mkdir()
    code, out, err = collect_final("--data-dir", str(make(tmp_path / "data")))
    assert (code, err) == (0, "")
    found = read(folder / "summary.json")
    (note,) = found["models"]["mlp"]["final"]["notes"]
    assert note.startswith("no misclassified-mlp.png: ") and says in note and "\n" not in note
    assert f"mlp final: {note}" in out and f"- mlp final: {note}" in (folder / "summary.md").read_text()
    # The confusion matrix is still drawn; the grid of the earlier collect is gone, not left to mislead.
    assert found["figures"][-1] == "confusion-mlp.png" and png_size(folder / "confusion-mlp.png") == (700, 600)
    assert not (folder / "misclassified-mlp.png").exists()


def test_final_model_of_another_config_is_shown_and_said(collect_final: Callable, final_dir: Path) -> None:
    path = run_dir(final_dir) / "final" / "mlp.json"
    edit(path, _other_seed)
    other = read(path)["config_id"]
    code, out, err = collect_final()
    assert (code, err) == (0, "")
    found = read(run_dir(final_dir) / "summary.json")
    final = found["models"]["mlp"]["final"]
    assert (final["config_id"], final["same_config"]) == (other, False)
    says = f"config {other} is not the cross-validation's {found['config_id']}: CV did not estimate it"
    assert final["notes"] == [says]
    assert f"{other} (not CV's {found['config_id']})" in out and f"mlp final: {final['notes'][0]}" in out


def _other_model_file(folder: Path) -> None:
    (folder / "mlp.keras").write_bytes(b"not the model")


def _index_beyond_the_test_set(folder: Path) -> None:
    edit(folder / "mlp.json", lambda r: r["test"]["misclassified"][0].update(index=N_TEST))


def _no_confusion_matrix(folder: Path) -> None:
    edit(folder / "mlp.json", lambda r: r["test"].pop("confusion_matrix"))


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (_other_model_file, "mlp.keras: not the file mlp.json names (sha256 differs)"),
        (_index_beyond_the_test_set, f"mlp.json: a misclassified index beyond its {N_TEST} test images"),
        (_no_confusion_matrix, "mlp.json: not a valid final (test: 'confusion_matrix' is a required property)"),
    ],
)
def test_unusable_final_result_is_skipped_in_one_line(
    collect_final: Callable, final_dir: Path, damage: Callable[[Path], None], says: str
) -> None:
    folder = run_dir(final_dir)
    damage(folder / "final")
    code, out, err = collect_final()
    assert code == 0
    (line,) = stderr_lines(err)
    assert line.startswith("skipped ") and line.endswith(says)
    found = read(folder / "summary.json")
    assert found["models"]["mlp"]["final"] is None and "Final models" not in out
    assert [s["file"] for s in found["skipped"]] == ["final/mlp.json"]
    assert not any(name.startswith(("confusion", "misclassified")) for name in found["figures"])


# --- non-finite numbers never reach the summary; the outputs are written as one unit ----------


def _refuse(constant: str) -> None:
    raise AssertionError(f"{constant} in the summary")


SCORE, HISTORY, TIMING = '"score": {\n  "accuracy": ', '"val_loss": [\n   ', '"fit_seconds": '


# The constants are refused by the parser wherever they stand, and a number too big for a float (1e999) by the
# parser's float hook: each spelling once, 1e999 in every kind of place, and every place at least once.
@pytest.mark.parametrize(
    ("where", "literal"),
    [(SCORE, "NaN"), (HISTORY, "Infinity"), (TIMING, "-Infinity"), (SCORE, "1e999"), (HISTORY, "1e999"),
     (TIMING, "1e999")],
)  # fmt: skip
def test_a_result_with_a_non_finite_number_is_skipped_in_one_line(
    collect: Callable, results_dir: Path, literal: str, where: str
) -> None:
    path = run_dir(results_dir) / "cnn" / "fold-2.json"
    text = path.read_text()
    start = text.index(where) + len(where)
    end = min(text.index(c, start) for c in ",\n}" if c in text[start:])
    path.write_text(text[:start] + literal + text[end:])
    json.loads(path.read_text())  # still JSON to Python's lenient parser: the number is what is wrong, not the syntax
    code, out, err = collect("--allow-partial", "--json")
    assert code == 0, err
    (line,) = stderr_lines(err)
    assert line.startswith(f"skipped {path}: ")
    found = json.loads(out, parse_constant=_refuse)  # valid JSON, which Python's json.loads does not insist on
    assert found["missing"] == [{"model": "cnn", "fold": 2, "repeat": 0, "task_id": 7, "reason": "unusable"}]
    assert found == read(run_dir(results_dir) / "summary.json")


def test_a_failure_while_publishing_never_leaves_new_figures_beside_an_old_summary(
    collect: Callable, results_dir: Path
) -> None:
    folder = run_dir(results_dir)
    assert collect()[0] == 0
    old = {name: (folder / name).read_bytes() for name in ("learning-curves-mlp.png", "summary.md")}
    # A real fault at the last step: the box plot's place is taken by a folder, so its rename fails.
    (folder / "boxplot.png").unlink()
    (folder / "boxplot.png").mkdir()
    code, _, err = collect()
    assert code == 1
    (line,) = stderr_lines(err)
    assert line.startswith("mnist-cv collect: error: ") and "boxplot.png" in line
    assert not (folder / "summary.json").exists(), "a summary.json beside figures it does not describe"
    assert (folder / "summary.md").read_bytes() == old["summary.md"]
    assert not [p for p in folder.rglob(".*")], "a temp file was left behind"
    (folder / "boxplot.png").rmdir()
    assert collect()[0] == 0 and (folder / "summary.json").exists()


@pytest.mark.parametrize("json_out", [False, True], ids=["table", "json"])
def test_a_reader_that_leaves_early_is_not_a_failure(json_out: bool, results_dir: Path) -> None:
    """`mnist-cv collect | head -1`: rich's own handling of the broken pipe was a silent exit 1."""
    json_flag = ["--json"] if json_out else []
    assert cli_without_reader("collect", "--results", str(results_dir), *json_flag) == (0, "")
