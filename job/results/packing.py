"""How long a task lasts, and how many pairs of one model a task should train, from what its pairs measured.

A pair's result records its wall seconds and its start-up (job/pair/usage.py): the start-up (imports, data load) is
paid once per process, the rest once per pair. So a task that trains N pairs of one model one after another lasts
about start-up + N x (wall - start-up): the slowest start-up of the run (a pair trained after another in one process
records only its own, short one), and the slowest of the model's pairs past its start-up. `submit --pack
auto` (job/launch/) and collect's right-sizing (job/analysis/sizing.py) share these rules; both read typed results.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from job.results.contract import PairResult
from job.results.projection import WARNING_S

TIME_MARGIN = 1.5
TIME_STEP_S = 5 * 60
# What a packed task should last at least: schedulers favour jobs of tens of minutes over many of seconds, and each
# task pays one start-up (`submit --pack-minutes`, collect's suggestion).
TASK_MINUTES = 10


@dataclass(frozen=True)
class PairCost:
    """One model's pair as its measured results say: what a process pays once, and what each pair adds."""

    startup_seconds: float  # the run's slowest start-up: imports, data load, model build
    pair_seconds: float  # the slowest pair's wall seconds past its start-up
    n_measured: int

    def task_seconds(self, pairs: int) -> float:
        """A task that trains `pairs` of these pairs one after another: one start-up, then each pair."""
        return self.startup_seconds + pairs * self.pair_seconds


def pair_cost(results: Sequence[PairResult], run: Sequence[PairResult]) -> PairCost | None:
    """The cost of one model's pairs from their `results` (the start-up from all of the `run`'s); None when none
    records its resources (a version 1 file)."""
    used = [r.resources for r in results if r.resources is not None]
    if not used:
        return None
    return PairCost(
        startup_seconds=max(r.resources.startup_seconds for r in (*run, *results) if r.resources is not None),
        pair_seconds=max(max(u.wall_seconds - u.startup_seconds, 0.0) for u in used),
        n_measured=len(used),
    )


def pairs_per_task(cost: PairCost, target_seconds: float, most: int | None = None) -> int:
    """The fewest pairs whose task lasts at least `target_seconds` (1 at least, `most` at most)."""
    short = target_seconds - cost.startup_seconds
    wanted = 1 if short <= cost.pair_seconds else math.ceil(short / max(cost.pair_seconds, 1e-3))
    return max(1, min(wanted, most or wanted))


def time_limit_seconds(wall_seconds: float) -> int:
    """A time limit for a task that lasts `wall_seconds`: x TIME_MARGIN plus the requeue warning (a limit shorter than
    the task plus the warning would requeue it every time), rounded up to TIME_STEP_S."""
    return math.ceil((wall_seconds * TIME_MARGIN + WARNING_S) / TIME_STEP_S) * TIME_STEP_S
