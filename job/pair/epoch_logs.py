"""A training's per-epoch logs, written as it trains: a CSV (MODEL/fold-K.csv) and TensorBoard logs (MODEL/fold-K/).

They are derived from the checkpoint, never ahead of it: an epoch's row and events are written only after its
checkpoint is saved, and a process that starts a training rewrites both from the checkpoint's history (the CSV
atomically; the TensorBoard logs by deleting the folder and writing every past epoch again). A kill at any
instant, between a log line and a save say, therefore leaves logs that the next process replaces with exactly the
epochs done, in order, each once. Keras's CSVLogger(append=True) would repeat an epoch logged but not saved.

The TensorBoard folder is what keras.callbacks.TensorBoard writes into its log_dir: a `train` run and a held-out run
(`validation`, or `test` for a final model's test images), tagged `epoch_loss` and `epoch_accuracy` at step = the
epoch's index from 0, so that one training's two curves overlay; the train run also holds `epoch_seconds`. The
folder itself holds the hparams plugin's session: the training's config, by which TensorBoard's HParams view
compares trainings, with each run's last values as the session's metrics (validation/epoch_accuracy, ...). The CSV
numbers epochs from 1, as the progress lines and MLflow's steps do.

The scalars are written with TensorFlow's own summary op, so the runs need no `tensorboard` package; the hparams
session is the hparams plugin's protobuf, which only that package has: it is written where the package is installed
(`pip install 'mnist-cv[tensorboard]'`, which looking at the logs needs anyway), and said once where it is not.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from job import atomic
from job.errors import JobError
from job.pair import runtime
from job.pair.checkpoint import TrainState
from job.protocol import Pair, Protocol

COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds")
TRAIN_RUN = "train"
# The held-out run by what the history's val_* numbers were measured on: Keras's name for validation data, and the
# test images' own name (a final model's logs must not call test-set numbers validation).
HELD_OUT_RUNS = {"val": "validation", "test": "test"}
# Each run's tags, as Keras names them (epoch_ + the metric, val_ dropped), and the CSV column each one holds.
TRAIN_TAGS = {"epoch_loss": "loss", "epoch_accuracy": "accuracy", "epoch_seconds": "epoch_seconds"}
HELD_OUT_TAGS = {"epoch_loss": "val_loss", "epoch_accuracy": "val_accuracy"}

HParams = dict[str, bool | int | float | str]


def rows(state: TrainState) -> list[dict[str, float]]:
    """One row per epoch done, from the state a checkpoint holds."""
    history = state.history
    return [
        {"epoch": epoch + 1, **{key: history[key][epoch] for key in history}, "epoch_seconds": seconds}
        for epoch, seconds in enumerate(state.epoch_seconds)
    ]


def csv_line(values: list[Any]) -> str:
    return ",".join(map(str, values)) + "\n"  # floats as repr: the shortest text that reads back exactly


class EpochLogError(JobError):
    """A per-epoch log could not be written (a full disk, say); the checkpoint, their source, is intact."""


def hparams_of(protocol: Protocol, model: str, pair: Pair | None = None) -> HParams:
    """What the HParams view tells trainings apart by: the model, the pair's fold and repeat (a final model has
    neither), every field of the config (--limit only when set: TensorBoard takes no null) and its id."""
    where = {"fold": pair.fold, "repeat": pair.repeat} if pair is not None else {}
    config = {name: value for name, value in protocol.to_dict().items() if value is not None}
    return {"model": model, **where, **config, "config_id": protocol.config_id}


class EpochLogs:
    def __init__(self, csv: Path, tensorboard: Path, held_out: str, hparams: HParams) -> None:
        """`held_out`: what the history's val_* metrics were measured on, as the logs call them: "val" for a pair's
        held-out fold, "test" for a final model's test images (its logs must not call test-set numbers val_*).
        `hparams`: the training's config, as the HParams view shows it (`hparams_of`)."""
        self.csv, self.tensorboard, self.held_out, self.hparams = Path(csv), Path(tensorboard), held_out, hparams
        self._names = {c: c.replace("val_", f"{held_out}_", 1) if c.startswith("val_") else c for c in COLUMNS}
        self._tags = {TRAIN_RUN: TRAIN_TAGS, HELD_OUT_RUNS[held_out]: HELD_OUT_TAGS}
        self._writers: dict[str, Any] = {}  # run -> its open summary writer

    def restart(self, state: TrainState) -> None:
        """Make both logs hold exactly the epochs `state` holds (none for a fresh start)."""
        past = rows(state)
        lines = [csv_line(list(self._names.values())), *(csv_line([row[c] for c in COLUMNS]) for row in past)]
        with self._writing():
            atomic.write_bytes(self.csv, "".join(lines).encode())
            self.close()
            shutil.rmtree(self.tensorboard, ignore_errors=True)  # this training's event files, all of them stale
            self.tensorboard.mkdir(parents=True)
            self._write_session()
            tf = runtime.import_tensorflow()
            for run in self._tags:
                (self.tensorboard / run).mkdir()
                self._writers[run] = tf.summary.create_file_writer(str(self.tensorboard / run))
            for row in past:
                self._write_events(row)
            self._flush()

    def append(self, state: TrainState) -> None:
        """Log the last epoch of `state`, just saved in its checkpoint."""
        row = rows(state)[-1]
        with self._writing():
            with open(self.csv, "a", encoding="utf-8") as csv:
                csv.write(csv_line([row[c] for c in COLUMNS]))
            self._write_events(row)
            self._flush()

    def close(self) -> None:
        writers, self._writers = self._writers, {}
        with self._writing():
            for writer in writers.values():
                writer.close()

    @contextmanager
    def _writing(self) -> Iterator[None]:
        tf = runtime.import_tensorflow()
        try:
            yield
        except (OSError, tf.errors.OpError) as error:
            reason = os.strerror(error.errno) if getattr(error, "errno", None) else " ".join(str(error).split())
            raise EpochLogError(
                f"{self.csv.parent}: cannot write the per-epoch logs {self.csv.name} and {self.tensorboard.name}/ "
                f"({reason}); free space and rerun: training resumes from its last checkpoint"
            ) from None

    def _write_session(self) -> None:
        """The hparams plugin's session start, in the folder itself as its Keras callback (hp.KerasCallback) writes it:
        the runs below are then the session's."""
        if not _have_tensorboard():
            return
        from tensorboard.plugins.hparams import summary_v2  # deferred: tensorboard

        writer = runtime.import_tensorflow().summary.create_file_writer(str(self.tensorboard))
        with writer.as_default():
            summary_v2.hparams(self.hparams)
        writer.close()

    def _write_events(self, row: dict[str, float]) -> None:
        tf = runtime.import_tensorflow()
        step = int(row["epoch"]) - 1  # Keras's step: the epoch's index
        for run, tags in self._tags.items():
            with self._writers[run].as_default():
                for tag, column in tags.items():
                    value = tf.constant(row[column], tf.float32)
                    tf.summary.write(tag, value, step=step, metadata=_scalar_metadata())

    def _flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()


@cache
def _scalar_metadata() -> bytes:
    """What TensorBoard's own tf.summary.scalar attaches: the scalars plugin, its empty content, the scalar class."""
    from tensorflow.core.framework import summary_pb2  # deferred: tensorflow

    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
        data_class=summary_pb2.DATA_CLASS_SCALAR,
    ).SerializeToString()


@cache
def _have_tensorboard() -> bool:
    """Whether the hparams plugin can be written; said once a process when it cannot."""
    if importlib.util.find_spec("tensorboard") is not None:
        return True
    print(
        "TensorBoard's HParams data not written: the tensorboard package is not installed "
        "(pip install 'mnist-cv[tensorboard]'); the scalars are written all the same",
        file=sys.stderr,
        flush=True,
    )
    return False
