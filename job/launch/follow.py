"""Following submitted jobs to their end: each reported as it finishes, a failed one with the end of its logs,
over a live bar on a terminal and as numbered lines otherwise."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from job.console import console as Console

POLL_S = 1.0
LOG_TAIL_LINES = 8  # of each log


def follow(jobs: list[Any], names: list[str], *, poll: bool) -> list[str]:
    """Report each pair as it finishes (a failed one with its log's tail); the names of the failed pairs."""
    failed = []
    with progress(len(jobs)) as report:
        for job in finished(jobs, poll=poll):
            name = names[jobs.index(job)]
            error = job.exception()
            if error is None:
                report(f"{job.result()}  [job {job.job_id}]")
            else:
                failed.append(name)
                report(failure_report(name, job, error))
    return failed


def finished(jobs: list[Any], *, poll: bool) -> Iterator[Any]:
    """The jobs as they end; without `poll` (debug executor) in order, each then run by the caller's exception()."""
    pending = list(jobs)
    while pending:
        for job in [job for job in pending if not poll or job.done()]:
            pending.remove(job)
            yield job
        if pending:
            time.sleep(POLL_S)


def failure_report(name: str, job: Any, error: BaseException) -> str:
    """The pair's name and the end of its logs: the job's own output (.out), then how it ended (.err)."""
    parts = [f"FAILED {name} [job {job.job_id}]"]
    for log in (job.paths.stdout, job.paths.stderr):
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines() if log.is_file() else []
        if lines:
            parts += [f"  last lines of {log}:", *(f"    {line}" for line in lines[-LOG_TAIL_LINES:])]
    if len(parts) == 1:  # no log at all (debug executor, or a job that never started)
        parts += [f"    {line}" for line in str(error).splitlines()[-LOG_TAIL_LINES:]]
    return "\n".join(parts)


@contextmanager
def progress(total: int) -> Iterator[Callable[[str], None]]:
    """A report(line) for each finished pair: over a live bar on a terminal, numbered plain lines otherwise."""
    console = Console(highlight=False)
    if not console.is_terminal:
        done = iter(range(1, total + 1))
        yield lambda line: print(f"[{next(done)}/{total}] {line}", flush=True)
        return
    with Progress(
        TextColumn("pairs finished"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        task = bar.add_task("pairs", total=total)

        def report(line: str) -> None:
            bar.console.print(line, markup=False)
            bar.advance(task)

        yield report
