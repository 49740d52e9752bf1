"""An exclusive lease per pair, so that no two processes ever train the same pair into the same folder.

The lease is a small JSON file beside the pair's result (`fold-K.lease`) naming its holder: host, boot id, pid and
the process's start time (so a reused pid is not mistaken for the holder), the Slurm job/array/task id and restart
count, the start time and the config id. Why a file and not `fcntl`/`flock`: results live on shared cluster file
systems (Lustre, NFS, GPFS), where POSIX locks are a mount option (Lustre `-o flock`, NFS needs lockd) that many
sites turn off, and a lock vanishes silently when the node holding it dies. Creating a file is atomic on all of
them: the lease is written complete to a unique temp file, fsynced, then hard-linked to its name; `link(2)` fails
with EEXIST when the name exists (atomic on NFSv2+ and Lustre, unlike O_EXCL on NFSv2), and the other process never
sees a half-written lease. (The open(2) man page recommends exactly this for lock files on NFS, including the
st_nlink check when the server's reply to link() is lost.)

A lease whose holder is gone is taken over, with a line on stderr saying so: on the holder's own host (same host
name and boot) when its pid is absent or now belongs to another process; elsewhere when its Slurm job is no longer
running (job/slurm.py asks squeue/sacct) or when it is an earlier run of this very job (requeued). A holder that
cannot be checked from here (another host, no Slurm answer) counts as alive: the message says which file to remove.
The take-over is race-free: the stale file is renamed to a unique name first (one rename wins), and the winner
checks the file it moved is the stale one (else it links it back), then competes for the name like anyone else.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

from job import atomic, slurm
from job.errors import JobError
from job.files import read_bounded
from job.slurm import TaskState
from job.times import parse_utc, utc_now

MAX_LEASE_BYTES = 1 << 16  # a lease is about 400 bytes
ATTEMPTS = 5  # acquire rounds: each lost race re-reads the lease; five lost races in a row cannot be bad luck


class LeaseHeld(JobError):
    """Another live process holds the pair. Exit 75 (EX_TEMPFAIL in sysexits.h: "try again later"): not a failure
    of this process (1), nor a usage error (2), nor a stop by a signal (3), and below the 128+N of a killed shell."""

    exit_code = 75


class LeaseLost(LeaseHeld):
    """The lease was taken over while this process ran (it was judged gone): its result must not be written."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, as written in the lease file."""

    token: str  # unique per acquisition: tells our lease from a later one by the same process
    host: str
    boot_id: str | None  # pids and /proc start times restart with the machine
    pid: int
    pid_start: str | None  # field 22 of /proc/PID/stat: clock ticks since boot
    slurm_job_id: str | None  # SLURM_JOB_ID (the raw id: unique per array task)
    slurm_array_job_id: str | None
    slurm_array_task_id: str | None
    slurm_restart_count: int
    start_utc: str
    config_id: str

    @classmethod
    def me(cls, config_id: str) -> Holder:
        env = os.environ
        return cls(
            token=uuid.uuid4().hex,
            host=socket.gethostname(),
            boot_id=_boot_id(),
            pid=os.getpid(),
            pid_start=(_process(os.getpid()) or ("", None))[1],
            slurm_job_id=env.get("SLURM_JOB_ID"),
            slurm_array_job_id=env.get("SLURM_ARRAY_JOB_ID"),
            slurm_array_task_id=env.get("SLURM_ARRAY_TASK_ID"),
            slurm_restart_count=int(env.get("SLURM_RESTART_COUNT") or 0),
            start_utc=utc_now(),
            config_id=config_id,
        )

    @property
    def slurm_task(self) -> str | None:
        """The id squeue and sacct know the holder's task by: '123_4' in an array, else '123'."""
        if self.slurm_array_job_id and self.slurm_array_task_id:
            return f"{self.slurm_array_job_id}_{self.slurm_array_task_id}"
        return self.slurm_job_id

    def describe(self) -> str:
        job = f", Slurm job {self.slurm_task}" if self.slurm_task else ""
        return f"pid {self.pid} on {self.host}{job}, config {self.config_id}, since {self.start_utc}"


def read_holder(path: Path) -> Holder | None:
    """The lease's holder; None when there is no lease (or it is not one of ours: a foreign file is left alone)."""
    try:
        # a FIFO or /dev/zero would wait or read forever
        data = json.loads(read_bounded(Path(path), MAX_LEASE_BYTES, "a lease holds"))
        return _checked(Holder(**data))
    except (JobError, OSError, ValueError, TypeError) as error:
        if not os.path.lexists(path):
            return None  # no lease, or released while we read it
        hint = "remove it if no process is training this pair"
        raise JobError(f"{path}: not a readable lease ({error}); {hint}") from None


def _checked(holder: Holder) -> Holder:
    """The holder, if each field has its type: a hand-edited lease must not reach os.kill or fromisoformat as
    something else, nor pass for a live holder (kill(2) reads pid 0 and -1 as process groups: always "alive")."""
    if type(holder.pid) is not int or not 0 < holder.pid < 2**31:
        raise ValueError(f"pid {holder.pid!r} is not a process id")
    if type(holder.slurm_restart_count) is not int:
        raise ValueError(f"slurm_restart_count {holder.slurm_restart_count!r} is not a count")
    for name, value in vars(holder).items():
        optional = name in ("boot_id", "pid_start", "slurm_job_id", "slurm_array_job_id", "slurm_array_task_id")
        if name not in ("pid", "slurm_restart_count") and not (isinstance(value, str) or optional and value is None):
            raise ValueError(f"{name} {value!r} is not a string")
    parse_utc(holder.start_utc)  # a stamp without its time zone would crash status later
    return holder


def gone_because(holder: Holder, slurm_task: Callable[[str], TaskState | None] | None = None) -> str | None:
    """Why the holder is certainly gone, or None while it may still be running.

    `slurm_task` looks a job id up (default: ask Slurm now; status passes the answers of one query for all pairs).
    """
    me = Holder.me(holder.config_id)
    if holder.host == me.host and holder.boot_id != me.boot_id and None not in (holder.boot_id, me.boot_id):
        return f"{holder.host} has restarted since"
    if holder.host == me.host:
        process = _process(holder.pid)
        if process is None and not _pid_exists(holder.pid):
            return f"pid {holder.pid} no longer exists on {holder.host}"
        if process is not None and process[0] in ("Z", "X"):
            return f"pid {holder.pid} on {holder.host} has exited"
        if process is not None and holder.pid_start is not None and process[1] != holder.pid_start:
            return f"pid {holder.pid} on {holder.host} is now another process"
        return None
    if holder.slurm_job_id and holder.slurm_job_id == me.slurm_job_id:
        # One Slurm job runs once at a time: a lease of our own job from another host or boot is a requeued run's.
        return f"it was an earlier run of this Slurm job {holder.slurm_task} (requeued)"
    if holder.slurm_task and (slurm_task is not None or slurm.available()):
        try:
            state = (slurm_task or slurm.task)(holder.slurm_task)
        except slurm.SchedulerError:
            return None  # cannot tell: alive
        if state is not None and state.finished:
            return f"its Slurm job {holder.slurm_task} has ended ({state.state})"
    return None


class Lease:
    """`with Lease.acquire(path, config_id) as lease:` ... `lease.ensure_ours()` just before writing the result."""

    def __init__(self, path: Path, holder: Holder) -> None:
        self.path = path
        self.holder = holder

    @classmethod
    def acquire(cls, path: Path, config_id: str, doing: str = "trained") -> Lease:
        """Take the lease at `path`, taking over a gone holder's; LeaseHeld names a live one and what it is `doing`
        (a pair or final model is trained, an ensemble made)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        me = Holder.me(config_id)
        for _ in range(ATTEMPTS):
            if _create(path, me):
                return cls(path, me)
            holder = read_holder(path)
            if holder is None:
                continue  # released between our link and our read: try again
            reason = gone_because(holder)
            if reason is None:
                hint = "" if holder.host == me.host else f" (if it is gone and Slurm cannot tell, remove {path})"
                raise LeaseHeld(f"{path.parent.name}/{path.stem} is being {doing} by {holder.describe()}{hint}")
            if _remove_stale(path, holder):
                print(f"{path}: taking over the lease of {holder.describe()}: {reason}", file=sys.stderr, flush=True)
        raise LeaseHeld(f"{path}: lost {ATTEMPTS} races for the lease in a row; another process is taking it")

    def still_ours(self) -> bool:
        try:
            holder = read_holder(self.path)
        except JobError:
            return False
        return holder is not None and holder.token == self.holder.token

    def ensure_ours(self) -> None:
        """Raise LeaseLost unless the lease is still ours: call it just before the result's rename."""
        if not self.still_ours():
            try:
                now = read_holder(self.path)
            except JobError:
                now = None
            by = f"; it is now held by {now.describe()}" if now is not None else ""
            raise LeaseLost(f"{self.path}: the lease was taken over while this process ran{by}; result not written")

    def release(self) -> None:
        """Remove the lease file, only if it is still ours."""
        if self.still_ours():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def _create(path: Path, holder: Holder) -> bool:
    """Atomically create the lease with its full content; False when the name is taken."""
    return atomic.create(path, json.dumps(asdict(holder)).encode())


def _remove_stale(path: Path, stale: Holder) -> bool:
    """Remove the lease of the gone holder `stale`; False when another process moved it first."""
    moved = path.with_name(f".{path.name}.stale-{uuid.uuid4().hex}")
    try:
        os.rename(path, moved)  # of several processes judging the same lease stale, one rename wins
    except FileNotFoundError:
        return False
    try:
        holder = read_holder(moved)
    except JobError:
        holder = None
    if holder is not None and holder.token != stale.token:
        # Between our read and our rename a winner put its fresh lease there: give it back.
        with contextlib.suppress(FileExistsError):
            os.link(moved, path)
    moved.unlink(missing_ok=True)
    return holder is not None and holder.token == stale.token


def _process(pid: int) -> tuple[str, str] | None:
    """The process's state letter and start time in clock ticks after boot (/proc/PID/stat fields 3 and 22)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the command name in (...) may hold spaces and parentheses
    return (fields[0], fields[19]) if len(fields) > 19 else None


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
