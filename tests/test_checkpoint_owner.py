"""A checkpoint is resumed only by the training it belongs to, and what is in the way of a training's files blocks the
pair before any epoch: real `mnist-cv run` processes on the shipped subset.

- A checkpoint copied from another fold (complete or not), or left by another config, is set aside (kept beside
  it, named in one line), never resumed nor deleted; the pair trains from epoch 1 to the numbers of a fresh run.
- `--force` trains from epoch 1 even over a kept complete checkpoint.
- A symlink or a file of the wrong kind at one of the pair's paths: `run` refuses in one line before training and
  writes or deletes nothing outside the run; status calls the pair "in the way" and `pairs --missing` leaves it out.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from support import cli

from job.protocol import Pair, Protocol
from job.results.layout import RunLayout
from job.results.status import status

MINI = Path(__file__).resolve().parent / "data" / "mnist-mini"
PROTOCOL = ("--epochs", "2", "--limit", "1000")


def run(results: Path, fold: int, *more: str) -> Any:
    args = ("run", "--model", "mlp", "--fold", str(fold), *PROTOCOL, "--data-dir", str(MINI), "--custom-data")
    return cli(*args, "--results", str(results), *more, timeout=300)


def paths(results: Path, fold: int) -> Any:
    return RunLayout(results, "default").pair_paths(Pair("mlp", fold))


def numbers(results: Path, fold: int) -> tuple[Any, ...]:
    result = json.loads(paths(results, fold).result.read_text())
    return result["history"], result["score"], result["resume"]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folds 0 and 1 trained from scratch, fold 1's checkpoint kept."""
    results = tmp_path_factory.mktemp("fresh")
    assert run(results, 0).returncode == 0
    assert run(results, 1, "--keep-checkpoint").returncode == 0
    return results


@pytest.mark.slow  # three short trainings
def test_a_checkpoint_copied_from_another_fold_is_set_aside_and_the_pair_trains_from_scratch(
    fresh: Path, tmp_path: Path
) -> None:
    source = paths(fresh, 1).checkpoint  # complete: resumed, it would have trained no epoch on fold 0's images
    target = paths(tmp_path, 0).checkpoint
    shutil.copytree(source, target, symlinks=True)  # `cp -a fold-1.ckpt fold-0.ckpt`
    done = run(tmp_path, 0)
    assert done.returncode == 0, done.stderr[-2000:]
    said = [line for line in (done.stdout + done.stderr).splitlines() if "set aside as" in line]
    assert len(said) == 1 and "of another training (stream 1, not 0" in said[0], said
    asides = list(target.parent.glob("fold-0.ckpt.aside-*"))
    assert len(asides) == 1 and (asides[0] / "state.json").read_bytes() == (source / "state.json").read_bytes()
    assert numbers(tmp_path, 0) == numbers(fresh, 0)  # fold 0's own numbers, from epoch 1


@pytest.mark.slow
def test_a_checkpoint_of_another_config_is_kept_aside_and_force_trains_from_epoch_1(
    fresh: Path, tmp_path: Path
) -> None:
    other = run(tmp_path, 0, "--keep-checkpoint", "--seed", "7")
    assert other.returncode == 0, other.stderr[-2000:]
    # A result of another config would (rightly) refuse the run, and the run's manifest would make --seed 7 its own.
    (paths(tmp_path, 0).result).unlink()
    RunLayout(tmp_path, "default").manifest.unlink()
    weights = sorted(p.name for p in paths(tmp_path, 0).checkpoint.iterdir())
    done = run(tmp_path, 0, "--keep-checkpoint")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "is of config" in done.stdout + done.stderr
    (aside,) = paths(tmp_path, 0).checkpoint.parent.glob("fold-0.ckpt.aside-*")
    assert sorted(p.name for p in aside.iterdir()) == weights  # kept whole, nothing deleted
    assert numbers(tmp_path, 0) == numbers(fresh, 0)

    # --force over this config's complete checkpoint: every epoch trained again, none resumed.
    forced = run(tmp_path, 0, "--force")
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert "--force: checkpoint set aside as" in forced.stderr
    assert "epoch 1/2" in forced.stdout and numbers(tmp_path, 0) == numbers(fresh, 0)


def _symlinked_checkpoint(results: Path, outside: Path) -> Path:
    paths(results, 0).checkpoint.symlink_to(outside, target_is_directory=True)
    return paths(results, 0).checkpoint


def _symlinked_tensorboard(results: Path, outside: Path) -> Path:
    paths(results, 0).tensorboard.symlink_to(outside, target_is_directory=True)  # a restart would empty it
    return paths(results, 0).tensorboard


def _file_as_tensorboard(results: Path, outside: Path) -> Path:
    paths(results, 0).tensorboard.write_text("not a folder")
    return paths(results, 0).tensorboard


def _folder_as_result(results: Path, outside: Path) -> Path:
    paths(results, 0).result.mkdir()
    return paths(results, 0).result


def _symlinked_model_folder(results: Path, outside: Path) -> Path:
    folder = results / "default" / "mlp"
    folder.rmdir()
    folder.symlink_to(outside, target_is_directory=True)
    return folder


@pytest.mark.parametrize(
    ("block", "says"),
    [
        (_symlinked_checkpoint, "fold-0.ckpt is a symlink"),
        (_symlinked_tensorboard, "mlp/fold-0 is a symlink"),
        (_file_as_tensorboard, "mlp/fold-0 is in the way: it should be a folder"),
        (_folder_as_result, "fold-0.json is in the way: it should be a regular file"),
        (_symlinked_model_folder, "default/mlp is a symlink"),
    ],
)
def test_a_path_in_the_way_blocks_the_pair_before_training_and_nothing_outside_is_touched(
    tmp_path: Path, block: Any, says: str
) -> None:
    results, outside = tmp_path / "results", tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "epoch-1.weights.h5").write_bytes(b"someone else's file")
    (results / "default" / "mlp").mkdir(parents=True)
    block(results, outside)
    done = run(results, 0)
    assert done.returncode == 1 and says in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "epoch" not in done.stdout
    assert sorted(os.listdir(outside)) == ["epoch-1.weights.h5"]
    assert (outside / "epoch-1.weights.h5").read_bytes() == b"someone else's file"
    row = status(RunLayout(results, "default"), Protocol(epochs=2, limit=1000), queue=lambda ids: {})[0]
    assert row.state == "in the way" and row.state.blocked and says in row.detail
    missing = cli("pairs", "--missing", "--results", str(results), *PROTOCOL, timeout=60)
    # Every pair but the blocked ones: a symlinked model folder blocks all five of the model's.
    assert (missing.returncode, missing.stdout.strip()) == (0, "5-9" if block is _symlinked_model_folder else "1-9")
    assert says in missing.stderr
