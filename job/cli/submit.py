"""`submit`: the pairs as one array through submitit (Slurm, local processes, or in this process to debug)."""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Any

from job.cli import plain_arrays
from job.cli.options import (
    FORWARDED,
    add_data_args,
    add_protocol_args,
    add_repeats_arg,
    add_results_args,
    at_least,
    forward,
    protocol_from_args,
    repeats_from_args,
)
from job.errors import UsageError
from job.launch import submission
from job.pair import data, models
from job.protocol import all_pairs
from job.results.layout import RunLayout
from job.results.status import array_spec
from job.settings import IMAGE, settings


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "submit",
        help="submit the pairs not done as one array through submitit (slurm, local or debug)",
        description="Submit the (model, fold) pairs not done with this config (of every repeat, with --repeats; "
        "or --all, or --task-ids) as one array, each task running `python -m job run --task-id N` (in --image if "
        "given) like slurm/array.sh. "
        "Prints the job ids and returns, or with --wait follows them, reports failed pairs with their log, "
        "and runs collect when all succeed. A preempted or timed-out pair is requeued and resumes from its "
        "checkpoint. The environment (the settings listed in job/settings.py) is passed on to the tasks.",
    )
    p.add_argument(
        "--executor",
        choices=submission.EXECUTORS,
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
    # Not passed on to `job run`: a task's id says its repeat.
    add_repeats_arg(p)
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
        help="time limit per pair in minutes (default: the script's --time); 180 s before it the pair checkpoints "
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


_ARRAY_SPEC = re.compile(r"[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*")


def positive_gigabytes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):  # sbatch would get --mem=nanG or a job with no memory
        raise argparse.ArgumentTypeError(f"not a positive number of GB: {text!r}")
    return value


def task_ids(text: str) -> tuple[tuple[int, int], ...]:
    """Slurm's --array syntax ('0,5', '5-9', '0-2,7') as (first, last) ranges: the inverse of status.array_spec.
    Not expanded here: the ranges are checked against the run's pairs first (`0-9999999999` is 10 billion ids)."""
    if not _ARRAY_SPEC.fullmatch(text):
        raise argparse.ArgumentTypeError(f"not task ids like 0,5 or 5-9: {text!r}")
    ranges = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        ranges.append((int(first), int(last or first)))
    if any(first > last for first, last in ranges):
        raise argparse.ArgumentTypeError(f"not task ids like 0,5 or 5-9 (a range runs upward): {text!r}")
    return tuple(ranges)


def check_task_ids(ranges: tuple[tuple[int, int], ...] | None, repeats: int) -> frozenset[int] | None:
    """--task-ids within the pairs of --repeats (0-9 for one repeat), or a UsageError; checked before expanding."""
    if ranges is None:
        return None
    n = len(all_pairs(repeats=repeats))
    highest = max(last for _, last in ranges)
    if highest >= n:
        raise UsageError(f"--task-ids: task ids are 0-{n - 1} (--repeats {repeats}), got {highest}")
    return frozenset(i for first, last in ranges for i in range(first, last + 1))


def key_value(text: str) -> tuple[str, str | bool]:
    key, sep, value = text.partition("=")
    if not key:
        raise argparse.ArgumentTypeError(f"not KEY=VALUE: {text!r}")
    return key, value if sep else True


def run_args(args: argparse.Namespace) -> list[str]:
    """`job run`'s arguments: the shared options, paths made absolute (the task may start elsewhere)."""
    return forward(args, FORWARDED)


def request_from_args(args: argparse.Namespace) -> submission.Request:
    resources = submission.Resources(
        partition=args.partition,
        account=args.account,
        qos=args.qos,
        time=args.time,
        gpus_per_task=args.gpus_per_task,
        cpus_per_task=args.cpus_per_task,
        mem_gb=args.mem_gb,
        array_parallelism=args.array_parallelism,
        slurm_additional=tuple(args.slurm_additional),
    )
    protocol = protocol_from_args(args)
    repeats = repeats_from_args(args, protocol)
    return submission.Request(
        executor=args.executor,
        layout=RunLayout(args.results, args.run),
        protocol=protocol,
        job_options=tuple(run_args(args)),
        resources=resources,
        repeats=repeats,
        task_ids=check_task_ids(args.task_ids, repeats),
        all=args.all,
        final=None if args.final is None else models.check_name(args.final),
        image=args.image,
        logs=args.logs,
        wait=args.wait,
        dry_run=args.dry_run,
        allow_dirty=args.allow_dirty,
        live_code=args.live_code,
        plain_arrays=plain_arrays.live_tasks,
    )


def run(args: argparse.Namespace) -> int:
    request = request_from_args(args)
    if not submission.submit(request):
        return 0
    not_done = submission.not_done(request)
    if not_done:
        print(f"collect: skipped, {len(not_done)} pairs not done (task ids {array_spec(not_done)})")
        return 0
    from job.analysis import collect  # deferred: matplotlib

    layout = request.layout
    return collect.collect(
        collect.Request(
            layout.results_dir,
            layout.run,
            request.protocol.config_id,
            data_dir=settings().data,
            repeats=request.repeats,
            test_images=data.test_images,
        )
    )
