"""A training's per-epoch logs, written as it trains: a CSV (MODEL/fold-K.csv) and a TensorBoard run (MODEL/fold-K.tb/).

They are derived from the checkpoint, never ahead of it: an epoch's row and events are written only after its
checkpoint is saved, and a process that starts a training rewrites both from the checkpoint's history (the CSV
atomically; the TensorBoard run by deleting its event files and writing every past epoch again). A kill at any
instant, between a log line and a save say, therefore leaves logs that the next process replaces with exactly the
epochs done, in order, each once. Keras's CSVLogger(append=True) would repeat an epoch logged but not saved.

Epochs are numbered from 1, as the progress lines and MLflow's steps are. Scalars only: the history's four metrics
and the epoch's seconds. Written with TensorFlow's own summary ops (the `tensorboard` package is needed only to
look at them), outside any compiled step.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from job import atomic
from job.errors import JobError
from job.pair import runtime
from job.pair.checkpoint import TrainState

COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds")


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


class EpochLogs:
    def __init__(self, csv: Path, tensorboard: Path, held_out: str) -> None:
        """`held_out`: what the history's val_* metrics were measured on, as the logs call them: "val" for a pair's
        held-out fold, "test" for a final model's test images (its logs must not call test-set numbers val_*)."""
        self.csv, self.tensorboard, self.held_out = Path(csv), Path(tensorboard), held_out
        self._names = {c: c.replace("val_", f"{held_out}_", 1) if c.startswith("val_") else c for c in COLUMNS}
        self._writer: Any = None

    def restart(self, state: TrainState) -> None:
        """Make both logs hold exactly the epochs `state` holds (none for a fresh start)."""
        past = rows(state)
        lines = [csv_line(list(self._names.values())), *(csv_line([row[c] for c in COLUMNS]) for row in past)]
        with self._writing():
            atomic.write_bytes(self.csv, "".join(lines).encode())
            self.close()
            shutil.rmtree(self.tensorboard, ignore_errors=True)  # this training's event files, all of them stale
            self.tensorboard.mkdir(parents=True)
            self._writer = runtime.import_tensorflow().summary.create_file_writer(str(self.tensorboard))
            for row in past:
                self._write_events(row)
            self._writer.flush()

    def append(self, state: TrainState) -> None:
        """Log the last epoch of `state`, just saved in its checkpoint."""
        row = rows(state)[-1]
        with self._writing():
            with open(self.csv, "a", encoding="utf-8") as csv:
                csv.write(csv_line([row[c] for c in COLUMNS]))
            self._write_events(row)
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            with self._writing():
                writer.close()

    @contextmanager
    def _writing(self) -> Iterator[None]:
        tf = runtime.import_tensorflow()
        try:
            yield
        except (OSError, tf.errors.OpError) as error:
            reason = os.strerror(error.errno) if getattr(error, "errno", None) else " ".join(str(error).split())
            raise EpochLogError(
                f"{self.csv.parent}: cannot write the per-epoch logs {self.csv.name} and {self.tensorboard.name} "
                f"({reason}); free space and rerun: training resumes from its last checkpoint"
            ) from None

    def _write_events(self, row: dict[str, float]) -> None:
        tf = runtime.import_tensorflow()
        with self._writer.as_default():
            for column in COLUMNS[1:]:
                value = tf.constant(row[column], tf.float32)
                tf.summary.write(self._names[column], value, step=row["epoch"], metadata=_scalar_metadata())


@cache
def _scalar_metadata() -> bytes:
    """What TensorBoard's own tf.summary.scalar attaches: the scalars plugin, its empty content, the scalar class."""
    from tensorflow.core.framework import summary_pb2

    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
        data_class=summary_pb2.DATA_CLASS_SCALAR,
    ).SerializeToString()
