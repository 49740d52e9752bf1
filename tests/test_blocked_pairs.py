"""Pairs a task cannot train until a person acts (a lease that is not a lease, another config's result) are said, not
listed as missing; a checkpoint's state.json that is a FIFO cannot hang `status` (the hostile pass's items A, B, D)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from support import cli, last_line

from job.protocol import Protocol
from job.results import manifest
from job.results.layout import RunLayout

MINI = ("--data-dir", str(Path(__file__).parent / "data" / "mnist-mini"), "--custom-data")


def _status(results: Path, *options: str) -> dict[tuple[str, int], dict]:
    done = cli("status", "--json", "--results", str(results), *options, timeout=120)
    assert done.returncode == 0, done.stderr
    return {(row["model"], row["fold"]): row for row in json.loads(done.stdout)}


def test_a_garbage_lease_is_a_bad_lease_left_out_of_missing_and_refused_by_submit(tmp_path: Path) -> None:
    lease = tmp_path / "default" / "mlp" / "fold-0.lease"
    lease.parent.mkdir(parents=True)
    lease.write_text("garbage")

    row = _status(tmp_path)[("mlp", 0)]
    assert row["state"] == "bad lease" and "not a readable lease" in row["detail"]

    missing = cli("pairs", "--missing", "--results", str(tmp_path))
    assert (missing.returncode, missing.stdout.strip()) == (0, "1-9")
    assert "left out task 0 mlp/fold-0: bad lease" in missing.stderr

    submit = cli("submit", "--dry-run", "--results", str(tmp_path), *MINI)
    assert submit.returncode == 1
    assert last_line(submit.stderr).startswith(
        "mnist-cv submit: error: a task would fail at once on an unreadable lease"
    )


def test_a_fifo_for_a_checkpoints_state_does_not_hang_status(tmp_path: Path) -> None:
    state = tmp_path / "default" / "cnn" / "fold-1.ckpt" / "state.json"
    state.parent.mkdir(parents=True)
    os.mkfifo(state)
    # cli's timeout fails the test if status waits for a writer that never comes.
    assert _status(tmp_path)[("cnn", 1)]["state"] == "missing"


@pytest.mark.slow  # trains one small pair (~10 s)
def test_a_pair_holding_another_configs_result_is_left_out_of_missing(tmp_path: Path) -> None:
    trained = cli("run", "--task-id", "2", "--epochs", "1", "--limit", "1000", "--results", str(tmp_path), *MINI)
    assert trained.returncode == 0, trained.stderr
    # Its result copied into a run of another config (recorded in that run's manifest).
    other = RunLayout(tmp_path, "other")
    manifest.record(other, Protocol(epochs=2, limit=1000), 1)
    shutil.copytree(tmp_path / "default" / "mlp", other.folder / "mlp")

    assert _status(tmp_path, "--run", "other")[("mlp", 2)]["state"] == "other config"
    missing = cli("pairs", "--missing", "--results", str(tmp_path), "--run", "other")
    assert (missing.returncode, missing.stdout.strip()) == (0, "0-1,3-9")
    assert "left out task 2 mlp/fold-2: other config" in missing.stderr
