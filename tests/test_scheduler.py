"""job/slurm.py against the real local Slurm: every task state status relies on, as squeue and sacct report it."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.cluster import ensure_cluster, submit

from job import slurm
from job.slurm import TaskState, _seconds, _state, _task_ids

SMALL = ["--cpus-per-task=1", "--mem=100M", "--time=5"]


@pytest.fixture(scope="module")
def cluster() -> dict[str, str]:
    return ensure_cluster()


def wait_for(what: str, check: Callable[[], TaskState | None], timeout: float = 240) -> TaskState:
    """Poll until check() returns a state (the node is shared: a job may wait for a free CPU)."""
    deadline = time.monotonic() + timeout
    while True:
        state = check()
        if state is not None:
            return state
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}", pytrace=False)
        time.sleep(0.5)


def ended(job_id: str, *tasks: int) -> dict[str, TaskState]:
    """The job's tasks (or the plain job) once sacct reports them all finished.

    sacct lags squeue by seconds, and for that while may list an array's last task under the plain job id.
    """
    expected = sorted(f"{job_id}_{t}" for t in tasks) or [job_id]

    def check() -> TaskState | None:
        states = slurm.tasks([job_id])
        done = sorted(states) == expected and all(s.finished and s.source == "sacct" for s in states.values())
        return next(iter(states.values())) if done else None

    wait_for(f"job {job_id} to end", check, timeout=120)
    return slurm.tasks([job_id])


def in_state(job_id: str, *states: str, restarted: bool = False) -> Callable[[], TaskState | None]:
    def check() -> TaskState | None:
        task = slurm.task(job_id)
        if task is not None and task.state in states and (task.restarts > 0 or not restarted):
            return task
        return None

    return check


def test_task_ranges_states_and_times_parse_as_slurm_prints_them() -> None:
    assert _task_ids("[4-9%2]") == [4, 5, 6, 7, 8, 9]
    assert _task_ids("0,2-4") == [0, 2, 3, 4]
    assert _task_ids("N/A") == [None]
    assert _task_ids("[x-y]") == []
    assert _state("CANCELLED by 1000") == "CANCELLED"
    assert _state("CANCELLED+") == "CANCELLED"
    assert [_seconds(t) for t in ("0:05", "1:02:03", "2-01:02:03", "INVALID")] == [5, 3723, 176523, None]


def test_bad_job_ids_are_refused_before_any_command_runs() -> None:
    with pytest.raises(slurm.SchedulerError, match="not a Slurm job id"):
        slurm.tasks(["12", "--all"])


@pytest.mark.slurm
def test_a_held_array_is_pending_task_by_task_then_cancelled_from_one_range_line(
    cluster: dict[str, str], tmp_path: Path
) -> None:
    job = submit([*SMALL, "--hold", "--array=0-3", "-J", "sched-held", "--wrap", "sleep 60"], cwd=tmp_path)
    try:
        states = slurm.tasks([job])
        assert sorted(states) == [f"{job}_{i}" for i in range(4)]
        assert {(s.state, s.reason, s.source) for s in states.values()} == {("PENDING", "JobHeldUser", "squeue")}
    finally:
        subprocess.run(["scancel", job], check=True)
    # sacct keeps a never-started array as one line, '<job>_[0-3]': every task must come out of it.
    states = ended(job, 0, 1, 2, 3)
    assert sorted(states) == [f"{job}_{i}" for i in range(4)]
    assert {(s.state, s.source) for s in states.values()} == {("CANCELLED", "sacct")}
    assert all(s.finished for s in states.values())


@pytest.mark.slurm
def test_a_running_task_shows_its_node_and_elapsed_time_and_a_failed_one_its_exit_code(
    cluster: dict[str, str], tmp_path: Path
) -> None:
    running = submit([*SMALL, "--array=7", "-J", "sched-run", "--wrap", "sleep 120"], cwd=tmp_path)
    failed = submit([*SMALL, "-J", "sched-fail", "--wrap", "exit 3"], cwd=tmp_path)
    try:
        task = wait_for("a RUNNING task", in_state(f"{running}_7", "RUNNING"))
        assert task.node == cluster["node"]
        assert task.elapsed_s is not None and task.elapsed_s >= 0
        assert not task.finished
        (named,) = [t for t in slurm.live_tasks("sched-run") if t.job_id == f"{running}_7"]
        assert (named.state, named.workdir, named.command) == ("RUNNING", str(tmp_path), "(null)")  # --wrap: no script
    finally:
        subprocess.run(["scancel", running], check=True)
    exit3 = ended(failed)[failed]
    assert (exit3.state, exit3.exit_code, exit3.signal, exit3.task_id) == ("FAILED", 3, 0, None)
    assert ended(running, 7)[f"{running}_7"].state == "CANCELLED"


@pytest.mark.slurm
def test_a_requeued_task_is_pending_again_with_a_restart(cluster: dict[str, str], tmp_path: Path) -> None:
    job = submit([*SMALL, "--array=2", "-J", "sched-requeue", "--wrap", "sleep 120"], cwd=tmp_path)
    try:
        wait_for("the task to run", in_state(f"{job}_2", "RUNNING"))
        # requeuehold keeps it pending after the requeue, so the state cannot move on before we look
        subprocess.run(["scontrol", "requeuehold", f"{job}_2"], check=True)
        task = wait_for("the requeued task", in_state(f"{job}_2", "PENDING", restarted=True), timeout=60)
        assert task.restarts == 1
        assert task.source == "squeue"
    finally:
        subprocess.run(["scancel", job], check=True)


def test_without_slurm_on_the_path_nothing_is_asked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no squeue, as on a laptop
    assert not slurm.available()
    assert slurm.tasks(["12_3"]) == {}
    assert slurm.live_tasks("mnist-cv-pairs") == []
