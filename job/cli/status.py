"""`status`: where each pair of a run stands (done, running, queued, failed, ...), from its files and Slurm."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.table import Table
from rich.text import Text

from job.cli import plain_arrays
from job.cli.options import (
    RUN_CONFIG_HELP,
    SHOWN_REPEATS_HELP,
    add_protocol_args,
    add_repeats_arg,
    add_results_args,
    run_config,
)
from job.console import console as rich_console
from job.protocol import Protocol
from job.results.layout import RunLayout
from job.results.status import PairState, PairStatus, status

STATE_STYLES = {
    "done": "green",
    "running": "cyan",
    "queued": "blue",
    "requeued": "blue",
    "failed": "red",
    "cancelled": "magenta",
    "preempted": "magenta",
    "interrupted": "yellow",
    "missing": "dim",
    "corrupt": "red",
    "other config": "red",
    "bad lease": "red",
    "in the way": "red",
}

# A done pair's verdict of `verify` (job/results/verification.py).
VERIFIED_STYLES = {"identical": "green", "different": "red", "not comparable": "yellow"}


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "status",
        help="one row per pair: done, running, queued, failed (with its log), requeued or missing",
        description="Show where each pair of RESULTS/RUN stands: done (accuracy), running (job, node, epochs done, "
        "elapsed, when it should end at its latest epoch's pace against its time limit), queued (job, reason), "
        "requeued, failed/cancelled/preempted (Slurm state, exit code, log and its last error line), interrupted "
        "(a checkpoint, nothing running) or missing. Reads the result files, leases, "
        "checkpoints and RESULTS/RUN/submissions.jsonl, and asks squeue/sacct when Slurm is installed. "
        f"{plain_arrays.HELP} {RUN_CONFIG_HELP}",
    )
    add_run_args(p)
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per pair (with its repeat)")
    p.add_argument(
        "--check",
        action="store_true",
        help=f"exit with what a script waits on: 0 every pair done; {STILL_COMING} some pair queued, requeued or "
        "running (ask again later); 1 none coming and some not done (failed, missing, interrupted, blocked...)",
    )
    p.set_defaults(handler=run)


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """What status and pairs share: the run, protocol overrides to check against its own, --repeats as a view."""
    add_results_args(parser)
    add_protocol_args(parser)
    add_repeats_arg(parser, SHOWN_REPEATS_HELP)


def run_statuses(args: argparse.Namespace) -> tuple[Protocol, int, list[PairStatus]]:
    """The run's protocol, the repeats shown, and where each of their pairs stands (status and pairs show these)."""
    layout = RunLayout(args.results, args.run)
    config = run_config(args, layout)
    found = status(layout, config.protocol, repeats=config.repeats, plain_arrays=plain_arrays.live_tasks)
    return config.protocol, config.repeats, found


def heading(protocol: Protocol) -> str:
    """The config a table is of, its overrides in words: the id alone tells a person nothing."""
    return f"(config {protocol.config_id}: {protocol.describe()})"


# EX_TEMPFAIL, as a pair whose lease another process holds: try again later.
STILL_COMING = 75


def check_code(statuses: list[PairStatus]) -> int:
    """--check's exit status: 0 all done, STILL_COMING while any pair is queued or running, else 1."""
    states = {s.state for s in statuses}
    if states <= {PairState.DONE}:
        return 0
    coming = {PairState.QUEUED, PairState.REQUEUED, PairState.RUNNING}
    return STILL_COMING if states & coming else 1


def run(args: argparse.Namespace) -> int:
    protocol, repeats, statuses = run_statuses(args)
    code = check_code(statuses) if args.check else 0
    if args.json:
        print(json.dumps([s.to_json() for s in statuses], indent=1))
        return code

    console = rich_console(highlight=False)
    console.print(Text(f"{args.results}/{args.run}  {heading(protocol)}"), soft_wrap=True)
    table = Table()
    # The repeat column only for a repeated run, the verified one once `verify` judged a pair: the table of a plain
    # run stays as it was.
    verified = any(s.verified for s in statuses)
    for column in ("task", *(["repeat"] * (repeats > 1)), "model", "fold", "state", *(["verified"] * verified)):
        table.add_column(column, overflow="fold")
    table.add_column("detail", overflow="fold")
    for s in statuses:
        table.add_row(
            str(s.task_id),
            *[str(s.pair.repeat)] * (repeats > 1),
            Text(s.pair.model),
            str(s.pair.fold),
            Text(s.state.value, style=STATE_STYLES[s.state.value]),
            *[Text(s.verified or "-", style=VERIFIED_STYLES.get(s.verified or "", "dim"))] * verified,
            Text(s.detail),
        )
    console.print(table)
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s.state.value] = counts.get(s.state.value, 0) + 1
    print(", ".join(f"{n} {state}" for state, n in counts.items()))
    return code
