"""Which Slurm arrays were submitted for a run: RESULTS/RUN/submissions.jsonl, one JSON object a line.

`status` learns a run's job ids here (queued tasks hold no lease yet) and finds each task's log. A plain
`sbatch slurm/array.sh` array is written here only as each task starts; until then `status` is told of its pending
tasks by its caller, from squeue (job/cli/plain_arrays.py). A line is appended with one write() of O_APPEND, so
concurrent writers on one host never interleave; a torn or foreign line is skipped on reading, and a task named by
several lines takes its newest line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from job import slurm
from job.files import read_bounded
from job.results.layout import RunLayout
from job.times import utc_now

# A line is about 250 bytes: a million submitted tasks fit.
MAX_SUBMISSIONS_BYTES = 256 << 20


@dataclass(frozen=True)
class Submission:
    """One array task of a submission: Slurm's array job and index, and the pair (by task id) it runs."""

    array_job_id: str
    array_index: int
    task_id: int  # the pair, as in `run --task-id`
    config_id: str
    log: str  # the task's log file, with Slurm's %A (array job id), %a (array index), %x (job name) if a pattern
    job_name: str
    time_utc: str

    @property
    def job_id(self) -> str:
        return f"{self.array_job_id}_{self.array_index}"

    def log_path(self) -> Path | None:
        if not self.log:
            return None
        expanded = (
            self.log.replace("%%", "\0")
            .replace("%A", self.array_job_id)
            .replace("%a", str(self.array_index))
            .replace("%x", self.job_name)
        )
        return Path(expanded.replace("\0", "%"))


def record_submission(
    layout: RunLayout,
    *,
    array_job_id: str,
    tasks: dict[int, int],
    config_id: str,
    log: str,
    job_name: str,
) -> None:
    """Append one submission: `tasks` maps array index -> pair task id (identity for slurm/array.sh)."""
    if not str(array_job_id).isdigit():
        raise ValueError(f"not a Slurm array job id: {array_job_id!r}")
    line = {
        "time_utc": utc_now(),
        "array_job_id": str(array_job_id),
        "tasks": {str(index): task_id for index, task_id in sorted(tasks.items())},
        "config_id": config_id,
        "log": str(log),
        "job_name": job_name,
    }
    path = layout.submissions
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(line, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def record_running_task(layout: RunLayout, config_id: str, task_id: int | None) -> None:
    """Record the array task this process runs in, unless its submitter did: `sbatch slurm/array.sh` records nothing
    at submission, so each of its tasks records itself (index = pair task id) with the log Slurm writes.

    Only a task whose array index is its pair's task id (`task_id`) is such a task: a `submit` array maps its own
    indices to pairs and records them itself, and a final model is no pair.
    """
    array_job, index = os.environ.get("SLURM_ARRAY_JOB_ID", ""), os.environ.get("SLURM_ARRAY_TASK_ID", "")
    if not (array_job.isdigit() and index.isdigit()) or task_id is None or int(index) != task_id:
        return
    if any(s.array_job_id == array_job and s.array_index == int(index) for s in read_submissions(layout)):
        return
    logs = slurm.log_paths(f"{array_job}_{index}")
    record_submission(
        layout,
        array_job_id=array_job,
        tasks={int(index): int(index)},
        config_id=config_id,
        log=logs[1] if logs else "",  # stderr: where `run` reports why it failed (the same file in slurm/array.sh)
        job_name=os.environ.get("SLURM_JOB_NAME", ""),
    )


def read_submissions(layout: RunLayout) -> list[Submission]:
    """Every recorded array task, newest line winning per (array job, index); [] without the file."""
    path = layout.submissions
    if not os.path.lexists(path):
        return []
    # A FIFO or /dev/zero put there would hang status and every task before its lease: read bounded.
    lines = read_bounded(path, MAX_SUBMISSIONS_BYTES, "a run's submissions hold").decode(errors="replace").splitlines()
    found: dict[tuple[str, int], Submission] = {}
    for line in lines:
        try:
            entry = json.loads(line)
            for index, task_id in entry["tasks"].items():
                submission = Submission(
                    array_job_id=str(entry["array_job_id"]),
                    array_index=int(index),
                    task_id=int(task_id),
                    config_id=str(entry["config_id"]),
                    log=str(entry["log"]),
                    job_name=str(entry["job_name"]),
                    time_utc=str(entry["time_utc"]),
                )
                if submission.array_job_id.isdigit():
                    found[(submission.array_job_id, submission.array_index)] = submission
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # a torn last line (a writer killed mid-write on a network file system) or a foreign one
    return list(found.values())
