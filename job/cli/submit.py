"""`submit`: the pairs as one array through submitit (Slurm, local processes, or in this process to debug)."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from job.cli.options import FORWARDED, add_data_args, add_protocol_args, add_results_args, forward, protocol_from_args
from job.errors import JobError
from job.pair.protocol import Protocol, all_pairs
from job.settings import IMAGE, settings

EXECUTORS = ("slurm", "local", "debug")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "submit",
        help="submit the pairs not done as one array through submitit (slurm, local or debug)",
        description="Submit the (model, fold) pairs not done with this config (or --all, or --task-ids) as one "
        "array, each task running `python -m job run --task-id N` (in --image if given) like slurm/array.sh. "
        "Prints the job ids and returns, or with --wait follows them, reports failed pairs with their log, "
        "and runs collect when all succeed. A preempted or timed-out pair is requeued and resumes from its "
        "checkpoint. The environment (the settings listed in job/settings.py) is passed on to the tasks.",
    )
    p.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="slurm",
        help="slurm (default); local: every pair at once as processes here; debug: one after another in this "
        "process (implies --wait)",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--missing-only",
        dest="all",
        action="store_false",
        default=False,
        help="submit only the pairs not done (default)",
    )
    which.add_argument("--all", action="store_true", help="submit every pair (done ones skip at once)")
    p.add_argument("--task-ids", type=task_ids, metavar="SPEC", help="only these pairs, in --array syntax: 0,5 or 5-9")
    p.add_argument(
        "--final",
        metavar="MODEL",
        help="submit the final model's training (`mnist-cv final --model MODEL`) instead of the pairs",
    )
    # Passed on to `job run` as given (options.FORWARDED), so the two can never disagree on what they mean.
    add_results_args(p)
    add_data_args(p)
    add_protocol_args(p)

    res = p.add_argument_group(
        "resources (Slurm; --time also ends local runs; defaults: the #SBATCH lines of slurm/array.sh, "
        "of slurm/final.sh with --final)"
    )
    res.add_argument("--partition", help="Slurm partition")
    res.add_argument("--account", help="Slurm account")
    res.add_argument("--qos", help="Slurm QOS")
    res.add_argument(
        "--time",
        type=at_least(1),
        metavar="MIN",
        help="time limit per pair in minutes (default: the script's --time); 90 s before it the pair checkpoints "
        "and is requeued. Under 50, submitit counts every preemption as a timeout (at most 3)",
    )
    res.add_argument("--gpus-per-task", type=at_least(0), metavar="N", help="GPUs per pair (default: --gres=gpu:N)")
    res.add_argument("--cpus-per-task", type=at_least(1), metavar="N", help="CPUs per pair (default: --cpus-per-task)")
    res.add_argument("--mem-gb", type=positive_gigabytes, metavar="G", help="memory per pair in GB (default: --mem)")
    res.add_argument("--array-parallelism", type=at_least(1), metavar="N", help="run at most N pairs at a time")
    res.add_argument(
        "--slurm-additional",
        type=key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other sbatch option (constraint=a100; a bare KEY is a flag: exclusive); repeatable",
    )
    p.add_argument(
        "--image",
        default=settings().image,
        help=f"Apptainer image to run the pairs in, with --nv (default: ${IMAGE.name}; none: this Python)",
    )
    p.add_argument("--logs", type=Path, help="submitit's folder, one .out/.err per pair (default RESULTS/RUN/logs)")
    p.add_argument("--wait", action="store_true", help="follow the pairs to the end, then run collect")
    code = p.add_mutually_exclusive_group()
    code.add_argument(
        "--allow-dirty",
        action="store_true",
        help="submit uncommitted changes to tracked files too (the tasks run a snapshot of the checkout made now, "
        "in RESULTS/RUN/code/; by default a checkout with uncommitted changes is refused)",
    )
    code.add_argument(
        "--live-code",
        action="store_true",
        help="run the code found in the current folder when each task starts, not a snapshot (edits leak in)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the pairs that would run, each task's command line, the resources and the log paths; "
        "submit nothing",
    )
    p.set_defaults(handler=run)


# ASCII digits only: int() also takes '٣' (as 3), '0_5' (as 5) and surrounding blanks, which sbatch would not.
_WHOLE = re.compile(r"-?[0-9]+")
_ARRAY_SPEC = re.compile(r"[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*")


def at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not _WHOLE.fullmatch(text):
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}")
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def positive_gigabytes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):  # sbatch would get --mem=nanG or a job with no memory
        raise argparse.ArgumentTypeError(f"not a positive number of GB: {text!r}")
    return value


def task_ids(text: str) -> set[int]:
    """Slurm's --array syntax ('0,5', '5-9', '0-2,7') as task ids: the inverse of pair_status.array_spec."""
    if not _ARRAY_SPEC.fullmatch(text):
        raise argparse.ArgumentTypeError(f"not task ids like 0,5 or 5-9: {text!r}")
    ids: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        ids.update(range(int(first), int(last or first) + 1))
    n = len(all_pairs())
    if not ids or not all(0 <= i < n for i in ids):
        raise argparse.ArgumentTypeError(f"task ids are 0-{n - 1}, got {text!r}")
    return ids


def key_value(text: str) -> tuple[str, str | bool]:
    key, sep, value = text.partition("=")
    if not key:
        raise argparse.ArgumentTypeError(f"not KEY=VALUE: {text!r}")
    return key, value if sep else True


def run_args(args: argparse.Namespace) -> list[str]:
    """`job run`'s arguments: the shared options, paths made absolute (the task may start elsewhere)."""
    return forward(args, FORWARDED)


def executor_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """submitit's update_parameters(): the batch script's #SBATCH request, with the options given over it (the
    local and debug executors ignore the slurm_ ones)."""
    from job.launch import resources

    asked = resources.final() if args.final else resources.pairs()
    gpus = asked.gpus if args.gpus_per_task is None else args.gpus_per_task
    params: dict[str, Any] = {
        "name": asked.job_name,
        "timeout_min": asked.time_min if args.time is None else args.time,
        "cpus_per_task": asked.cpus if args.cpus_per_task is None else args.cpus_per_task,
        "mem_gb": asked.mem_gb if args.mem_gb is None else args.mem_gb,
        # Where requeueing is off by default, submitit's `scontrol requeue` would be refused.
        "slurm_additional_parameters": {"requeue": asked.requeue, **dict(args.slurm_additional)},
    }
    if gpus:
        # A pair is a one-task job, so per node is per task; Slurm refuses --gpus-per-task without --ntasks.
        params["gpus_per_node"] = gpus
    for name in ("partition", "account", "qos", "array_parallelism"):
        if getattr(args, name) is not None:
            params[f"slurm_{name}"] = getattr(args, name)
    return params


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    from job.launch import snapshot
    from job.launch import task as launch
    from job.results.layout import RunLayout

    protocol = protocol_from_args(args)
    params = executor_parameters(args)  # first: a batch script it cannot read is an error before anything else
    if args.image is not None and not Path(args.image).is_file():
        raise JobError(f"no image file {args.image}")
    chosen = jobs_to_submit(args, protocol)
    wait = args.wait or args.executor == "debug"  # the debug executor runs a job only when asked for its result
    if not chosen:
        print(f"nothing to submit: the pairs asked for are done with config {protocol.config_id}")
        return collect(args, protocol) if wait and not args.dry_run else 0

    logs = (args.logs or RunLayout(args.results, args.run).logs).absolute()
    image = str(Path(args.image).absolute()) if args.image else None  # the task starts in another folder
    code = None if args.live_code else snapshot.plan(allow_dirty=args.allow_dirty)
    workdir = os.getcwd() if code is None else str(snapshot.code_dir(args.results, args.run) / code.name)
    version = None if code is None else (code.commit, code.dirty)
    tasks = [launch.JobTask(name, job_args, image, sys.executable, workdir, version) for name, job_args, _ in chosen]
    what = "final model" if args.final else "pair" if len(tasks) == 1 else "pairs"
    if args.dry_run:
        print_plan(args, protocol, what, tasks, params, logs, code)
        return 0
    if code is not None:
        snapshot.freeze(code, snapshot.code_dir(args.results, args.run))
    jobs = submit(args, params, logs, tasks)
    if args.executor == "slurm" and not args.final:
        record(args, protocol, params, logs, [task_id for _, _, task_id in chosen], jobs)
    print(f"submitted {len(jobs)} {what} of config {protocol.config_id} ({args.executor}):")
    for task, job in zip(tasks, jobs, strict=True):
        print(f"  {task.name}  job {job.job_id}")
    print(f"code: {describe_code(code, workdir)}")
    if args.executor != "debug":  # whose output comes here
        print(f"logs: {logs}/JOB_0_log.out and .err (e.g. {jobs[0].paths.stdout.name})")
    sys.stdout.flush()  # the job ids now, not when --wait ends: a pipe or a log file buffers them otherwise
    if not wait:
        return 0
    from job.launch.follow import follow

    failed = follow(jobs, [task.name for task in tasks], poll=args.executor != "debug")
    if failed:
        raise JobError(
            f"{len(failed)} of {len(jobs)} {what} failed ({', '.join(failed)}); "
            f"the same command resubmits only the {what} not done"
        )
    return collect(args, protocol)


def jobs_to_submit(args: argparse.Namespace, protocol: Protocol) -> list[tuple[str, tuple[str, ...], int | None]]:
    """(name, `job` arguments, pair task id) of each job to submit: the final model (no task id) if asked for, else
    the pairs to run."""
    from job.launch.argv import final_args, pair_args
    from job.pair import models

    forwarded = run_args(args)
    if args.final is not None:
        model = models.check_name(args.final)
        return [(f"{model}/final", final_args(model, forwarded), None)]  # `job final` itself skips a done model
    return [(str(s.pair), pair_args(s.task_id, forwarded), s.task_id) for s in pairs_to_submit(args, protocol)]


def pairs_to_submit(args: argparse.Namespace, protocol: Protocol) -> list[Any]:
    """The pairs asked for (--task-ids, default all) that are neither queued nor running nor (unless --all) done,
    as job.results.status sees them."""
    from job.results.status import status

    chosen = [
        s
        for s in status(args.results, args.run, protocol)
        # Queued and running pairs are never submitted again, --all or not: that is a second training of one pair.
        if (args.task_ids is None or s.task_id in args.task_ids)
        and (s.state.needs_run or (args.all and s.state == "done"))
    ]
    clashes = [f"{s.pair} ({s.detail})" for s in chosen if s.state == "other config"]
    if clashes:  # `job run` would refuse them one by one, after queueing
        raise JobError(
            f"results of another config would be overwritten: {', '.join(clashes)}; use another --run "
            f"(this one is config {protocol.config_id})"
        )
    return chosen


def describe_code(code: Any, workdir: str) -> str:
    if code is None:
        return f"{workdir} as it is when each task starts (--live-code)"
    changes = f", with uncommitted changes to {len(code.changed)} files" if code.dirty else ""
    return f"{workdir} (commit {code.commit}{changes}), the working folder of every task"


def print_plan(
    args: argparse.Namespace,
    protocol: Protocol,
    what: str,
    tasks: list[Any],
    params: dict[str, Any],
    logs: Path,
    code: Any,
) -> None:
    """What `submit` would do, exactly, without doing it (--dry-run)."""
    import shlex

    print(f"would submit {len(tasks)} {what} of config {protocol.config_id} ({args.executor}), each task running:")
    for task in tasks:
        print(f"  {task.name}: {shlex.join(task.launch().with_env())}")
    print("resources: " + ", ".join(f"{key}={value}" for key, value in params.items()))
    print(f"code: {describe_code(code, tasks[0].workdir)}")
    print(f"logs: {logs}/JOB_0_log.out and .err, JOB being the array's job id _ task index once submitted")


def submit(args: argparse.Namespace, params: dict[str, Any], logs: Path, tasks: list[Any]) -> list[Any]:
    """The tasks as one array (one job each on the local and debug executors)."""
    import submitit

    executor = submitit.AutoExecutor(folder=logs, cluster=args.executor)
    executor.update_parameters(**params)
    try:
        with executor.batch():
            jobs = [executor.submit(task) for task in tasks]
    except submitit.core.utils.FailedJobError as error:  # submitit has printed sbatch's error above
        raise JobError(f"sbatch refused the array: {str(error).strip().splitlines()[-1]}") from None
    return jobs


def collect(args: argparse.Namespace, protocol: Protocol) -> int:
    """Run collect on this config's results once all ten pairs are done."""
    from job.results.status import array_spec, status

    not_done = [s.task_id for s in status(args.results, args.run, protocol) if s.state != "done"]
    if not_done:
        print(f"collect: skipped, {len(not_done)} pairs not done (task ids {array_spec(not_done)})")
        return 0
    return run_collect(args.results, args.run, protocol.config_id)


def run_collect(results: Path, run: str, config_id: str) -> int:
    """collect of this config, its other options at their defaults."""
    from job.analysis.collect import Request, collect

    return collect(Request(results, run, config_id, data_dir=settings().data))


def record(
    args: argparse.Namespace,
    protocol: Protocol,
    params: dict[str, Any],
    logs: Path,
    task_ids: list[int],
    jobs: list[Any],
) -> None:
    """Write down which array task runs which pair, so `status` and `pairs --missing` know them from now on."""
    from job.results.submissions import record_submission

    record_submission(
        args.results,
        args.run,
        array_job_id=jobs[0].job_id.split("_")[0],
        tasks={int(job.job_id.split("_")[1]): task_id for job, task_id in zip(jobs, task_ids, strict=True)},
        config_id=protocol.config_id,
        log=str(logs / "%A_%a_0_log.err"),  # submitit's %j_%t_log.err: where `run` says why it failed
        job_name=params["name"],
    )
