"""`pairs`: the ten (model, fold) pairs (ten per repeat), their task ids, and which are done."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rich.table import Table
from rich.text import Text

from job.cli import plain_arrays
from job.cli.options import RUN_CONFIG_HELP
from job.cli.status import STATE_STYLES, add_run_args, heading, run_statuses
from job.console import console as rich_console
from job.results.status import array_spec


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "pairs",
        help="list the ten pairs (ten per repeat), their task ids, and which are done",
        description="List the ten (model, fold) pairs (of each repeat of the run) with their array task ids "
        f"and state in RESULTS/RUN (see `status` for the details). {plain_arrays.HELP} {RUN_CONFIG_HELP}",
    )
    add_run_args(p)
    p.add_argument(
        "--missing",
        action="store_true",
        help="print only the task ids neither done nor queued nor running, in sbatch --array syntax (e.g. 1,4-9); "
        "print nothing and exit 1 when there are none, so `ids=$(mnist-cv pairs --missing) && sbatch "
        '--array="$ids" slurm/array.sh` never submits an empty array',
    )
    p.add_argument("--json", action="store_true", help="print a JSON list: task id, model, fold, repeat, state")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    protocol, repeats, statuses = run_statuses(args)
    if args.missing:
        for s in statuses:
            if s.state.blocked:  # a task for it would fail at once: said, not listed
                print(
                    f"mnist-cv pairs: left out task {s.task_id} {s.pair}: {s.state.value} ({s.detail})", file=sys.stderr
                )
        spec = array_spec([s.task_id for s in statuses if s.state.needs_run])
        if not spec:
            return 1
        print(spec)
        return 0
    if args.json:
        rows = [{"task_id": s.task_id, **s.pair._asdict(), "state": s.state.value} for s in statuses]
        print(json.dumps(rows, indent=1))
        return 0

    console = rich_console(highlight=False)
    console.print(Text(f"{args.results}/{args.run}  {heading(protocol)}"), soft_wrap=True)
    table = Table()
    # The repeat column only for a repeated run: the table of a plain one stays as it was.
    for column in ("task", *(["repeat"] * (repeats > 1)), "model", "fold", "state"):
        table.add_column(column)
    for s in statuses:
        style = STATE_STYLES[s.state.value]
        repeat = [str(s.pair.repeat)] * (repeats > 1)
        table.add_row(str(s.task_id), *repeat, Text(s.pair.model), str(s.pair.fold), Text(s.state.value, style=style))
    console.print(table)
    done = sum(s.state == "done" for s in statuses)
    print(f"{done}/{len(statuses)} done")
    return 0
