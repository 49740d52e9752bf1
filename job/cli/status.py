"""`status`: where each pair of a run stands (done, running, queued, failed, ...), from its files and Slurm."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.table import Table
from rich.text import Text

from job.cli.options import add_protocol_args, add_repeats_arg, add_results_args, protocol_from_args, repeats_from_args
from job.console import console as rich_console
from job.results.layout import RunLayout
from job.results.status import status

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


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "status",
        help="one row per pair: done, running, queued, failed (with its log), requeued or missing",
        description="Show where each pair of RESULTS/RUN stands: done (accuracy), running (job, node, epochs done, "
        "elapsed, when it should end at its latest epoch's pace against its time limit), queued (job, reason), "
        "requeued, failed/cancelled/preempted (Slurm state, exit code, log and its last error line), interrupted "
        "(a checkpoint, nothing running) or missing. Reads the result files, leases, "
        "checkpoints and RESULTS/RUN/submissions.jsonl, and asks squeue/sacct when Slurm is installed. Give the "
        "same protocol overrides as the run, so 'done' means done with that config.",
    )
    add_results_args(p)
    add_protocol_args(p)
    add_repeats_arg(p)
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per pair (with its repeat)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:

    protocol = protocol_from_args(args)
    repeats = repeats_from_args(args, protocol)
    statuses = status(RunLayout(args.results, args.run), protocol, repeats=repeats)
    if args.json:
        print(json.dumps([s.to_json() for s in statuses], indent=1))
        return 0

    console = rich_console(highlight=False)
    console.print(Text(f"{args.results}/{args.run}  (config {protocol.config_id})"), soft_wrap=True)
    table = Table()
    # The repeat column only for a repeated run: the table of a plain one stays as it was.
    for column in ("task", *(["repeat"] * (repeats > 1)), "model", "fold", "state", "detail"):
        table.add_column(column, overflow="fold")
    for s in statuses:
        table.add_row(
            str(s.task_id),
            *[str(s.pair.repeat)] * (repeats > 1),
            Text(s.pair.model),
            str(s.pair.fold),
            Text(s.state.value, style=STATE_STYLES[s.state.value]),
            Text(s.detail),
        )
    console.print(table)
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s.state.value] = counts.get(s.state.value, 0) + 1
    print(", ".join(f"{n} {state}" for state, n in counts.items()))
    return 0
