"""Where each pair of a run folder stands: done, running, queued, failed... in one place.

Read from the result files, the leases (who trains a pair now), the checkpoints (how far it got), the submission
record (which Slurm tasks were meant to run it) and, when Slurm is there, one squeue and one sacct for all of them.
A plain `sbatch slurm/array.sh` array is recorded only as each of its tasks starts: the caller says which live tasks
of such arrays write this run with this config (`plain_arrays`), and each counts for the pairs its index names.
A packed task trains several pairs one after another: while it runs, the pair it holds the lease of is running,
the ones after it wait their turn (queued), and one before it without a result was gone past (failed).
Without Slurm the same files still tell done, running (a live lease), interrupted and missing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

from job import slurm
from job.errors import JobError
from job.files import read_tail
from job.protocol import Pair, Protocol, all_pairs
from job.results import checkpoint_state, store, verification
from job.results.layout import RunLayout
from job.results.lease import Holder, gone_because, read_holder
from job.results.projection import projection
from job.results.submissions import Submission, read_submissions
from job.slurm import TaskState
from job.times import parse_utc

LOG_TAIL_BYTES = 64 * 1024  # the last error line is near the end; a log can be megabytes of epochs
ERROR_WORDS = ("error", "traceback", "killed", "cancelled", "oom", "exception", "due to time limit")


class PairState(str, Enum):
    """A pair's state; a str, so `state == "done"` keeps working for callers that compare names."""

    DONE = "done"
    RUNNING = "running"
    QUEUED = "queued"
    REQUEUED = "requeued"  # pending again after a requeue (time-limit warning, preemption, scontrol requeue)
    FAILED = "failed"  # its Slurm task ended FAILED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL...
    CANCELLED = "cancelled"
    PREEMPTED = "preempted"
    INTERRUPTED = "interrupted"  # a checkpoint, and nothing running or queued to finish it
    MISSING = "missing"
    CORRUPT = "corrupt"  # a result file that cannot be read
    OTHER_CONFIG = "other config"  # a result of another config holds the pair's path
    BAD_LEASE = "bad lease"  # a lease file that is not a lease: `run` refuses the pair until someone removes it
    IN_THE_WAY = "in the way"  # a symlink or a file of the wrong kind at one of its paths: `run` refuses the pair

    @property
    def blocked(self) -> bool:
        """Whether a task for the pair would fail at once: a person has to act first (another --run, rm)."""
        return self in (PairState.OTHER_CONFIG, PairState.BAD_LEASE, PairState.IN_THE_WAY)

    @property
    def needs_run(self) -> bool:
        """Whether submitting the pair again makes sense: neither done nor queued nor running nor blocked."""
        done_or_coming = (PairState.DONE, PairState.RUNNING, PairState.QUEUED, PairState.REQUEUED)
        return self not in done_or_coming and not self.blocked


FINISHED_AS = {"CANCELLED": PairState.CANCELLED, "PREEMPTED": PairState.PREEMPTED}
RUNNING_STATES = ("RUNNING", "COMPLETING", "CONFIGURING")  # a live task that has its node


@dataclass(frozen=True)
class PairStatus:
    task_id: int
    pair: Pair
    state: PairState
    detail: str  # one line for the table
    path: Path  # the result file
    accuracy: float | None = None
    job_id: str | None = None
    node: str | None = None
    epochs_done: int | None = None
    elapsed_s: int | None = None
    reason: str | None = None  # why it is queued
    slurm_state: str | None = None
    exit_code: int | None = None
    log: Path | None = None
    last_error: str | None = None
    time_limit_s: int | None = None  # the Slurm task's limit, when squeue tells it
    projected_s: int | None = None  # a running pair's projected total, from its latest epoch's pace
    verified: str | None = None  # a done pair's verdict of `verify`, while its record is of the result as it is

    def to_json(self) -> dict[str, Any]:
        rest = {k: v for k, v in vars(self).items() if k not in ("task_id", "pair", "state", "path", "log")}
        where = {"path": str(self.path), "log": None if self.log is None else str(self.log)}
        pair = {"model": self.pair.model, "fold": self.pair.fold, "repeat": self.pair.repeat}
        head = {"task_id": self.task_id, **pair, "state": self.state.value}
        return head | rest | where


@dataclass(frozen=True)
class PlainTask:
    """A live task of a plain `sbatch slurm/array.sh` array, and the pairs (task ids) its index names: its own id,
    or the pack of `run --pairs-per-task`."""

    state: TaskState
    task_ids: tuple[int, ...]


def no_plain_arrays(layout: RunLayout, protocol: Protocol) -> list[PlainTask]:
    """No plain arrays: the default of a caller that cannot read a job's arguments."""
    return []


def status(
    layout: RunLayout,
    protocol: Protocol,
    *,
    repeats: int = 1,
    queue: Callable[[Iterable[str]], dict[str, TaskState]] = slurm.tasks,
    plain_arrays: Callable[[RunLayout, Protocol], Iterable[PlainTask]] = no_plain_arrays,
) -> list[PairStatus]:
    """One PairStatus per pair of `repeats` repeats, in task-id order. `queue` answers what the scheduler says of
    the jobs named (job id -> TaskState); Slurm's squeue and sacct by default, nothing where Slurm is not installed.
    `plain_arrays` gives the live tasks of arrays that write `layout` with `protocol`'s config and whose index names
    the pairs they train (slurm/array.sh's), recorded or not; none by default (reading a job's arguments is the CLI's).
    """
    pairs = all_pairs(protocol.n_folds, repeats)
    submitted = read_submissions(layout)
    recorded = {s.job_id for s in submitted}
    # A task records itself when it starts; until then squeue's answer is all there is of it.
    plain = {t.state.job_id: t for t in plain_arrays(layout, protocol) if t.state.job_id not in recorded}
    submitted += [
        Submission(
            t.state.array_job_id, index, task_id, protocol.config_id, log="", job_name=t.state.name, time_utc="",
            pack=t.task_ids if len(t.task_ids) > 1 else (),
        )
        for t in plain.values()
        if (index := t.state.task_id) is not None
        for task_id in t.task_ids
    ]  # fmt: skip
    holders = {pair: _holder(layout.pair_paths(pair).lease) for pair in pairs}
    job_ids = recorded | {h.slurm_task for h in holders.values() if isinstance(h, Holder) and h.slurm_task}
    states = {job_id: t.state for job_id, t in plain.items()} | (queue(job_ids) if job_ids else {})
    # The pair a running packed task trains now: the one whose lease it holds.
    training = {
        h.slurm_task: task_id for task_id, h in enumerate(holders.values()) if isinstance(h, Holder) and h.slurm_task
    }
    return [
        _status_of(
            task_id,
            pair,
            layout,
            protocol,
            holders[pair],
            [s for s in submitted if s.task_id == task_id],
            states,
            training,
        )
        for task_id, pair in enumerate(pairs)
    ]


def _holder(path: Path) -> Holder | JobError | None:
    """The lease's holder, None without a lease, or the error that says why the lease cannot be read."""
    try:
        return read_holder(path)
    except JobError as error:
        return error


def _status_of(
    task_id: int,
    pair: Pair,
    layout: RunLayout,
    protocol: Protocol,
    holder: Holder | JobError | None,
    submitted: list[Submission],
    states: dict[str, TaskState],
    training: dict[str, int],
) -> PairStatus:
    paths = layout.pair_paths(pair)
    path = paths.result
    base = {"task_id": task_id, "pair": pair, "path": path}
    if blocked := store.in_the_way(layout, paths):
        return PairStatus(state=PairState.IN_THE_WAY, detail=blocked, **base)
    if path.exists():
        try:
            result = store.check_pair(path, layout)
        except store.ResultError as error:
            return PairStatus(state=PairState.CORRUPT, detail=str(error), **base)
        if result.config_id != protocol.config_id:
            return PairStatus(state=PairState.OTHER_CONFIG, detail=f"config {result.config_id}", **base)
        accuracy, record = result.score.accuracy, verification.current(layout, pair)
        verdict = None if record is None else record.verdict.value
        return PairStatus(
            state=PairState.DONE, detail=f"{accuracy * 100:.3f}%", accuracy=accuracy, verified=verdict, **base
        )
    if isinstance(holder, JobError):
        return PairStatus(state=PairState.BAD_LEASE, detail=str(holder), **base)
    epochs = checkpoint_state.epochs_done(paths.checkpoint)
    stale = ""
    if holder is not None:
        gone = gone_because(holder, states.get)  # the one query's answers; empty without Slurm: alive then
        if gone is None:
            return _projected(_running(base, holder, states.get(holder.slurm_task or ""), epochs), layout, protocol)
        stale = f"; stale lease: {gone}"
    submission, task = _latest(submitted, states)
    if task is not None and task.state in RUNNING_STATES and submission is not None and submission.pack:
        return _in_pack(base, submission, task, epochs, training.get(submission.job_id))
    if task is not None and not task.finished:
        return _projected(_live(base, submission, task, epochs), layout, protocol)
    if task is not None and task.state != "COMPLETED":
        return _ended(base, submission, task, epochs, stale)
    if submission is not None and task is None and any(s.startswith(f"{submission.array_job_id}_") for s in states):
        # Slurm drops a task cancelled before it started from its array and from accounting alike.
        return PairStatus(
            state=PairState.CANCELLED,
            detail=f"job {submission.job_id} cancelled before it started{stale}",
            job_id=submission.job_id,
            **base,
        )
    if epochs is not None:
        return PairStatus(
            state=PairState.INTERRUPTED,
            detail=f"checkpoint after epoch {epochs}, nothing running{stale}",
            epochs_done=epochs,
            **base,
        )
    return PairStatus(state=PairState.MISSING, detail=stale.removeprefix("; "), **base)


def _latest(submitted: list[Submission], states: dict[str, TaskState]) -> tuple[Submission | None, TaskState | None]:
    """The submission that speaks for the pair: a live task first (running before pending), else the newest."""
    live = [s for s in submitted if s.job_id in states and not states[s.job_id].finished]
    if live:
        chosen = max(live, key=lambda s: (states[s.job_id].state == "RUNNING", s.time_utc, int(s.array_job_id)))
    elif submitted:
        chosen = max(submitted, key=lambda s: (s.time_utc, int(s.array_job_id)))
    else:
        return None, None
    return chosen, states.get(chosen.job_id)


def _running(base: dict[str, Any], holder: Holder, task: TaskState | None, epochs: int | None) -> PairStatus:
    started = parse_utc(holder.start_utc)  # checked when the lease was read
    elapsed = task.elapsed_s if task is not None and task.elapsed_s is not None else _since(started)
    node = task.node if task is not None and task.node else holder.host
    job = holder.slurm_task
    where = f"job {job} on {node}" if job else f"pid {holder.pid} on {node}"
    return PairStatus(
        state=PairState.RUNNING,
        detail=f"{where}, {_epochs(epochs)}, {_duration(elapsed)}",
        job_id=job,
        node=node,
        epochs_done=epochs,
        elapsed_s=elapsed,
        time_limit_s=None if task is None else task.time_limit_s,
        **base,
    )


def _projected(found: PairStatus, layout: RunLayout, protocol: Protocol) -> PairStatus:
    """A running pair with an epoch done, with when it should end at its latest epoch's pace (others unchanged)."""
    pace = (
        checkpoint_state.latest_epoch_seconds(layout.pair_paths(found.pair).checkpoint)
        if found.state == PairState.RUNNING
        else None
    )
    if pace is None or not found.epochs_done or found.elapsed_s is None:
        return found
    total, text = projection(found.elapsed_s, found.epochs_done, protocol.epochs, pace, found.time_limit_s)
    return replace(found, detail=f"{found.detail}; {text}", projected_s=total)


def _in_pack(
    base: dict[str, Any], submission: Submission, task: TaskState, epochs: int | None, training: int | None
) -> PairStatus:
    """A pair of a running packed task that holds no lease on it: gone past, or waiting its turn."""
    pack, job, log = submission.pack, submission.job_id, submission.log_path()
    position = pack.index(base["task_id"])
    common = {"job_id": job, "node": task.node or None, "epochs_done": epochs, "slurm_state": task.state, "log": log}
    if training in pack and pack.index(training) > position:
        error = None if log is None else last_error_line(log)
        where = "" if log is None else f"; log {log}" + (f": {error}" if error else "")
        detail = f"job {job} went past it without a result{where}"
        return PairStatus(state=PairState.FAILED, detail=detail, last_error=error, **common, **base)
    resume = f", resumes after epoch {epochs}" if epochs else ""
    detail = f"job {job} on {task.node} trains its {len(pack)} pairs in turn: this is number {position + 1}{resume}"
    return PairStatus(state=PairState.QUEUED, detail=detail, reason="its pack's turn", **common, **base)


def _live(base: dict[str, Any], submission: Submission | None, task: TaskState, epochs: int | None) -> PairStatus:
    if task.state in RUNNING_STATES:  # running, its lease not taken (yet)
        return PairStatus(
            state=PairState.RUNNING,
            detail=f"job {task.job_id} on {task.node}, {_epochs(epochs)}, {_duration(task.elapsed_s)}",
            job_id=task.job_id,
            node=task.node,
            epochs_done=epochs,
            elapsed_s=task.elapsed_s,
            slurm_state=task.state,
            time_limit_s=task.time_limit_s,
            **base,
        )
    requeued = task.restarts > 0 or task.state.startswith("REQUEUE")
    why = task.reason or task.state
    again = f", requeued {task.restarts}x" if task.restarts else ""
    resume = f", resumes after epoch {epochs}" if epochs else ""
    return PairStatus(
        state=PairState.REQUEUED if requeued else PairState.QUEUED,
        detail=f"job {task.job_id} ({why}){again}{resume}",
        job_id=task.job_id,
        reason=why,
        epochs_done=epochs,
        slurm_state=task.state,
        log=None if submission is None else submission.log_path(),
        **base,
    )


def _ended(
    base: dict[str, Any], submission: Submission | None, task: TaskState, epochs: int | None, stale: str
) -> PairStatus:
    log = None if submission is None else submission.log_path()
    error = None if log is None else last_error_line(log)
    code = f" exit {task.exit_code}" if task.exit_code else ""
    code += f" signal {task.signal}" if task.signal else ""
    parts = [f"job {task.job_id} {task.state}{code}"]
    if epochs is not None:
        parts.append(f"checkpoint after epoch {epochs}")
    if log is not None:
        parts.append(f"log {log}")
    if error:
        parts.append(error)
    return PairStatus(
        state=FINISHED_AS.get(task.state, PairState.FAILED),
        detail="; ".join(parts) + stale,
        job_id=task.job_id,
        node=task.node or None,
        epochs_done=epochs,
        elapsed_s=task.elapsed_s,
        slurm_state=task.state,
        exit_code=task.exit_code,
        log=log,
        last_error=error,
        **base,
    )


def last_error_line(log: Path) -> str | None:
    """The log's last line that reads like an error (else its last line); None without a readable log."""
    try:
        tail = read_tail(log, LOG_TAIL_BYTES).decode(errors="replace")
    except JobError:
        return None
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    errors = [line for line in lines if any(word in line.lower() for word in ERROR_WORDS)]
    chosen = (errors or lines or [None])[-1]
    return None if chosen is None else chosen[:300]


def _since(started: datetime) -> int:
    return max(0, int((datetime.now(timezone.utc) - started).total_seconds()))


def _epochs(epochs: int | None) -> str:
    return "no epoch done yet" if not epochs else f"{epochs} epoch{'s' * (epochs != 1)} done"


def _duration(seconds: int | None) -> str:
    if seconds is None:
        return "elapsed unknown"
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d} elapsed"


def array_spec(task_ids: list[int]) -> str:
    """Slurm's --array syntax for a set of indices, with runs collapsed: [0, 1, 2, 5, 7, 8] -> '0-2,5,7-8'."""
    spans: list[list[int]] = []
    for task_id in sorted(task_ids):
        if spans and task_id == spans[-1][1] + 1:
            spans[-1][1] = task_id
        else:
            spans.append([task_id, task_id])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
