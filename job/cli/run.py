"""`run`: train and score one (model, fold, repeat) pair and write its result JSON; or several pairs one after
another in this process (`--task-ids`, `--pairs-per-task`), each exactly as alone."""

from __future__ import annotations

import argparse
import os
from typing import Any

from job.cli.options import (
    FOLD,
    PAIRS_PER_TASK,
    REPEAT,
    TASK_ID,
    TASK_IDS,
    RunConfig,
    add_data_args,
    add_device_args,
    add_protocol_args,
    add_repeats_arg,
    add_results_args,
    inputs_from_args,
    number,
    run_config,
)
from job.errors import UsageError
from job.pair import models, preempt
from job.pair.job import Options, run_pair, run_pairs
from job.protocol import (
    DEFAULT_MODELS,
    MAX_EPOCHS,
    MAX_IMAGES,
    Pair,
    Protocol,
    check_fold,
    check_repeat,
    check_repeats,
    n_tasks,
    packed_task_ids,
    pair_for_task,
    parse_task_id,
    task_for_pair,
)
from job.results import manifest
from job.results.layout import RunLayout
from job.results.submissions import ArrayTask


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "run",
        help="train and score one (model, fold) pair, or several one after another",
        description="Train one (model, fold) pair of the 5-fold cross-validation and write its result JSON "
        "to RESULTS/RUN/MODEL/fold-K.json (RESULTS/RUN/MODEL/repeat-R/fold-K.json for a repeat R >= 1). "
        "A pair already done with the same config is skipped. With --task-ids or --pairs-per-task, several pairs "
        "train one after another in this process on one TensorFlow start-up and one data load, each exactly as "
        "alone; one held by another process or one that fails is reported in one line and the next one runs "
        "(exit 1 when one failed, else 75 when one was held); a stop signal checkpoints the current pair and ends "
        "them all (exit 3): a rerun skips the done ones.",
    )
    which = p.add_argument_group(
        "which pairs (either --model and --fold [and --repeat], or a task id [and --pairs-per-task], or --task-ids)"
    )
    which.add_argument("--model", help=f"model name ({', '.join(DEFAULT_MODELS)}, or an extra one like cnn-small)")
    which.add_argument("--fold", type=FOLD, help="held-out fold, 0-4")
    which.add_argument("--repeat", type=REPEAT, help="repeat of the cross-validation (default 0: the tutorial's split)")
    which.add_argument(
        "--task-id",
        type=TASK_ID,
        help="array index 0-9 -> (mlp, 0..4), (cnn, 0..4); 10r to 10r+9 the same of repeat r; "
        "default $SLURM_ARRAY_TASK_ID",
    )
    which.add_argument(
        "--task-ids",
        type=TASK_IDS,
        metavar="SPEC",
        help="several pairs one after another in this process, in --array syntax: 0-4 or 0,5",
    )
    which.add_argument(
        "--pairs-per-task",
        type=PAIRS_PER_TASK,
        metavar="N",
        help="array task I (--task-id or $SLURM_ARRAY_TASK_ID) trains task ids N*I to N*I+N-1, capped at the run's "
        "last (10R-1, R its repeats): `sbatch --array=0-1 slurm/array.sh --pairs-per-task 5` trains the ten pairs "
        "in two tasks",
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
    p.add_argument(
        "--keep-model",
        action="store_true",
        help="keep each pair's trained weights beside its result (MODEL/fold-K.weights.h5: the fold ensemble's models)",
    )
    p.add_argument(
        "--kill-at-step",
        type=KILL_AT_STEP,
        metavar="N",
        help="a preemption at a chosen step: SIGKILL this process after the compiled call that runs training step N "
        "(from 1, over all epochs); a rerun resumes from the last epoch-end checkpoint (what verify --preempt does)",
    )
    add_device_args(p)
    p.set_defaults(handler=run)


KILL_AT_STEP = number(1, MAX_EPOCHS * MAX_IMAGES)


def resolve_pairs(args: argparse.Namespace, protocol: Protocol, repeats: int) -> tuple[list[Pair], ArrayTask | None]:
    """The pairs to train, in order, and the array task a task id made of them (None for --model, --task-ids);
    `repeats`, the run's, caps a pack of --pairs-per-task."""
    if args.task_ids is not None:
        others = (args.task_id, args.pairs_per_task, args.model, args.fold, args.repeat)
        if any(other is not None for other in others):
            raise UsageError("give --task-ids alone: not with --task-id, --pairs-per-task, --model, --fold or --repeat")
        return [_checked_pair(task_id, args, protocol) for task_id in sorted(args.task_ids)], None
    if args.pairs_per_task is not None:
        if args.model is not None or args.fold is not None or args.repeat is not None:
            raise UsageError("--pairs-per-task makes a task id's pack: give a task id, not --model/--fold/--repeat")
        index, per_task = given_task_id(args), args.pairs_per_task
        task_ids = packed_task_ids(index, per_task, repeats, protocol.n_folds)
        if not task_ids:
            raise UsageError(
                f"task {index} with --pairs-per-task {per_task} starts at task id {index * per_task}, past the run's "
                f"last, {n_tasks(repeats, protocol.n_folds) - 1} (--repeats {repeats})"
            )
        return [pair_for_task(task_id, protocol.n_folds, repeats) for task_id in task_ids], ArrayTask(index, task_ids)
    pair = resolve_pair(args, protocol)
    task_id = task_for_pair(pair, protocol.n_folds)
    return [pair], None if args.model is not None or task_id is None else ArrayTask(task_id, (task_id,))


def given_task_id(args: argparse.Namespace) -> int:
    """--task-id, else $SLURM_ARRAY_TASK_ID."""
    if args.task_id is not None:
        return int(args.task_id)
    env = os.environ.get("SLURM_ARRAY_TASK_ID", "").strip()
    if not env:
        raise UsageError("no pair given: pass --model and --fold, or --task-id (or set $SLURM_ARRAY_TASK_ID)")
    return parse_task_id(env, "$SLURM_ARRAY_TASK_ID")


def _checked_pair(task_id: int, args: argparse.Namespace, protocol: Protocol) -> Pair:
    repeats = None if args.repeats is None else check_repeats(args.repeats, protocol)
    pair = pair_for_task(task_id, protocol.n_folds, repeats)
    check_repeat(pair.repeat, protocol)
    return pair


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
    return _checked_pair(given_task_id(args), args, protocol)


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
    pairs, array_task = resolve_pairs(args, config.protocol, config.repeats)
    for pair in pairs:
        check_in_run(args, config, pair, layout.run)
    inputs, options = inputs_from_args(args), Options(args.force, args.keep_checkpoint, args.keep_model, config.repeats)
    if len(pairs) == 1:
        callbacks = [] if args.kill_at_step is None else [preempt.kill_at_step(args.kill_at_step)]
        print(run_pair(layout, config.protocol, pairs[0], inputs, options, callbacks, array_task), flush=True)
        return 0
    if args.kill_at_step is not None:
        raise UsageError(
            "--kill-at-step kills the process of one pair: not with several (--task-ids, --pairs-per-task)"
        )
    pack = run_pairs(layout, config.protocol, pairs, inputs, options, array_task)
    print(pack.summary(), flush=True)
    return pack.exit_code
