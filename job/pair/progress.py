"""Per-epoch progress of a pair: a rich progress bar on a terminal, one plain line per epoch in a log file."""

from __future__ import annotations

import sys
import time
from typing import Any

import keras
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def epoch_line(label: str, epoch: int, epochs: int, logs: dict[str, float], seconds: float, held_out: str) -> str:
    """`held_out`: what the val_* numbers are called (job/pair/epoch_logs.py's EpochLogs.held_out)."""
    return (
        f"{label} epoch {epoch}/{epochs}  loss {logs['loss']:.4f}  acc {logs['accuracy']:.4f}  "
        f"{held_out}_loss {logs['val_loss']:.4f}  {held_out}_acc {logs['val_accuracy']:.4f}  {seconds:.1f}s"
    )


class EpochProgress(keras.callbacks.Callback):
    """Reports each epoch; on a terminal also a live bar of the steps within it."""

    def __init__(self, label: str, epochs: int, held_out: str) -> None:
        super().__init__()
        self.label, self.epochs, self.held_out = label, epochs, held_out
        self.live = sys.stdout.isatty()
        self._bar: Any = None
        self._started = 0.0

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.live and self._bar is None:
            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()
            )
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.params.get("steps"))  # batches per epoch

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._started = time.perf_counter()
        if self._bar is not None:
            self._bar.update(self._task, completed=0, description=f"{self.label} epoch {epoch + 1}/{self.epochs}")

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=batch + 1)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.model.stop_training:
            return  # a stop signal cut the epoch short: its numbers are not an epoch's
        seconds = time.perf_counter() - self._started
        line = epoch_line(self.label, epoch + 1, self.epochs, logs or {}, seconds, self.held_out)
        if self._bar is not None:
            self._bar.console.print(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
