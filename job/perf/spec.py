"""What one bench worker trains: a pair of the protocol with fewer epochs or images, on the data given."""

from __future__ import annotations

from dataclasses import dataclass

from job.protocol import Protocol


@dataclass(frozen=True)
class Spec:
    """What one worker trains; the same for both variants."""

    model: str
    fold: int
    epochs: int
    limit: int | None = None
    data_dir: str | None = None
    custom_data: bool = False

    def protocol(self) -> Protocol:
        return Protocol().with_overrides(epochs=self.epochs, limit=self.limit)
