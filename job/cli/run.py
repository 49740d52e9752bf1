"""`run`: train and score exactly one (model, fold, repeat) pair and write its result JSON."""

from __future__ import annotations

import argparse
import os
from typing import Any

from job.cli.options import (
    FOLD,
    REPEAT,
    TASK_ID,
    RunConfig,
    add_data_args,
    add_device_args,
    add_protocol_args,
    add_repeats_arg,
    add_results_args,
    inputs_from_args,
    run_config,
)
from job.errors import UsageError
from job.pair import models
from job.pair.job import Options, run_pair
from job.protocol import (
    DEFAULT_MODELS,
    Pair,
    Protocol,
    check_fold,
    check_repeat,
    check_repeats,
    pair_for_task,
    parse_task_id,
)
from job.results import manifest
from job.results.layout import RunLayout


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "run",
        help="train and score one (model, fold) pair",
        description="Train one (model, fold) pair of the 5-fold cross-validation and write its result JSON "
        "to RESULTS/RUN/MODEL/fold-K.json (RESULTS/RUN/MODEL/repeat-R/fold-K.json for a repeat R >= 1). "
        "A pair already done with the same config is skipped.",
    )
    which = p.add_argument_group("which pair (either --model and --fold [and --repeat], or a task id)")
    which.add_argument("--model", help=f"model name ({', '.join(DEFAULT_MODELS)}, or an extra one like cnn-small)")
    which.add_argument("--fold", type=FOLD, help="held-out fold, 0-4")
    which.add_argument("--repeat", type=REPEAT, help="repeat of the cross-validation (default 0: the tutorial's split)")
    which.add_argument(
        "--task-id",
        type=TASK_ID,
        help="array index 0-9 -> (mlp, 0..4), (cnn, 0..4); 10r to 10r+9 the same of repeat r; "
        "default $SLURM_ARRAY_TASK_ID",
    )
    add_repeats_arg(
        which,
        "the run's repeats R: refuse a task id or --repeat beyond them (default: the run's, from its manifest; 1 for "
        "a new run); an R larger than the run's grows it",
    )
    add_results_args(p)
    add_data_args(p)
    add_protocol_args(p)
    p.add_argument("--force", action="store_true", help="retrain even if the result exists")
    p.add_argument("--keep-checkpoint", action="store_true", help="keep the per-epoch checkpoint after success")
    add_device_args(p)
    p.set_defaults(handler=run)


def resolve_pair(args: argparse.Namespace, protocol: Protocol) -> Pair:
    repeats = None if args.repeats is None else check_repeats(args.repeats, protocol)
    if args.model is not None:
        if args.task_id is not None:
            raise UsageError("give either --task-id or --model/--fold, not both")
        if args.fold is None:
            raise UsageError("--model needs --fold")
        repeat = check_repeat(args.repeat or 0, protocol)
        if repeats is not None and repeat >= repeats:
            raise UsageError(f"--repeat {repeat} is outside 0-{repeats - 1} (--repeats {repeats})")
        return Pair(models.check_name(args.model), check_fold(args.fold, protocol.n_folds), repeat)
    if args.fold is not None or args.repeat is not None:
        raise UsageError("--fold and --repeat need --model")
    task_id = args.task_id
    if task_id is None:
        env = os.environ.get("SLURM_ARRAY_TASK_ID", "").strip()
        if not env:
            raise UsageError("no pair given: pass --model and --fold, or --task-id (or set $SLURM_ARRAY_TASK_ID)")
        task_id = parse_task_id(env, "$SLURM_ARRAY_TASK_ID")
    pair = pair_for_task(task_id, protocol.n_folds, repeats)
    check_repeat(pair.repeat, protocol)
    return pair


def check_in_run(args: argparse.Namespace, config: RunConfig, pair: Pair, run: str) -> None:
    """Without --repeats, a pair beyond the run's repeats is refused, saying how to grow the run; a run of several
    configs and no manifest bounds nothing (the task id says its repeat)."""
    n = config.repeats
    if args.repeats is None and config.found.source is not manifest.Source.MIXED and pair.repeat >= n:
        raise UsageError(
            f"{pair} is beyond run {run}'s {n} repeat{'s' * (n > 1)}: give --repeats {pair.repeat + 1} to grow the run"
        )


def run(args: argparse.Namespace) -> int:
    layout = RunLayout(args.results, args.run)
    config = run_config(args, layout)
    pair = resolve_pair(args, config.protocol)
    check_in_run(args, config, pair, layout.run)
    options = Options(args.force, args.keep_checkpoint, config.repeats)
    print(run_pair(layout, config.protocol, pair, inputs_from_args(args), options), flush=True)
    return 0
