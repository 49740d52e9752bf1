"""The fold ensemble: the fold models of one model and repeat, each rebuilt by the registry around the weights its
result kept (`run --keep-model`), their softmax outputs averaged on the test images and scored, as nnU-Net
evaluates its folds. Each fold model's own test score is recorded beside the ensemble's.

A fold result is used only through store.check_pair (the weights file is the one it names, by sha256), and the
model loaded from that file must have the weights' digest the result recorded, so a file changed between the check
and the load is refused too. The ensemble's result (RESULTS/RUN/ensemble/MODEL.json) names each fold result by file
and sha256: a rerun with the same fold results is skipped, and a fold retrained since makes it stale. One process
makes an ensemble at a time, under its lease (ensemble/MODEL.lease), as a pair trains under its own.
"""

from __future__ import annotations

import os
import shlex
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from job import atomic, provenance
from job.console import one_line
from job.errors import JobError
from job.mnist import MNIST_FILES
from job.pair import data, final, models, predict, runtime, trained
from job.pair.session import Inputs
from job.protocol import Pair, Protocol, task_for_pair
from job.results import store
from job.results.contract import (
    EnsembleData,
    EnsembleMember,
    EnsembleResult,
    EnsembleTimings,
    PairResult,
    ResultError,
    Score,
)
from job.results.layout import RunLayout
from job.results.lease import Lease, LeaseHeld
from job.results.status import array_spec
from job.times import utc_now

# Keras clips a probability to [1e-7, 1 - 1e-7] before its cross-entropy takes the log: the same loss as training's.
EPSILON = 1e-7


@dataclass(frozen=True)
class Member:
    """A fold result to average: where it was read, what it holds, and the sha256 of the bytes checked."""

    path: Path
    result: PairResult
    sha256: str


@dataclass
class Outcome:
    """What the ensembles of one command came to: a line per ensemble made or found done, a line per model refused."""

    done: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)  # being made by another live process now

    @property
    def exit_code(self) -> int:
        """0 when one was made or found done; else 1 when one could not be made, 75 (LeaseHeld's) when every one was
        being made by another process."""
        return 0 if self.done else 1 if self.refused else LeaseHeld.exit_code


def run_ensembles(
    layout: RunLayout, protocol: Protocol, names: list[str], repeat: int, inputs: Inputs, force: bool = False
) -> Outcome:
    """The fold ensemble of each model in `names` whose folds of `repeat` (of the run's `protocol`) are all done with
    kept weights, unless one of the same fold results is there (`force` redoes it); the others say why not."""
    outcome, ready = Outcome(), {}
    with ExitStack() as leases:
        for name in names:
            paths = layout.ensemble_paths(name, repeat)
            if blocked := store.in_the_way(layout, paths):
                outcome.refused.append(f"{name}/ensemble: {blocked}")
                continue
            found = members(layout, protocol, name, repeat)
            if isinstance(found, str):
                outcome.refused.append(found)
            elif not force and _same_folds(layout, paths.result, found):
                outcome.done.append(
                    f"{name}/ensemble: already done of these fold results ({paths.result}); --force to redo"
                )
            elif lease := _lease(paths.lease, protocol, name, outcome):
                ready[name] = (found, leases.enter_context(lease))
        if not ready:
            return outcome
        dataset = data.load(inputs.data_dir, custom=inputs.custom_data)
        runtime_info = runtime.configure(
            deterministic=not protocol.jit, precision=protocol.precision, allow_cpu=inputs.allow_cpu
        )
        for name, (found, lease) in ready.items():
            try:
                outcome.done.append(_write(layout, protocol, name, repeat, found, dataset, runtime_info, lease))
            except JobError as error:
                outcome.refused.append(f"{name}/ensemble: {one_line(str(error))}")
    return outcome


def _lease(path: Path, protocol: Protocol, name: str, outcome: Outcome) -> Lease | None:
    """The ensemble's lease, taken as a pair's is: after the done-check, before any data is read or TensorFlow
    imported. None, with the line that says why added to `outcome`, when another process holds it or it is bad."""
    try:
        return Lease.acquire(path, protocol.config_id, doing="made")
    except LeaseHeld as error:
        outcome.held.append(f"{name}/ensemble: {one_line(str(error))}")
    except JobError as error:
        outcome.refused.append(f"{name}/ensemble: {one_line(str(error))}")
    return None


def members(layout: RunLayout, protocol: Protocol, name: str, repeat: int) -> list[Member] | str:
    """The valid fold results of `name` and `repeat` with kept weights, every fold's; else one line saying which
    folds are not and the command that gets them."""
    found, not_done, unusable, no_weights = [], [], [], []
    for fold in range(protocol.n_folds):
        pair = Pair(name, fold, repeat)
        path = layout.pair_paths(pair).result
        if not os.path.lexists(path):
            not_done.append(pair)
            continue
        try:
            result, sha256 = store.check_pair_read(path, layout)
        except ResultError as error:
            unusable.append((pair, one_line(str(error))))
            continue
        if result.config_id != protocol.config_id:
            unusable.append((pair, f"{path}: of config {result.config_id}, not the run's {protocol.config_id}"))
        elif result.model_file is None:
            no_weights.append(pair)
        else:
            found.append(Member(path, result, sha256))
    if len(found) == protocol.n_folds:
        return found
    parts = [f"fold {pair.fold} unusable ({reason})" for pair, reason in unusable]
    if no_weights:
        parts.append(f"folds {', '.join(str(p.fold) for p in no_weights)} done without kept weights")
    if not_done:
        parts.append(f"folds {', '.join(str(p.fold) for p in not_done)} not done")
    pairs = sorted([*not_done, *no_weights, *(pair for pair, _ in unusable)], key=lambda p: p.fold)
    command = _command(layout, pairs, force=bool(no_weights or unusable), n_folds=protocol.n_folds)
    return f"{name}: no fold ensemble of repeat {repeat}: {'; '.join(parts)}; get them with {command}"


def _command(layout: RunLayout, pairs: list[Pair], *, force: bool, n_folds: int) -> str:
    """The `run` that trains `pairs` keeping their weights: by task ids, or by --model/--fold for an extra model."""
    run = ["mnist-cv", "run", "--results", str(layout.results_dir), "--run", layout.run]
    flags = ["--keep-model", *(["--force"] * force)]
    task_ids = [task_for_pair(pair, n_folds) for pair in pairs]
    if all(task_id is not None for task_id in task_ids):
        return f"`{shlex.join([*run, '--task-ids', array_spec(task_ids), *flags])}`"  # type: ignore[arg-type]
    repeat = ["--repeat", str(pairs[0].repeat)] if pairs[0].repeat else []
    one = [*run, "--model", pairs[0].model, *repeat, "--fold", "K", *flags]
    return f"`{shlex.join(one)}` for K in {', '.join(str(p.fold) for p in pairs)}"


def _same_folds(layout: RunLayout, path: Path, found: list[Member]) -> bool:
    """A valid ensemble is there, of these very fold results."""
    if not os.path.lexists(path):
        return False
    try:
        done = store.check_ensemble(path, layout)
    except ResultError:
        return False  # invalid or stale: made again, and the new one replaces it atomically
    return [member.sha256 for member in done.members] == [member.sha256 for member in found]


def _write(
    layout: RunLayout,
    protocol: Protocol,
    name: str,
    repeat: int,
    found: list[Member],
    dataset: data.Dataset,
    runtime_info: dict[str, Any],
    lease: Lease,
) -> str:
    """Make, check and write one ensemble of the models of `found` on the test images of `dataset`, while `lease` is
    ours; the line to print."""
    paths = layout.ensemble_paths(name, repeat)
    store.ensure_writable(paths.result.parent)
    for member in found:
        differs = [f for f in MNIST_FILES if member.result.data.sha256.get(f) != dataset.sha256.get(f)]
        if differs:
            raise JobError(
                f"the data in {dataset.source} is not what {layout.relative(member.path)} was trained on "
                f"({', '.join(differs)} differ)"
            )
    start, began = utc_now(), time.monotonic()
    labels = dataset.y_test
    members, average = _averaged(layout, protocol, found, dataset.x_test.astype(np.float32) / 255, labels)
    test = final.score_probabilities(average, labels)
    result = EnsembleResult.build(
        model=name,
        repeat=repeat,
        protocol=protocol,
        members=members,
        score=Score(test.n_correct / test.n_images, cross_entropy(average, labels)),
        test=test,
        data=EnsembleData(dataset.name, dataset.source, dataset.sha256, len(labels)),
        environment=provenance.environment(runtime_info),
        timings=EnsembleTimings(start, utc_now(), time.monotonic() - began),
    )
    label = f"{name}/ensemble"
    # Checked as a reader will check it, also that no fold result changed meanwhile, before it is written.
    EnsembleResult.from_json(result.to_json(), label)
    store.check_ensemble_claims(result, layout, label)
    lease.ensure_ours()
    atomic.write_json(paths.result, result.to_json())
    alone = [member.score.accuracy * 100 for member in members]
    return (
        f"{label}: {len(found)} folds of repeat {repeat}, test accuracy {result.score.accuracy * 100:.3f}% "
        f"(loss {result.score.loss:.4f}), {test.n_images - test.n_correct} of {test.n_images} test images "
        f"misclassified; the folds alone {min(alone):.3f}-{max(alone):.3f}% -> {paths.result}"
    )


def _averaged(
    layout: RunLayout, protocol: Protocol, found: list[Member], pixels: np.ndarray, labels: np.ndarray
) -> tuple[tuple[EnsembleMember, ...], np.ndarray]:
    """Each fold model scored alone on the test images, and the mean of their (N, 10) probabilities."""
    total = np.zeros((len(labels), models.N_CLASSES))
    scored = []
    for member in found:
        probabilities = _probabilities(layout, protocol, member, pixels)
        total += probabilities
        n_correct = int(np.count_nonzero(probabilities.argmax(axis=1) == labels))
        score = Score(n_correct / len(labels), cross_entropy(probabilities, labels))
        scored.append(EnsembleMember(member.result.fold, layout.relative(member.path), member.sha256, score))
    return tuple(scored), total / len(found)


def _probabilities(layout: RunLayout, protocol: Protocol, member: Member, pixels: np.ndarray) -> np.ndarray:
    """The (N, 10) float64 probabilities of the fold model the registry builds around the member's kept weights."""
    pair = Pair(member.result.model, member.result.fold, member.result.repeat)
    weights = layout.pair_paths(pair).model_file
    assert weights is not None  # a pair's paths always name one
    # Keras's names as new, as for each training: the weights' digest names each variable as its training did.
    runtime.between_trainings(protocol)
    model = models.build(pair.model)
    try:
        model.load_weights(weights)
    except Exception as error:  # h5py and Keras raise ValueError, OSError, KeyError for a file not of this model
        raise JobError(
            f"{weights}: not the weights of a {pair.model} ({one_line(str(error)) or type(error).__name__})"
        ) from None
    if trained.weights_sha256(model) != member.result.weights_sha256:
        raise JobError(
            f"{weights}: loads other weights than {member.path.name} records (changed since it was checked?)"
        )
    return predict.probabilities(model, pixels).astype(np.float64)


def cross_entropy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The mean cross-entropy of (N, 10) probabilities for integer labels, as Keras computes its loss."""
    chosen = probabilities[np.arange(len(labels)), labels.astype(np.int64)]
    return float(-np.mean(np.log(np.clip(chosen, EPSILON, 1 - EPSILON))))
