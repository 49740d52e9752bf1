"""`submit`: the pairs as one array through submitit (Slurm, local processes, or in this process to debug)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from job.cli import plain_arrays
from job.cli.options import (
    FORWARDED,
    PROTOCOL_OPTIONS,
    REPEATS_HELP,
    TASK_IDS,
    Number,
    add_data_args,
    add_protocol_args,
    add_repeats_arg,
    add_results_args,
    forward,
    number,
    run_config,
)
from job.errors import UsageError
from job.launch import submission
from job.pair import data, models
from job.protocol import MAX_TASK_ID, Protocol, all_pairs
from job.results.layout import RunLayout
from job.results.packing import TASK_MINUTES
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
    p.add_argument("--task-ids", type=TASK_IDS, metavar="SPEC", help="only these pairs, in --array syntax: 0,5 or 5-9")
    p.add_argument(
        "--pack",
        type=PACK,
        metavar="auto|N",
        help="train N pairs of one model one after another in each array task (`run --task-ids`: one TensorFlow "
        "start-up and data load for all); auto: as many as make a task last --pack-minutes, by the durations the "
        "run's results of this config record (1 for a model with none yet). The time limit covers the task's pairs",
    )
    p.add_argument(
        "--pack-minutes",
        type=number(1, MAX_MINUTES),
        default=TASK_MINUTES,
        metavar="MIN",
        help=f"with --pack auto: what a task should last at least (default {TASK_MINUTES})",
    )
    # Not passed on to `job run`: a task's id says its repeat, and the run's manifest records R before any task starts.
    add_repeats_arg(
        p,
        f"{REPEATS_HELP}: submit the pairs of repeats 0 to R-1 (default: the run's, from its manifest; 1 for a new "
        "run); an R larger than the run's grows it",
    )
    p.add_argument(
        "--final",
        metavar="MODEL",
        help="submit the final model's training (`mnist-cv final --model MODEL`) instead of the pairs",
    )
    p.add_argument(
        "--keep-model",
        action="store_true",
        help="each pair keeps its trained weights beside its result (`run --keep-model`: the fold ensemble's "
        "models); a pair done without them is done: `run --keep-model --force` retrains it",
    )
    # Passed on to `job run` (options.FORWARDED), so the two can never disagree on what they mean; the protocol
    # options as the run's protocol, also when only --run was given.
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
        type=number(1, MAX_MINUTES),
        metavar="MIN",
        help="time limit per pair in minutes (default: the script's --time; a packed task asks its pairs x this); "
        "180 s before it the pair checkpoints and is requeued. Under 50, submitit counts every preemption as a "
        "timeout (at most 3)",
    )
    res.add_argument(
        "--gpus-per-task", type=number(0, MAX_GPUS), metavar="N", help="GPUs per pair (default: --gres=gpu:N)"
    )
    res.add_argument(
        "--cpus-per-task", type=number(1, MAX_CPUS), metavar="N", help="CPUs per pair (default: --cpus-per-task)"
    )
    res.add_argument("--mem-gb", type=MEM_GB, metavar="G", help="memory per pair in GB (default: --mem)")
    res.add_argument(
        "--array-parallelism", type=number(1, MAX_TASK_ID + 1), metavar="N", help="run at most N pairs at a time"
    )
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


# Bounds of what a pair can ask for: a year of minutes; more GPUs or CPUs than any node has.
MAX_MINUTES = 365 * 24 * 60
MAX_GPUS = 64
MAX_CPUS = 4096
# submitit writes --mem-gb G as sbatch's --mem=GGB when whole, else --mem=int(G * 1024)MB: below 1 MB that is
# --mem=0MB, which Slurm reads as all of the node's memory.
MEM_GB = Number(float, 1 / 1024, 2**20, unit="GB", note="sbatch's --mem counts whole megabytes: 1 MB at least")
PACK = Number(int, 1, MAX_TASK_ID + 1, syntax="{text} is neither auto nor a number of pairs", words=(submission.AUTO,))
task_ids = TASK_IDS  # Slurm's --array syntax as task ids


def check_task_ids(ids: set[int] | None, repeats: int) -> frozenset[int] | None:
    """--task-ids within the pairs of --repeats (0-9 for one repeat), or a UsageError."""
    if ids is None:
        return None
    n = len(all_pairs(repeats=repeats))
    if not all(0 <= i < n for i in ids):
        raise UsageError(f"--task-ids: task ids are 0-{n - 1} (--repeats {repeats}), got {max(ids)}")
    return frozenset(ids)


def key_value(text: str) -> tuple[str, str | bool]:
    key, sep, value = text.partition("=")
    if not key:
        raise argparse.ArgumentTypeError(f"not KEY=VALUE: {text!r}")
    return key, value if sep else True


def run_args(args: argparse.Namespace, protocol: Protocol) -> list[str]:
    """`job run`'s arguments: the shared options, paths made absolute (the task may start elsewhere), and the
    options that give `protocol` (the run's) in place of the protocol options given."""
    given = [option for option in FORWARDED if option not in PROTOCOL_OPTIONS]
    return [*forward(args, given), *protocol.as_options()]


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
    if args.final is not None and args.pack is not None:
        raise UsageError("--pack packs pairs: not with --final")
    if args.final is not None and args.keep_model:
        raise UsageError("--keep-model keeps the pairs' weights: not with --final (a final model always keeps its own)")
    layout = RunLayout(args.results, args.run)
    config = run_config(args, layout)
    protocol, repeats = config.protocol, config.repeats
    return submission.Request(
        executor=args.executor,
        layout=layout,
        protocol=protocol,
        job_options=tuple(run_args(args, protocol)),
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
        pack=args.pack,
        pack_minutes=args.pack_minutes,
        keep_model=args.keep_model,
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
    collect.collect(
        collect.Request(
            layout.results_dir,
            layout.run,
            request.protocol.config_id,
            data_dir=settings().data,
            repeats=request.repeats,
            images=data.images,
        )
    )
    return 0
