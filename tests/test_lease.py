"""The pair lease with real processes: racing acquisitions, a kill -9, a reused pid, and Slurm jobs that ended."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from support import wait_for
from support.cluster import ensure_cluster, submit

from job import slurm
from job.errors import JobError
from job.results.lease import Holder, Lease, LeaseHeld, LeaseLost, read_holder

# A process that takes the lease once `go` exists, marks the pair as its own (as training would) and holds it until
# `release` exists or `hold` seconds have passed.
CONTENDER = """
import os, sys, time
from pathlib import Path
from job.results.lease import Lease, LeaseHeld
path, go, hold, release = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4])
(go.parent / f"ready-{os.getpid()}").touch()
while not go.exists():
    time.sleep(0.001)
try:
    lease = Lease.acquire(path, "cfg")
except LeaseHeld as error:
    print(error, file=sys.stderr)
    sys.exit(error.exit_code)
with lease:
    (path.parent / f"trained-by-{os.getpid()}").touch()
    print("acquired", flush=True)
    deadline = time.monotonic() + hold
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
"""


def contender(path: Path, go: Path, hold: float = 0.0, prefix: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    release = path.parent / "release"
    release.unlink(missing_ok=True)
    return subprocess.Popen(
        [*prefix, sys.executable, "-c", CONTENDER, str(path), str(go), str(hold), str(release)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def race(path: Path, n: int) -> list[tuple[int, str, int]]:
    """n processes acquire the same lease at once; (exit code, stderr, pid) of each.

    A holder keeps the lease until all but one contender have ended, however slow a loaded machine makes them: a
    contender that came late to a lease already released would rightly take it, and prove nothing."""
    go = path.parent / "go"
    go.unlink(missing_ok=True)
    for ready in path.parent.glob("ready-*"):
        ready.unlink()
    procs = [contender(path, go, hold=120) for _ in range(n)]
    deadline = time.monotonic() + 120
    while len(list(path.parent.glob("ready-*"))) < n:  # every interpreter is up: the start is simultaneous
        assert time.monotonic() < deadline, "contenders did not start"
        time.sleep(0.05)
    go.touch()
    while sum(p.poll() is not None for p in procs) < n - 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    (path.parent / "release").touch()
    return [(p.wait(timeout=120), p.communicate()[1], p.pid) for p in procs]


def hold_then_kill(path: Path, reap: bool) -> int:
    """A process that holds the lease until it is killed with SIGKILL; its pid."""
    go = path.parent / "go-now"
    go.touch()
    proc = contender(path, go, hold=600)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "acquired"
    proc.send_signal(signal.SIGKILL)
    if reap:
        proc.wait()
    else:  # its parent has not reaped it yet: /proc still shows it, as a zombie
        while (Path(f"/proc/{proc.pid}/stat").read_text().rpartition(")")[2].split() or ["?"])[0] != "Z":
            time.sleep(0.01)
    return proc.pid


def test_of_two_processes_racing_for_a_pair_exactly_one_trains(tmp_path: Path) -> None:
    path = tmp_path / "mlp" / "fold-0.lease"
    path.parent.mkdir()
    for _ in range(3):
        outcomes = race(path, 2)
        assert sorted(code for code, _, _ in outcomes) == [0, 75], outcomes
        (_, _, winner), (_, refusal, loser) = sorted(outcomes)
        assert f"mlp/fold-0 is being trained by pid {winner} on " in refusal
        assert len(refusal.strip().splitlines()) == 1  # one line, no traceback
        trained = sorted(p.name for p in path.parent.glob("trained-by-*"))
        assert trained == [f"trained-by-{winner}"]  # the loser touched nothing
        assert not path.exists()  # the winner released it
        (path.parent / trained[0]).unlink()
    assert not list(path.parent.glob(".fold-0.lease.*"))  # no temp file left behind


@pytest.mark.parametrize("reap", [True, False], ids=["reaped", "zombie"])
def test_a_lease_left_by_a_killed_process_is_taken_over_with_a_line(
    tmp_path: Path, reap: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "fold-1.lease"
    dead = hold_then_kill(path, reap)
    assert read_holder(path).pid == dead
    with Lease.acquire(path, "cfg") as lease:
        assert lease.still_ours()
        assert read_holder(path).pid == os.getpid()
    assert f"taking over the lease of pid {dead} on " in capsys.readouterr().err
    assert not path.exists()


@pytest.mark.slow
def test_racing_take_overs_of_one_stale_lease_leave_one_holder(tmp_path: Path) -> None:
    path = tmp_path / "fold-2.lease"
    for _ in range(3):
        (tmp_path / f"trained-by-{hold_then_kill(path, reap=True)}").unlink()
        outcomes = race(path, 3)
        assert sorted(code for code, _, _ in outcomes) == [0, 75, 75], outcomes
        assert sum("taking over" in err for _, err, _ in outcomes) == 1
        winner = next(pid for code, _, pid in outcomes if code == 0)
        assert [p.name for p in tmp_path.glob("trained-by-*")] == [f"trained-by-{winner}"]
        (tmp_path / f"trained-by-{winner}").unlink()


def test_a_live_pid_that_is_another_process_now_is_not_the_holder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "fold-3.lease"
    # The lease of a process that had our pid before us: same host, same pid, another start time.
    earlier = replace(Holder.me("cfg"), pid_start="1")
    path.write_text(json.dumps(asdict(earlier)))
    with Lease.acquire(path, "cfg"):
        pass
    assert "is now another process" in capsys.readouterr().err


def test_a_lease_taken_from_us_is_not_ours_and_release_leaves_it(tmp_path: Path) -> None:
    path = tmp_path / "fold-4.lease"
    first = Lease.acquire(path, "cfg")
    with pytest.raises(LeaseHeld) as held:
        Lease.acquire(path, "other")
    assert held.value.exit_code == 75
    path.unlink()  # removed by hand, as the message invites when a holder is beyond checking
    second = Lease.acquire(path, "other")
    assert not first.still_ours() and second.still_ours()
    with pytest.raises(LeaseLost, match=f"now held by pid {os.getpid()}"):
        first.ensure_ours()
    first.release()
    assert read_holder(path).token == second.holder.token
    second.release()
    assert not path.exists()


def test_an_unreadable_lease_is_reported_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "fold-0.lease"
    path.write_text("{not json")
    with pytest.raises(Exception, match="not a readable lease"):
        Lease.acquire(path, "cfg")
    assert path.read_text() == "{not json"


@pytest.mark.parametrize(
    "field, value",
    [
        ("pid", "abc"),
        ("pid", 1.5),
        ("pid", None),
        ("pid", True),
        ("pid", 0),
        ("pid", -1),
        ("pid", 2**70),
        ("start_utc", "x"),
        ("start_utc", 5),
        ("host", None),
        ("token", ["a"]),
        ("boot_id", 7),
        ("slurm_array_task_id", 3),
        ("slurm_restart_count", "1"),
    ],
)
def test_a_lease_edited_to_odd_values_is_unreadable_in_one_line(tmp_path: Path, field: str, value: object) -> None:
    # A hand-edited lease must not reach os.kill or fromisoformat (a traceback) nor pass for a live holder (pid 0
    # and -1 are process groups for kill(2), always "alive").
    path = tmp_path / "fold-0.lease"
    path.write_text(json.dumps({**asdict(Holder.me("cfg")), field: value}))
    with pytest.raises(JobError, match="not a readable lease"):
        read_holder(path)
    with pytest.raises(JobError, match="not a readable lease"):
        Lease.acquire(path, "cfg")


@pytest.mark.parametrize("make", ["fifo", "endless", "folder"])
def test_a_lease_that_is_not_a_regular_file_is_unreadable_without_waiting(tmp_path: Path, make: str) -> None:
    # A FIFO never ends its open() and /dev/zero never ends its read: `run` and `status` hung on such a lease.
    path = tmp_path / "fold-0.lease"
    {"fifo": os.mkfifo, "endless": lambda p: p.symlink_to("/dev/zero"), "folder": Path.mkdir}[make](path)
    with pytest.raises(JobError, match="not a readable lease"):
        read_holder(path)


# --- holders on another host: only Slurm can tell whether they are gone -------------------------------------------


def as_other_host(path: Path) -> subprocess.CompletedProcess[str]:
    """Acquire the lease from a process whose host name differs (its own UTS namespace), as a second node would."""
    go = path.parent / "go-other"
    go.touch()
    command = f'hostname node-b && exec "$0" -c "$1" {path} {go} 0 {path.parent}/no-release'
    return subprocess.run(
        ["unshare", "--uts", "sh", "-c", command, sys.executable, CONTENDER],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slurm
def test_a_lease_of_a_slurm_job_is_kept_while_it_runs_and_taken_over_once_it_ended(tmp_path: Path) -> None:
    ensure_cluster()
    if os.geteuid() != 0:
        pytest.skip("a second host name needs `unshare --uts`, which needs root")
    path = tmp_path / "fold-0.lease"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    small = ["--cpus-per-task=1", "--mem=200M", "--time=5", f"--output={tmp_path}/%j.out"]
    # A job holding the lease: another node cannot see its pid, so only Slurm can say it is alive.
    go = tmp_path / "go-job"
    go.touch()
    job = submit(
        [*small, "--wrap", f"{sys.executable} -c '{CONTENDER}' {path} {go} 600 {tmp_path}/no-release"], env=env
    )
    try:
        wait_for("the job to take the lease", path.exists)
        assert read_holder(path).slurm_job_id == job
        refused = as_other_host(path)
        assert refused.returncode == 75, refused.stderr
        assert f"(if it is gone and Slurm cannot tell, remove {path})" in refused.stderr
        assert f"Slurm job {job}" in refused.stderr
    finally:
        subprocess.run(["scancel", job], check=True)
    # scancel's SIGTERM kills the holder before it can release the lease: once sacct says so, it is stale.
    wait_for("sacct to show the job ended", lambda: getattr(slurm.task(job), "finished", False))
    assert path.exists()
    taken = as_other_host(path)
    assert taken.returncode == 0, taken.stderr
    assert f"its Slurm job {job} has ended (CANCELLED)" in taken.stderr
    assert not path.exists()
