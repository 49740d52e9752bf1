"""Which Slurm arrays were submitted for a run: RESULTS/RUN/submissions.jsonl, one JSON object a line.

`status` learns a run's job ids here (queued tasks hold no lease yet) and finds each task's log. An array task trains
one pair, or several one after another (a packed task: `run --task-ids`, `--pairs-per-task`): a line maps each array
index to its task id, or to the list of its task ids. A plain `sbatch slurm/array.sh` array is written here only as
each task starts; until then `status` is told of its pending tasks by its caller, from squeue
(job/cli/plain_arrays.py). A line is appended with one write() of O_APPEND, so
concurrent writers on one host never interleave; a torn or foreign line is skipped on reading, and a task named by
several lines takes its newest line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
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
    """One pair of an array task of a submission: Slurm's array job and index, and the pair (by task id) it runs."""

    array_job_id: str
    array_index: int
    task_id: int  # the pair, as in `run --task-id`
    config_id: str
    log: str  # the task's log file, with Slurm's %A (array job id), %a (array index), %x (job name) if a pattern
    job_name: str
    time_utc: str
    pack: tuple[int, ...] = ()  # every task id the array task trains, in order, when it trains several

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


@dataclass(frozen=True)
class ArrayTask:
    """What `run` was given as an array index: index `index` of `sbatch slurm/array.sh` trains these task ids (its
    own id, or the pack `--pairs-per-task` makes of it)."""

    index: int
    task_ids: tuple[int, ...]


def record_submission(
    layout: RunLayout,
    *,
    array_job_id: str,
    tasks: Mapping[int, int | Sequence[int]],
    config_id: str,
    log: str,
    job_name: str,
) -> None:
    """Append one submission: `tasks` maps array index -> the pair task id it trains (identity for slurm/array.sh),
    or the task ids of a packed task."""
    if not str(array_job_id).isdigit():
        raise ValueError(f"not a Slurm array job id: {array_job_id!r}")
    line = {
        "time_utc": utc_now(),
        "array_job_id": str(array_job_id),
        "tasks": {str(index): _ids_json(ids) for index, ids in sorted(tasks.items())},
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


def _ids_json(ids: int | Sequence[int]) -> int | list[int]:
    """A task's pairs as a line holds them: one task id as a number (as before packs existed), several as a list."""
    if isinstance(ids, int):
        return ids
    return ids[0] if len(ids) == 1 else list(ids)


def record_running_task(layout: RunLayout, config_id: str, task: ArrayTask) -> None:
    """Record the array task this process runs in, unless its submitter did: `sbatch slurm/array.sh` records nothing
    at submission, so each of its tasks records itself (its index and the task ids it trains) with the log Slurm
    writes.

    Only a task whose array index is the one `run` was given (`task.index`) is such a task: a `submit` array maps
    its own indices to pairs and records them itself, and a final model is no pair.
    """
    array_job, index = os.environ.get("SLURM_ARRAY_JOB_ID", ""), os.environ.get("SLURM_ARRAY_TASK_ID", "")
    if not (array_job.isdigit() and index.isdigit()) or int(index) != task.index:
        return
    if any(s.array_job_id == array_job and s.array_index == int(index) for s in read_submissions(layout)):
        return
    logs = slurm.log_paths(f"{array_job}_{index}")
    record_submission(
        layout,
        array_job_id=array_job,
        tasks={task.index: task.task_ids},
        config_id=config_id,
        log=logs[1] if logs else "",  # stderr: where `run` reports why it failed (the same file in slurm/array.sh)
        job_name=os.environ.get("SLURM_JOB_NAME", ""),
    )


def read_submissions(layout: RunLayout) -> list[Submission]:
    """Every pair of every recorded array task (a packed task: one Submission per pair), newest line winning per
    (array job, index); [] without the file."""
    path = layout.submissions
    if not os.path.lexists(path):
        return []
    # A FIFO or /dev/zero put there would hang status and every task before its lease: read bounded.
    lines = read_bounded(path, MAX_SUBMISSIONS_BYTES, "a run's submissions hold").decode(errors="replace").splitlines()
    found: dict[tuple[str, int], list[Submission]] = {}
    for line in lines:
        try:
            entry = json.loads(line)
            array_job = str(entry["array_job_id"])
            for index, ids in entry["tasks"].items():
                task_ids = tuple(int(task_id) for task_id in ids) if isinstance(ids, list) else (int(ids),)
                submissions = [
                    Submission(
                        array_job_id=array_job,
                        array_index=int(index),
                        task_id=task_id,
                        config_id=str(entry["config_id"]),
                        log=str(entry["log"]),
                        job_name=str(entry["job_name"]),
                        time_utc=str(entry["time_utc"]),
                        pack=task_ids if len(task_ids) > 1 else (),
                    )
                    for task_id in task_ids
                ]
                if array_job.isdigit():
                    found[(array_job, int(index))] = submissions
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # a torn last line (a writer killed mid-write on a network file system) or a foreign one
    return [submission for submissions in found.values() for submission in submissions]
