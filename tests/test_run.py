"""`python -m job run` end to end on real MNIST subsets: the result JSON, skip/--force, determinism, bad input."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import cli, last_line

from job.protocol import Pair, Protocol
from job.results import store as results
from job.results.contract import PairResult
from job.results.layout import RunLayout

QUICK = ("--epochs", "2", "--limit", "2000")


@pytest.fixture(scope="module")
def mlp_run(mnist_full: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One real mlp pair (2 epochs on 2,000 images), shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("results")
    done = cli("run", "--model", "mlp", "--fold", "1", *QUICK, "--data-dir", str(mnist_full), "--results", str(out))
    assert done.returncode == 0, done.stderr
    path = RunLayout(out, "default").pair_paths(Pair("mlp", 1)).result
    return out, json.loads(path.read_text())


def test_a_pair_writes_a_valid_result(mlp_run: tuple[Path, dict], mnist_full: Path) -> None:
    out, result = mlp_run
    PairResult.from_json(result)
    assert (result["model"], result["fold"], result["task_id"]) == ("mlp", 1, 1)
    assert result["config"]["epochs"] == 2 and result["config"]["limit"] == 2000
    assert all(len(values) == 2 for values in result["history"].values())
    assert result["score"]["accuracy"] == pytest.approx(result["history"]["val_accuracy"][-1], abs=1e-6)
    assert 0.6 < result["score"]["accuracy"] <= 1.0  # 2 epochs on 1,600 images: well above chance
    assert (result["data"]["n_train"], result["data"]["n_val"]) == (1600, 400)
    assert result["data"]["name"] == "mnist" and result["data"]["source"] == str(mnist_full)
    env = result["environment"]
    assert env["packages"]["tensorflow"] and env["device_used"].startswith("CPU")
    assert env["threads"]["intra_op"] >= 1 and env["slurm"] is None
    assert not list((out / "default" / "mlp").glob(".*.tmp")), "a temp file was left behind"
    assert not (out / "default" / "mlp" / "fold-1.ckpt").exists(), "the checkpoint outlived the result"


def test_a_done_pair_is_skipped_and_force_retrains_identically(mlp_run: tuple[Path, dict], mnist_full: Path) -> None:
    out, first = mlp_run
    path = RunLayout(out, "default").pair_paths(Pair("mlp", 1)).result
    before = path.read_bytes()
    skipped = cli("run", "--task-id", "1", *QUICK, "--data-dir", str(mnist_full), "--results", str(out))
    assert skipped.returncode == 0 and "already done" in skipped.stdout
    assert path.read_bytes() == before

    forced = cli("run", "--task-id", "1", *QUICK, "--data-dir", str(mnist_full), "--results", str(out), "--force")
    assert forced.returncode == 0, forced.stderr
    again = json.loads(path.read_text())
    # Same seeds, same folds, op determinism: a rerun on the CPU gives identical numbers.
    assert again["history"] == first["history"] and again["score"] == first["score"]


def test_the_task_id_comes_from_slurm_when_not_given(mnist_mini: Path, tmp_path: Path) -> None:
    done = cli(
        "run", "--epochs", "1", "--limit", "100", "--data-dir", str(mnist_mini), "--custom-data",
        "--results", str(tmp_path), env={"SLURM_ARRAY_TASK_ID": "7"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = results.read_result(RunLayout(tmp_path, "default").pair_paths(Pair("cnn", 2)).result)
    assert result["task_id"] == 7 and result["model"] == "cnn"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "resnet", "--fold", "0"], "unknown model 'resnet'"),
        (["--model", "mlp", "--fold", "5"], "argument --fold: must be 0 to 4, got 5"),
        (["--task-id", "10", "--repeats", "1"], "task id 10 is outside 0-9"),
        (["--task-id", "1", "--model", "mlp", "--fold", "1"], "either --task-id or --model"),
        (["--model", "mlp"], "--model needs --fold"),
        ([], "no pair given"),
        (["--task-id", "x"], "'x' is not a task id"),
        (["--task-id", "1", "--epochs", "0"], "argument --epochs: must be 1 to 100000, got 0"),
    ],
)
def test_usage_errors_are_one_line_exit_2(args: list[str], message: str, mlp_run: tuple[Path, dict]) -> None:
    out, _ = mlp_run
    before = RunLayout(out, "default").pair_paths(Pair("mlp", 1)).result.read_bytes()
    done = cli("run", *args, "--results", str(out), env={"SLURM_ARRAY_TASK_ID": ""} if not args else None)
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert RunLayout(out, "default").pair_paths(Pair("mlp", 1)).result.read_bytes() == before


def _corrupt_copy(mnist_full: Path, folder: Path) -> Path:
    shutil.copytree(mnist_full, folder)
    labels = folder / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-100])
    return folder


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing data", "no such file or folder"),
        ("truncated data", "train-labels-idx1-ubyte.gz: truncated"),
        pytest.param("altered data", "sha256 mismatch", marks=pytest.mark.slow),  # gzips 47 MB: ~15 s
        ("unwritable results", "cannot write to"),
    ],
)
def test_runtime_errors_are_one_line_exit_1(case: str, message: str, mnist_full: Path, tmp_path: Path) -> None:
    data_dir, out = mnist_full, tmp_path / "results"
    if case == "missing data":
        data_dir = tmp_path / "nowhere"
    elif case == "truncated data":
        data_dir = _corrupt_copy(mnist_full, tmp_path / "data")
    elif case == "altered data":
        data_dir = tmp_path / "data"
        shutil.copytree(mnist_full, data_dir)
        images = data_dir / "train-images-idx3-ubyte.gz"
        content = bytearray(gzip.decompress(images.read_bytes()))
        content[-1] ^= 0x01  # one pixel of the last image, one grey level off
        images.write_bytes(gzip.compress(bytes(content), compresslevel=1))  # the sha256 is of the inflated bytes
    else:
        out.write_text("a file where the results folder should be")
    done = cli("run", "--task-id", "0", *QUICK, "--data-dir", str(data_dir), "--results", str(out))
    assert done.returncode == 1, done.stderr
    assert message in last_line(done.stderr) and "Traceback" not in done.stderr, done.stderr


def test_a_result_of_another_config_is_never_overwritten(mlp_run: tuple[Path, dict], mnist_full: Path) -> None:
    out, _ = mlp_run
    path = RunLayout(out, "default").pair_paths(Pair("mlp", 1)).result
    before = path.read_bytes()
    done = cli("run", "--task-id", "1", "--epochs", "1", "--limit", "2000", "--data-dir", str(mnist_full),
               "--results", str(out))  # fmt: skip
    # Refused before anything is read or trained: the run's manifest says --epochs 2.
    assert done.returncode == 2 and last_line(done.stderr) == (
        "mnist-cv run: error: run default is --epochs 2 --limit 2000; you gave --epochs 1: one run holds one config, "
        "use another --run"
    )
    assert path.read_bytes() == before


@pytest.mark.slow
def test_a_torn_result_is_redone(mnist_mini: Path, tmp_path: Path) -> None:
    path = RunLayout(tmp_path, "default").pair_paths(Pair("mlp", 0)).result
    path.parent.mkdir(parents=True)
    path.write_text('{"schema_version": 1, "model": "ml')
    done = cli("run", "--task-id", "0", "--epochs", "1", "--limit", "100", "--data-dir", str(mnist_mini),
               "--custom-data", "--results", str(tmp_path))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert results.read_result(path)["model"] == "mlp"


def test_pairs_lists_done_and_missing(mlp_run: tuple[Path, dict]) -> None:
    out, _ = mlp_run
    listing = cli("pairs", *QUICK, "--results", str(out))
    assert listing.returncode == 0 and "1/10 done" in listing.stdout
    missing = cli("pairs", *QUICK, "--results", str(out), "--missing")
    assert missing.stdout.strip() == "0,2-9"


# --- a stop is decided by the stop flag, not by counting optimizer steps ------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("model", "batch_size", "limit"), [("mlp", 1, 500), ("mlp", 3, 500), ("cnn", 1, 100)])
def test_mixed_precision_with_skipped_steps_finishes_with_a_result(
    model: str, batch_size: int, limit: int, mnist_full: Path, tmp_path: Path
) -> None:
    """fp16 overflows early in a run make the LossScaleOptimizer skip steps; no signal came, so no stop."""
    done = cli(
        "run", "--model", model, "--fold", "0", "--mixed-precision", "--batch-size", str(batch_size),
        "--limit", str(limit), "--epochs", "1", "--data-dir", str(mnist_full), "--results", str(tmp_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = results.read_result(RunLayout(tmp_path, "default").pair_paths(Pair(model, 0)).result)
    assert result["config"]["precision"] == "mixed_float16" and result["resume"]["count"] == 0


# --- a diverged training stops at that epoch with one line, its checkpoint kept --------------

DIVERGE = ("--epochs", "2", "--limit", "200")
# Writes, for each FOLDER MODEL HOW of its arguments, a real checkpoint after epoch 1 of DIVERGE's config whose weights
# were set to non-finite numbers.
_POISONED_CHECKPOINTS = """
import sys
import numpy as np
from job.pair import models, runtime
from job import folds
from job.pair.checkpoint import Checkpoint, TrainState
from job.pair.train import checkpoint_owner
from job.protocol import Pair, Protocol

protocol = Protocol(epochs=2, limit=200)
train_ix, held_out_ix = folds.split(200, 0, protocol)
runtime.configure(deterministic=True, precision="float32", allow_cpu=True)
args = sys.argv[1:]
for folder, name, how in zip(args[::3], args[1::3], args[2::3]):
    model = models.build(name, steps_per_execution=50)
    model.optimizer.build(model.trainable_variables)
    weights = model.get_weights()
    if how == "nan everywhere":
        weights = [np.full_like(w, np.nan) for w in weights]
    elif how == "inf in the output bias":
        weights[-1] = np.full_like(weights[-1], np.inf)
    else:  # nan in the output bias
        weights[-1] = np.full_like(weights[-1], np.nan)
    model.set_weights(weights)
    history = {"loss": [0.9], "accuracy": [0.7], "val_loss": [0.8], "val_accuracy": [0.75]}
    owner = checkpoint_owner(name, Pair(name, 0).stream(protocol.n_folds), train_ix, held_out_ix)
    state = TrainState(protocol.config_id, 1, history, [1.0], [], "2026-01-01T00:00:00+00:00", owner=owner)
    Checkpoint(folder).save(model, state)
"""
DIVERGED = [("mlp", "nan everywhere"), ("mlp", "inf in the output bias"), ("cnn", "nan in the output bias")]


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """The checkpoint of each case of DIVERGED, all written by one process; each test copies its own."""
    folder = tmp_path_factory.mktemp("poisoned")
    made = {case: folder / f"{index}.ckpt" for index, case in enumerate(DIVERGED)}
    args = [str(arg) for (model, how), path in made.items() for arg in (path, model, how)]
    done = subprocess.run([sys.executable, "-c", _POISONED_CHECKPOINTS, *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return made


@pytest.mark.slow
@pytest.mark.parametrize(("model", "how"), DIVERGED)
def test_a_diverged_training_stops_with_one_line_and_keeps_its_checkpoint(
    model: str, how: str, poisoned: dict[tuple[str, str], Path], mnist_full: Path, tmp_path: Path
) -> None:
    checkpoint = RunLayout(tmp_path, "default").pair_paths(Pair(model, 0)).checkpoint
    shutil.copytree(poisoned[model, how], checkpoint)
    state_before = json.loads((checkpoint / "state.json").read_text())

    done = cli(
        "run", "--model", model, "--fold", "0", *DIVERGE, "--data-dir", str(mnist_full), "--results", str(tmp_path)
    )
    assert done.returncode == 1, done.stderr
    line = last_line(done.stderr)
    assert line.startswith("mnist-cv run: error: training diverged in epoch 2 (loss nan"), done.stderr
    assert f"the checkpoint after epoch 1 in {checkpoint} holds the history before it" in line
    assert "Traceback" not in done.stderr
    assert not RunLayout(tmp_path, "default").pair_paths(Pair(model, 0)).result.exists()
    assert json.loads((checkpoint / "state.json").read_text()) == state_before  # kept for a look, not overwritten


# --- run names are names, not paths ----------------------------------------------------------

BAD_RUN_NAMES = ["../escape", "a/b", "/tmp/absolute", "", "..", "tab\there", ".hidden"]
# Every command checks its run name through the one RunLayout: each kind of bad name with `run`, and with the other
# commands a path and an empty name (which a command could take for "unset").
CASES = [(["run", "--task-id", "0"], name) for name in BAD_RUN_NAMES] + [
    (command, name) for command in (["final", "--model", "mlp"], ["pairs"], ["collect"]) for name in ("../escape", "")
]


@pytest.mark.parametrize(("command", "name"), CASES)
def test_a_run_name_that_is_not_a_plain_name_is_a_usage_error(command: list[str], name: str, tmp_path: Path) -> None:
    results_dir = tmp_path / "results"
    (results_dir / "default").mkdir(parents=True)
    done = cli(*command, "--results", str(results_dir), "--run", name)
    assert done.returncode == 2, done.stderr
    assert "run name must be a plain name" in last_line(done.stderr) and "Traceback" not in done.stderr
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert written == [Path("results"), Path("results/default")]


# --- --limit beyond the data: one training, one config id --------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("command", [["run", "--task-id", "0"], ["final", "--model", "mlp"]])
@pytest.mark.parametrize("limit", [60_001, 10**9])
def test_a_limit_beyond_the_data_is_refused_naming_its_size(
    command: list[str], limit: int, mnist_full: Path, tmp_path: Path
) -> None:
    done = cli(
        *command, "--limit", str(limit), "--epochs", "1", "--data-dir", str(mnist_full), "--results", str(tmp_path)
    )
    assert done.returncode == 2, done.stderr
    assert last_line(done.stderr).endswith(f"--limit {limit} is beyond the 60000 training images of {mnist_full}")
    assert not list(tmp_path.rglob("*.json"))


# --- a result that is not what its path claims is not done, for run and pairs alike ----------


@pytest.mark.slow
def test_a_misplaced_or_edited_result_is_redone_by_run_and_not_done_for_pairs(
    mlp_run: tuple[Path, dict], mnist_full: Path, tmp_path: Path
) -> None:
    out = Path(shutil.copytree(mlp_run[0], tmp_path / "results"))
    fold1 = RunLayout(out, "default").pair_paths(Pair("mlp", 1)).result
    shutil.copy(fold1, RunLayout(out, "default").pair_paths(Pair("mlp", 2)).result)  # a copy under another fold's name
    edited = json.loads(fold1.read_text())
    edited["score"]["accuracy"] = min(1.0, edited["score"]["accuracy"] + 0.05)  # a score edited by hand
    fold1.write_text(json.dumps(edited))
    listing = cli("pairs", *QUICK, "--results", str(out), "--missing")
    assert listing.returncode == 0 and listing.stdout.strip() == "0-9", listing.stderr
    for task in ("1", "2"):
        done = cli("run", "--task-id", task, *QUICK, "--data-dir", str(mnist_full), "--results", str(out))
        assert done.returncode == 0 and "already done" not in done.stdout, done.stderr
    assert cli("pairs", *QUICK, "--results", str(out), "--missing").stdout.strip() == "0,3-9"
    assert Protocol(epochs=2, limit=2000).config_id == mlp_run[1]["config_id"]


@pytest.mark.slow
def test_final_shares_runs_skeleton_and_keeps_its_checkpoint_when_asked(mnist_full: Path, tmp_path: Path) -> None:
    args = ("final", "--model", "mlp", "--epochs", "1", "--limit", "100", "--data-dir", str(mnist_full))
    done = cli(*args, "--results", str(tmp_path), "--keep-checkpoint")
    assert done.returncode == 0, done.stderr
    final = tmp_path / "default" / "final"
    assert (final / "mlp.ckpt" / "state.json").is_file() and (final / "mlp.json").is_file()
    again = cli(*args, "--results", str(tmp_path))
    assert again.returncode == 0 and "already done" in last_line(again.stdout)
