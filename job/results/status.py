"""The state of each of the ten pairs in a run folder, read from result files and checkpoints only."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from job.pair.checkpoint import Checkpoint
from job.pair.protocol import Pair, Protocol, all_pairs
from job.results import store as results
from job.results.layout import RunLayout


class PairStatus(NamedTuple):
    task_id: int
    pair: Pair
    state: str  # done | missing | in progress | corrupt | other config
    detail: str
    path: Path


def status(results_dir: Path, run: str, protocol: Protocol) -> list[PairStatus]:
    return [
        _status_of(task_id, pair, results_dir, run, protocol)
        for task_id, pair in enumerate(all_pairs(protocol.n_folds))
    ]


def _status_of(task_id: int, pair: Pair, results_dir: Path, run: str, protocol: Protocol) -> PairStatus:
    layout = RunLayout(results_dir, run)
    path = layout.pair_result(pair)
    if path.exists():
        try:
            result = results.check_pair(path, layout)
        except results.ResultError as error:
            return PairStatus(task_id, pair, "corrupt", str(error), path)
        if result.config_id != protocol.config_id:
            return PairStatus(task_id, pair, "other config", f"config {result.config_id}", path)
        return PairStatus(task_id, pair, "done", f"{result.score.accuracy * 100:.3f}%", path)
    epochs_done = Checkpoint(layout.pair_checkpoint(pair)).epochs_done()
    if epochs_done is None:
        return PairStatus(task_id, pair, "missing", "", path)
    return PairStatus(task_id, pair, "in progress", f"checkpoint after epoch {epochs_done}", path)


def array_spec(task_ids: list[int]) -> str:
    """Slurm's --array syntax for a set of indices, with runs collapsed: [0, 1, 2, 5, 7, 8] -> '0-2,5,7-8'."""
    spans: list[list[int]] = []
    for task_id in sorted(task_ids):
        if spans and task_id == spans[-1][1] + 1:
            spans[-1][1] = task_id
        else:
            spans.append([task_id, task_id])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
