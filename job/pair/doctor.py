"""The node check a cluster user runs first (`mnist-cv doctor`): what this process has, what Slurm gave it, what
TensorFlow sees of it, the data, and a few real training steps on the device, run twice and compared bit for bit.

Each check is one `Check`: a name, a verdict and one line of detail. A check that cannot apply here (no Slurm job,
no image, no GPU) is skipped and says why, never passed in silence.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from job import provenance
from job.errors import JobError
from job.pair import data, models, runtime
from job.pair.data import Dataset
from job.pair.steps import CompiledSteps
from job.protocol import Protocol
from job.settings import settings

# The variable that says which devices a process may see (runtime.allocated_gpus says what Slurm gave).
VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
# Ops that call back into Python: inside a compiled step each would be a round trip to the host.
HOST_CALLS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})


class Verdict(str, Enum):
    OK = "ok"
    WARN = "warn"  # works, but not as a training would want it
    FAIL = "fail"  # a training here would fail or be wrong
    SKIP = "skip"  # does not apply here; the detail says why

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Check:
    name: str
    verdict: Verdict
    detail: str


@dataclass(frozen=True)
class Request:
    data_dir: Path | None
    custom_data: bool
    model: str
    steps: int
    batch_size: int = Protocol.batch_size


def run(request: Request) -> Iterator[Check]:
    """Every check, in order, each as soon as it is done (the training steps take seconds)."""
    yield _python()
    yield _packages()
    yield _slurm()
    yield _container()
    tf = runtime.import_tensorflow()
    yield _build(tf)
    info = runtime.configure(deterministic=True, precision="float32", allow_cpu=True)
    gpus = tf.config.list_physical_devices("GPU")
    yield _gpu(gpus, info)
    yield _threads(info)
    yield _cpu(info)
    dataset, check = _data(request)
    yield check
    if dataset is None:
        yield Check("steps", Verdict.SKIP, "no data to train on (see data above)")
    else:
        yield _steps(request, dataset, info)


def exit_code(checks: list[Check]) -> int:
    """0 when no check failed (warnings and skips included), 1 otherwise."""
    return 1 if any(c.verdict == Verdict.FAIL for c in checks) else 0


def _python() -> Check:
    return Check("python", Verdict.OK, f"Python {platform.python_version()} at {sys.executable}")


def _packages() -> Check:
    versions = provenance.package_versions()
    shown = ", ".join(f"{name} {version or 'missing'}" for name, version in versions.items())
    missing = [name for name, version in versions.items() if version is None and name != "mnist-cv"]
    return Check("packages", Verdict.FAIL if missing else Verdict.OK, shown)


def _slurm() -> Check:
    job = provenance.slurm()
    if job is None:
        return Check("slurm", Verdict.SKIP, "not inside a Slurm job (run it with srun or sbatch to check a node)")
    task = f"{job['array_job_id']}_{job['array_task_id']}" if "array_task_id" in job else job["job_id"]
    cpus = runtime.allocated_cpus()
    return Check(
        "slurm",
        Verdict.OK,
        f"job {task} on {platform.node()}, {cpus} CPU{'s' * (cpus != 1)} allocated, "
        f"GPUs allocated: {_allocated_gpus() or 'none'}, {_visible()}",
    )


def _visible() -> str:
    return f"{VISIBLE_DEVICES}={os.environ.get(VISIBLE_DEVICES, '(unset)')}"


def _allocated_gpus() -> str:
    return ", ".join(f"{name}={value}" for name, value in runtime.allocated_gpus().items())


def _container() -> Check:
    image = provenance.container()
    if image is None:
        return Check("image", Verdict.SKIP, "not inside an Apptainer image")
    digest = image["sha256"] or "unknown (launch through slurm/*.sh or submit to record it)"
    return Check("image", Verdict.OK, f"{image['image']}, sha256 {digest}")


def _build(tf: Any) -> Check:
    info = tf.sysconfig.get_build_info()
    if not info.get("is_cuda_build"):
        verdict = Verdict.FAIL if runtime.gpu_requested() else Verdict.OK
        return Check("build", verdict, f"TensorFlow {tf.__version__}, a CPU-only build (it can use no GPU)")
    return Check(
        "build",
        Verdict.OK,
        f"TensorFlow {tf.__version__} built for CUDA {info.get('cuda_version')}, cuDNN {info.get('cudnn_version')}",
    )


def _gpu(gpus: list[Any], info: dict[str, Any]) -> Check:
    allocated = _allocated_gpus()
    seen = [d for d in info["devices"] if d["type"] == "GPU"]
    names = "; ".join(f"GPU:{i} {d['name']}" + _capability(d) for i, d in enumerate(seen))
    if allocated and not gpus:
        return Check(
            "gpu",
            Verdict.FAIL,
            f"a GPU was allocated ({allocated}, {_visible()}) "
            "but TensorFlow sees none (apptainer without --nv? a CPU-only TensorFlow? a CUDA driver mismatch?)",
        )
    if not gpus:
        return Check("gpu", Verdict.SKIP, "no GPU allocated or visible: the GPU checks are skipped, training on CPU")
    return Check("gpu", Verdict.OK, f"TensorFlow sees {names}" + (f" (allocated: {allocated})" if allocated else ""))


def _capability(device: dict[str, Any]) -> str:
    return f" (compute capability {device['compute_capability']})" if "compute_capability" in device else ""


def _threads(info: dict[str, Any]) -> Check:
    threads = info["threads"]
    return Check(
        "threads",
        Verdict.OK,
        f"{threads['allocated']} CPU{'s' * (threads['allocated'] != 1)} for this process, "
        f"TensorFlow intra-op {threads['intra_op']}, inter-op {threads['inter_op']}",
    )


def _cpu(info: dict[str, Any]) -> Check:
    """The instruction set oneDNN picks its CPU kernels by: nodes that differ in it may differ in the last digits."""
    isa = info["cpu_isa"]
    cap = isa["onednn_max_cpu_isa"]
    cpu = next((d["name"] for d in info["devices"] if d["type"] == "CPU"), "CPU")
    return Check(
        "cpu",
        Verdict.OK,
        f"{cpu}, extensions {' '.join(isa['extensions']) or 'none known'}; oneDNN "
        + (f"capped at {cap}" if cap else "uses them as found")
        + ": a result made on other extensions may differ in its last digits (verify calls it not comparable)",
    )


def _data(request: Request) -> tuple[Dataset | None, Check]:
    """The data a training here would load, verified; never downloaded (a node may have no internet)."""
    source = data.local_source(request.data_dir)
    if source is None and settings().cache.is_dir():
        source = settings().cache  # where `fetch-data` and a first training put the files
    if source is None:
        return None, Check("data", Verdict.FAIL, f"no MNIST found; {data.NO_DATA_HINT}, or run `fetch-data`")
    try:
        dataset = data.load(source, custom=request.custom_data)
    except JobError as error:
        return None, Check("data", Verdict.FAIL, str(error))
    verified = "every file's sha256 is MNIST's" if dataset.name == "mnist" else "custom data, structure valid"
    images = f"{len(dataset.x_train):,} training and {len(dataset.x_test):,} test images"
    return dataset, Check("data", Verdict.OK, f"{images} from {dataset.source}: {verified}")


def _steps(request: Request, dataset: Dataset, info: dict[str, Any]) -> Check:
    """`request.steps` real training steps of the job's own compiled loop, twice from one seed: the same weights to
    the bit, where the data and weights live, whether the step calls back to the host, and the time per step."""
    images = request.steps * request.batch_size
    if images > len(dataset.x_train):
        return Check("steps", Verdict.SKIP, f"{request.steps} steps need {images} training images")
    first, second = _train(request, dataset), _train(request, dataset, timed=True)
    same = len(first.weights) == len(second.weights) and all(
        np.array_equal(a, b) for a, b in zip(first.weights, second.weights, strict=True)
    )
    device, per_step = info["device_used"], second.seconds_per_step
    speed = "not timed" if per_step is None else f"{per_step * 1000:.2f} ms per step"
    placed = f"images, labels and weights on {', '.join(sorted(second.devices))}"
    calls = (
        f"host call-outs in the step: {', '.join(sorted(second.host_calls))}"
        if second.host_calls
        else "no host call-outs in the step"
    )
    detail = f"{request.steps} steps of {request.model} (batch {request.batch_size}) on {device}"
    if not same:
        return Check("steps", Verdict.FAIL, f"{detail}: two runs from one seed differ; {speed}; {placed}")
    verdict = Verdict.WARN if second.host_calls or not _on_device(second.devices, device) else Verdict.OK
    return Check("steps", verdict, f"{detail}, twice from one seed: identical weights; {speed}; {placed}; {calls}")


def _on_device(devices: set[str], used: str) -> bool:
    """Whether everything the step reads is on the device the training uses (GPU:0 for a GPU, else CPU:0)."""
    kind = used.split(":")[0]
    return all(f"{kind}:0" in d.upper() for d in devices)


@dataclass(frozen=True)
class Trained:
    weights: list[np.ndarray]  # after `request.steps` steps from the seed
    seconds_per_step: float | None  # of a second pass over the same batches, traced already; None: not timed
    devices: set[str]  # where the images, the labels and the weights are held
    host_calls: set[str]  # op types in the compiled step that call back into Python


def _train(request: Request, dataset: Dataset, timed: bool = False) -> Trained:
    """A fresh seeded model trained over `request.steps` batches; with `timed`, a second pass timed."""
    import keras

    keras.utils.set_random_seed(0)
    model = models.build(request.model, steps_per_execution=None)
    n = request.steps * request.batch_size
    steps = CompiledSteps(model, dataset.x_train[:n], dataset.y_train[:n], steps_per_call=request.steps)
    index = np.arange(n)
    callbacks = keras.callbacks.CallbackList([], model=model)
    steps.train(index, request.batch_size, callbacks)
    weights = [np.array(w) for w in model.get_weights()]
    seconds = None
    if timed:
        start = time.perf_counter()
        steps.train(index, request.batch_size, callbacks)  # traced already: the time of the steps alone
        seconds = (time.perf_counter() - start) / request.steps
    devices = {*steps.resident_on(), *(str(v.value.device) for v in model.trainable_variables)}
    return Trained(weights, seconds, {_short(d) for d in devices}, steps.op_types("train") & HOST_CALLS)


def _short(device: str) -> str:
    """'/job:localhost/replica:0/task:0/device:GPU:0' as 'GPU:0'."""
    return device.rsplit("device:", 1)[-1] if device else "(unplaced)"
