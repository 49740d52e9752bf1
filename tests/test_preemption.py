"""Faults with real processes: kill -9, SIGTERM and corrupt checkpoints locally; scontrol requeue,
the time-limit warning signal and scancel on the local Slurm cluster. An interrupted pair must end with exactly
the numbers of an uninterrupted run. A fault is sent once epoch 1 is checkpointed; it lands in epoch 2 or 3, however
fast the machine, and the tests read which from the checkpoint it left.

Every run trains cnn pairs on 1,000 images for 3 epochs (an epoch lasts 1-6 s here) with ONE TensorFlow thread:
local runs are pinned to one CPU, Slurm tasks get `-c 1`. The thread count changes the float summation order, so
only runs with the same count are comparable bitwise. Independent runs go two at a time, one per CPU.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import pytest
from support import cluster, last_line, start_pinned
from support.cluster import array_env, sacct_runs, wait_for_jobs, with_gpus
from support.shared import Once

from job.protocol import Pair
from job.results import store as results
from job.results.layout import RunLayout

pytestmark = pytest.mark.slow

CONFIG = ("--epochs", "3", "--limit", "1000", "--custom-data")
EPOCHS = 3
# What must match bitwise between a resumed and an uninterrupted run: everything but timings and provenance.
NUMBERS = ("history", "score", "data", "config", "config_id", "model", "fold")


class Finished(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


class Stopped(NamedTuple):
    out: Path
    run: Finished


def numbers(result: dict[str, Any]) -> dict[str, Any]:
    return {key: result[key] for key in NUMBERS}


def result_path(out: Path, fold: int) -> Path:
    return RunLayout(out, "default").pair_paths(Pair("cnn", fold)).result


def checkpoint_dir(out: Path, fold: int) -> Path:
    return RunLayout(out, "default").pair_paths(Pair("cnn", fold)).checkpoint


def state_file(out: Path, fold: int) -> Path:
    return checkpoint_dir(out, fold) / "state.json"


def epochs_done(out: Path, fold: int) -> int:
    return json.loads(state_file(out, fold).read_text())["epochs_done"]


def resumed_once(result: dict[str, Any]) -> int:
    """The epoch a result says its one resume started from: after epoch 1 or 2, where the fault left it."""
    (epoch,) = result["resume"]["from_epochs"]
    assert result["resume"]["count"] == 1 and 1 <= epoch < EPOCHS
    return epoch


def leftovers(out: Path) -> list[Path]:
    """Temp files of atomic writes (job/results/atomic.py: `.NAME.XXXX.tmp.SUFFIX`): none may outlive a stopped pair."""
    return [p for p in out.rglob("*") if ".tmp" in p.name]


def start_pair(fold: int, out: Path, data: Path, cpu_index: int = 0) -> subprocess.Popen[str]:
    """`python -m job run` of one cnn pair in the background, pinned to one CPU (so one TensorFlow thread)."""
    return start_pinned(
        ["run", "--model", "cnn", "--fold", str(fold), *CONFIG, "--results", str(out)],
        cpu_index,
        env={"MNIST_CV_DATA": str(data), "MNIST_CV_RUN": "default"},
    )


def finish(proc: subprocess.Popen[str], timeout: float = 300) -> Finished:
    stdout, stderr = proc.communicate(timeout=timeout)
    return Finished(proc.returncode, stdout, stderr)


def running(proc: subprocess.Popen[str]) -> Callable[[], bool]:
    return lambda: proc.poll() is None


def checkpointed(watch: dict[Path, Callable[[], bool]], timeout: float = 300) -> Iterator[Path]:
    """Each state.json of `watch` as soon as it exists, i.e. its pair has finished an epoch; the callable beside
    it says whether that pair is still running. Watching several at once lets each fault hit its own pair as
    soon as that pair has checkpointed its first epoch, however far apart the pairs run."""
    waiting = dict(watch)
    deadline = time.monotonic() + timeout
    while waiting:
        for state in [state for state in waiting if state.exists()]:
            del waiting[state]
            yield state
        for state, alive in waiting.items():
            assert alive() or state.exists(), f"the pair of {state} ended before its first checkpoint"
        assert time.monotonic() < deadline, f"no checkpoint {list(waiting)} after {timeout}s"
        time.sleep(0.1)


def train_references(out: Path, data: Path) -> dict[str, dict[str, Any]]:
    """cnn folds 0 and 1 trained uninterrupted, one per CPU: fold (as text, a JSON key) -> result."""
    procs = {fold: start_pair(fold, out, data, cpu_index=fold) for fold in (0, 1)}
    for proc in procs.values():
        done = finish(proc)
        assert done.returncode == 0, done.stderr
    return {str(fold): results.read_result(result_path(out, fold)) for fold in procs}


@pytest.fixture
def uninterrupted(once: Once, mnist_mini: Path) -> dict[int, dict[str, Any]]:
    """The reference results of cnn folds 0 and 1 (Slurm tasks 5 and 6). Made once for the session by whichever
    worker asks first: the local tests here need not wait behind the Slurm tests' worker, nor train them again."""
    made = once("preemption-uninterrupted", lambda out: train_references(out, mnist_mini))
    references = {int(fold): result for fold, result in made.items()}
    assert all(r["resume"]["count"] == 0 and r["environment"]["threads"]["intra_op"] == 1 for r in references.values())
    return references


@pytest.fixture(scope="module")
def interrupted(mnist_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Stopped]:
    """cnn/fold-0 twice at once, each stopped after its first epoch: by SIGKILL, and by SIGTERM (what scancel
    sends)."""
    kill_out, term_out = tmp_path_factory.mktemp("sigkill"), tmp_path_factory.mktemp("sigterm")
    killed = start_pair(0, kill_out, mnist_mini, cpu_index=0)
    terminated = start_pair(0, term_out, mnist_mini, cpu_index=1)
    kill_state = state_file(kill_out, 0)
    for state in checkpointed({kill_state: running(killed), state_file(term_out, 0): running(terminated)}):
        if state == kill_state:
            time.sleep(0.5)  # into epoch 2 (or 3 on a fast machine)
            killed.kill()
        else:
            time.sleep(0.5)  # past epoch 1's per-epoch logs, written after its checkpoint: into epoch 2
            terminated.terminate()
    return {"sigkill": Stopped(kill_out, finish(killed)), "sigterm": Stopped(term_out, finish(terminated))}


def test_kill_9_mid_epoch_then_a_rerun_ends_with_the_uninterrupted_numbers(
    interrupted: dict[str, Stopped], uninterrupted: dict[int, dict[str, Any]], mnist_mini: Path, tmp_path: Path
) -> None:
    out, killed = interrupted["sigkill"]
    assert killed.returncode == -9
    resumed_from = epochs_done(out, 0)
    assert 1 <= resumed_from < EPOCHS and not result_path(out, 0).exists()

    shutil.copytree(out, tmp_path, dirs_exist_ok=True)
    rerun = finish(start_pair(0, tmp_path, mnist_mini))
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming from the checkpoint after epoch {resumed_from}" in rerun.stdout
    result = results.read_result(result_path(tmp_path, 0))
    assert result["resume"] == {"count": 1, "from_epochs": [resumed_from]}
    assert numbers(result) == numbers(uninterrupted[0])
    assert len(result["timings"]["epoch_seconds"]) == EPOCHS  # the killed run's epoch is kept, not retrained
    assert not checkpoint_dir(tmp_path, 0).exists()


# Its rerun to the uninterrupted numbers is test_scancel_leaves_no_result_and_a_resubmission_finishes_the_pair's:
# scancel sends the same SIGTERM.
def test_sigterm_exits_3_leaving_the_checkpoint_and_no_result(interrupted: dict[str, Stopped]) -> None:
    out, run = interrupted["sigterm"]
    assert run.returncode == 3, run.stderr
    assert "received SIGTERM: stopping at the next safe point" in run.stderr
    done = epochs_done(out, 0)
    assert 1 <= done < EPOCHS
    assert last_line(run.stderr) == (
        f"mnist-cv run: error: stopped by a signal during epoch {done + 1}; rerun to resume from epoch {done}"
    )
    assert not result_path(out, 0).exists()
    assert leftovers(out) == []
    assert sorted(p.name for p in checkpoint_dir(out, 0).iterdir()) == [f"epoch-{done}.weights.h5", "state.json"]


def checkpoint_weights(folder: Path) -> Path:
    """The weights file the checkpoint's state.json names (job/pair/checkpoint.py's layout)."""
    return folder / json.loads((folder / "state.json").read_text())["weights"]


def truncate_weights(folder: Path) -> None:
    weights = checkpoint_weights(folder)
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def garble_state(folder: Path) -> None:
    state = folder / "state.json"
    state.write_text(state.read_text()[:-40])  # a torn write: a valid start, no end


def drop_a_variable_keeping_the_hash(folder: Path) -> None:
    """Weights that match their recorded sha256 but lack the output layer's bias (as if saved by another version
    of the model): Keras loads every other variable, then raises. Nothing of that file may reach the new run."""
    weights = checkpoint_weights(folder)
    with h5py.File(weights, "r+") as h5:
        del h5["layers/dense_2/vars/1"]
    state = json.loads((folder / "state.json").read_text())
    state["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (folder / "state.json").write_text(json.dumps(state))


CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "truncated-weights": truncate_weights,
    "garbled-state": garble_state,
    "unloadable-weights": drop_a_variable_keeping_the_hash,
}


@pytest.fixture(scope="module")
def corrupt_reruns(
    interrupted: dict[str, Stopped], mnist_mini: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Stopped]:
    """The SIGTERM'd pair's checkpoint damaged in each way of CORRUPTIONS, then rerun; the reruns go at once."""
    procs = {}
    for index, (name, corrupt) in enumerate(CORRUPTIONS.items()):
        out = tmp_path_factory.mktemp(name)
        shutil.copytree(interrupted["sigterm"].out, out, dirs_exist_ok=True)
        corrupt(checkpoint_dir(out, 0))
        procs[name] = (out, start_pair(0, out, mnist_mini, cpu_index=index))
    return {name: Stopped(out, finish(proc)) for name, (out, proc) in procs.items()}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_corrupt_checkpoint_is_reported_in_one_line_and_the_pair_restarts_from_scratch(
    corruption: str, corrupt_reruns: dict[str, Stopped], uninterrupted: dict[int, dict[str, Any]]
) -> None:
    out, rerun = corrupt_reruns[corruption]
    assert rerun.returncode == 0, rerun.stderr
    lines = rerun.stdout.splitlines()
    reports = [i for i, line in enumerate(lines) if "checkpoint unusable, starting from scratch" in line]
    assert len(reports) == 1, rerun.stdout
    assert str(checkpoint_dir(out, 0)) in lines[reports[0]]
    assert lines[reports[0] + 1].startswith(f"cnn/fold-0 epoch 1/{EPOCHS}"), "the report spills over several lines"
    result = results.read_result(result_path(out, 0))
    assert result["resume"] == {"count": 0, "from_epochs": []}
    # From scratch means from scratch: the numbers of a run that never saw the bad checkpoint.
    assert numbers(result) == numbers(uninterrupted[0])


# --- on Slurm: the unchanged slurm/array.sh; array tasks 5, 6, 7 are cnn folds 0, 1, 2 ---------------------------


@pytest.fixture(scope="module")
def gpu_cluster() -> dict[str, str]:
    return with_gpus()


def submit_array(folder: Path, data: Path, *sbatch_options: str) -> str:
    return cluster.submit_array(folder, array_env(data, folder), CONFIG, *sbatch_options)


def queued(job: str, task: int) -> Callable[[], bool]:
    def alive() -> bool:
        out = subprocess.run(["squeue", "-h", "-j", f"{job}_{task}", "-o", "%T"], capture_output=True, text=True)
        return bool(out.stdout.strip())

    return alive


def slurm_ok(*command: str) -> None:
    # Two minutes: slurmctld answers slowly on a node busy with training (30 s was seen to run out).
    out = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{' '.join(command)}: {out.stderr}"


def log_of(folder: Path, job: str, task: int) -> str:
    return (folder / f"mnist-cv-pairs_{job}_{task}.out").read_text()


class FaultedArray(NamedTuple):
    folder: Path
    job: str
    runs: dict[str, list[str]]


@pytest.fixture(scope="module")
def faulted_array(
    gpu_cluster: dict[str, str], mnist_mini: Path, tmp_path_factory: pytest.TempPathFactory
) -> FaultedArray:
    """Tasks 5-7 of one array (two run at a time). Once its epoch 1 is checkpointed, task 5 gets the time-limit
    warning exactly as Slurm sends it (USR1 to the batch shell; a real --time warning may come up to 60 s early),
    and task 6 is requeued by `scontrol requeue`. Task 7 is left alone."""
    folder = tmp_path_factory.mktemp("faulted-array")
    job = submit_array(folder, mnist_mini, "--array=5-7")
    warned = state_file(folder, 0)
    for state in checkpointed({warned: queued(job, 5), state_file(folder, 1): queued(job, 6)}):
        if state == warned:
            slurm_ok("scancel", "--signal=USR1", "--batch", f"{job}_5")
        else:
            slurm_ok("scontrol", "requeue", f"{job}_6")
    wait_for_jobs(job, timeout=600)
    return FaultedArray(folder, job, sacct_runs(job))


@pytest.mark.slurm
def test_the_warning_signal_checkpoints_requeues_and_resumes_to_the_uninterrupted_numbers(
    faulted_array: FaultedArray, uninterrupted: dict[int, dict[str, Any]]
) -> None:
    folder, job, runs = faulted_array
    assert runs[f"{job}_5"] == ["REQUEUED", "COMPLETED"]
    log = log_of(folder, job, 5)
    assert "received SIGUSR1: stopping at the next safe point" in log
    assert f"requeueing {job}_5 to resume from its checkpoint" in log
    result = results.read_result(result_path(folder, 0))
    assert result["environment"]["slurm"]["restart_count"] == "1"
    assert "restart 1" in log and f"resuming from the checkpoint after epoch {resumed_once(result)}" in log
    assert numbers(result) == numbers(uninterrupted[0])


@pytest.mark.slurm
def test_scontrol_requeue_of_one_task_resumes_it_and_leaves_the_other_tasks_alone(
    faulted_array: FaultedArray, uninterrupted: dict[int, dict[str, Any]]
) -> None:
    folder, job, runs = faulted_array
    # One REQUEUED run for each faulted task (5 requeued itself), none for task 7: never the whole array.
    assert runs == {
        f"{job}_5": ["REQUEUED", "COMPLETED"],
        f"{job}_6": ["REQUEUED", "COMPLETED"],
        f"{job}_7": ["COMPLETED"],
    }
    log = log_of(folder, job, 6)
    assert "DUE TO JOB REQUEUE" in log and "received SIGTERM" in log
    result = results.read_result(result_path(folder, 1))
    assert result["environment"]["slurm"]["restart_count"] == "1"
    resumed_once(result)
    assert numbers(result) == numbers(uninterrupted[1])
    untouched = results.read_result(result_path(folder, 2))
    assert "restart_count" not in untouched["environment"]["slurm"] and untouched["resume"]["count"] == 0


@pytest.mark.slurm
def test_scancel_leaves_no_result_and_a_resubmission_finishes_the_pair(
    gpu_cluster: dict[str, str], uninterrupted: dict[int, dict[str, Any]], mnist_mini: Path, tmp_path: Path
) -> None:
    job = submit_array(tmp_path, mnist_mini, "--array=5")
    for _ in checkpointed({state_file(tmp_path, 0): queued(job, 5)}):
        slurm_ok("scancel", f"{job}_5")
    assert wait_for_jobs(job, timeout=120)[f"{job}_5"].startswith("CANCELLED")
    assert "received SIGTERM" in log_of(tmp_path, job, 5)
    assert not result_path(tmp_path, 0).exists() and leftovers(tmp_path) == []
    checkpointed_epochs = epochs_done(tmp_path, 0)

    again = submit_array(tmp_path, mnist_mini, "--array=5")
    assert wait_for_jobs(again, timeout=300) == {f"{again}_5": "COMPLETED"}
    result = results.read_result(result_path(tmp_path, 0))
    assert result["environment"]["slurm"]["array_job_id"] == again
    assert resumed_once(result) == checkpointed_epochs
    assert numbers(result) == numbers(uninterrupted[0])
    assert not checkpoint_dir(tmp_path, 0).exists()
