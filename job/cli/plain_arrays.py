"""The live `sbatch slurm/array.sh ARGS` arrays, read back into the run folder and config they write.

Such an array is recorded in RESULTS/RUN/submissions.jsonl only as each of its tasks starts; until then only squeue
knows it. Its tasks are this user's jobs named as slurm/array.sh's `#SBATCH --job-name`, whose command is a script of
that file name; the arguments after it are `run`'s, read with `run`'s own parser: --results (relative to squeue's
working folder; default `results`), --run (default `default`) and the protocol options, which resolve against that
run's manifest as the task will (only --run: the run's config; an override that differs: refused, so no match);
the config id must be the one asked about. Task N of such an array runs pair N; with `--pairs-per-task P`, the pairs
P*N to P*N+P-1 (capped at the run's last, as `run` caps them).

What squeue does not show is not matched, so such an array's pairs still read as missing:
- the results, run and home settings given as variables at submission (squeue shows no job's environment): a run
  chosen by those alone is matched as if they were unset (results/default under the working folder);
- a relative --results with `sbatch --chdir` elsewhere than the folder sbatch ran in (the script cds back there),
  or with the home setting on a checkout (not a code snapshot): give --results absolute;
- an argument holding whitespace (squeue joins the arguments with spaces);
- arguments that pick the pairs themselves (--task-id, --task-ids, --model, --fold, --repeat): the index then names
  no pair.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from job import settings, slurm
from job.cli import run
from job.cli.options import run_config
from job.errors import JobError
from job.launch import resources
from job.protocol import Protocol, packed_task_ids
from job.results.layout import RunLayout
from job.results.status import PlainTask
from job.slurm import TaskState

PAIR_OPTIONS = ("task_id", "task_ids", "model", "fold", "repeat")  # `run`'s own choice of pairs
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


@dataclass(frozen=True)
class Written:
    """What the tasks of one `sbatch slurm/array.sh ARGS` array write: a run folder, with a config, and which pairs
    each array index trains."""

    folder: Path
    config_id: str
    pairs_per_task: int | None  # --pairs-per-task; None: index N trains pair N
    repeats: int  # what caps a packed task's pairs: --repeats, else the run's (as `run` reads it)

    def task_ids(self, index: int) -> tuple[int, ...]:
        if self.pairs_per_task is None:
            return (index,)
        return packed_task_ids(index, self.pairs_per_task, self.repeats)


def writes(workdir: str, command: str) -> Written | None:
    """What a task of `sbatch slurm/array.sh ARGS` writes, from squeue's WorkDir and Command; None for another script
    (a `submit` array's, a --wrap), arguments `run` refuses, or ones that pick the pairs."""
    script, *args = command.split() or [""]
    if Path(script).name != resources.PAIRS_SCRIPT.name or not Path(workdir).is_absolute():
        return None
    try:
        parsed = _run_parser().parse_args(args)
        layout = RunLayout(Path(workdir) / parsed.results, parsed.run)  # an absolute --results stays itself
        # The run's config and repeats, as the task will resolve them: with only --run, its manifest's.
        config = run_config(parsed, layout)
    except (ValueError, JobError):
        return None
    if any(getattr(parsed, name) is not None for name in PAIR_OPTIONS):
        return None
    return Written(layout.folder.resolve(), config.protocol.config_id, parsed.pairs_per_task, config.repeats)


def matching(tasks: Iterable[TaskState], layout: RunLayout, protocol: Protocol) -> list[PlainTask]:
    """The tasks (squeue's, with their working folder and command) that write `layout` with `protocol`'s config,
    each with the pairs it trains."""
    wanted = (layout.folder.resolve(), protocol.config_id)
    found: dict[tuple[str, str], Written | None] = {}  # an array's tasks share one command line: read it once
    matched = []
    for task in tasks:
        key = (task.workdir, task.command)
        if key not in found:
            written = writes(*key)
            found[key] = written if written is not None and (written.folder, written.config_id) == wanted else None
        written = found[key]
        task_ids = () if written is None or task.task_id is None else written.task_ids(task.task_id)
        if task_ids:  # an index past a packed run's last pair trains nothing
            matched.append(PlainTask(task, task_ids))
    return matched


def live_tasks(layout: RunLayout, protocol: Protocol) -> list[PlainTask]:
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
