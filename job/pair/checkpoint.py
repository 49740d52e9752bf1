"""A pair's resumable state: weights + optimizer state and the history so far, saved at every epoch end.

Layout of `fold-<k>.ckpt/`: `state.json` (config id, epochs done, history, the weights file's name and sha256)
and `epoch-<n>.weights.h5`. The weights are written first under a new name, then state.json is replaced
atomically, then the previous weights file is removed: a kill at any instant leaves a consistent pair.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from job.results import atomic


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


class CorruptCheckpoint(Exception):
    """The checkpoint cannot be trusted; the pair starts over."""


class Checkpoint:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.state_file = self.folder / "state.json"

    def exists(self) -> bool:
        return self.state_file.exists()

    def epochs_done(self) -> int | None:
        """How far the saved state got, without loading any weights; None without a readable checkpoint."""
        try:
            return int(json.loads(self.state_file.read_text())["epochs_done"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, model: Any, state: TrainState) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        weights = self.folder / f"epoch-{state.epochs_done}.weights.h5"
        with atomic.replacing(weights) as tmp:  # keeps the .weights.h5 suffix Keras insists on
            model.save_weights(tmp)
        atomic.write_json(self.state_file, {**asdict(state), "weights": weights.name, "sha256": sha256_file(weights)})
        for stale in self.folder.glob("*.weights.h5"):
            if stale != weights:
                stale.unlink()

    def load(self, model: Any, config_id: str) -> TrainState | None:
        """Restore `model` and return the state; None when the checkpoint belongs to another config.

        Raises CorruptCheckpoint when the files are torn, truncated or do not match their recorded hash.
        """
        try:
            saved = json.loads(self.state_file.read_text())
            weights = self.folder / saved.pop("weights")
            expected = saved.pop("sha256")
            state = TrainState(**saved)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CorruptCheckpoint(f"{self.state_file}: unreadable ({error})") from None
        if state.config_id != config_id:
            return None
        if not weights.exists() or sha256_file(weights) != expected:
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


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file, read in 1 MiB chunks (models reach 120 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
