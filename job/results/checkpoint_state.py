"""What a checkpoint's state.json says, read without loading weights or TensorFlow: how far a training got and
how long its latest epoch took. job/pair/checkpoint.py writes it; status and its projection read it here.

RUN/MODEL/fold-K.ckpt/state.json holds the config id, epochs done, the history so far, each epoch's seconds and the
name and SHA-256 of the weights file beside it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from job.errors import JobError
from job.files import read_bounded

STATE_FILE = "state.json"
# state.json holds a few numbers per epoch: 10 epochs are about 2 KB, 1,000 epochs well under 1 MB.
MAX_STATE_BYTES = 16 << 20


def read_state(folder: Path) -> Any:
    """state.json's JSON, read as a regular file of bounded size: a FIFO or /dev/zero put there (`status` reads
    every checkpoint) is refused at once instead of hanging the reader. Raises JobError or ValueError."""
    return json.loads(read_bounded(Path(folder) / STATE_FILE, MAX_STATE_BYTES, "a checkpoint's state holds"))


def epochs_done(folder: Path) -> int | None:
    """How far the saved state got; None without a readable checkpoint."""
    try:
        done = read_state(folder)["epochs_done"]
    except (JobError, OSError, ValueError, KeyError, TypeError):
        return None
    return done if type(done) is int and done >= 0 else None


def latest_epoch_seconds(folder: Path) -> float | None:
    """The seconds of the last epoch the checkpoint holds; None without one."""
    try:
        seconds = float(read_state(folder)["epoch_seconds"][-1])
    except (JobError, OSError, ValueError, KeyError, IndexError, TypeError):
        return None  # no epoch saved yet, or a state being replaced: nothing to project from
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
