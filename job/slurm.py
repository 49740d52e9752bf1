"""What Slurm says about the pairs' jobs: squeue for the live array tasks, sacct for the finished ones.

The only module that runs squeue or sacct (status, the lease's stale-holder check, and the search by job name for
plain `sbatch slurm/array.sh` arrays, whose squeue lines carry the working folder and the script's arguments). Standard
library only, and nothing at all happens without Slurm: `available()` is False and every query answers with no tasks.
Slurm's output is parsed defensively: a pending array is one line with a task range (`123_[4-9%2]`) unless expanded,
sacct never expands a pending or never-started range, and its states carry suffixes ("CANCELLED by 1000").
"""

from __future__ import annotations

import getpass
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from job.errors import JobError

TIMEOUT_S = 30  # a slurmctld that does not answer in this long is down; say so rather than hang
# Live states as squeue shows them; a task in one of these has not ended.
LIVE = frozenset(
    {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD"}
    | {"RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"}
)
# Where a task can end; REQUEUED in sacct is the record of a run that was requeued (the task itself lives on).
FINISHED = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL"}
    | {"DEADLINE", "REVOKED", "SPECIAL_EXIT"}
)
MAX_ARRAY_SIZE = 4_000_001  # Slurm's largest MaxArraySize: no real range is longer
_JOB_ID = re.compile(r"^\d+(_\d+)?$")
# squeue's --Format, each field ended by the ASCII unit separator: the name, the working folder and the command are
# a user's to fill ("|" included); the command last, since an argument may hold anything.
_SEP = "\x1f"
_SQUEUE_COLUMNS = (
    "ArrayJobID", "ArrayTaskID", "State", "Reason", "NodeList", "TimeUsed", "Restartcnt", "TimeLimit", "Name",
    "WorkDir", "Command",
)  # fmt: skip
_SQUEUE_FIELDS = ",".join(f"{column}:{_SEP}" for column in _SQUEUE_COLUMNS)
_SACCT_FIELDS = "JobID,State,ExitCode,Reason,NodeList,ElapsedRaw,JobName"


class SchedulerError(JobError):
    """squeue or sacct failed or timed out: one line with its own message."""


@dataclass(frozen=True)
class TaskState:
    """One array task (or a plain job, task_id None) as Slurm reports it."""

    array_job_id: str
    task_id: int | None
    state: str  # Slurm's name, first word only: PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT...
    source: str  # "squeue" (live) or "sacct" (accounting)
    reason: str = ""  # why it is pending (squeue), or sacct's Reason
    node: str = ""
    elapsed_s: int | None = None
    exit_code: int | None = None  # from sacct's ExitCode "3:0" -> 3
    signal: int | None = None  # from sacct's ExitCode "0:9" -> 9
    restarts: int = 0  # requeues so far (squeue's restart count; at least 1 when sacct shows a REQUEUED run)
    name: str = ""
    time_limit_s: int | None = None  # squeue's TimeLimit; None when UNLIMITED or from sacct
    workdir: str = ""  # squeue's WorkDir: sbatch's --chdir, else the folder it ran in
    # squeue's Command: the batch script and its arguments joined by spaces, unquoted ("" from sacct, "(null)" for
    # --wrap): an argument holding a space cannot be told apart from two.
    command: str = ""

    @property
    def job_id(self) -> str:
        return self.array_job_id if self.task_id is None else f"{self.array_job_id}_{self.task_id}"

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


def available() -> bool:
    return shutil.which("squeue") is not None


def tasks(job_ids: Iterable[str]) -> dict[str, TaskState]:
    """job id ("123" or "123_4") -> state, for every task of the given jobs Slurm still knows about."""
    ids = sorted(set(job_ids))
    bad = [i for i in ids if not _JOB_ID.match(i)]
    if bad:
        raise SchedulerError(f"not a Slurm job id: {bad[0]!r}")
    if not ids or not available():
        return {}
    selection = ",".join(ids)
    return _merge(_squeue(["-j", selection]), _sacct(["-j", selection]))


def live_tasks(name: str, user: str | None = None) -> list[TaskState]:
    """Every live task of the jobs called `name` of `user` (default: this user), as squeue shows them: with the
    working folder and command line a plain `sbatch SCRIPT ARGS` array is known by before any task records itself."""
    if not available():
        return []
    return _squeue(["-n", name, "-u", user or getpass.getuser()])


def task(job_id: str) -> TaskState | None:
    """One task's state, or None when Slurm (or this host) knows nothing of it."""
    return tasks([job_id]).get(job_id)


def log_paths(job_id: str) -> tuple[str, str] | None:
    """The (stdout, stderr) files of a live or just-ended task, as slurmctld resolved them; None when unknown."""
    if not _JOB_ID.match(job_id) or shutil.which("scontrol") is None:
        return None
    out = _run(["scontrol", "show", "job", "-o", job_id])
    fields = dict(f.split("=", 1) for f in out.stdout.split() if "=" in f) if out.returncode == 0 else {}
    if "StdOut" not in fields:
        return None
    return fields["StdOut"], fields.get("StdErr", fields["StdOut"])


def _merge(live: list[TaskState], accounted: list[TaskState]) -> dict[str, TaskState]:
    """squeue wins for a task it still lists (sacct lags it); sacct adds finished tasks and past requeues."""
    merged = {t.job_id: t for t in accounted}
    for state in live:
        past = merged.get(state.job_id)
        requeued = past is not None and past.state in ("REQUEUED", "PREEMPTED")
        merged[state.job_id] = replace(state, restarts=max(state.restarts, int(requeued)))
    return merged


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            command, capture_output=True, text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL, check=False
        )
    except subprocess.TimeoutExpired:
        raise SchedulerError(f"{command[0]} did not answer in {TIMEOUT_S}s (is slurmctld up?)") from None
    except OSError as error:
        raise SchedulerError(f"cannot run {command[0]}: {error.strerror or error}") from None


def _squeue(selection: list[str]) -> list[TaskState]:
    out = _run(["squeue", "--noheader", "--array", "-O", _SQUEUE_FIELDS, *selection])
    if out.returncode != 0:
        if "Invalid job id" in out.stderr:  # every id given has left slurmctld's memory
            return []
        raise SchedulerError(f"squeue failed: {_first_line(out.stderr)}")
    return _parse_squeue(out.stdout)


def _parse_squeue(text: str) -> list[TaskState]:
    """The tasks of squeue's lines in _SQUEUE_FIELDS' format."""
    found = []
    for line in text.splitlines():
        fields = line.removesuffix(_SEP).split(_SEP, len(_SQUEUE_COLUMNS) - 1)
        if len(fields) != len(_SQUEUE_COLUMNS):
            continue  # not a line of ours (a site's squeue wrapper chatter)
        array_job, task_ids, state, reason, node, used, restarts, limit, name = (f.strip() for f in fields[:-2])
        workdir, command = fields[-2:]
        found += _each_task(
            array_job,
            task_ids,
            state=_state(state),
            source="squeue",
            reason="" if reason == "None" else reason,
            node=node,
            elapsed_s=_seconds(used),
            restarts=int(restarts) if restarts.isdigit() else 0,
            name=name,
            time_limit_s=_seconds(limit),
            workdir=workdir,
            command=command.strip(),
        )
    return found


def _sacct(selection: list[str]) -> list[TaskState]:
    out = _run(["sacct", "-X", "--parsable2", "--noheader", "-o", _SACCT_FIELDS, *selection])
    if out.returncode != 0:
        return []  # accounting is off or slurmdbd is down: squeue alone still tells the live tasks
    found = []
    for line in out.stdout.splitlines():
        fields = line.split("|", 6)
        if len(fields) != 7:
            continue
        job_id, state, exit_code, reason, node, elapsed, name = fields
        array_job, _, task_ids = job_id.partition("_")
        code, _, sig = exit_code.partition(":")
        found += _each_task(
            array_job,
            task_ids,
            state=_state(state),
            source="sacct",
            reason="" if reason == "None" else reason,
            node="" if node == "None assigned" else node,
            elapsed_s=int(elapsed) if elapsed.isdigit() else None,
            exit_code=int(code) if code.isdigit() else None,
            signal=int(sig) if sig.isdigit() else None,
            name=name,
        )
    return found


def _each_task(array_job: str, task_ids: str, **fields: Any) -> list[TaskState]:
    """One TaskState per task id of a squeue or sacct line ('4', '[4-9%2]', ...), all with the line's fields."""
    return [TaskState(array_job_id=array_job, task_id=task_id, **fields) for task_id in _task_ids(task_ids)]


def _task_ids(text: str) -> list[int | None]:
    """'' or 'N/A' (a plain job) -> [None]; '4', '[4-9%2]', '0,2-4' -> the ids."""
    text = text.strip().strip("[]").partition("%")[0]
    if text in ("", "N/A"):
        return [None]
    ids: list[int | None] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        if not first.isdigit() or not (last or first).isdigit() or int(last or first) - int(first) > MAX_ARRAY_SIZE:
            return []  # a shape Slurm never printed so far: no task rather than a wrong one
        ids.extend(range(int(first), int(last or first) + 1))
    return ids


def _state(text: str) -> str:
    """'CANCELLED by 1000' -> 'CANCELLED'; 'CANCELLED+' (truncated) -> 'CANCELLED'."""
    words = text.split()
    return words[0].rstrip("+") if words else "UNKNOWN"


def _seconds(text: str) -> int | None:
    """squeue's TimeUsed ('0:05', '1:02:03', '2-01:02:03') in seconds."""
    days, _, clock = text.rpartition("-")
    parts = clock.split(":")
    if not all(p.isdigit() for p in parts) or not 1 <= len(parts) <= 3 or (days and not days.isdigit()):
        return None
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + int(part)
    return seconds + int(days or 0) * 86400


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "no message"
