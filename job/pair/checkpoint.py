"""A pair's resumable state: weights + optimizer state and the history so far, saved at every epoch end.

Layout of `fold-<k>.ckpt/`: `state.json` (config id, epochs done, history, the weights file's name and sha256)
and `epoch-<n>.weights.h5`. The weights are written first under a new name, then state.json is replaced
atomically, then the previous weights file is removed: a kill at any instant leaves a consistent pair, and a
save that fails (a full disk) leaves the previous checkpoint as it was.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from job import atomic
from job.errors import JobError
from job.files import sha256_file
from job.pair.usage import Spent
from job.results import checkpoint_state

# What a save writes beside the variables' raw bytes (HDF5's groups and names: 18 KB for the mlp; state.json):
# asked for on top, so a save that starts has room to finish.
H5_OVERHEAD_BYTES = 256 << 10


@dataclass
class TrainState:
    """Everything besides the weights that an uninterrupted run would still hold in memory."""

    config_id: str
    epochs_done: int = 0
    history: dict[str, list[float]] = field(
        default_factory=lambda: {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
    )
    epoch_seconds: list[float] = field(default_factory=list)
    resumed_from: list[int] = field(default_factory=list)
    start_utc: str | None = None
    # The resources of every process so far, each up to its last save (job.pair.usage.Spent); a checkpoint saved
    # before resources were recorded has none, and its pair counts from its next process on.
    spent: dict[str, Any] = field(default_factory=dict)
    # The training it belongs to (model, random stream, images trained on, held-out indices' hash): a checkpoint is
    # resumed only by that very training, never by another fold's, repeat's or model's.
    owner: dict[str, Any] = field(default_factory=dict)


class CorruptCheckpoint(Exception):
    """The checkpoint cannot be trusted (damaged, or edited by hand); the pair starts over."""


class ForeignCheckpoint(Exception):
    """The checkpoint is another training's (another config, pair, repeat or model): set aside, never resumed."""


class CheckpointError(JobError):
    """A checkpoint could not be saved (a full disk, say); the previous one is intact."""


class Checkpoint:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.state_file = self.folder / checkpoint_state.STATE_FILE

    def exists(self) -> bool:
        return self.state_file.exists()

    def epochs_done(self) -> int | None:
        """How far the saved state got, without loading any weights; None without a readable checkpoint."""
        return checkpoint_state.epochs_done(self.folder)

    def save(self, model: Any, state: TrainState) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        weights = self.folder / f"epoch-{state.epochs_done}.weights.h5"
        before = self.epochs_done()
        kept = f"the checkpoint after epoch {before} is intact" if before else "no checkpoint was saved yet"
        needed, free = self._space_needed(model), shutil.disk_usage(self.folder).free
        if free < needed:
            raise CheckpointError(
                f"{self.folder}: no room for the checkpoint of epoch {state.epochs_done} "
                f"({needed / 1e6:.1f} MB needed, {free / 1e6:.1f} MB free); {kept}: free space and rerun to resume"
            )
        try:
            with atomic.replacing(weights) as tmp:  # keeps the .weights.h5 suffix Keras insists on
                save_weights(model, tmp)
            atomic.write_json(
                self.state_file,
                {**asdict(state), "weights": weights.name, "sha256": sha256_file(weights, _weights_cap(model))},
            )
        except OSError as error:
            weights.unlink(missing_ok=True)  # state.json still names the previous weights
            reason = os.strerror(error.errno) if error.errno else str(error).splitlines()[0]
            raise CheckpointError(
                f"{self.folder}: cannot save the checkpoint of epoch {state.epochs_done} ({reason}); "
                f"{kept}: rerun to resume"
            ) from None
        for stale in self.folder.glob("*.weights.h5"):
            if stale != weights:
                stale.unlink()

    def _space_needed(self, model: Any) -> int:
        """Bytes a save takes: the size of the last weights file, else the model's and optimizer's variables."""
        previous = [path.stat().st_size for path in self.folder.glob("*.weights.h5")]
        if previous:
            return max(previous) + H5_OVERHEAD_BYTES  # ample for state.json, whose history grows
        variables = [*model.weights, *model.optimizer.variables]
        return sum(math.prod(v.shape) * np.dtype(v.dtype).itemsize for v in variables) + H5_OVERHEAD_BYTES

    def load(self, model: Any, config_id: str, owner: dict[str, Any]) -> TrainState:
        """Restore `model` and return the state of the training `owner` names under `config_id`.

        Raises ForeignCheckpoint when the checkpoint belongs to another training; CorruptCheckpoint when the files
        are torn, truncated, do not match their recorded hash, or state.json was edited into something a save never
        writes.
        """
        try:
            saved = checkpoint_state.read_state(self.folder)
            weights_name = saved.pop("weights")
            expected = saved.pop("sha256")
            state = TrainState(**saved)
        except (JobError, OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise CorruptCheckpoint(f"{self.state_file}: unreadable ({error})") from None
        if state.config_id != config_id:
            raise ForeignCheckpoint(f"of config {state.config_id}, not {config_id}")
        if state.owner != owner:
            differs = [f"{k} {state.owner.get(k)!r}, not {v!r}" for k, v in owner.items() if state.owner.get(k) != v]
            raise ForeignCheckpoint(f"of another training ({'; '.join(differs) or 'no owner recorded'})")
        problem = _inconsistency(state, weights_name, expected)
        if problem:
            raise CorruptCheckpoint(f"{self.state_file}: not as a save writes it ({problem})")
        weights = self.folder / weights_name
        try:
            found = sha256_file(weights, _weights_cap(model), "this model's weights and optimizer state hold")
        except JobError as error:
            raise CorruptCheckpoint(str(error)) from None
        if found != expected:
            raise CorruptCheckpoint(f"{weights}: missing or does not match its recorded sha256")
        try:
            model.optimizer.build(model.trainable_variables)  # so the optimizer's slots exist to be filled
            model.load_weights(weights)
        except Exception as error:  # h5py and Keras raise many types for a damaged file
            # Keras's message spans several lines; the report must stay one line in the task's log.
            raise CorruptCheckpoint(f"{weights}: cannot be loaded ({' '.join(str(error).split())})") from None
        return state

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def set_aside(self) -> Path:
        """Move the checkpoint out of the way, kept beside it under a name no training reads; its new path."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        for attempt in range(100):
            aside = self.folder.with_name(f"{self.folder.name}.aside-{stamp}" + (f"-{attempt}" if attempt else ""))
            if os.path.lexists(aside):
                continue
            try:
                os.rename(self.folder, aside)
            except OSError as error:
                raise CheckpointError(f"{self.folder}: cannot set it aside ({error.strerror or error})") from None
            return aside
        raise CheckpointError(f"{self.folder}: cannot set it aside (100 set-aside copies are already there)")


def _weights_cap(model: Any) -> int:
    """The most bytes a weights file of `model` holds: its weights, as many again for each of the optimizer's slots
    (SGD with momentum has one) and one more for headroom, plus HDF5's overhead."""
    weights = sum(math.prod(v.shape) * np.dtype(v.dtype).itemsize for v in model.weights)
    return 3 * weights + H5_OVERHEAD_BYTES


def save_weights(model: Any, path: Path) -> None:
    """model.save_weights, leaving no HDF5 handle behind when the write fails (a full disk)."""
    try:
        model.save_weights(path)
    except OSError:
        # HDF5 keeps a file whose write failed open, and flushing it again at exit crashes the process (exit 139).
        # Emptying the file frees the space that flush needs; closing it by its id ends HDF5's hold on it.
        import h5py

        os.truncate(path, 0)
        for file_id in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE):
            if Path(os.fsdecode(file_id.name)) == Path(path):
                with contextlib.suppress(Exception):  # best effort: the write's own error is the one to report
                    h5py.File(file_id).close()
        raise


def _inconsistency(state: TrainState, weights_name: Any, sha256: Any) -> str | None:
    """What in a loaded state.json no save writes (hand edits, wrong types); None when it is consistent."""
    done = state.epochs_done
    if type(done) is not int or done < 1:
        return f"epochs_done {done!r} is not a whole number of at least 1"
    if weights_name != f"epoch-{done}.weights.h5":
        return f"weights {weights_name!r} is not epoch-{done}.weights.h5"
    if not isinstance(sha256, str) or len(sha256) != 64:
        return "sha256 is not a SHA-256"
    lists = {**state.history, "epoch_seconds": state.epoch_seconds} if isinstance(state.history, dict) else None
    if lists is None or set(state.history) != set(TrainState(config_id="").history):
        return "history does not hold loss, accuracy, val_loss and val_accuracy"
    for key, values in lists.items():
        if not isinstance(values, list) or len(values) != done:
            return f"{key} does not hold {done} values, one per epoch done"
        if not all(type(v) in (int, float) and math.isfinite(v) for v in values):
            return f"{key} holds something other than finite numbers"
    if not isinstance(state.resumed_from, list) or not all(
        type(e) is int and 0 <= e < done for e in state.resumed_from
    ):
        return "resumed_from is not a list of earlier epochs"
    if state.start_utc is not None and not isinstance(state.start_utc, str):
        return "start_utc is not a time stamp"
    return _spent_inconsistency(state.spent)


def _spent_inconsistency(spent: Any) -> str | None:
    if not isinstance(spent, dict) or (spent and set(spent) != set(Spent().to_dict())):
        return "spent does not hold the resources a save records"
    numbers = [value for key, value in spent.items() if key != "gpu_peak_memory_bytes" or value is not None]
    if not all(type(v) in (int, float) and math.isfinite(v) and v >= 0 for v in numbers):
        return "spent holds something other than finite non-negative numbers"
    return None
