"""The live `sbatch slurm/array.sh ARGS` arrays, read back into the run folder and config they write.

Such an array is recorded in RESULTS/RUN/submissions.jsonl only as each of its tasks starts; until then only squeue
knows it. Its tasks are this user's jobs named as slurm/array.sh's `#SBATCH --job-name`, whose command is a script of
that file name; the arguments after it are `run`'s, read with `run`'s own parser: --results (relative to squeue's
working folder; default `results`), --run (default `default`) and the protocol options, which resolve against that
run's manifest as the task will (only --run: the run's config; an override that differs: refused, so no match);
the config id must be the one asked about. Task N of such an array runs pair N.

What squeue does not show is not matched, so such an array's pairs still read as missing:
- the results, run and home settings given as variables at submission (squeue shows no job's environment): a run
  chosen by those alone is matched as if they were unset (results/default under the working folder);
- a relative --results with `sbatch --chdir` elsewhere than the folder sbatch ran in (the script cds back there),
  or with the home setting on a checkout (not a code snapshot): give --results absolute;
- an argument holding whitespace (squeue joins the arguments with spaces);
- arguments that pick the pair themselves (--task-id, --model, --fold, --repeat): the index is then no pair's id.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

from job import settings, slurm
from job.cli import run
from job.cli.options import run_config
from job.errors import JobError
from job.launch import resources
from job.protocol import Protocol
from job.results.layout import RunLayout
from job.slurm import TaskState

PAIR_OPTIONS = ("task_id", "model", "fold", "repeat")  # `run`'s own choice of a pair
# What `status` and `pairs` say of it in their --help.
HELP = (
    "Tasks of a plain `sbatch slurm/array.sh ARGS` array that have not started (they record themselves as they "
    "start) are matched to RESULTS/RUN and the config by squeue's working dir and ARGS: --results relative to the "
    f"working dir, default results/default; ${settings.RESULTS.name}/${settings.RUN.name} set at submission are not "
    "visible in squeue, so give --results and --run."
)


class _Reader(argparse.ArgumentParser):
    """A parser that reads a job's arguments without acting on them: no --help, an error raised, never printed."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**{**kwargs, "add_help": False})

    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


@functools.cache
def _run_parser() -> argparse.ArgumentParser:
    subparsers = _Reader().add_subparsers(parser_class=_Reader)
    run.add_parser(subparsers)
    parser: argparse.ArgumentParser = subparsers.choices["run"]
    # The job's environment is not this one: its defaults are those of no variable set.
    unset = settings.Settings.from_env({})
    parser.set_defaults(results=unset.results, run=unset.run)
    return parser


def writes(workdir: str, command: str) -> tuple[Path, str] | None:
    """(run folder, config id) a task of `sbatch slurm/array.sh ARGS` writes, from squeue's WorkDir and Command; None
    for another script (a `submit` array's, a --wrap), arguments `run` refuses, or ones that pick the pair."""
    script, *args = command.split() or [""]
    if Path(script).name != resources.PAIRS_SCRIPT.name or not Path(workdir).is_absolute():
        return None
    try:
        parsed = _run_parser().parse_args(args)
        layout = RunLayout(Path(workdir) / parsed.results, parsed.run)  # an absolute --results stays itself
        # The run's config, as the task will resolve it: with only --run, its manifest's.
        config_id = run_config(parsed, layout).protocol.config_id
    except (ValueError, JobError):
        return None
    if any(getattr(parsed, name) is not None for name in PAIR_OPTIONS):
        return None
    return layout.folder.resolve(), config_id


def matching(tasks: Iterable[TaskState], layout: RunLayout, protocol: Protocol) -> list[TaskState]:
    """The tasks (squeue's, with their working folder and command) that write `layout` with `protocol`'s config."""
    tasks = list(tasks)
    wanted = (layout.folder.resolve(), protocol.config_id)
    found: dict[tuple[str, str], bool] = {}  # an array's tasks share one command line: read it once
    for task in tasks:
        key = (task.workdir, task.command)
        if key not in found:
            found[key] = writes(*key) == wanted
    return [task for task in tasks if found[(task.workdir, task.command)]]


def live_tasks(layout: RunLayout, protocol: Protocol) -> list[TaskState]:
    """This user's live tasks of slurm/array.sh arrays that write `layout` with `protocol`'s config (status's
    `plain_arrays`); none without Slurm."""
    if not slurm.available():
        return []
    try:
        name = resources.pairs().job_name
    except JobError:
        return []  # no slurm/ beside this code (an installed package): no array of its script to look for
    try:
        live = slurm.live_tasks(name)
    except slurm.SchedulerError:
        # A controller that does not answer (Slurm installed, slurmctld down) hides only the arrays none of whose
        # tasks has started, as before they were looked for: status still answers from the files.
        return []
    return matching(live, layout, protocol)
