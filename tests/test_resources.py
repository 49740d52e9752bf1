"""The resources a result records (job/pair/usage.py): measured from the process's start, on this CPU-only machine.

The GPU paths cannot run here; what they read can: TensorFlow's build information (this wheel is a CUDA build), and
nvidia-smi's absence. A resumed pair's sums over its processes are checked with a real kill -9 in test_epoch_logs.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from job.pair import usage
from job.pair.checkpoint import TrainState, _inconsistency
from job.protocol import Pair
from job.results import store
from job.results.layout import RunLayout


def test_the_wall_time_counts_from_the_process_start_not_from_the_import() -> None:
    code = "import time; time.sleep(1.5); from job.pair.usage import seconds_since_start; print(seconds_since_start())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 1.5 <= float(done.stdout) < 1.5 + 10


def test_spent_sums_times_and_keeps_the_peaks() -> None:
    first = usage.Spent(wall_seconds=10.0, cpu_seconds=8.5, peak_rss_bytes=700, gpu_peak_memory_bytes=None)
    second = usage.Spent(wall_seconds=5.25, cpu_seconds=4.0, peak_rss_bytes=600, gpu_peak_memory_bytes=3)
    assert first.plus(second) == usage.Spent(15.25, 12.5, 700, 3)
    assert first.plus(usage.Spent()).gpu_peak_memory_bytes is None  # no GPU in either: none, not 0


def test_cuda_and_cudnn_are_read_from_tensorflows_build_info() -> None:
    import tensorflow as tf

    info = tf.sysconfig.get_build_info()
    assert info["is_cuda_build"]  # the pip wheel: built with CUDA whether or not a GPU is there
    assert usage.build_versions(info) == (info["cuda_version"], info["cudnn_version"])
    assert all(isinstance(v, str) and v[0].isdigit() for v in usage.build_versions(info))
    assert usage.build_versions({"is_cuda_build": False, "is_rocm_build": True}) == (None, None)


def test_no_gpu_is_null_and_a_missing_or_failing_nvidia_smi_is_no_driver() -> None:
    assert usage.gpu_use(None) is None  # this machine has no GPU
    assert usage.nvidia_driver("nvidia-smi-that-is-not-installed") is None
    assert usage.nvidia_driver("false") is None


def test_a_checkpoint_with_hand_edited_resources_is_refused_and_one_without_them_is_read() -> None:
    history = {"loss": [0.5], "accuracy": [0.9], "val_loss": [0.4], "val_accuracy": [0.9]}
    sha = "0" * 64
    spent = usage.Spent(3.0, 2.0, 10).to_dict()
    assert _inconsistency(TrainState("c", 1, history, [1.0], spent=spent), "epoch-1.weights.h5", sha) is None
    assert _inconsistency(TrainState("c", 1, history, [1.0]), "epoch-1.weights.h5", sha) is None  # older checkpoint
    for edited in ({**spent, "cpu_seconds": -1}, {**spent, "wall_seconds": "3"}, {"wall_seconds": 3.0}):
        problem = _inconsistency(TrainState("c", 1, history, [1.0], spent=edited), "epoch-1.weights.h5", sha)
        assert problem is not None and "spent" in problem


@pytest.mark.slow
def test_a_real_pair_records_plausible_resources(mnist_mini: Path, tmp_path: Path) -> None:
    cpu = min(os.sched_getaffinity(0))
    args = ["run", "--model", "mlp", "--fold", "1", "--epochs", "2", "--limit", "2000", "--custom-data"]
    done = subprocess.run(
        [sys.executable, "-m", "job", *args, "--data-dir", str(mnist_mini), "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
    )
    assert done.returncode == 0, done.stderr
    result = store.read_result(RunLayout(tmp_path, "default").pair_paths(Pair("mlp", 1)).result)
    resources, fit_seconds = result["resources"], result["timings"]["fit_seconds"]
    assert resources["wall_seconds"] >= resources["startup_seconds"] + fit_seconds
    assert resources["startup_seconds"] > 1  # python, TensorFlow and Keras imports at least
    assert 0 < resources["cpu_seconds"] < 2 * resources["wall_seconds"]  # one CPU, and some waiting
    assert 100e6 < resources["peak_rss_bytes"] < 8e9
    assert resources["cpu_count"] == 1 and resources["gpu"] is None
