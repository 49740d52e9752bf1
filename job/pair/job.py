"""The one training skeleton of `run` and `final`: done-check, lease, session, typed result, validate, atomic write,
checkpoint removal. A pair and a final model differ only in what they train and write (PairJob, FinalJob). Several
pairs in one process (`run --task-ids`) go through the same skeleton one after another, sharing one Setup."""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from job import atomic
from job.console import one_line
from job.errors import JobError
from job.pair import final, session
from job.pair import trained as trained_files
from job.pair.checkpoint import Checkpoint
from job.pair.epoch_logs import EpochLogs, HParams, hparams_of
from job.pair.session import Inputs, Session, Setup
from job.pair.train import Preempted, fit_pair
from job.protocol import Pair, Protocol, task_for_pair
from job.results import manifest, store
from job.results.contract import FinalResult, ModelFile, PairResult
from job.results.layout import JobPaths, RunLayout
from job.results.lease import Lease, LeaseHeld
from job.results.submissions import ArrayTask, record_running_task


@dataclass(frozen=True)
class Options:
    """How to treat what is already there, and the run's repeats to record."""

    force: bool = False  # retrain even when a valid result of this config exists
    keep_checkpoint: bool = False  # keep the per-epoch checkpoint after the result is written
    keep_model: bool = False  # keep a pair's trained weights beside its result (the fold ensemble's models)
    # Recorded in the run's manifest (job/results/manifest.py) before training; None records none (the bench's runs).
    repeats: int | None = None


class Job(ABC):
    """One training: what it is called, the files it writes, how to train it and how to check its result."""

    layout: RunLayout
    protocol: Protocol
    # What its per-epoch logs call the numbers of its held-out images (job/pair/epoch_logs.py).
    held_out = "val"

    @property
    @abstractmethod
    def model_name(self) -> str: ...

    @property
    @abstractmethod
    def label(self) -> str: ...

    @property
    @abstractmethod
    def paths(self) -> JobPaths: ...

    @property
    def hparams(self) -> HParams:
        """Its config as TensorBoard's HParams view shows it (job/pair/epoch_logs.py)."""
        return hparams_of(self.protocol, self.model_name)

    @abstractmethod
    def check(self, path: Path) -> Any:
        """The validity check of this kind of result (raises ResultError)."""

    @abstractmethod
    def train(self, session: Session, checkpoint: Checkpoint, options: Options) -> Any:
        """Train and return the typed result, after writing the files it names (a model file, predictions)."""

    @abstractmethod
    def report(self, result: Any) -> str:
        """The one line printed when the result is written."""

    def record_task(self) -> None:  # noqa: B027 - a hook: only a pair is a task of slurm/array.sh
        """Say which Slurm task trains this (see PairJob); nothing by default."""


@dataclass(frozen=True)
class PairJob(Job):
    layout: RunLayout
    protocol: Protocol
    pair: Pair
    array_task: ArrayTask | None = None  # the slurm/array.sh task it is part of, as `run` was told; None: none

    @property
    def model_name(self) -> str:
        return self.pair.model

    @property
    def label(self) -> str:
        return str(self.pair)

    @property
    def paths(self) -> JobPaths:
        return self.layout.pair_paths(self.pair)

    @property
    def hparams(self) -> HParams:
        return hparams_of(self.protocol, self.pair.model, self.pair)

    def check(self, path: Path) -> PairResult:
        return store.check_pair(path, self.layout)

    def train(self, session: Session, checkpoint: Checkpoint, options: Options) -> PairResult:
        trained = fit_pair(self.pair, self.protocol, session.dataset, checkpoint, session.hooks)
        paths = self.paths
        assert paths.predictions is not None and paths.model_file is not None  # a pair's paths always name both
        # Before the result: a result on disk always names complete files.
        predictions = trained_files.save_predictions(
            trained.model, trained.images, trained.labels, trained.held_out_ix, paths.predictions
        )
        kept = trained_files.keep_weights(trained.model, paths.model_file) if options.keep_model else None
        return PairResult.build(
            model=self.pair.model,
            fold=self.pair.fold,
            repeat=self.pair.repeat,
            task_id=task_for_pair(self.pair, self.protocol.n_folds),
            protocol=self.protocol,
            outcome=trained.outcome,
            data=trained.data,
            environment=session.environment(),
            resources=session.usage.resources(),
            weights_sha256=trained_files.weights_sha256(trained.model),
            predictions=predictions,
            model_file=kept,
        )

    def record_task(self) -> None:
        if self.array_task is not None:
            record_running_task(self.layout, self.protocol.config_id, self.array_task)

    def report(self, result: PairResult) -> str:
        return (
            f"{self.label}: held-out accuracy {result.score.accuracy * 100:.3f}% (loss {result.score.loss:.4f}) "
            f"in {result.timings.fit_seconds:.1f}s -> {self.paths.result}"
        )


@dataclass(frozen=True)
class FinalJob(Job):
    layout: RunLayout
    protocol: Protocol
    model: str
    held_out = "test"  # a final model is watched on the test images

    @property
    def model_name(self) -> str:
        return self.model

    @property
    def label(self) -> str:
        return f"{self.model}/final"

    @property
    def paths(self) -> JobPaths:
        return self.layout.final_paths(self.model)

    def check(self, path: Path) -> FinalResult:
        return store.check_final(path, self.layout)

    def train(self, session: Session, checkpoint: Checkpoint, options: Options) -> FinalResult:
        model, outcome, test, data = final.train(self.model, self.protocol, session.dataset, checkpoint, session.hooks)
        model_file = self.paths.model_file
        assert model_file is not None  # a final model's paths always name one
        # Before the result: a result on disk always names a complete model file.
        saved = ModelFile(name=model_file.name, sha256=final.save_model(model, model_file))
        return FinalResult.build(
            model=self.model,
            protocol=self.protocol,
            model_file=saved,
            outcome=outcome,
            test=test,
            data=data,
            environment=session.environment(),
            weights_sha256=trained_files.weights_sha256(model),
            resources=session.usage.resources(),
        )

    def report(self, result: FinalResult) -> str:
        score, test = result.score, result.test
        return (
            f"{self.label}: test accuracy {score.accuracy * 100:.3f}% (loss {score.loss:.4f}), "
            f"{test.n_images - test.n_correct} of {test.n_images} test images misclassified, "
            f"in {result.timings.fit_seconds:.1f}s -> {self.paths.model_file}"
        )


def run_pair(
    layout: RunLayout,
    protocol: Protocol,
    pair: Pair,
    inputs: Inputs,
    options: Options = Options(),
    callbacks: Sequence[Any] = (),
    array_task: ArrayTask | None = None,
) -> str:
    """Train one (model, fold, repeat) pair into `layout` unless it is done; the line to print (see execute).
    `callbacks`: Keras callbacks to add to the training's own (the bench marks its start-up with one).
    `array_task`: the slurm/array.sh task `run` was told it is (recorded in submissions.jsonl as the task starts)."""
    return execute(PairJob(layout, protocol, pair, array_task), Setup(inputs), options, callbacks)


def run_final(
    layout: RunLayout,
    protocol: Protocol,
    model: str,
    inputs: Inputs,
    options: Options = Options(),
) -> str:
    """Train the final model of `model` on all training images into `layout` unless it is done; see execute."""
    return execute(FinalJob(layout, protocol, model), Setup(inputs), options)


@dataclass
class PackOutcome:
    """How the pairs of one process ended (run_pairs): done (trained now or before), held by another live process,
    failed."""

    pairs: Sequence[Pair]
    done: list[Pair] = field(default_factory=list)
    held: list[Pair] = field(default_factory=list)
    failed: list[Pair] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """The worst: 1 when a pair failed, else 75 (LeaseHeld's) when one was held, else 0."""
        return 1 if self.failed else LeaseHeld.exit_code if self.held else 0

    def summary(self) -> str:
        parts = [f"{len(self.done)} done"]
        parts += [f"{len(self.failed)} failed ({', '.join(map(str, self.failed))})"] * bool(self.failed)
        parts += [f"{len(self.held)} held by another process ({', '.join(map(str, self.held))})"] * bool(self.held)
        return f"{len(self.pairs)} pairs, {self.pairs[0]} to {self.pairs[-1]}: {', '.join(parts)}"


def run_pairs(
    layout: RunLayout,
    protocol: Protocol,
    pairs: Sequence[Pair],
    inputs: Inputs,
    options: Options = Options(),
    array_task: ArrayTask | None = None,
) -> PackOutcome:
    """Train `pairs` one after another in this process, each exactly as run_pair would (its own done-check, lease,
    checkpoint and result), on one data load and one TensorFlow set-up; each pair's line is printed as it ends.

    A pair held by another live process, or one that fails (JobError), is reported in one line on stderr and the
    next pair runs. A stop signal ends the whole pack (Preempted, exit 3) once the current pair is checkpointed: a
    rerun skips the done pairs and resumes the others. A failed set-up (the data, TensorFlow) would fail every
    pair alike: it ends the pack too, as it ends a single run."""
    setup, pack = Setup(inputs), PackOutcome(pairs)
    for position, pair in enumerate(pairs):
        try:
            if setup.stop():
                raise Preempted(f"stopped by a signal before {pair}")
            line = execute(PairJob(layout, protocol, pair, array_task), setup, options)
        except Preempted as error:
            left = ", ".join(map(str, pairs[position:]))
            raise Preempted(f"{error}; {len(pairs) - position} of {len(pairs)} pairs left to a rerun: {left}") from None
        except LeaseHeld as error:
            print(f"{pair}: skipped: {_about(pair, error)}", file=sys.stderr, flush=True)
            pack.held.append(pair)
        except JobError as error:
            if error is setup.failure:
                raise
            print(f"{pair}: error: {_about(pair, error)}", file=sys.stderr, flush=True)
            pack.failed.append(pair)
        else:
            print(line, flush=True)
            pack.done.append(pair)
    return pack


def _about(pair: Pair, error: JobError) -> str:
    """The error's one line without the pair's name in front, which the line printed puts there."""
    return one_line(str(error)).removeprefix(f"{pair}: ")


def execute(job: Job, setup: Setup, options: Options = Options(), callbacks: Sequence[Any] = ()) -> str:
    """Train `job` unless it is done with its config; return the line to print. Raises JobError (one line), or
    LeaseHeld (exit 75) while another live process trains the same pair. `setup`: the process's data, TensorFlow
    and stop flag, made when a training first needs them."""
    paths = job.paths
    if blocked := store.in_the_way(job.layout, paths):
        raise JobError(f"{job.label}: {blocked}")
    if done := _done(job, options):
        return done
    store.ensure_writable(paths.result.parent)
    # A task of `sbatch slurm/array.sh` says where it runs (its submitter records nothing); before the lease, so
    # that a refused task can be found with its log too.
    job.record_task()
    with Lease.acquire(paths.lease, job.protocol.config_id) as lease:
        if done := _done(job, options):  # the holder we waited behind may have just finished it
            return done
        checkpoint = Checkpoint(paths.checkpoint)
        if options.force and checkpoint.exists():  # --force trains from epoch 1; what was there is kept aside
            print(f"{job.label}: --force: checkpoint set aside as {checkpoint.set_aside()}", file=sys.stderr)
        epoch_logs = EpochLogs(paths.csv, paths.tensorboard, job.held_out, job.hparams)
        with session.training(setup, job.protocol, job.model_name, job.label, epoch_logs, callbacks) as trained:
            # Once the data has passed its checks (a refused --batch-size fixes no config for the run), and before
            # any epoch: a second config in the run is refused here at the latest.
            if options.repeats is not None and (grown := manifest.record(job.layout, job.protocol, options.repeats)):
                print(grown, file=sys.stderr, flush=True)
            result = job.train(trained, checkpoint, options)
        # The in-memory result passes the readers' checks before it is written: the schema, finite numbers, and
        # a history consistent with the score.
        type(result).from_json(result.to_json(), job.label)
        store.check_claims(result, job.label)
        # Checked again at the moment of writing: the lease may have been judged gone and taken over, or a result
        # of another config written meanwhile (by a --force run); either way this result must not replace it.
        lease.ensure_ours()
        _done(job, options)
        atomic.write_json(paths.result, result.to_json())
        if not options.keep_checkpoint:
            checkpoint.remove()
    return job.report(result)


def _done(job: Job, options: Options) -> str | None:
    """The line to print when a valid result of this config is there; raises when one of another config is."""
    config_id, path = job.protocol.config_id, job.paths.result
    if options.force or not store.completed(path, config_id, read=job.check):
        return None
    return f"{job.label}: already done with config {config_id} ({path}); --force to retrain"
