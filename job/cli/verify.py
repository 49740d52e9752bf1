"""`verify`: retrain pairs of a run from what their results record and say whether each is the same, bit for bit."""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from job.cli.options import (
    DATA_OPTIONS,
    DEVICE_OPTIONS,
    RESULTS_OPTIONS,
    RUN_CONFIG_HELP,
    SEED,
    TASK_IDS,
    add_device_args,
    add_options,
    add_protocol_args,
    add_results_args,
    forward,
    run_config,
)
from job.console import console as rich_console
from job.errors import UsageError
from job.launch import rerun, submission
from job.launch import verify as verifying
from job.pair import data
from job.protocol import Pair, Protocol, task_for_pair
from job.results import store, verification
from job.results.layout import RunLayout
from job.results.verification import Verdict

DATA_DIR = next(option for option in DATA_OPTIONS if option.flag == "--data-dir")
EXIT_CODES = (
    f"Exit status: {Verdict.IDENTICAL.exit_code} every pair identical; {Verdict.DIFFERENT.exit_code} a pair "
    f"different; {Verdict.NOT_COMPARABLE.exit_code} none different but a pair not comparable; 1 a runtime error "
    "(a rerun that failed, data that is not the results'); 2 a usage error; 3 stopped by a signal."
)
STYLES = {Verdict.IDENTICAL: "green", Verdict.DIFFERENT: "red", Verdict.NOT_COMPARABLE: "yellow"}


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "verify",
        help="retrain done pairs from what their results record and compare, bit for bit",
        description="Retrain pairs of RESULTS/RUN in a scratch folder (RESULTS/RUN/.verify/, removed after) from what "
        "each result records: its config, pair and repeat, its data (refused unless its files' sha256 are the "
        "result's), and the code of its recorded commit (the running code, the run's snapshot in RESULTS/RUN/code/, "
        "or git archive of the commit). Then compare every epoch's every metric, the score, the weights' digest and "
        "the predictions file's hash with the result's, to the bit. Verdicts: identical; different (the first epoch "
        "and metric that differ, or weights/predictions); not comparable (the TensorFlow, Keras or numpy version, "
        "intra-op threads, device kind or GPU model differ, an XLA config, or the code is unavailable; and whether "
        "the rerun differs anyway). Each verdict is written beside its result (MODEL/fold-K.verify.json), counted by "
        f"status and collect while that result is unchanged. {EXIT_CODES} {RUN_CONFIG_HELP}",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--task-ids", type=TASK_IDS, metavar="SPEC", help="these pairs, in --array syntax: 0,5 or 5-9 (done ones)"
    )
    which.add_argument("--all", action="store_true", help="every done pair of the run's config")
    add_results_args(p)
    add_protocol_args(p)
    add_options(p, [DATA_DIR])
    add_device_args(p)
    p.add_argument(
        "--preempt",
        action="store_true",
        help="kill each rerun with SIGKILL after a training step chosen from --preempt-seed (run --kill-at-step), "
        "resume it from its checkpoint, and compare the resumed result",
    )
    p.add_argument(
        "--preempt-seed",
        type=SEED,
        metavar="N",
        help="the seed choosing each pair's kill step (default: a random one, printed, to replay a failure)",
    )
    slurm = p.add_argument_group("Slurm (each pair a task, submitted as `submit` submits, with its #SBATCH defaults)")
    slurm.add_argument("--slurm", action="store_true", help="verify each pair in a Slurm task of its own")
    slurm.add_argument("--wait", action="store_true", help="with --slurm: follow the tasks, then print the verdicts")
    slurm.add_argument(
        "--allow-dirty",
        action="store_true",
        help="with --slurm: submit uncommitted changes to tracked files too (the tasks run a snapshot of the checkout)",
    )
    p.set_defaults(handler=run)


def chosen_pairs(args: argparse.Namespace, layout: RunLayout, protocol: Protocol) -> list[Pair]:
    """The done pairs asked for: --task-ids, --all, or by default each model's lowest task id (fold) done."""
    done = sorted(
        (r.result for r in store.scan(layout).records if r.result.config_id == protocol.config_id),
        key=lambda r: (r.task_id is None, r.task_id or 0, r.model, r.repeat, r.fold),
    )
    pairs = [Pair(r.model, r.fold, r.repeat) for r in done]
    if args.task_ids is not None:
        by_id = {task_for_pair(pair, protocol.n_folds): pair for pair in pairs}
        missing = sorted(set(args.task_ids) - set(by_id))
        if missing:
            raise UsageError(f"task ids {', '.join(map(str, missing))} have no valid result of this run to verify")
        return [by_id[i] for i in sorted(args.task_ids)]
    if args.all:
        return pairs
    first: dict[str, Pair] = {}
    for pair in pairs:
        first.setdefault(pair.model, pair)
    return list(first.values())


def data_hashes(folder: Path | None, custom: bool) -> tuple[str, dict[str, str]]:
    dataset = data.load(folder, custom=custom)
    return dataset.source, dict(dataset.sha256)


def run(args: argparse.Namespace) -> int:
    if (args.wait or args.allow_dirty) and not args.slurm:
        raise UsageError("--wait and --allow-dirty go with --slurm")
    if args.preempt_seed is not None and not args.preempt:
        raise UsageError("--preempt-seed goes with --preempt")
    layout = RunLayout(args.results, args.run)
    config = run_config(args, layout)
    pairs = chosen_pairs(args, layout, config.protocol)
    if not pairs:
        raise UsageError(f"run {layout.run} has no valid result of config {config.protocol.config_id} to verify")
    seed = None
    if args.preempt:
        seed = random.randrange(10**6) if args.preempt_seed is None else args.preempt_seed
        print(f"--preempt-seed {seed} (give it again to kill each rerun at the same step)", flush=True)
    if args.slurm:
        return _submit(args, layout, config.protocol, config.repeats, pairs, seed)
    request = verifying.Request(layout, pairs, args.data_dir, data_hashes, args.allow_cpu, seed)
    verdicts = []
    for found in verifying.verify(request):
        print(verifying.line(found.pair, found.record), flush=True)
        verdicts.append((found.pair, found.record))
    _table(verdicts)
    return verification.exit_code(record.verdict for _, record in verdicts)


def _submit(
    args: argparse.Namespace, layout: RunLayout, protocol: Protocol, repeats: int, pairs: list[Pair], seed: int | None
) -> int:
    """Each pair's verification as a Slurm task, through submit's path; with --wait, the verdicts they wrote."""
    ids = {pair: task_for_pair(pair, protocol.n_folds) for pair in pairs}
    if None in ids.values():
        raise UsageError(
            f"--slurm verifies the pairs of task ids: not {', '.join(str(p) for p, i in ids.items() if i is None)}"
        )
    for result in verifying.results_of(layout, pairs).values():
        rerun.freeze_for_tasks(result.environment.get("git"), layout)
    options = forward(args, (*RESULTS_OPTIONS, DATA_DIR, *DEVICE_OPTIONS))
    options += ["--preempt", "--preempt-seed", str(seed)] if seed is not None else []
    request = submission.Request(
        executor="slurm",
        layout=layout,
        protocol=protocol,
        job_options=tuple(options),
        repeats=repeats,
        task_ids=frozenset(i for i in ids.values() if i is not None),
        wait=args.wait,
        allow_dirty=args.allow_dirty,
        verify=True,
    )
    if not submission.submit(request):
        return 0
    verdicts = [(pair, verification.current(layout, pair)) for pair in pairs]
    for pair, record in verdicts:
        print(f"{pair}: no verification record" if record is None else verifying.line(pair, record), flush=True)
    found = [(pair, record) for pair, record in verdicts if record is not None]
    _table(found)
    if len(found) < len(verdicts):
        return 1
    return verification.exit_code(record.verdict for _, record in found)


def _table(verdicts: list[tuple[Pair, verification.Verification]]) -> None:
    table = Table(title="verify: each rerun against its result, bit for bit")
    for column in ("pair", "verdict", "detail", "commit", "host"):
        table.add_column(column, overflow="fold")
    for pair, record in verdicts:
        style = STYLES[record.verdict]
        code = str(record.code.get("commit"))[:12] + " (dirty)" * bool(record.code.get("dirty"))
        table.add_row(
            str(pair), Text(record.verdict.value, style=style), Text(record.detail), Text(code), Text(record.host)
        )
    rich_console(highlight=False).print(table)
