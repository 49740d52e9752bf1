"""What every training command does around train.fit: load the data, set up TensorFlow, catch stop signals,
show progress, and stamp the result with its config and provenance."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from job.pair import data, provenance, runtime
from job.pair.protocol import Protocol

# Signals that mean "you are about to be stopped": scancel/preemption send TERM, Slurm's
# --signal warning before the time limit sends USR1, submitit's checkpoint request sends USR2.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class StopFlag:
    """Set by a stop signal; training polls it and exits at the next safe point."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self) -> bool:
        return self.signal is not None

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum
        print(f"received {signal.Signals(signum).name}: stopping at the next safe point", file=sys.stderr, flush=True)


@dataclass
class Session:
    dataset: data.Dataset
    runtime_info: dict[str, Any]
    fit_options: dict[str, Any]  # callbacks and stop_requested, for train.fit

    def stamp(self, protocol: Protocol, sections: dict[str, Any]) -> dict[str, Any]:
        """A result: its own sections between the config in front and the provenance at the end."""
        config = {"config": protocol.to_dict(), "config_id": protocol.config_id}
        return {**config, **sections, "environment": provenance.environment(self.runtime_info)}


@contextmanager
def training(args: argparse.Namespace, protocol: Protocol, model_name: str, label: str) -> Iterator[Session]:
    from job.pair import models

    dataset = data.load(args.data_dir, custom=args.custom_data)
    runtime_info = runtime.configure(
        deterministic=not protocol.jit,
        precision=protocol.precision,
        allow_cpu=args.allow_cpu,
        max_threads=models.max_threads(model_name),
    )
    from job.pair.progress import EpochProgress  # imports Keras: after runtime.configure

    stop = StopFlag()
    stop.install()
    progress = EpochProgress(label, protocol.epochs)
    threads = runtime_info["threads"]["intra_op"]
    print(
        f"{label}: config {protocol.config_id}, data {dataset.name} from {dataset.source}, "
        f"device {runtime_info['device_used']}, {threads} thread{'s' * (threads != 1)}",
        flush=True,
    )
    try:
        yield Session(dataset, runtime_info, {"callbacks": [progress], "stop_requested": stop})
    finally:
        progress.close()
