"""`submit`: the pairs as one array through submitit (Slurm, local processes, or in this process to debug)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from job.cli.options import add_data_args, add_protocol_args, add_results_args, protocol_from_args
from job.errors import JobError
from job.pair.protocol import Protocol, all_pairs

EXECUTORS = ("slurm", "local", "debug")
JOB_NAME = "mnist-cv-pairs"  # as slurm/array.sh
POLL_S = 1.0
LOG_TAIL_LINES = 8  # of each log


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "submit",
        help="submit the pairs not done as one array through submitit (slurm, local or debug)",
        description="Submit the (model, fold) pairs not done with this config (or --all, or --task-ids) as one "
        "array, each task running `python -m job run --task-id N` (in --image if given) like slurm/array.sh. "
        "Prints the job ids and returns, or with --wait follows them, reports failed pairs with their log, "
        "and runs collect when all succeed. A preempted or timed-out pair is requeued and resumes from its "
        "checkpoint. The environment (MNIST_CV_ALLOW_CPU, MNIST_CV_DATA...) is passed on to the tasks.",
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
    first_forwarded = len(p._actions)
    add_results_args(p)
    add_data_args(p)
    add_protocol_args(p)
    # Passed on to `job run` as given, so the two commands can never disagree on what the shared options mean.
    forwarded = [(action.option_strings[0], action.dest) for action in p._actions[first_forwarded:]]

    res = p.add_argument_group("resources (Slurm; --time also ends local runs)")
    res.add_argument("--partition", help="Slurm partition")
    res.add_argument("--account", help="Slurm account")
    res.add_argument("--qos", help="Slurm QOS")
    res.add_argument(
        "--time",
        type=at_least(1),
        default=60,
        metavar="MIN",
        help="time limit per pair in minutes (default 60); 90 s before it the pair checkpoints and is requeued. "
        "Under 50, submitit counts every preemption as a timeout (at most 3)",
    )
    res.add_argument("--gpus-per-task", type=at_least(0), default=1, metavar="N", help="GPUs per pair (default 1)")
    res.add_argument("--cpus-per-task", type=at_least(1), default=4, metavar="N", help="CPUs per pair (default 4)")
    res.add_argument("--mem-gb", type=float, default=16, metavar="G", help="memory per pair in GB (default 16)")
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
        default=os.environ.get("MNIST_CV_IMAGE") or None,
        help="Apptainer image to run the pairs in, with --nv (default: $MNIST_CV_IMAGE; none: this Python)",
    )
    p.add_argument("--logs", type=Path, help="submitit's folder, one .out/.err per pair (default RESULTS/RUN/logs)")
    p.add_argument("--wait", action="store_true", help="follow the pairs to the end, then run collect")
    p.set_defaults(handler=run, forwarded=forwarded)


def at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def task_ids(text: str) -> set[int]:
    """Slurm's --array syntax ('0,5', '5-9', '0-2,7') as task ids: the inverse of pair_status.array_spec."""
    ids: set[int] = set()
    try:
        for part in text.split(","):
            first, _, last = part.partition("-")
            ids.update(range(int(first), int(last or first) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not task ids like 0,5 or 5-9: {text!r}") from None
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
    """`job run`'s arguments: the shared options the user gave, paths made absolute (the task may start elsewhere)."""
    out: list[str] = []
    for option, dest in args.forwarded:
        value = getattr(args, dest)
        if value is True:
            out.append(option)
        elif value is not None and value is not False:
            out += [option, str(value.absolute() if isinstance(value, Path) else value)]
    return out


def executor_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """submitit's update_parameters(); the local and debug executors ignore the slurm_ ones."""
    params: dict[str, Any] = {
        "name": JOB_NAME,
        "timeout_min": args.time,
        "cpus_per_task": args.cpus_per_task,
        "mem_gb": args.mem_gb,
        # As slurm/array.sh: where requeueing is off by default, submitit's `scontrol requeue` would be refused.
        "slurm_additional_parameters": {"requeue": True, **dict(args.slurm_additional)},
    }
    if args.gpus_per_task:
        # A pair is a one-task job, so per node is per task; Slurm refuses --gpus-per-task without --ntasks.
        params["gpus_per_node"] = args.gpus_per_task
    for name in ("partition", "account", "qos", "array_parallelism"):
        if getattr(args, name) is not None:
            params[f"slurm_{name}"] = getattr(args, name)
    return params


def image_binds(args: argparse.Namespace) -> tuple[str, ...]:
    """The folders an image must see besides the working directory, as slurm/array.sh binds them."""
    data = args.data_dir or os.environ.get("MNIST_CV_DATA")
    return tuple(str(Path(folder).absolute()) for folder in (data, args.results) if folder)


def run(args: argparse.Namespace) -> int:
    import sys

    from job.launch import task as launch
    from job.results.layout import RunLayout

    protocol = protocol_from_args(args)
    if args.image is not None and not Path(args.image).is_file():
        raise JobError(f"no image file {args.image}")
    chosen = jobs_to_submit(args, protocol)
    wait = args.wait or args.executor == "debug"  # the debug executor runs a job only when asked for its result
    if not chosen:
        print(f"nothing to submit: the pairs asked for are done with config {protocol.config_id}")
        return collect(args, protocol) if wait else 0

    binds = image_binds(args) if args.image else ()
    logs = (args.logs or RunLayout(args.results, args.run).logs).absolute()
    tasks = [
        launch.JobTask(name, job_args, args.image, sys.executable, os.getcwd(), binds) for name, job_args in chosen
    ]
    jobs = submit(args, logs, tasks)
    what = "final model" if args.final else "pair" if len(jobs) == 1 else "pairs"
    print(f"submitted {len(jobs)} {what} of config {protocol.config_id} ({args.executor}):")
    for task, job in zip(tasks, jobs, strict=True):
        print(f"  {task.name}  job {job.job_id}")
    if args.executor != "debug":  # whose output comes here
        print(f"logs: {logs}/JOB_0_log.out and .err (e.g. {jobs[0].paths.stdout.name})")
    sys.stdout.flush()  # the job ids now, not when --wait ends: a pipe or a log file buffers them otherwise
    if not wait:
        return 0
    failed = follow(jobs, [task.name for task in tasks], poll=args.executor != "debug")
    if failed:
        raise JobError(
            f"{len(failed)} of {len(jobs)} {what} failed ({', '.join(failed)}); "
            f"the same command resubmits only the {what} not done"
        )
    return collect(args, protocol)


def jobs_to_submit(args: argparse.Namespace, protocol: Protocol) -> list[tuple[str, tuple[str, ...]]]:
    """(name, `job` arguments) of each job to submit: the final model if asked for, else the pairs not done."""
    from job.launch import task as launch
    from job.pair import models

    forwarded = run_args(args)
    if args.final is not None:
        model = models.check_name(args.final)
        return [(f"{model}/final", launch.final_args(model, forwarded))]  # `job final` itself skips a done model
    return [(str(s.pair), launch.pair_args(s.task_id, forwarded)) for s in pairs_to_submit(args, protocol)]


def pairs_to_submit(args: argparse.Namespace, protocol: Protocol) -> list[Any]:
    """The pairs asked for (--task-ids, default all) that are not done (unless --all), as pair_status sees them."""
    from job.results.status import status

    chosen = [
        s
        for s in status(args.results, args.run, protocol)
        if (args.task_ids is None or s.task_id in args.task_ids) and (args.all or s.state != "done")
    ]
    clashes = [f"{s.pair} ({s.detail})" for s in chosen if s.state == "other config"]
    if clashes:  # `job run` would refuse them one by one, after queueing
        raise JobError(
            f"results of another config would be overwritten: {', '.join(clashes)}; use another --run "
            f"(this one is config {protocol.config_id})"
        )
    return chosen


def submit(args: argparse.Namespace, logs: Path, tasks: list[Any]) -> list[Any]:
    """The tasks as one array (one job each on the local and debug executors)."""
    import submitit

    executor = submitit.AutoExecutor(folder=logs, cluster=args.executor)
    executor.update_parameters(**executor_parameters(args))
    try:
        with executor.batch():
            jobs = [executor.submit(task) for task in tasks]
    except submitit.core.utils.FailedJobError as error:  # submitit has printed sbatch's error above
        raise JobError(f"sbatch refused the array: {str(error).strip().splitlines()[-1]}") from None
    return jobs


def follow(jobs: list[Any], names: list[str], *, poll: bool) -> list[str]:
    """Report each pair as it finishes (a failed one with its log's tail); the names of the failed pairs."""
    failed = []
    with progress(len(jobs)) as report:
        for job in finished(jobs, poll=poll):
            name = names[jobs.index(job)]
            error = job.exception()
            if error is None:
                report(f"{job.result()}  [job {job.job_id}]")
            else:
                failed.append(name)
                report(failure_report(name, job, error))
    return failed


def finished(jobs: list[Any], *, poll: bool) -> Iterator[Any]:
    """The jobs as they end; without `poll` (debug executor) in order, each then run by the caller's exception()."""
    import time

    pending = list(jobs)
    while pending:
        for job in [job for job in pending if not poll or job.done()]:
            pending.remove(job)
            yield job
        if pending:
            time.sleep(POLL_S)


def failure_report(name: str, job: Any, error: BaseException) -> str:
    """The pair's name and the end of its logs: the job's own output (.out), then how it ended (.err)."""
    parts = [f"FAILED {name} [job {job.job_id}]"]
    for log in (job.paths.stdout, job.paths.stderr):
        lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
        if lines:
            parts += [f"  last lines of {log}:", *(f"    {line}" for line in lines[-LOG_TAIL_LINES:])]
    if len(parts) == 1:  # no log at all (debug executor, or a job that never started)
        parts += [f"    {line}" for line in str(error).splitlines()[-LOG_TAIL_LINES:]]
    return "\n".join(parts)


@contextmanager
def progress(total: int) -> Iterator[Callable[[str], None]]:
    """A report(line) for each finished pair: over a live bar on a terminal, numbered plain lines otherwise."""
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:
        done = iter(range(1, total + 1))
        yield lambda line: print(f"[{next(done)}/{total}] {line}", flush=True)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("pairs finished"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        task = bar.add_task("pairs", total=total)

        def report(line: str) -> None:
            bar.console.print(line, markup=False)
            bar.advance(task)

        yield report


def collect(args: argparse.Namespace, protocol: Protocol) -> int:
    """Run the collect command on this config's results once all ten pairs are done ."""
    from job.results.status import array_spec, status

    not_done = [s.task_id for s in status(args.results, args.run, protocol) if s.state != "done"]
    if not_done:
        print(f"collect: skipped, {len(not_done)} pairs not done (task ids {array_spec(not_done)})")
        return 0
    from job.cli import build_parser

    collect_args = build_parser().parse_args(
        ["collect", "--results", str(args.results), "--run", args.run, "--config", protocol.config_id]
    )
    return collect_args.handler(collect_args)
