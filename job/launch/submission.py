"""What `mnist-cv submit` does: choose the jobs (the pairs to run, or a final model), record the run's manifest,
freeze the code, submit them as one array through submitit, record the array for `status`, and with wait follow it
(collect is the command's).

With `pack`, an array task trains several pairs of one model one after another (`run --task-ids`): a given number,
or AUTO, as many as make a task last `pack_minutes` by the run's measured pairs (job/results/packing.py). One array
has one time limit: that of its longest task (N pairs x the per-pair limit, or the sizing rule on the measured
task)."""

from __future__ import annotations

import math
import os
import shlex
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from job.errors import JobError
from job.launch import resources, snapshot
from job.launch.argv import final_args, pair_args, pairs_args, verify_args
from job.launch.follow import follow
from job.protocol import Protocol, pair_for_task
from job.results import manifest, store
from job.results.layout import RunLayout
from job.results.packing import TASK_MINUTES, PairCost, pair_cost, pairs_per_task, time_limit_seconds
from job.results.projection import clock
from job.results.status import PairStatus, PlainTask, array_spec, no_plain_arrays, status
from job.results.submissions import record_submission

EXECUTORS = ("slurm", "local", "debug")
AUTO = "auto"  # `submit --pack auto`
VERIFY_JOB_NAME = "mnist-cv-verify"  # not slurm/array.sh's: no reader of squeue takes it for a training


@dataclass(frozen=True)
class Resources:
    """What each task asks of Slurm beyond the batch script's #SBATCH defaults (None: the script's)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: int | None = None  # minutes
    gpus_per_task: int | None = None
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    array_parallelism: int | None = None
    slurm_additional: tuple[tuple[str, str | bool], ...] = ()


@dataclass(frozen=True)
class Request:
    executor: str  # one of EXECUTORS
    layout: RunLayout
    protocol: Protocol
    job_options: tuple[str, ...]  # passed on to every `job run` / `job final` as given
    resources: Resources = Resources()
    repeats: int = 1  # the pairs of repeats 0 .. repeats - 1 (task ids 0 .. 10 * repeats - 1)
    task_ids: frozenset[int] | None = None  # None: every pair
    all: bool = False  # done pairs too
    final: str | None = None  # a final model's training instead of the pairs
    image: str | None = None
    logs: Path | None = None
    wait: bool = False
    dry_run: bool = False
    allow_dirty: bool = False
    live_code: bool = False
    # The live tasks of plain `sbatch slurm/array.sh` arrays writing a run with a config (status's `plain_arrays`):
    # their pairs are queued, not to submit again.
    plain_arrays: Callable[[RunLayout, Protocol], Iterable[PlainTask]] = no_plain_arrays
    pack: int | str | None = None  # pairs of one model per array task: a number, or AUTO; None: one
    pack_minutes: int = TASK_MINUTES  # with AUTO: what a task should last at least
    # Verify the pairs of task_ids (`verify --task-ids N` a task, job_options its options) instead of training them.
    verify: bool = False
    keep_model: bool = False  # the pairs keep their trained weights (`run --keep-model`)


def executor_parameters(request: Request) -> dict[str, Any]:
    """submitit's update_parameters(): the batch script's #SBATCH request, with the options given over it (the
    local and debug executors ignore the slurm_ ones)."""
    asked = resources.final() if request.final else resources.pairs()
    given = request.resources
    gpus = asked.gpus if given.gpus_per_task is None else given.gpus_per_task
    params: dict[str, Any] = {
        "name": VERIFY_JOB_NAME if request.verify else asked.job_name,
        "timeout_min": asked.time_min if given.time is None else given.time,
        "cpus_per_task": asked.cpus if given.cpus_per_task is None else given.cpus_per_task,
        "mem_gb": asked.mem_gb if given.mem_gb is None else given.mem_gb,
        # submitit's own warning comes 90 s before the limit; the batch scripts' 180 s leave a cnn epoch room.
        "slurm_signal_delay_s": asked.warning_s,
        # Where requeueing is off by default, submitit's `scontrol requeue` would be refused.
        "slurm_additional_parameters": {"requeue": asked.requeue, **dict(given.slurm_additional)},
    }
    if gpus:
        # A pair is a one-task job, so per node is per task; Slurm refuses --gpus-per-task without --ntasks.
        params["gpus_per_node"] = gpus
    for name in ("partition", "account", "qos", "array_parallelism"):
        if getattr(given, name) is not None:
            params[f"slurm_{name}"] = getattr(given, name)
    return params


def submit(request: Request) -> bool:
    """Submit what `request` asks for (or print the plan, with dry_run); with wait, follow it to its end.
    True when it waited and every job succeeded (time to collect); JobError (one line) names the jobs that failed."""
    from job.launch import task as launch  # deferred: submitit

    protocol, layout = request.protocol, request.layout
    params = executor_parameters(request)  # first: a batch script it cannot read is an error before anything else
    if request.image is not None and not Path(request.image).is_file():
        raise JobError(f"no image file {request.image}")
    chosen = jobs_to_submit(request)
    wait = request.wait or request.executor == "debug"  # the debug executor runs a job only when asked for its result
    if not chosen:
        print(f"nothing to submit: the pairs asked for are done, queued or running with config {protocol.config_id}")
        return wait and not request.dry_run
    if request.pack is not None and request.final is None:
        per_pair = params["timeout_min"]
        params["timeout_min"] = max(job.minutes(per_pair, request.resources.time is not None) for job in chosen)

    logs = (request.logs or layout.logs).absolute()
    image = str(Path(request.image).absolute()) if request.image else None  # the task starts in another folder
    code = None if request.live_code else snapshot.plan(allow_dirty=request.allow_dirty)
    workdir = os.getcwd() if code is None else str(layout.code / code.name)
    version = None if code is None else (code.commit, code.dirty)
    tasks = [launch.JobTask(job.name, job.args, image, sys.executable, workdir, version) for job in chosen]
    n_pairs = sum(len(job.task_ids) for job in chosen)
    what = "final model" if request.final else "pair" if n_pairs == 1 else "pairs" if n_pairs == len(tasks) else "tasks"
    what = f"verification of {what}" if request.verify else what
    if request.dry_run:
        print_plan(request, what, tasks, params, logs, code)
        return False
    # Before any task can start: a task given only --run reads the run's protocol and repeats there.
    if not request.verify and (grown := manifest.record(layout, protocol, request.repeats)):
        print(grown, file=sys.stderr)
    if code is not None:
        snapshot.freeze(code, layout.code)
    jobs = submit_array(request.executor, params, logs, tasks)
    # submitit submits a single job as a plain job, not an array of one: only array tasks are recorded (a plain
    # job's pair is seen by `status` through its lease once it runs).
    # Nor a verification: it trains no pair of the run (its rerun is in a scratch folder), and status must not say so.
    if request.executor == "slurm" and not request.final and not request.verify and "_" in jobs[0].job_id:
        record(request, params, logs, [job.task_ids for job in chosen], jobs)
    packed = f" ({n_pairs} pairs)" if what == "tasks" else ""
    print(f"submitted {len(jobs)} {what}{packed} of config {protocol.config_id} ({request.executor}):")
    for task, job in zip(tasks, jobs, strict=True):
        print(f"  {task.name}  job {job.job_id}")
    print(f"code: {describe_code(code, workdir)}")
    if request.executor != "debug":  # whose output comes here
        print(f"logs: {logs}/JOB_0_log.out and .err (e.g. {jobs[0].paths.stdout.name})")
    sys.stdout.flush()  # the job ids now, not when --wait ends: a pipe or a log file buffers them otherwise
    if not wait:
        return False

    failed = follow(jobs, [task.name for task in tasks], poll=request.executor != "debug")
    if failed:
        raise JobError(
            f"{len(failed)} of {len(jobs)} {what} failed ({', '.join(failed)}); "
            f"the same command resubmits only the {what} not done"
        )
    return True


@dataclass(frozen=True)
class Chosen:
    """One job to submit: what reports call it, its `job` arguments, the pairs (task ids) it trains, and how long
    its pairs should take by the run's measured ones (None: not measured, or not packed by AUTO)."""

    name: str
    args: tuple[str, ...]
    task_ids: tuple[int, ...]  # () for a final model
    expected_seconds: float | None = None

    def minutes(self, per_pair: int, given: bool) -> int:
        """Its time limit: the sizing rule on the expected seconds, else its pairs x the per-pair limit (always that
        when the per-pair limit was `given`)."""
        if self.expected_seconds is None or given:
            return max(1, len(self.task_ids)) * per_pair
        return math.ceil(time_limit_seconds(self.expected_seconds) / 60)


def jobs_to_submit(request: Request) -> list[Chosen]:
    """The jobs to submit: the final model if asked for, else the pairs to run, one or a pack a job."""
    forwarded = request.job_options
    if request.final is not None:  # a model name the command checked; `job final` itself skips a done model
        return [Chosen(f"{request.final}/final", final_args(request.final, forwarded), ())]
    if request.verify:  # the pairs the command chose, done ones: each verified in a task of its own
        n_folds = request.protocol.n_folds
        ids = sorted(request.task_ids or ())
        return [Chosen(f"verify {pair_for_task(i, n_folds, None)}", verify_args(i, forwarded), (i,)) for i in ids]
    chosen, keep = [], request.keep_model
    for pack, expected in packs(request, pairs_to_submit(request)):
        ids = tuple(s.task_id for s in pack)
        if len(pack) == 1:
            chosen.append(Chosen(str(pack[0].pair), pair_args(ids[0], forwarded, keep), ids, expected))
        else:
            spec = array_spec(list(ids))
            name = f"{pack[0].pair.model} x{len(pack)} (task ids {spec})"
            chosen.append(Chosen(name, pairs_args(spec, forwarded, keep), ids, expected))
    return chosen


def packs(request: Request, to_run: list[PairStatus]) -> list[tuple[list[PairStatus], float | None]]:
    """The pairs to run in packs of one model (in task-id order), request.pack a pack, each with the seconds it
    should take by the measured pairs (None unless AUTO measured its model)."""
    by_model: dict[str, list[PairStatus]] = {}
    for found in to_run:
        by_model.setdefault(found.pair.model, []).append(found)
    costs = measured(request) if request.pack == AUTO else {}
    planned = []
    for model, pairs in by_model.items():
        cost = costs.get(model)
        size = pack_size(request, model, cost, len(pairs))
        for start in range(0, len(pairs), size):
            pack = pairs[start : start + size]
            planned.append((pack, None if cost is None else cost.task_seconds(len(pack))))
    return planned


def pack_size(request: Request, model: str, cost: PairCost | None, n_pairs: int) -> int:
    """How many of `model`'s `n_pairs` pairs one task trains; AUTO says why in one line."""
    if request.pack != AUTO:
        return int(request.pack or 1)
    if cost is None:
        print(f"--pack auto: no {model} pair of this run and config records what it took yet: 1 pair a task")
        return 1
    target = request.pack_minutes * 60
    size = pairs_per_task(cost, target, most=n_pairs)
    lasts = cost.task_seconds(size)
    minutes = request.pack_minutes
    aim = f"at least {minutes} min" if lasts >= target else f"all {n_pairs}: under {minutes} min"
    print(
        f"--pack auto: {model}: {cost.startup_seconds:.1f} s of start-up, then {cost.pair_seconds:.1f} s a pair "
        f"(the slowest of {cost.n_measured} measured): {size} a task, about {clock(lasts)} ({aim})"
    )
    return size


def measured(request: Request) -> dict[str, PairCost]:
    """Each model's pair cost, from the run's valid results of this config that record their resources."""
    run = [r.result for r in store.scan(request.layout).records if r.result.config_id == request.protocol.config_id]
    by_model: dict[str, list[Any]] = {}
    for result in run:
        by_model.setdefault(result.model, []).append(result)
    return {model: cost for model, results in by_model.items() if (cost := pair_cost(results, run)) is not None}


def pairs_to_submit(request: Request) -> list[PairStatus]:
    """The pairs asked for (--task-ids, default all) that are neither queued nor running nor (unless --all) done,
    as job.results.status sees them."""
    asked = [
        s
        for s in status(request.layout, request.protocol, repeats=request.repeats, plain_arrays=request.plain_arrays)
        if request.task_ids is None or s.task_id in request.task_ids
    ]
    clashes = [f"{s.pair} ({s.detail})" for s in asked if s.state == "other config"]
    if clashes:  # `job run` would refuse them one by one, after queueing
        raise JobError(
            f"results of another config would be overwritten: {', '.join(clashes)}; use another --run "
            f"(this one is config {request.protocol.config_id})"
        )
    bad_leases = [f"{s.pair} ({s.detail})" for s in asked if s.state == "bad lease"]
    if bad_leases:
        raise JobError(f"a task would fail at once on an unreadable lease: {'; '.join(bad_leases)}")
    in_the_way = [f"{s.pair} ({s.detail})" for s in asked if s.state == "in the way"]
    if in_the_way:
        raise JobError(f"a task would fail at once on a path in the way: {'; '.join(in_the_way)}")
    # Queued and running pairs are never submitted again, --all or not: that is a second training of one pair.
    return [s for s in asked if s.state.needs_run or (request.all and s.state == "done")]


def describe_code(code: Any, workdir: str) -> str:
    if code is None:
        return f"{workdir} as it is when each task starts (--live-code)"
    changes = f", with uncommitted changes to {len(code.changed)} files" if code.dirty else ""
    return f"{workdir} (commit {code.commit}{changes}), the working folder of every task"


def print_plan(
    request: Request,
    what: str,
    tasks: list[Any],
    params: dict[str, Any],
    logs: Path,
    code: Any,
) -> None:
    """What `submit` would do, exactly, without doing it (--dry-run)."""
    print(
        f"would submit {len(tasks)} {what} of config {request.protocol.config_id} ({request.executor}), "
        "each task running:"
    )
    for task in tasks:
        print(f"  {task.name}: {shlex.join(task.launch().with_env())}")
    print("resources: " + ", ".join(f"{key}={value}" for key, value in params.items()))
    print(f"code: {describe_code(code, tasks[0].workdir)}")
    print(f"logs: {logs}/JOB_0_log.out and .err, JOB being the array's job id _ task index once submitted")


def submit_array(executor_name: str, params: dict[str, Any], logs: Path, tasks: list[Any]) -> list[Any]:
    """The tasks as one array (one job each on the local and debug executors)."""
    import submitit

    executor = submitit.AutoExecutor(folder=logs, cluster=executor_name)
    executor.update_parameters(**params)
    try:
        with executor.batch():
            jobs = [executor.submit(task) for task in tasks]
    except submitit.core.utils.FailedJobError as error:  # submitit has printed sbatch's error above
        raise JobError(f"sbatch refused the array: {str(error).strip().splitlines()[-1]}") from None
    return jobs


def not_done(request: Request) -> list[int]:
    """The task ids of the pairs of this config that are not done (collect waits for none)."""
    layout = request.layout
    statuses = status(layout, request.protocol, repeats=request.repeats)
    return [s.task_id for s in statuses if s.state != "done"]


def record(
    request: Request, params: dict[str, Any], logs: Path, task_ids: list[tuple[int, ...]], jobs: list[Any]
) -> None:
    """Write down which array task runs which pairs, so `status` and `pairs --missing` know them from now on."""
    record_submission(
        request.layout,
        array_job_id=jobs[0].job_id.split("_")[0],
        tasks={int(job.job_id.split("_")[1]): ids for job, ids in zip(jobs, task_ids, strict=True)},
        config_id=request.protocol.config_id,
        log=str(logs / "%A_%a_0_log.err"),  # submitit's %j_%t_log.err: where `run` says why it failed
        job_name=params["name"],
    )
