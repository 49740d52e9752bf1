"""The only place that trains: one (model, fold) pair, an epoch at a time, checkpointed at every epoch end.

The steps themselves are Keras's own train_step and test_step, run by job/pair/steps.py in compiled calls of many
steps (the numbers of `model.fit`, to the bit, at a fraction of its overhead).

Reproducibility: the weights are seeded from (seed, stream), a pair's stream being its fold; each epoch's
shuffle is a permutation drawn from (seed, stream, epoch) alone, so a pair resumed at epoch k feeds exactly
the batches an uninterrupted run feeds.

Each epoch's checkpoint holds the whole history so far and the resources spent (job/pair/usage.py); the per-epoch
logs (job/pair/epoch_logs.py) follow the checkpoint, never lead it, so a resumed training's logs are exact too.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from job import folds
from job.errors import JobError
from job.pair import models
from job.pair.checkpoint import Checkpoint, CorruptCheckpoint, ForeignCheckpoint, TrainState
from job.pair.data import Dataset
from job.pair.epoch_logs import EpochLogs
from job.pair.steps import CompiledSteps
from job.pair.usage import ProcessUsage, Spent
from job.protocol import Pair, Protocol
from job.results.contract import History, Outcome, PairData, Resume, Score, Timings
from job.times import utc_now

# Batches per compiled call: the same sequence of updates with a fraction of the Python overhead per step.
# None: each model's own (job.pair.models.steps_per_call), sized so that one call stays well under 2 s.
STEPS_PER_CALL: int | None = None
# Evaluation never updates weights, so its batch changes nothing but speed (and summation order). 4x the
# training batch: at 1000 the CNN's activations (~0.2 GB) outgrow the caches and the peak RSS (`mnist-cv bench`).
EVAL_BATCH_SIZE = 128


class Diverged(JobError):
    """An epoch's loss or accuracy is not a finite number: no result can be written, and more epochs cannot help."""


class Preempted(JobError):
    """Training stopped on a signal; the last epoch-end checkpoint is on disk and a rerun resumes from it."""

    exit_code = 3


@dataclass
class Hooks:
    """What a training reports to and is steered by, besides its data and its checkpoint."""

    callbacks: list[Any] = field(default_factory=list)  # Keras callbacks, called in fit's order (progress, bench)
    stop_requested: Callable[[], bool] = lambda: False  # polled after every compiled call: a stop signal came
    log: Callable[[str], None] = print  # one line: a resume, a checkpoint set aside
    usage: ProcessUsage | None = None  # resources: carried on from the checkpoint, marks the end of start-up
    epoch_logs: EpochLogs | None = None  # rewritten from the checkpoint, then one row per checkpointed epoch


def model_seed(protocol: Protocol, stream: int) -> int:
    """The seed of a training's initial weights: one per (seed, stream), a pair's stream being its fold."""
    return int(np.random.SeedSequence([protocol.seed, stream]).generate_state(1)[0])


def epoch_order(train_ix: np.ndarray, seed: int, stream: int, epoch: int) -> np.ndarray:
    """This epoch's shuffled training indices, independent of how many epochs ran in this process."""
    rng = np.random.default_rng([seed, stream, epoch])
    return train_ix[rng.permutation(len(train_ix))]


def checkpoint_owner(model_name: str, stream: int, train_ix: np.ndarray, held_out_ix: np.ndarray) -> dict[str, Any]:
    """What a checkpoint records of the training it belongs to; only that very training resumes it."""
    return {
        "model": model_name,
        "stream": stream,
        "n_train": len(train_ix),
        "held_out_sha256": folds.indices_sha256(held_out_ix),
    }


def steps_per_call(model_name: str, batch_size: int) -> int:
    """Training steps per compiled call: the model's own, fewer for batches larger than the protocol's default.

    A call's duration grows with the images it trains on, and a stop signal is honoured only between calls: the
    model's steps per call were sized at the default batch, so a larger batch gets as many images per call, no more.
    """
    default_batch = Protocol.batch_size
    per_call = STEPS_PER_CALL or models.steps_per_call(model_name)
    return max(1, per_call * default_batch // max(batch_size, default_batch))


def restore(
    checkpoint: Checkpoint, model: Any, config_id: str, owner: dict[str, Any], log: Callable[[str], None]
) -> TrainState | None:
    """The saved state when the checkpoint is this training's and usable. One that is damaged or another training's
    (another config, fold, repeat or model: a copied folder) is set aside, kept and named in one line, never
    resumed nor deleted."""
    if not checkpoint.exists():
        return None
    try:
        return checkpoint.load(model, config_id, owner)
    except CorruptCheckpoint as error:
        reason = f"checkpoint unusable, starting from scratch: {error}"
    except ForeignCheckpoint as error:
        reason = f"checkpoint in {checkpoint.folder} is {error}: starting from scratch"
    log(f"{reason}; set aside as {checkpoint.set_aside()}")
    return None


def fit(
    model_name: str,
    protocol: Protocol,
    images: np.ndarray,
    labels: np.ndarray,
    train_ix: np.ndarray,
    held_out_ix: np.ndarray,
    checkpoint: Checkpoint,
    *,
    stream: int,
    hooks: Hooks | None = None,
) -> tuple[Any, Outcome]:
    """Train `model_name` on images[train_ix], validating on images[held_out_ix] after every epoch.

    `stream` tells apart the random streams of different trainings under one seed (a pair uses its fold).
    Returns the trained model and the result's history, score, timings and resume sections.
    Raises Preempted when the stop flag ends an epoch early, Diverged when an epoch's numbers are not finite.
    """
    import keras

    hooks = hooks or Hooks()
    stop_requested, log, usage, epoch_logs = hooks.stop_requested, hooks.log, hooks.usage, hooks.epoch_logs

    def fresh_model() -> Any:
        keras.utils.set_random_seed(model_seed(protocol, stream))
        return models.build(model_name, steps_per_execution=None, jit=protocol.jit)

    model = fresh_model()
    had_checkpoint = checkpoint.exists()
    owner = checkpoint_owner(model_name, stream, train_ix, held_out_ix)
    state = restore(checkpoint, model, protocol.config_id, owner, log)
    if state is None and had_checkpoint:
        # Keras loads every variable it can (the optimizer's too) before it raises on a damaged file: start
        # from a freshly seeded model, the very one an uninterrupted run starts from.
        model = fresh_model()
    if state is None:
        state = TrainState(config_id=protocol.config_id, start_utc=utc_now(), owner=owner)
    elif state.epochs_done < protocol.epochs:
        state.resumed_from.append(state.epochs_done)
        log(f"resuming from the checkpoint after epoch {state.epochs_done}")
    if usage is not None and state.spent:
        usage.resume(Spent(**state.spent))

    stopped_mid_epoch = False

    def watch_batch(batch: int, logs: dict | None) -> None:
        nonlocal stopped_mid_epoch
        if stop_requested():
            stopped_mid_epoch = True  # the stop flag, not a step count, says so: fp16 overflow skips steps
            model.stop_training = True  # the epoch ends after this compiled call
        elif logs and not math.isfinite(float(logs.get("loss", 0.0))):
            model.stop_training = True  # diverged: the rest of the epoch cannot bring it back

    watcher = keras.callbacks.LambdaCallback(on_train_batch_end=watch_batch)
    steps = CompiledSteps(model, images, labels, steps_per_call=steps_per_call(model_name, protocol.batch_size))
    keras_hooks = keras.callbacks.CallbackList(
        [*hooks.callbacks, watcher],
        model=model,
        epochs=protocol.epochs,
        steps=math.ceil(len(train_ix) / protocol.batch_size),
    )
    with contextlib.ExitStack() as stack:
        if epoch_logs is not None:
            stack.callback(epoch_logs.close)
            epoch_logs.restart(state)
        if usage is not None:
            usage.training_starts()
        keras_hooks.on_train_begin()
        held_out: dict[str, float] | None = None  # the last epoch's held-out metrics: the score, when one ran here
        for epoch in range(state.epochs_done, protocol.epochs):
            started = time.perf_counter()
            keras_hooks.on_epoch_begin(epoch)
            # epoch_order shuffles, reproducibly; a resumed pair feeds the very batches an uninterrupted one does.
            logs = steps.train(epoch_order(train_ix, protocol.seed, stream, epoch), protocol.batch_size, keras_hooks)
            if stopped_mid_epoch:
                # Keep the last epoch-end checkpoint, not these weights.
                raise Preempted(f"stopped by a signal during epoch {epoch + 1}; rerun to resume from epoch {epoch}")
            check_finite(logs, epoch, checkpoint)
            held_out = steps.evaluate(held_out_ix, EVAL_BATCH_SIZE, keras_hooks)
            logs.update({f"val_{key}": value for key, value in held_out.items()})
            epoch_values = {key: logs[key] for key in state.history}
            check_finite(epoch_values, epoch, checkpoint)
            keras_hooks.on_epoch_end(epoch, logs)
            for key, value in epoch_values.items():
                state.history[key].append(value)
            state.epoch_seconds.append(round(time.perf_counter() - started, 3))
            state.epochs_done = epoch + 1
            if usage is not None:
                state.spent = usage.total().to_dict()
            checkpoint.save(model, state)
            if epoch_logs is not None:
                epoch_logs.append(state)
            if stop_requested() and state.epochs_done < protocol.epochs:
                raise Preempted(f"stopped by a signal after epoch {epoch + 1}; rerun to resume from there")
        keras_hooks.on_train_end()

    # The score is the final weights on the held-out images: the last epoch's validation, unless the checkpoint
    # already held every epoch and none ran in this process.
    score = held_out or steps.evaluate(held_out_ix, EVAL_BATCH_SIZE, keras.callbacks.CallbackList([], model=model))
    outcome = Outcome(
        history=History(**{key: tuple(values) for key, values in state.history.items()}),
        score=Score(accuracy=float(score["accuracy"]), loss=float(score["loss"])),
        timings=Timings(
            start_utc=state.start_utc or utc_now(),
            end_utc=utc_now(),
            fit_seconds=round(sum(state.epoch_seconds), 3),
            epoch_seconds=tuple(state.epoch_seconds),
        ),
        resume=Resume(count=len(state.resumed_from), from_epochs=tuple(state.resumed_from)),
    )
    return model, outcome


def check_finite(values: dict[str, float], epoch: int, checkpoint: Checkpoint) -> None:
    """Raise Diverged when an epoch's loss or accuracy is not a finite number."""
    bad = {key: value for key, value in values.items() if not math.isfinite(value)}
    if bad:
        kept = f"the checkpoint after epoch {epoch} in {checkpoint.folder} holds" if epoch else "no checkpoint holds"
        raise Diverged(
            f"training diverged in epoch {epoch + 1} ({', '.join(f'{k} {v}' for k, v in bad.items())}); "
            f"{kept} the history before it; a rerun diverges the same way: change the protocol"
        )


@dataclass(frozen=True)
class TrainedPair:
    """A pair's trained model and its result's sections, with the images it held out (for its predictions)."""

    model: Any
    outcome: Outcome
    data: PairData
    images: np.ndarray  # the (limited) training images, uint8
    labels: np.ndarray
    held_out_ix: np.ndarray


def fit_pair(
    pair: Pair, protocol: Protocol, dataset: Dataset, checkpoint: Checkpoint, hooks: Hooks | None = None
) -> TrainedPair:
    """Train and score one (model, fold, repeat) pair on its fold of the (limited) training images."""
    images, labels = dataset.x_train[: protocol.limit], dataset.y_train[: protocol.limit]
    train_ix, val_ix = folds.split(len(images), pair.fold, protocol, pair.repeat)
    stream = pair.stream(protocol.n_folds)
    model, outcome = fit(pair.model, protocol, images, labels, train_ix, val_ix, checkpoint, stream=stream, hooks=hooks)
    data = PairData(
        **dataset.provenance(),
        n_train=len(train_ix),
        n_val=len(val_ix),
        val_indices_sha256=folds.indices_sha256(val_ix),
    )
    return TrainedPair(model, outcome, data, images, labels, val_ix)
