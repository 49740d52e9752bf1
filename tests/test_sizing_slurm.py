"""Right-sizing on the real local Slurm: `status` projects a running pair's end against its time limit.

collect's suggested request, and a second array asking exactly that, are tested on the ten pairs of
tests/test_slurm_array.py, which ran through the unchanged slurm/array.sh already.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from support import cli, wait_for
from support.cluster import array_env, ensure_cluster, submit_array

from job.protocol import Protocol
from job.results.layout import RunLayout
from job.results.status import PairState, PairStatus, status

pytestmark = pytest.mark.slurm

PROTOCOL = ("--epochs", "60", "--limit", "5000")  # tens of seconds of training: long enough to watch
CONFIG = Protocol().with_overrides(epochs=60, limit=5000)


def test_status_projects_a_running_pair_against_its_time_limit(mnist_mini: Path, tmp_path: Path) -> None:
    ensure_cluster()
    results = tmp_path / "results"
    job = submit_array(
        tmp_path, array_env(mnist_mini, results), (*PROTOCOL, "--custom-data"), "--array=0", "--time=0:10:00"
    )
    try:

        def projected() -> PairStatus | None:
            row = status(RunLayout(results, "default"), CONFIG)[0]
            return row if row.state == PairState.RUNNING and row.projected_s is not None else None

        row: PairStatus = wait_for("mlp/fold-0 to train an epoch under Slurm", projected)  # type: ignore[assignment]
        assert row.job_id == f"{job}_0" and row.time_limit_s == 600
        assert row.elapsed_s is not None and row.projected_s is not None and row.projected_s >= row.elapsed_s
        assert "within its 0:10:00 limit" in row.detail, row.detail
        shown = cli("status", "--json", "--results", str(results), *PROTOCOL)
        assert shown.returncode == 0, shown.stderr
        assert {"time_limit_s", "projected_s"} <= json.loads(shown.stdout)[0].keys()
    finally:
        subprocess.run(["scancel", job], check=False)
