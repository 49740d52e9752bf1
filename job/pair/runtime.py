"""TensorFlow set-up for one process: quiet logs, thread pools sized to the allocation, determinism, device."""

from __future__ import annotations

import os
from typing import Any

from job.errors import JobError


def allocated_cpus() -> int:
    """CPUs this task may use: Slurm's allocation when there is one, else this process's affinity mask.

    Without cgroups a 1-CPU Slurm task still sees every core; TensorFlow would start a thread per core on
    each of several tasks sharing a node, and they would fight over the cores.
    """
    for var in ("SLURM_CPUS_PER_TASK", "SLURM_JOB_CPUS_PER_NODE"):
        value = os.environ.get(var, "").split("(")[0].split(",")[0]
        if value.isdigit() and int(value) > 0:
            return int(value)
    return len(os.sched_getaffinity(0))


def gpu_requested() -> bool:
    """True when the scheduler gave this task a GPU (so running on the CPU would be a silent 50x slow-down)."""
    if os.environ.get("SLURM_GPUS_ON_NODE", "0") not in ("", "0"):
        return True
    return bool(os.environ.get("SLURM_JOB_GPUS") or os.environ.get("SLURM_STEP_GPUS"))


def import_tensorflow() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep Slurm logs readable
    import tensorflow as tf

    return tf


def configure(
    *, deterministic: bool, precision: str, allow_cpu: bool, max_threads: int | None = None
) -> dict[str, Any]:
    """Set up TensorFlow before any op runs; return what was chosen, for the result's provenance.

    `max_threads` caps the intra-op threads below the allocation (a model's hint, job.pair.models.max_threads).
    """
    tf = import_tensorflow()
    import keras

    cpus = allocated_cpus()
    intra_op = min(cpus, max_threads or cpus)
    tf.config.threading.set_intra_op_parallelism_threads(intra_op)
    tf.config.threading.set_inter_op_parallelism_threads(min(2, cpus))
    gpus = tf.config.list_physical_devices("GPU")
    if gpu_requested() and not gpus and not allow_cpu:
        raise JobError(
            "a GPU was allocated but TensorFlow sees none (apptainer without --nv? CUDA driver mismatch?); "
            "pass --allow-cpu to run on the CPU anyway"
        )
    for gpu in gpus:
        # Several tasks may share a GPU node; grab memory as needed instead of all of it up front.
        tf.config.experimental.set_memory_growth(gpu, True)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(precision)
    devices = [_describe_device(tf, d) for d in tf.config.list_physical_devices()]
    used = next((d for d in devices if d["type"] == "GPU"), devices[0])
    return {
        "devices": devices,
        "device_used": f"{used['type']}:0 ({used['name']})",
        "threads": {"allocated": cpus, "intra_op": intra_op, "inter_op": min(2, cpus)},
        "deterministic": deterministic,
    }


def _describe_device(tf: Any, device: Any) -> dict[str, Any]:
    details = tf.config.experimental.get_device_details(device) if device.device_type == "GPU" else {}
    name = details.get("device_name") or (_cpu_model() if device.device_type == "CPU" else device.name)
    entry = {"name": name, "type": device.device_type}
    if "compute_capability" in details:
        entry["compute_capability"] = ".".join(map(str, details["compute_capability"]))
    return entry


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU"
