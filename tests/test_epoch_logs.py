"""Per-epoch logs with real processes: a pair killed with kill -9 after epoch 3 and resumed has a CSV and
TensorBoard logs holding exactly its 5 epochs, in order, each once, equal to its result's history, and the
HParams view shows its config; and the resumed result's resources are summed over both processes.

The logs are read back as a user's tools read them: the CSV with the csv module, the TensorBoard logs with
TensorBoard's own event multiplexer and hparams plugin (tests/support/tensorboard_logs.py), from the run folder, as
`tensorboard --logdir RESULTS/RUN` reads them.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support import cli, steps_per_epoch
from support.tensorboard_logs import assert_runs_hold_the_history, config_hparams, read

from job.protocol import Pair
from job.results import store
from job.results.layout import RunLayout

pytestmark = pytest.mark.slow

EPOCHS = 5
KILL_AFTER = 3
PAIR = Pair("mlp", 0)
STEPS_PER_EPOCH = steps_per_epoch(1000, PAIR.fold)
CONFIG = ("--model", PAIR.model, "--fold", str(PAIR.fold), "--epochs", str(EPOCHS), "--limit", "1000", "--custom-data")
# TensorBoard's runs as Keras's TensorBoard callback names them, each tag with the result's curve it holds.
RUNS = {
    "mlp/fold-0/train": {"epoch_loss": "loss", "epoch_accuracy": "accuracy", "epoch_seconds": "epoch_seconds"},
    "mlp/fold-0/validation": {"epoch_loss": "val_loss", "epoch_accuracy": "val_accuracy"},
}


def start(results: Path, data: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "job", "run", *CONFIG, *extra, "--data-dir", str(data), "--results", str(results)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def saved_state(layout: RunLayout) -> dict[str, Any] | None:
    try:
        return json.loads((layout.pair_paths(PAIR).checkpoint / "state.json").read_text())
    except (OSError, ValueError):
        return None  # not saved yet, or replaced while read


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def resumed(mnist_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The pair killed with SIGKILL at the first step of epoch 4, its logs damaged as a kill can leave them, resumed."""
    results = tmp_path_factory.mktemp("results")
    layout = RunLayout(results, "default")
    log = results / "run.log"
    first = start(results, mnist_mini, log, "--kill-at-step", str(KILL_AFTER * STEPS_PER_EPOCH + 1))
    assert first.wait(timeout=600) == -9, log.read_text()
    killed = saved_state(layout)
    assert killed is not None and killed["epochs_done"] == KILL_AFTER
    assert not layout.pair_paths(PAIR).result.exists()

    # What a kill can leave besides: a torn last line, and the event files of a process before.
    csv_path, train_run = layout.pair_paths(PAIR).csv, layout.pair_paths(PAIR).tensorboard / "train"
    with open(csv_path, "a") as f:
        f.write("4,0.1,0.9")
    (event_file,) = train_run.iterdir()
    shutil.copy(event_file, train_run / "events.out.tfevents.1.earlier.1.v2")

    second = start(results, mnist_mini, log)
    assert second.wait(timeout=600) == 0, log.read_text()
    result = store.read_result(layout.pair_paths(PAIR).result)
    return {"layout": layout, "killed": killed, "result": result, "log": log, "tensorboard": read(layout.folder)}


def test_the_killed_pair_resumed_after_epoch_3(resumed: dict[str, Any]) -> None:
    assert resumed["result"]["resume"] == {"count": 1, "from_epochs": [KILL_AFTER]}
    assert f"resuming from the checkpoint after epoch {KILL_AFTER}" in resumed["log"].read_text()


def test_its_csv_holds_each_epoch_once_in_order_as_the_result_says(resumed: dict[str, Any]) -> None:
    result, rows = resumed["result"], csv_rows(resumed["layout"].pair_paths(PAIR).csv)
    assert [int(row["epoch"]) for row in rows] == list(range(1, EPOCHS + 1))
    for key, values in result["history"].items():
        assert [float(row[key]) for row in rows] == values  # the same floats, to the last bit
    assert [float(row["epoch_seconds"]) for row in rows] == result["timings"]["epoch_seconds"]


def test_its_tensorboard_runs_hold_each_epoch_once_in_order_as_the_result_says(resumed: dict[str, Any]) -> None:
    """Keras's layout: one run for training and one for the held-out fold, the same tags, step = the epoch's index."""
    folder = resumed["layout"].pair_paths(PAIR).tensorboard
    # One event file a folder: the stale one is gone (TensorBoard's loader may drop repeated steps, not show them).
    files = sorted(str(p.relative_to(folder).parent) for p in folder.rglob("*") if p.is_file())
    assert files == [".", "train", "validation"]
    # The result's history, which the CSV holds to the last bit (above), all EPOCHS of it.
    assert len(resumed["result"]["history"]["loss"]) == EPOCHS
    assert_runs_hold_the_history(resumed["tensorboard"]["scalars"], RUNS, resumed["result"])


def test_the_hparams_view_shows_the_pairs_config_and_its_held_out_score(resumed: dict[str, Any]) -> None:
    result, view = resumed["result"], resumed["tensorboard"]
    assert list(view["sessions"]) == ["mlp/fold-0"]  # the folder holding the pair's two runs
    session = view["sessions"]["mlp/fold-0"]
    assert session["hparams"] == {"model": "mlp", "fold": 0, "repeat": 0, **config_hparams(result)}
    assert session["metrics"]["validation/epoch_accuracy"] == pytest.approx(result["score"]["accuracy"], rel=1e-6)
    assert session["metrics"]["validation/epoch_loss"] == pytest.approx(result["score"]["loss"], rel=1e-6)
    metrics = {(m["name"]["group"], m["name"]["tag"]) for m in view["experiment"]["metricInfos"]}
    assert {("validation", "epoch_accuracy"), ("validation", "epoch_loss")} <= metrics
    assert {info["name"] for info in view["experiment"]["hparamInfos"]} == set(session["hparams"])


def test_the_logs_are_not_results_and_stay_after_the_result(resumed: dict[str, Any]) -> None:
    layout = resumed["layout"]
    assert layout.pair_results() == [layout.pair_paths(PAIR).result]
    assert (
        layout.pair_of(layout.pair_paths(PAIR).csv) is None
        and layout.pair_of(layout.pair_paths(PAIR).tensorboard) is None
    )
    assert not layout.pair_paths(PAIR).checkpoint.exists()


def test_the_resumed_results_resources_are_summed_over_both_processes(resumed: dict[str, Any]) -> None:
    resources, killed = resumed["result"]["resources"], resumed["killed"]["spent"]
    assert killed["wall_seconds"] > 0 and killed["cpu_seconds"] > 0 and killed["peak_rss_bytes"] > 100e6
    # The second process's wall time includes its own start-up.
    assert resources["wall_seconds"] - killed["wall_seconds"] >= resources["startup_seconds"] > 0
    assert resources["cpu_seconds"] > killed["cpu_seconds"]
    assert resources["peak_rss_bytes"] >= killed["peak_rss_bytes"]
    assert resources["wall_seconds"] >= resumed["result"]["timings"]["fit_seconds"]
    assert resources["cpu_count"] == len(os.sched_getaffinity(0)) and resources["gpu"] is None


def test_a_fresh_start_empties_the_logs_of_an_earlier_training(
    resumed: dict[str, Any], mnist_mini: Path, tmp_path: Path
) -> None:
    """--force retrains from scratch: the logs restart with it, they do not continue the old history."""
    layout = resumed["layout"]
    shutil.copytree(layout.folder, tmp_path / "default")
    # Its logs and checkpoint stay; its result and the run's manifest go, so that a cheaper config may train there.
    (tmp_path / "default" / "run.json").unlink(missing_ok=True)
    RunLayout(tmp_path, "default").pair_paths(PAIR).result.unlink()
    args = [*CONFIG[:4], "--epochs", "1", "--limit", "100", "--custom-data", "--force"]
    done = cli("run", *args, "--data-dir", str(mnist_mini), "--results", str(tmp_path))
    assert done.returncode == 0, done.stderr
    fresh = RunLayout(tmp_path, "default")
    assert [row["epoch"] for row in csv_rows(fresh.pair_paths(PAIR).csv)] == ["1"]
    scalars = read(fresh.folder)["scalars"]
    assert [step for step, _ in scalars["mlp/fold-0/train"]["epoch_loss"]] == [0]
    assert [step for step, _ in scalars["mlp/fold-0/validation"]["epoch_loss"]] == [0]


def test_without_the_tensorboard_package_the_scalars_are_written_and_the_missing_hparams_said_once(
    mnist_mini: Path, tmp_path: Path
) -> None:
    # The package hidden from the job's process: as a plain `pip install mnist-cv` leaves it.
    hidden = "import sys; sys.modules['tensorboard'] = None; from job.cli import main; sys.exit(main(sys.argv[1:]))"
    args = ("run", "--task-ids", "0-1", "--epochs", "2", "--limit", "500", "--custom-data")
    done = subprocess.run(
        [sys.executable, "-c", hidden, *args, "--data-dir", str(mnist_mini), "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("TensorBoard's HParams data not written: the tensorboard package is not installed") == 1
    layout = RunLayout(tmp_path, "default")
    for fold in (0, 1):
        logs = layout.pair_paths(Pair("mlp", fold)).tensorboard
        assert sorted(p.name for p in logs.iterdir()) == ["train", "validation"]  # no hparams session file
        assert [len(list((logs / run).glob("events.out.tfevents.*"))) for run in ("train", "validation")] == [1, 1]
