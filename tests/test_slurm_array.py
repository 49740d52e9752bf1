"""`sbatch slurm/array.sh`, unchanged, on the real local Slurm cluster: the ten pairs with their allocation recorded,
collect on them and a second array asking what it suggests (right-sizing), a failing task, resubmitting only the
missing pairs, and the GPU request (accepted on a node with GPU GRES, rejected on one without). Overrides go only
through sbatch options, the environment and the arguments after the script's name.
"""

from __future__ import annotations

import contextlib
import json
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
    submit,
    wait_for_jobs,
    with_gpus,
)

from job.launch import resources
from job.protocol import Pair, all_pairs
from job.results import store as results
from job.results.contract import Summary
from job.results.layout import RunLayout

pytestmark = pytest.mark.slurm

QUICK = ("--epochs", "1", "--limit", "100")
TASKS = range(10)
N_FOLDS = 5  # the mlp pairs among the ten, each measured
SIZED_TASKS = "0-1"  # the mlp pairs the right-sized array trains again: one at a time on each of the two CPUs
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


def test_collect_suggests_a_request_and_a_second_array_asking_exactly_that_completes(
    ten_pairs: ArrayRun, mnist_mini: Path, tmp_path: Path
) -> None:
    """collect summarises the ten results and prints the measured peaks and a suggested request per model; the mlp
    pairs submitted again, with exactly mlp's suggested request, in a new run of the same protocol, complete."""
    results_dir = tmp_path / "results"
    shutil.copytree(ten_pairs.results, results_dir)  # collect writes beside the results
    collected = cli("collect", "--results", str(results_dir), "--run", "default", env={"COLUMNS": "250"})
    assert collected.returncode == 0, collected.stderr
    print(collected.stdout)  # the report as a user sees it (pytest -s)
    sizing = Summary.from_json(json.loads((results_dir / "default" / "summary.json").read_text())).sizing
    mlp = sizing.models["mlp"]
    assert (mlp.n_measured, mlp.n_unmeasured) == (N_FOLDS, 0), "the results carry no resources"
    assert mlp.request is not None
    (line,) = [line for line in collected.stdout.splitlines() if line.startswith("mlp: suggested request ")]
    options = line.removeprefix("mlp: suggested request ").split()
    assert " ".join(options) == mlp.request.options
    assert f"mlp: {N_FOLDS} of {N_FOLDS} pairs measured: slowest {mlp.max_wall_seconds:.1f} s" in collected.stdout

    env = array_env(mnist_mini, results_dir, MNIST_CV_RUN="sized")  # exactly the request, a new run
    job = submit([f"--array={SIZED_TASKS}", *options, str(cluster.ARRAY_SCRIPT), *QUICK, "--custom-data"], cwd=tmp_path,
                 env=env)  # fmt: skip
    assert set(wait_for_jobs(job, timeout=900).values()) == {"COMPLETED"}
    for task, row in sacct(job, "Timelimit", "ReqMem", "AllocCPUS", "AllocTRES").items():
        assert resources.minutes(row["Timelimit"]) == resources.minutes(mlp.request.time), task
        assert resources.gigabytes(row["ReqMem"]) == resources.gigabytes(mlp.request.mem), task
        assert int(row["AllocCPUS"]) == mlp.request.cpus and "gres/gpu" not in row["AllocTRES"], task
    layout = RunLayout(results_dir, "sized")
    for fold in range(2):
        result = results.read_result(layout.pair_paths(Pair("mlp", fold)).result)
        # Slurm 22.05's sacct has no Restarts field: the task's own record says whether it was requeued.
        assert result["environment"]["slurm"].get("restart_count") in (None, "0"), f"fold {fold} was requeued"
        assert result["resume"]["count"] == 0, f"fold {fold} resumed: its time limit left no room"
        used = result["resources"]
        assert used["peak_rss_bytes"] <= resources.gigabytes(mlp.request.mem) * (1 << 30)
        assert used["wall_seconds"] <= resources.minutes(mlp.request.time) * 60


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
