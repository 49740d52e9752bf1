"""Right-sizing on the real local Slurm: `collect` after an mlp run through the unchanged slurm/array.sh prints the
measured peaks and a suggested request, and a second array submitted with exactly that request completes; `status`
projects a running pair's end against its time limit.

The first test needs the results to carry their resources (measured by `job run` itself): until
that measurement is merged its results say `resources: null`, collect suggests nothing, and the test fails there.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from support import cli, wait_for
from support.cluster import ARRAY_SCRIPT, array_env, ensure_cluster, sacct, submit, submit_array, wait_for_jobs

from job.launch import resources
from job.protocol import Pair, Protocol
from job.results.contract import Summary
from job.results.layout import RunLayout
from job.results.status import PairState, PairStatus, status

pytestmark = pytest.mark.slurm

QUICK = ("--epochs", "1", "--limit", "500", "--custom-data")
MLP_TASKS = "0-1"  # two mlp pairs: one at a time on each of the node's two CPUs
N_PAIRS = 2


@pytest.mark.slow  # two arrays of two real pairs, one CPU each on a two-CPU node shared with other jobs
def test_a_second_array_with_the_suggested_request_completes(mnist_mini: Path, tmp_path: Path) -> None:
    ensure_cluster()
    results = tmp_path / "results"
    first = submit_array(tmp_path, array_env(mnist_mini, results), QUICK, f"--array={MLP_TASKS}")
    assert set(wait_for_jobs(first, timeout=900).values()) == {"COMPLETED"}

    collected = cli("collect", "--results", str(results), "--run", "default", "--allow-partial", env={"COLUMNS": "250"})
    assert collected.returncode == 0, collected.stderr
    print(collected.stdout)  # the report as a user sees it (pytest -s)
    sizing = Summary.from_json(json.loads((results / "default" / "summary.json").read_text())).sizing
    mlp = sizing.models["mlp"]
    assert (mlp.n_measured, mlp.n_unmeasured) == (N_PAIRS, 0), "the results carry no resources"
    assert mlp.request is not None
    (line,) = [line for line in collected.stdout.splitlines() if line.startswith("mlp: suggested request ")]
    options = line.removeprefix("mlp: suggested request ").split()
    assert " ".join(options) == mlp.request.options
    assert f"mlp: {N_PAIRS} of {N_PAIRS} pairs measured: slowest {mlp.max_wall_seconds:.1f} s" in collected.stdout

    # Exactly the suggested request, the same protocol, a new run name.
    env = array_env(mnist_mini, results, MNIST_CV_RUN="sized")
    second = submit([f"--array={MLP_TASKS}", *options, str(ARRAY_SCRIPT), *QUICK], cwd=tmp_path, env=env)
    assert set(wait_for_jobs(second, timeout=900).values()) == {"COMPLETED"}
    for task, row in sacct(second, "Timelimit", "ReqMem", "AllocCPUS", "AllocTRES").items():
        assert resources.minutes(row["Timelimit"]) == resources.minutes(mlp.request.time), task
        assert resources.gigabytes(row["ReqMem"]) == resources.gigabytes(mlp.request.mem), task
        assert int(row["AllocCPUS"]) == mlp.request.cpus and "gres/gpu" not in row["AllocTRES"], task
    layout = RunLayout(results, "sized")
    for fold in range(N_PAIRS):
        result = json.loads(layout.pair_paths(Pair("mlp", fold)).result.read_text())
        # Slurm 22.05's sacct has no Restarts field: the task's own record says whether it was requeued.
        assert result["environment"]["slurm"].get("restart_count") in (None, "0"), f"fold {fold} was requeued"
        assert result["resume"]["count"] == 0, f"fold {fold} resumed: its time limit left no room"
        used = result["resources"]
        assert used["peak_rss_bytes"] <= resources.gigabytes(mlp.request.mem) * (1 << 30)
        assert used["wall_seconds"] <= resources.minutes(mlp.request.time) * 60


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
