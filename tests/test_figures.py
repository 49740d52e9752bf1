"""collect's figures per model: fold accuracy against the tutorial's published folds, and seconds per epoch with the
first epoch after a resume marked; drawn from real pairs, one of them stopped by SIGTERM after a checkpoint and run
again (a real resume)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from support import ROOT, cli, wait_for

from job.analysis import figures, reference
from job.protocol import Pair
from job.results import store
from job.results.contract import PairResult
from job.results.layout import RunLayout

pytestmark = pytest.mark.slow  # three real pairs, one of them twice: about half a minute

PROTOCOL = ("--epochs", "12", "--limit", "2000")  # a tenth of a second an epoch: time to stop one mid-run
RESUMED = 2  # the fold stopped and resumed
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_args(results: Path, data: Path, fold: int) -> list[str]:
    pair = ["--model", "mlp", "--fold", str(fold)]
    return ["run", *pair, *PROTOCOL, "--data-dir", str(data), "--custom-data", "--results", str(results)]


@pytest.fixture(scope="module")
def real_run(mnist_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RESULTS with mlp folds 0-2; fold 2 was stopped by SIGTERM after its second epoch's checkpoint, then rerun."""
    results = tmp_path_factory.mktemp("figures")
    for fold in (0, 1):
        done = cli(*run_args(results, mnist_mini, fold))
        assert done.returncode == 0, done.stderr[-2000:]
    state = RunLayout(results, "default").pair_paths(Pair("mlp", RESUMED)).checkpoint / "state.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(
        [sys.executable, "-m", "job", *run_args(results, mnist_mini, RESUMED)], env=env, stderr=subprocess.DEVNULL
    )

    def two_epochs() -> bool:
        try:
            return json.loads(state.read_text())["epochs_done"] >= 2
        except (OSError, ValueError):
            return False  # not written yet, or being replaced

    wait_for("the second checkpoint", two_epochs, timeout=120)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 3  # stopped by a signal, its checkpoint kept
    time.sleep(0.1)
    again = cli(*run_args(results, mnist_mini, RESUMED))
    assert again.returncode == 0, again.stderr[-2000:]
    return results


def results_of(results: Path) -> list[PairResult]:
    return [record.result for record in store.scan(RunLayout(results, "default")).records]


def test_collect_draws_both_figures_and_lists_them(real_run: Path, tmp_path: Path) -> None:
    results = Path(shutil.copytree(real_run, tmp_path / "results"))
    done = cli("collect", "--results", str(results), "--allow-partial")
    assert done.returncode == 0, done.stderr
    folder = results / "default"
    listed = json.loads((folder / "summary.json").read_text())["figures"]
    for name in ("fold-accuracy-mlp.png", "epoch-seconds-mlp.png"):
        assert name in listed and f"![{name}]({name})" in (folder / "summary.md").read_text()
        png = (folder / name).read_bytes()
        assert png.startswith(PNG_SIGNATURE)
        width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        assert (width, height) == (800, 450)
    assert not list(folder.glob("*-cnn.png"))  # no cnn pair: no cnn figure


def _lines(fig: Figure) -> dict[str, Line2D]:
    """Each labelled line or marker series of the figure's one axis, by label."""
    (ax,) = fig.axes
    return {line.get_label(): line for line in ax.get_lines()}


def _y(line: Line2D) -> list[float]:
    return [float(v) for v in line.get_ydata()]


def test_the_fold_accuracy_figure_puts_this_run_beside_the_published_folds_and_band(real_run: Path) -> None:
    found = results_of(real_run)
    fig = figures.fold_accuracy("mlp", found)
    series = _lines(fig)
    ours = next(v for k, v in series.items() if k.startswith("this run (12 epochs, limit 2000)"))
    assert _y(ours) == [100 * r.score.accuracy for r in sorted(found, key=lambda r: r.fold)]
    published = reference.PUBLISHED["mlp"]
    theirs = next(v for k, v in series.items() if k.startswith(reference.SOURCE))
    assert tuple(_y(theirs)) == published.folds == (97.408, 97.308, 97.450, 97.858, 97.417)
    assert f"its mean {np.mean(published.folds):.3f}%" == "its mean 97.488%" and "its mean 97.488%" in series
    (band,) = fig.axes[0].patches
    low, high = band.get_path().get_extents(band.get_transform() - fig.axes[0].transData).intervaly
    assert (round(low, 6), round(high, 6)) == published.band
    unknown = figures.fold_accuracy("other", found)  # a model the tutorial does not have: the run alone
    assert not unknown.axes[0].patches and "no published numbers" in unknown.axes[0].get_title()


def test_the_epoch_seconds_figure_marks_the_first_epoch_after_the_resume(real_run: Path) -> None:
    found = {r.fold: r for r in results_of(real_run)}
    resumed = found[RESUMED]
    assert resumed.resume.count == 1 and len(resumed.resume.from_epochs) == 1
    series = _lines(figures.epoch_seconds("mlp", list(found.values())))
    for fold, result in found.items():
        label = next(k for k in series if k.startswith(f"fold {fold} on "))
        assert _y(series[label]) == list(result.timings.epoch_seconds)
        assert ("resumed 1x" in label) == (fold == RESUMED)
    circle = series["first epoch after a resume"]
    after = resumed.resume.from_epochs[0] + 1  # the epoch the second process trained first
    assert list(circle.get_xdata()) == [after] and _y(circle) == [resumed.timings.epoch_seconds[after - 1]]
    assert to_rgba(circle.get_markeredgecolor()) == to_rgba(figures.RESUME_COLOR)
