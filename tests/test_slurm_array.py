"""`sbatch slurm/array.sh`, unchanged, on the real local Slurm cluster: the ten pairs with their allocation recorded,
collect on them, a failing task, resubmitting only the missing pairs, and the GPU request (accepted on a node with
GPU GRES, rejected on one without). Overrides go only through sbatch options, the environment and the arguments
after the script's name.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

import pytest
from support import cli, cluster, last_line
from support.cluster import (
    SlurmError,
    array_env,
    reconfigure,
    sacct,
    wait_for_jobs,
    with_gpus,
)

from job.protocol import all_pairs
from job.results import store as results
from job.results.layout import RunLayout

pytestmark = pytest.mark.slurm

QUICK = ("--epochs", "1", "--limit", "100")
TASKS = range(10)
LOST = (3, 6)  # mlp/fold-3 and cnn/fold-1: the pairs the partial-failure tests lose and redo


class ArrayRun(NamedTuple):
    folder: Path  # the submit and working directory: logs here, results under results/
    job: str
    states: dict[str, str]  # sacct's task -> state

    @property
    def results(self) -> Path:
        return self.folder / "results"


def submit_array(folder: Path, data: Path, *sbatch_options: str) -> str:
    return cluster.submit_array(folder, array_env(data, folder / "results"), (*QUICK, "--custom-data"), *sbatch_options)


def log_of(run: ArrayRun, task: int) -> str:
    return (run.folder / f"mnist-cv-pairs_{run.job}_{task}.out").read_text()


def result_files(folder: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in sorted(folder.glob("default/*/fold-*.json"))}


def missing_pairs(folder: Path) -> str:
    done = cli("pairs", "--missing", *QUICK, "--results", str(folder), "--run", "default")
    assert done.returncode == (0 if done.stdout.strip() else 1), done.stderr  # exit 1: nothing missing
    return done.stdout.strip()


@pytest.fixture(scope="module")
def gpu_cluster() -> dict[str, str]:
    return with_gpus()


@pytest.fixture(scope="module")
def ten_pairs(gpu_cluster: dict[str, str], mnist_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> ArrayRun:
    folder = tmp_path_factory.mktemp("ten-pairs")
    job = submit_array(folder, mnist_mini)
    return ArrayRun(folder, job, wait_for_jobs(job, timeout=900))


def test_the_unchanged_script_runs_the_ten_pairs_one_log_each(ten_pairs: ArrayRun) -> None:
    assert ten_pairs.states == {f"{ten_pairs.job}_{task}": "COMPLETED" for task in TASKS}
    for task, pair in enumerate(all_pairs()):
        result = results.read_result(RunLayout(ten_pairs.results, "default").pair_paths(pair).result)
        assert result["task_id"] == task
        assert (result["config"]["epochs"], result["config"]["limit"]) == (1, 100)
        assert f"{pair}: held-out accuracy" in log_of(ten_pairs, task)
        # The first line names the task as its log file and squeue do (123_4), its raw id beside it.
        assert log_of(ten_pairs, task).startswith(f"job {ten_pairs.job}_{task} (job ")
    logs = sorted(path.name for path in ten_pairs.folder.glob("*.out"))
    assert logs == sorted(f"mnist-cv-pairs_{ten_pairs.job}_{task}.out" for task in TASKS)
    assert not list(ten_pairs.results.rglob("*.ckpt")), "a checkpoint outlived its result"


def test_each_result_records_its_slurm_job_task_node_cpus_and_gpu(
    ten_pairs: ArrayRun, gpu_cluster: dict[str, str]
) -> None:
    accounting = sacct(ten_pairs.job, "JobIDRaw", "NodeList", "AllocTRES")
    for task, pair in enumerate(all_pairs()):
        result = results.read_result(RunLayout(ten_pairs.results, "default").pair_paths(pair).result)
        allocation = result["environment"]["slurm"]
        row = accounting[f"{ten_pairs.job}_{task}"]
        assert allocation["job_id"] == row["JobIDRaw"]
        assert (allocation["array_job_id"], allocation["array_task_id"]) == (ten_pairs.job, str(task))
        assert allocation["node"] == row["NodeList"] == gpu_cluster["node"]
        assert allocation["cpus_per_task"] == "1" and result["environment"]["threads"]["intra_op"] == 1
        # The script's --gres=gpu:1 reached the allocation: one GPU, visible to the task.
        assert "gres/gpu=1" in row["AllocTRES"].split(",")
        assert allocation["gpus_on_node"] == "1" and allocation["gpus"] == allocation["cuda_visible_devices"]
        assert "restart_count" not in allocation


def test_collect_summarises_the_ten_results(ten_pairs: ArrayRun, tmp_path: Path) -> None:
    shutil.copytree(ten_pairs.results, tmp_path, dirs_exist_ok=True)  # collect writes beside the results
    done = cli("collect", "--results", str(tmp_path), "--run", "default")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "default" / "summary.json").is_file()


@pytest.fixture(scope="module")
def partial_failure(ten_pairs: ArrayRun, tmp_path_factory: pytest.TempPathFactory) -> ArrayRun:
    """The ten results with the LOST pairs gone, then the whole array resubmitted with MNIST_CV_DATA on a missing
    folder: the eight done pairs are skipped, the lost ones fail."""
    folder = tmp_path_factory.mktemp("partial")
    shutil.copytree(ten_pairs.results, folder / "results")
    for task in LOST:
        RunLayout(folder / "results", "default").pair_paths(all_pairs()[task]).result.unlink()
    job = submit_array(folder, folder / "no-such-data")
    return ArrayRun(folder, job, wait_for_jobs(job, timeout=300))


def test_a_failing_task_is_failed_in_sacct_with_its_one_line_error_in_its_log(partial_failure: ArrayRun) -> None:
    job = partial_failure.job
    assert partial_failure.states == {f"{job}_{t}": "FAILED" if t in LOST else "COMPLETED" for t in TASKS}
    exit_codes = sacct(job, "ExitCode")
    missing = partial_failure.folder / "no-such-data"
    for task in LOST:
        assert exit_codes[f"{job}_{task}"]["ExitCode"] == "1:0"
        log = log_of(partial_failure, task)
        assert last_line(log).startswith(f"mnist-cv run: error: {missing}: no such file or folder")
        assert [line for line in log.splitlines() if "error" in line] == [last_line(log)], log
    for task in set(TASKS) - set(LOST):
        assert "already done with config" in log_of(partial_failure, task)


def test_resubmitting_the_missing_pairs_runs_only_those(partial_failure: ArrayRun, mnist_mini: Path) -> None:
    done_before = result_files(partial_failure.results)
    assert len(done_before) == len(TASKS) - len(LOST)
    spec = missing_pairs(partial_failure.results)
    assert spec == ",".join(map(str, LOST))

    job = submit_array(partial_failure.folder, mnist_mini, f"--array={spec}")
    assert wait_for_jobs(job, timeout=300) == {f"{job}_{task}": "COMPLETED" for task in LOST}
    after = result_files(partial_failure.results)
    assert {path: after[path] for path in done_before} == done_before, "a done result was rewritten"
    assert len(after) == len(TASKS) and missing_pairs(partial_failure.results) == ""
    for task in LOST:
        result = results.read_result(RunLayout(partial_failure.results, "default").pair_paths(all_pairs()[task]).result)
        assert result["environment"]["slurm"]["array_job_id"] == job


def wait_for_an_empty_queue(timeout: float = 300) -> None:
    """Reconfiguring restarts slurmctld and slurmd: never under someone's pending or running jobs."""
    deadline = time.monotonic() + timeout
    while subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.strip():
        if time.monotonic() > deadline:
            pytest.skip(f"the Slurm queue is still busy after {timeout}s: not switching the node to no GPUs")
        time.sleep(1)


def restore_default_config(attempts: int = 3) -> dict[str, str]:
    """reconfigure() back to the fake GPUs, retried: when another session restarts the daemons at the same moment,
    the start script can give up waiting for them (seen on a shared machine), and every later test needs GPUs."""
    for _ in range(attempts - 1):
        with contextlib.suppress(SlurmError):
            return reconfigure()
    return reconfigure()


# Last in this file: it restarts the cluster without GPUs, then restores the default config. The same submission
# on the node with GPUs is accepted and gets one GPU per task (test_each_result_records_...).
def test_the_gpu_request_is_rejected_on_a_node_without_gpus(
    gpu_cluster: dict[str, str], mnist_mini: Path, tmp_path: Path
) -> None:
    wait_for_an_empty_queue()
    assert reconfigure(fake_gpus=0)["gres"] == "(null)"
    try:
        with pytest.raises(SlurmError, match="Invalid generic resource"):
            submit_array(tmp_path, mnist_mini)
    finally:
        assert restore_default_config()["gres"].startswith("gpu:")
