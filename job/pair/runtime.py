"""TensorFlow set-up for one process: quiet logs, thread pools sized to the allocation, determinism, device."""

from __future__ import annotations

import importlib.abc
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from job.errors import JobError
from job.pair import models
from job.protocol import Protocol


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


# The variables by which Slurm says it gave a task GPUs: a count, and the lists of GPU indices ("0" is GPU 0).
GPU_COUNT_VARIABLE = "SLURM_GPUS_ON_NODE"
GPU_LIST_VARIABLES = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS")


def allocated_gpus() -> dict[str, str]:
    """The variables that say the scheduler gave this task a GPU, with their values; empty when it gave none."""
    found = {name: os.environ[name] for name in GPU_LIST_VARIABLES if os.environ.get(name)}
    if os.environ.get(GPU_COUNT_VARIABLE, "0") not in ("", "0"):
        found = {GPU_COUNT_VARIABLE: os.environ[GPU_COUNT_VARIABLE], **found}
    return found


def gpu_requested() -> bool:
    """True when the scheduler gave this task a GPU (so running on the CPU would be a silent 50x slow-down)."""
    return bool(allocated_gpus())


# Packages that `import tensorflow` loads (through Keras) only because they are installed, for integrations the job
# never uses: scikit-learn wrappers, pandas and scipy.sparse inputs, plotting. Together more than half of the import
# (`mnist-cv bench`, start-up); TensorFlow and Keras import each inside a try block and carry on without it.
OPTIONAL_IMPORTS = ("sklearn", "pandas", "matplotlib", "scipy")


class _Skip(importlib.abc.MetaPathFinder):
    """Makes `import NAME` (and its submodules) fail for the given top-level packages, while it is installed."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = frozenset(names)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r} (skipped while TensorFlow imports)", name=fullname)
        return None


def import_tensorflow() -> Any:
    """TensorFlow (and Keras), imported without OPTIONAL_IMPORTS; they stay importable once it is done."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep Slurm logs readable
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    # A package this process already uses is left alone: blocking its submodules would break it.
    skip = _Skip([name for name in OPTIONAL_IMPORTS if name not in sys.modules])
    sys.meta_path.insert(0, skip)
    try:
        import keras  # noqa: F401 - imports TensorFlow; the job's own next import, under the same skip
        import tensorflow as tf
    finally:
        sys.meta_path.remove(skip)
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
    intra_op = intra_op_threads(max_threads)
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
    if precision == "float32":
        # Ampere and later GPUs round float32 matmuls and convolutions to TensorFloat-32 unless told not to.
        tf.config.experimental.enable_tensor_float_32_execution(False)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(precision)
    devices = [_describe_device(tf, d) for d in tf.config.list_physical_devices()]
    used = next((d for d in devices if d["type"] == "GPU"), devices[0])
    return {
        "devices": devices,
        "device_used": f"{used['type']}:0 ({used['name']})",
        "threads": {"allocated": cpus, "intra_op": intra_op, "inter_op": min(2, cpus)},
        "cpu_isa": cpu_isa(),
        "deterministic": deterministic,
    }


# The x86 instruction-set extensions by which oneDNN, TensorFlow's CPU kernel library, picks its kernels at run time.
# Other kernels sum in another order: the full mlp fold 0 is 97.158% with AVX2 and 97.225% with oneDNN capped at AVX
# (docs/performance.md), so a result records them, and the cap when one is set.
ISA_EXTENSIONS = (
    "sse4_1", "avx", "avx2", "fma", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni",
    "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "amx_fp16",
)  # fmt: skip
ISA_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")  # oneDNN's name, and its older one


def cpu_isa() -> dict[str, Any]:
    """This CPU's extensions among ISA_EXTENSIONS (none known off Linux), and the cap oneDNN is given, if any."""
    flags = set(_cpuinfo_field("flags").split())
    cap = next((os.environ[name] for name in ISA_CAP_VARIABLES if os.environ.get(name)), None)
    return {"extensions": [name for name in ISA_EXTENSIONS if name in flags], "onednn_max_cpu_isa": cap}


def intra_op_threads(max_threads: int | None) -> int:
    """TensorFlow's intra-op threads: the allocation's CPUs, capped by a model's `max_threads`."""
    cpus = allocated_cpus()
    return min(cpus, max_threads or cpus)


class _NewModelTraces(logging.Filter):
    """Drops TensorFlow's warning that a function is traced again and again: it counts the traces of every
    tf.function made from the same code, and each training's new model makes its compiled steps anew."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


_NEW_MODEL_TRACES = _NewModelTraces()


def between_trainings(protocol: Protocol) -> None:
    """Before a process's next training (`run --task-ids`): Keras's global state as new (names, graphs, cached kernels;
    its seeds are set again by the training itself), and the protocol's precision policy, which that clears too.
    TensorFlow's own set-up (threads, determinism, devices) stays: it can be made only once in a process."""
    import keras

    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy(protocol.precision)
    logging.getLogger("tensorflow").addFilter(_NEW_MODEL_TRACES)  # once: a filter already there is not added again


def configure_training(protocol: Protocol, model_name: str, *, allow_cpu: bool) -> dict[str, Any]:
    """`configure` as a training of `model_name` under `protocol` needs it: determinism unless XLA, the protocol's
    precision, the model's thread cap (job.pair.models.max_threads)."""

    return configure(
        deterministic=not protocol.jit,
        precision=protocol.precision,
        allow_cpu=allow_cpu,
        max_threads=models.max_threads(model_name),
    )


def _describe_device(tf: Any, device: Any) -> dict[str, Any]:
    details = tf.config.experimental.get_device_details(device) if device.device_type == "GPU" else {}
    name = details.get("device_name") or (
        _cpuinfo_field("model name", "CPU") if device.device_type == "CPU" else device.name
    )
    entry = {"name": name, "type": device.device_type}
    if "compute_capability" in details:
        entry["compute_capability"] = ".".join(map(str, details["compute_capability"]))
    return entry


def _cpuinfo_field(field: str, missing: str = "") -> str:
    """The first processor's `field` in /proc/cpuinfo; `missing` where there is none (another OS or architecture)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                name, colon, value = line.partition(":")
                if colon and name.strip() == field:
                    return value.strip()
    except OSError:
        pass
    return missing
