"""What every training does around train.fit: load the data, set up TensorFlow, catch stop signals, show progress,
and gather the provenance a result records."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from job import provenance
from job.errors import UsageError
from job.pair import data, runtime
from job.pair.epoch_logs import EpochLogs
from job.pair.train import Hooks
from job.pair.usage import ProcessUsage
from job.protocol import Protocol

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


@dataclass(frozen=True)
class Inputs:
    """Where a training reads its data and what it may run on: the command line's part besides the protocol."""

    data_dir: Path | None = None
    custom_data: bool = False
    allow_cpu: bool = False


@dataclass
class Session:
    dataset: data.Dataset
    runtime_info: dict[str, Any]
    usage: ProcessUsage  # this process's resources, and the earlier processes' once train.fit read the checkpoint
    hooks: Hooks  # what train.fit reports to: progress, the stop flag, usage, the epoch logs

    def environment(self) -> dict[str, Any]:
        """The provenance a result records: interpreter, packages, host, devices, Slurm, git, container."""
        return provenance.environment(self.runtime_info)


@contextmanager
def training(
    inputs: Inputs,
    protocol: Protocol,
    model_name: str,
    label: str,
    epoch_logs: EpochLogs,
    callbacks: Sequence[Any] = (),
) -> Iterator[Session]:
    """Everything a training needs, set up (`callbacks` are added to its own: the progress bar's)."""

    dataset = data.load(inputs.data_dir, custom=inputs.custom_data)
    if protocol.limit is not None and protocol.limit > len(dataset.x_train):
        # Refused rather than cut to the data: one training has one config id.
        raise UsageError(
            f"--limit {protocol.limit} is beyond the {len(dataset.x_train)} training images of {dataset.source}"
        )
    images = protocol.limit or len(dataset.x_train)
    if protocol.batch_size > images:  # a batch larger than the data is one batch under a name that says otherwise
        raise UsageError(f"--batch-size {protocol.batch_size} is beyond the {images} training images")
    runtime_info = runtime.configure_training(protocol, model_name, allow_cpu=inputs.allow_cpu)
    from job.pair.progress import EpochProgress  # deferred: keras, imported after runtime.configure

    stop = StopFlag()
    stop.install()
    progress = EpochProgress(label, protocol.epochs, epoch_logs.held_out)
    threads = runtime_info["threads"]["intra_op"]
    print(
        f"{label}: config {protocol.config_id}, data {dataset.name} from {dataset.source}, "
        f"device {runtime_info['device_used']}, {threads} thread{'s' * (threads != 1)}",
        flush=True,
    )
    try:
        usage = ProcessUsage()
        hooks = Hooks(callbacks=[progress, *callbacks], stop_requested=stop, usage=usage, epoch_logs=epoch_logs)
        yield Session(dataset, runtime_info, usage, hooks)
    finally:
        progress.close()
