"""`pairs`: the ten (model, fold) pairs, their task ids, and which are done."""

from __future__ import annotations

import argparse
from typing import Any

from job.cli.options import add_protocol_args, add_results_args, protocol_from_args

STATE_STYLES = {
    "done": "green",
    "missing": "dim",
    "in progress": "yellow",
    "corrupt": "red",
    "other config": "red",
}


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "pairs",
        help="list the ten pairs, their task ids, and which are done",
        description="List the ten (model, fold) pairs with their array task ids and state in RESULTS/RUN. "
        "Give the same protocol overrides as the run, so 'done' means done with that config.",
    )
    add_results_args(p)
    add_protocol_args(p)
    p.add_argument(
        "--missing",
        action="store_true",
        help="print only the task ids not done, in sbatch --array syntax (e.g. 1,4-9); nothing if all are done",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from job.results.status import array_spec, status

    protocol = protocol_from_args(args)
    statuses = status(args.results, args.run, protocol)
    if args.missing:
        spec = array_spec([s.task_id for s in statuses if s.state != "done"])
        if spec:
            print(spec)
        return 0

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{args.results}/{args.run}  (config {protocol.config_id})")
    for column in ("task", "model", "fold", "state", "detail"):
        table.add_column(column)
    for s in statuses:
        style = STATE_STYLES[s.state]
        table.add_row(str(s.task_id), s.pair.model, str(s.pair.fold), f"[{style}]{s.state}[/]", s.detail)
    Console().print(table)
    done = sum(s.state == "done" for s in statuses)
    print(f"{done}/{len(statuses)} done")
    return 0
