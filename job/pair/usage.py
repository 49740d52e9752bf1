"""What a training costs: wall and CPU seconds, peak RSS, start-up, and the GPU it ran on (job/results/contract.py
`Resources`), summed over every process that worked on it.

A process counts from its start as the kernel records it (/proc/self/stat), so the interpreter's start and every
import are in. Start-up ends when training begins: after the imports, the data load and its verification, the
model build and the checkpoint restore. The first compiled step's trace is training: it is in the first epoch's
seconds, as `timings.epoch_seconds` has always counted it.

Resumes: every checkpoint save records the totals so far (`Spent`, in the checkpoint's TrainState); a process that
resumes adds its own to them. A process killed after its last checkpoint is counted up to that checkpoint.

A process that trains several pairs one after another (`run --task-ids`) counts each from where the training before
it ended: the first carries the process's start-up (imports, data load), a later one only its own (model build,
checkpoint restore), and the pairs' wall and CPU seconds add up to the process's. The peak RSS is the process's so
far: the kernel keeps no peak per pair.
"""

from __future__ import annotations

import os
import resource
import subprocess
import time
from dataclasses import asdict, dataclass
from typing import Any

from job.pair import runtime
from job.results.contract import GpuUse, Resources

NVIDIA_SMI_TIMEOUT_S = 10


@dataclass(frozen=True)
class Spent:
    """What processes used, summed (wall, CPU) or maxed (peaks); kept in the checkpoint across resumes."""

    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_rss_bytes: int = 0
    gpu_peak_memory_bytes: int | None = None

    def plus(self, other: Spent) -> Spent:
        gpu = [b for b in (self.gpu_peak_memory_bytes, other.gpu_peak_memory_bytes) if b is not None]
        return Spent(
            wall_seconds=round(self.wall_seconds + other.wall_seconds, 3),
            cpu_seconds=round(self.cpu_seconds + other.cpu_seconds, 3),
            peak_rss_bytes=max(self.peak_rss_bytes, other.peak_rss_bytes),
            gpu_peak_memory_bytes=max(gpu) if gpu else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def seconds_since_start() -> float:
    """Seconds since this process started, by the kernel's record of its start (CLOCK_BOOTTIME, clock ticks)."""
    with open("/proc/self/stat") as stat:
        # The command name (field 2) may hold spaces and parentheses: count the fields after its closing one.
        after_name = stat.read().rsplit(")", 1)[1].split()
    started = int(after_name[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime
    return time.clock_gettime(time.CLOCK_BOOTTIME) - started


def process_so_far() -> Spent:
    """This process's wall and CPU seconds since it started, and its peak RSS (no GPU: TensorFlow may not be loaded)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return Spent(
        wall_seconds=round(seconds_since_start(), 3),
        cpu_seconds=round(own.ru_utime + own.ru_stime, 3),
        peak_rss_bytes=own.ru_maxrss * 1024,  # kilobytes on Linux
    )


class ProcessUsage:
    """This training's use in this process, and the totals of the processes before it on the same training.

    `since`: what this process had spent when the training began to count (process_so_far() where the training
    before it in this process ended); zero, from the process's start, for its first.
    """

    def __init__(self, since: Spent = Spent()) -> None:
        self.earlier = Spent()
        self.since = since
        self.startup_seconds: float | None = None

    def resume(self, earlier: Spent) -> None:
        """Count on from the totals a checkpoint recorded."""
        self.earlier = earlier

    def training_starts(self) -> float:
        """Mark the end of start-up (the first call only: a training starts up once); its seconds."""
        if self.startup_seconds is None:
            self.startup_seconds = round(seconds_since_start() - self.since.wall_seconds, 3)
        return self.startup_seconds

    def this_process(self) -> Spent:
        now = process_so_far()
        return Spent(
            wall_seconds=round(now.wall_seconds - self.since.wall_seconds, 3),
            cpu_seconds=round(now.cpu_seconds - self.since.cpu_seconds, 3),
            peak_rss_bytes=now.peak_rss_bytes,
            gpu_peak_memory_bytes=gpu_peak_memory(),
        )

    def total(self) -> Spent:
        """The totals over the earlier processes and this one so far: what a checkpoint saves."""
        return self.earlier.plus(self.this_process())

    def resources(self) -> Resources:
        """The result's section, at its end; a process that trained no epoch started up until now."""
        startup = self.training_starts()
        spent = self.total()
        return Resources(
            wall_seconds=spent.wall_seconds,
            startup_seconds=startup,
            cpu_seconds=spent.cpu_seconds,
            peak_rss_bytes=spent.peak_rss_bytes,
            cpu_count=len(os.sched_getaffinity(0)),
            gpu=gpu_use(spent.gpu_peak_memory_bytes),
        )


def gpu_peak_memory() -> int | None:
    """Peak bytes TensorFlow allocated on GPU:0 in this process (the device training uses); None without a GPU."""
    tf = runtime.import_tensorflow()
    if not tf.config.list_physical_devices("GPU"):
        return None
    return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])


def gpu_use(peak_memory_bytes: int | None) -> GpuUse | None:
    """The GPUs TensorFlow sees, or None on the CPU."""
    tf = runtime.import_tensorflow()
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    names = tuple(tf.config.experimental.get_device_details(g).get("device_name") or g.name for g in gpus)
    cuda, cudnn = build_versions(tf.sysconfig.get_build_info())
    return GpuUse(len(gpus), names, peak_memory_bytes, nvidia_driver(), cuda, cudnn)


def build_versions(build_info: dict[str, Any]) -> tuple[str | None, str | None]:
    """The CUDA and cuDNN versions TensorFlow was built with (what a pip wheel loads); None for a non-CUDA build."""
    if not build_info.get("is_cuda_build"):
        return None, None
    cuda, cudnn = build_info.get("cuda_version"), build_info.get("cudnn_version")
    return (str(cuda) if cuda else None), (str(cudnn) if cudnn else None)


def nvidia_driver(command: str = "nvidia-smi") -> str | None:
    """The NVIDIA driver version nvidia-smi reports; None when it is missing or fails."""
    try:
        done = subprocess.run(
            [command, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.split()
    return lines[0] if done.returncode == 0 and lines else None
