"""`python -m job run` end to end on real MNIST subsets: the result JSON, skip/--force, determinism, bad input."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
from support import cli, last_line

from job.pair.protocol import Pair
from job.results import store as results

QUICK = ("--epochs", "2", "--limit", "2000")


@pytest.fixture(scope="module")
def mlp_run(mnist_full: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One real mlp pair (2 epochs on 2,000 images), shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("results")
    done = cli("run", "--model", "mlp", "--fold", "1", *QUICK, "--data-dir", str(mnist_full), "--results", str(out))
    assert done.returncode == 0, done.stderr
    path = results.pair_path(out, "default", Pair("mlp", 1))
    return out, json.loads(path.read_text())


def test_a_pair_writes_a_valid_result(mlp_run: tuple[Path, dict], mnist_full: Path) -> None:
    out, result = mlp_run
    results.validate(result)
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
    path = results.pair_path(out, "default", Pair("mlp", 1))
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
        "run", "--epochs", "1", "--limit", "1000", "--data-dir", str(mnist_mini), "--custom-data",
        "--results", str(tmp_path), env={"SLURM_ARRAY_TASK_ID": "7"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = results.read_result(results.pair_path(tmp_path, "default", Pair("cnn", 2)))
    assert result["task_id"] == 7 and result["model"] == "cnn"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "resnet", "--fold", "0"], "unknown model 'resnet'"),
        (["--model", "mlp", "--fold", "5"], "fold 5 is outside 0-4"),
        (["--task-id", "10"], "task id 10 is outside 0-9"),
        (["--task-id", "1", "--model", "mlp", "--fold", "1"], "either --task-id or --model"),
        (["--model", "mlp"], "--model needs --fold"),
        ([], "no pair given"),
        (["--task-id", "x"], "invalid int value"),
        (["--task-id", "1", "--epochs", "0"], "--epochs must be at least 1"),
    ],
)
def test_usage_errors_are_one_line_exit_2(args: list[str], message: str, mlp_run: tuple[Path, dict]) -> None:
    out, _ = mlp_run
    before = results.pair_path(out, "default", Pair("mlp", 1)).read_bytes()
    done = cli("run", *args, "--results", str(out), env={"SLURM_ARRAY_TASK_ID": ""} if not args else None)
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert results.pair_path(out, "default", Pair("mlp", 1)).read_bytes() == before


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
        images.write_bytes(gzip.compress(bytes(content)))
    else:
        out.write_text("a file where the results folder should be")
    done = cli("run", "--task-id", "0", *QUICK, "--data-dir", str(data_dir), "--results", str(out))
    assert done.returncode == 1, done.stderr
    assert message in last_line(done.stderr) and "Traceback" not in done.stderr, done.stderr


def test_a_result_of_another_config_is_never_overwritten(mlp_run: tuple[Path, dict], mnist_full: Path) -> None:
    out, _ = mlp_run
    path = results.pair_path(out, "default", Pair("mlp", 1))
    before = path.read_bytes()
    done = cli("run", "--task-id", "1", "--epochs", "1", "--limit", "2000", "--data-dir", str(mnist_full),
               "--results", str(out))  # fmt: skip
    assert done.returncode == 1 and "use another --run" in last_line(done.stderr)
    assert path.read_bytes() == before


def test_a_torn_result_is_redone(mnist_mini: Path, tmp_path: Path) -> None:
    path = results.pair_path(tmp_path, "default", Pair("mlp", 0))
    path.parent.mkdir(parents=True)
    path.write_text('{"schema_version": 1, "model": "ml')
    done = cli("run", "--task-id", "0", "--epochs", "1", "--limit", "1000", "--data-dir", str(mnist_mini),
               "--custom-data", "--results", str(tmp_path))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert results.read_result(path)["model"] == "mlp"


def test_pairs_lists_done_and_missing(mlp_run: tuple[Path, dict]) -> None:
    out, _ = mlp_run
    listing = cli("pairs", *QUICK, "--results", str(out))
    assert listing.returncode == 0 and "1/10 done" in listing.stdout
    missing = cli("pairs", *QUICK, "--results", str(out), "--missing")
    assert missing.stdout.strip() == "0,2-9"
