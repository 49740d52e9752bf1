"""What every training does around train.fit: load the data, set up TensorFlow, catch stop signals, show progress,
and gather the provenance a result records. The first three are made once per process (Setup), however many
trainings it runs."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from job import provenance
from job.errors import JobError, UsageError
from job.pair import data, models, runtime
from job.pair.epoch_logs import EpochLogs
from job.pair.train import Hooks
from job.pair.usage import ProcessUsage, Spent, process_so_far
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


class Setup:
    """What the trainings of one process share, each made once, when the first training needs it: the data, loaded
    and verified; TensorFlow, configured; the stop flag, installed. `run` makes one for its pair; `run --task-ids`
    one for all its pairs, which so pay one start-up and one data load.

    `failure` is the error that making them raised: it would fail every later training of the process alike.
    """

    def __init__(self, inputs: Inputs) -> None:
        self.inputs = inputs
        self.stop = StopFlag()
        self.failure: JobError | None = None
        self.spent = Spent()  # the process's use when its last training ended: where the next one counts from
        self._dataset: data.Dataset | None = None
        self._runtime: dict[str, Any] | None = None
        self._configured_for = ""  # the model whose thread cap configured TensorFlow

    def prepare(self, protocol: Protocol, model_name: str, label: str) -> tuple[data.Dataset, dict[str, Any]]:
        """The data and TensorFlow's set-up for a training of `model_name` under `protocol`."""
        try:
            return self._dataset_for(protocol), self._runtime_for(protocol, model_name, label)
        except JobError as error:
            self.failure = error
            raise

    def _dataset_for(self, protocol: Protocol) -> data.Dataset:
        if self._dataset is None:
            self._dataset = data.load(self.inputs.data_dir, custom=self.inputs.custom_data)
        dataset = self._dataset
        if protocol.limit is not None and protocol.limit > len(dataset.x_train):
            # Refused rather than cut to the data: one training has one config id.
            raise UsageError(
                f"--limit {protocol.limit} is beyond the {len(dataset.x_train)} training images of {dataset.source}"
            )
        images = protocol.limit or len(dataset.x_train)
        if protocol.batch_size > images:  # a batch larger than the data is one batch under a name that says otherwise
            raise UsageError(f"--batch-size {protocol.batch_size} is beyond the {images} training images")
        return dataset

    def _runtime_for(self, protocol: Protocol, model_name: str, label: str) -> dict[str, Any]:
        if self._runtime is None:
            self._runtime = runtime.configure_training(protocol, model_name, allow_cpu=self.inputs.allow_cpu)
            self._configured_for = model_name
            self.stop.install()
            return self._runtime
        runtime.between_trainings(protocol)
        threads = self._runtime["threads"]["intra_op"]
        alone = runtime.intra_op_threads(models.max_threads(model_name))
        if alone != threads:
            # The thread count changes the float summation order: say why this pair's numbers are not its single run's.
            print(
                f"{label}: trains on the {threads} intra-op thread{'s' * (threads != 1)} this process set up for "
                f"{self._configured_for}, not the {alone} it trains on alone: its numbers may differ from a single "
                "run's (pack pairs of one model)",
                file=sys.stderr,
                flush=True,
            )
        return self._runtime


@dataclass
class Session:
    dataset: data.Dataset
    runtime_info: dict[str, Any]
    usage: ProcessUsage  # this training's resources, and the earlier processes' once train.fit read the checkpoint
    hooks: Hooks  # what train.fit reports to: progress, the stop flag, usage, the epoch logs

    def environment(self) -> dict[str, Any]:
        """The provenance a result records: interpreter, packages, host, devices, Slurm, git, container."""
        return provenance.environment(self.runtime_info)


@contextmanager
def training(
    setup: Setup,
    protocol: Protocol,
    model_name: str,
    label: str,
    epoch_logs: EpochLogs,
    callbacks: Sequence[Any] = (),
) -> Iterator[Session]:
    """Everything a training needs, set up (`callbacks` are added to its own: the progress bar's)."""

    dataset, runtime_info = setup.prepare(protocol, model_name, label)
    from job.pair.progress import EpochProgress  # deferred: keras, imported after runtime.configure

    progress = EpochProgress(label, protocol.epochs, epoch_logs.held_out)
    threads = runtime_info["threads"]["intra_op"]
    print(
        f"{label}: config {protocol.config_id}, data {dataset.name} from {dataset.source}, "
        f"device {runtime_info['device_used']}, {threads} thread{'s' * (threads != 1)}",
        flush=True,
    )
    try:
        usage = ProcessUsage(since=setup.spent)
        hooks = Hooks(callbacks=[progress, *callbacks], stop_requested=setup.stop, usage=usage, epoch_logs=epoch_logs)
        yield Session(dataset, runtime_info, usage, hooks)
    finally:
        progress.close()
        setup.spent = process_so_far()
