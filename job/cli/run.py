"""`run`: train and score exactly one (model, fold) pair and write its result JSON."""

from __future__ import annotations

import argparse
import os
from typing import Any

from job.cli.options import (
    add_data_args,
    add_device_args,
    add_protocol_args,
    add_results_args,
    inputs_from_args,
    protocol_from_args,
)
from job.errors import UsageError
from job.pair.protocol import DEFAULT_MODELS, Pair, Protocol, check_fold, pair_for_task, parse_task_id


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "run",
        help="train and score one (model, fold) pair",
        description="Train one (model, fold) pair of the 5-fold cross-validation and write its result JSON "
        "to RESULTS/RUN/MODEL/fold-K.json. A pair already done with the same config is skipped.",
    )
    which = p.add_argument_group("which pair (either --model and --fold, or a task id)")
    which.add_argument("--model", help=f"model name ({', '.join(DEFAULT_MODELS)}, or an extra one like cnn-small)")
    which.add_argument("--fold", type=int, help="held-out fold, 0-4")
    which.add_argument(
        "--task-id",
        type=task_id_arg,
        help="array index 0-9 -> (mlp, 0..4), (cnn, 0..4); default $SLURM_ARRAY_TASK_ID",
    )
    add_results_args(p)
    add_data_args(p)
    add_protocol_args(p)
    p.add_argument("--force", action="store_true", help="retrain even if the result exists")
    p.add_argument("--keep-checkpoint", action="store_true", help="keep the per-epoch checkpoint after success")
    add_device_args(p)
    p.set_defaults(handler=run)


def task_id_arg(text: str) -> int:
    """--task-id as parse_task_id reads it (int() would take '٣' for 3), as argparse reports a bad value."""
    try:
        return parse_task_id(text, "--task-id")
    except UsageError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def resolve_pair(args: argparse.Namespace, protocol: Protocol) -> Pair:
    from job.pair import models

    if args.model is not None:
        if args.task_id is not None:
            raise UsageError("give either --task-id or --model/--fold, not both")
        if args.fold is None:
            raise UsageError("--model needs --fold")
        return Pair(models.check_name(args.model), check_fold(args.fold, protocol.n_folds))
    if args.fold is not None:
        raise UsageError("--fold needs --model")
    task_id = args.task_id
    if task_id is None:
        env = os.environ.get("SLURM_ARRAY_TASK_ID", "").strip()
        if not env:
            raise UsageError("no pair given: pass --model and --fold, or --task-id (or set $SLURM_ARRAY_TASK_ID)")
        task_id = parse_task_id(env, "$SLURM_ARRAY_TASK_ID")
    return pair_for_task(task_id, protocol.n_folds)


def run(args: argparse.Namespace) -> int:
    from job.pair.job import Options, PairJob, execute
    from job.results.layout import RunLayout

    protocol = protocol_from_args(args)
    job = PairJob(RunLayout(args.results, args.run), protocol, resolve_pair(args, protocol))
    print(execute(job, inputs_from_args(args), Options(args.force, args.keep_checkpoint)), flush=True)
    return 0
