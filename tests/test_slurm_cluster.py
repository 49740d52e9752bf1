"""The local Slurm cluster (tests/slurm/start-local-slurm.sh) is real: arrays, sacct, GPU GRES, submitit."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import submitit
from support.cluster import SlurmError, ensure_cluster, reconfigure, submit, wait_for_jobs

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="session")
def cluster() -> dict[str, str]:
    return ensure_cluster()


def test_node_is_up_and_schedulable(cluster: dict[str, str]) -> None:
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, check=True)
    node, state = out.stdout.split()
    assert node == cluster["node"]
    # idle; mix/alloc while other jobs run (the cluster is machine-wide). Not down, drain or "idle*".
    assert state in {"idle", "mix", "alloc"}


def test_job_array_runs_every_task_and_sacct_reports_them(cluster: dict[str, str], tmp_path: Path) -> None:
    job = submit(
        [
            "--array=0-3",
            "--output=slurm-%A_%a.out",
            "--wrap",
            'echo "task $SLURM_ARRAY_TASK_ID of $SLURM_ARRAY_JOB_ID"',
        ],
        cwd=tmp_path,
    )
    assert wait_for_jobs(job, timeout=60) == {f"{job}_{i}": "COMPLETED" for i in range(4)}
    assert [(tmp_path / f"slurm-{job}_{i}.out").read_text() for i in range(4)] == [
        f"task {i} of {job}\n" for i in range(4)
    ]


def test_gpu_gres_is_accepted_on_the_fake_gpu_node(tmp_path: Path) -> None:
    info = reconfigure()  # the default config: a no-op unless an earlier test changed it
    assert info["gres"].startswith("gpu:"), f"the default cluster declares fake GPUs, not {info['gres']}"
    job = submit(
        ["--gres=gpu:1", "--output=gpu.out", "--wrap", 'echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"'],
        cwd=tmp_path,
    )
    assert wait_for_jobs(job, timeout=60) == {job: "COMPLETED"}
    assert (tmp_path / "gpu.out").read_text() == "CUDA_VISIBLE_DEVICES=0\n"
    # EnforcePartLimits=ALL: more GPUs than the node has fails at once instead of pending forever
    too_many = int(info["gres"].split(":")[-1]) + 1
    with pytest.raises(SlurmError, match="Requested node configuration is not available"):
        submit([f"--gres=gpu:{too_many}", "--wrap", "true"], cwd=tmp_path)


def test_submitit_runs_a_function_and_returns_its_result(cluster: dict[str, str], tmp_path: Path) -> None:
    # Defined here so that cloudpickle sends it by value: the job cannot import this test module.
    def double_in_slurm(x: int) -> tuple[int, str]:
        return 2 * x, os.environ["SLURM_JOB_ID"]

    executor = submitit.AutoExecutor(folder=tmp_path)
    assert executor.cluster == "slurm"
    executor.update_parameters(timeout_min=5, slurm_partition=cluster["partition"])
    job = executor.submit(double_in_slurm, 21)
    assert job.result() == (42, job.job_id)
    assert wait_for_jobs(job.job_id, timeout=60) == {job.job_id: "COMPLETED"}


def test_gpu_gres_is_rejected_on_a_node_without_gpus(tmp_path: Path) -> None:
    reconfigure(fake_gpus=0)
    try:
        with pytest.raises(SlurmError, match="Invalid generic resource"):
            submit(["--gres=gpu:1", "--wrap", "true"], cwd=tmp_path)
    finally:
        reconfigure()
