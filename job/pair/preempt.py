"""A preemption at a chosen training step (`run --kill-at-step N`, what `verify --preempt` does to its rerun): the
process kills itself with SIGKILL after the compiled call that runs step N, counted from the training's first step
over all its epochs. Nothing of the process survives but what it saved: the last epoch-end checkpoint, which the
next run resumes from. A step that a resumed process never runs (one before its checkpoint) kills nothing."""

from __future__ import annotations

import os
import signal
from typing import Any

from job.pair import runtime


def kill_at_step(step: int) -> Any:
    """A Keras callback that SIGKILLs this process once training step `step` has run."""
    runtime.import_tensorflow()  # its lighter import, before Keras's own
    import keras  # deferred: tensorflow

    class KillAtStep(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.epoch = 0

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.epoch = epoch

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            # `batch` is the last step of the call within its epoch; `steps` the steps of an epoch.
            if self.epoch * self.params["steps"] + batch + 1 >= step:
                print(f"--kill-at-step {step}: killing this process (SIGKILL)", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)

    return KillAtStep()
