"""The arithmetic floor of an epoch: the model's own GEMMs timed on this machine, with the job's threads.

Every GEMM of a training step (job.perf.flops.training_gemms: each layer's forward pass, weight gradient and
input gradient, at the training batch and in the shapes they really have) is timed in TensorFlow (what the
job runs on) and in numpy (its BLAS). Their times summed are the floor: the seconds per batch no training
loop can beat on this CPU without doing less arithmetic or doing it faster than a plain matmul does.
Each rate is the best of a few trials, and each GEMM counts at the faster library's rate: the machine's
limit, not its average under other work, nor one library's per-op overhead (TensorFlow's compiled loop
costs some microseconds per iteration, which a 32 x 128 x 10 GEMM does not outlast). The TensorFlow-only
floor is kept beside it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from job.pair import models, runtime
from job.perf.flops import Gemm, training_gemms

TRIALS = 5
TRIAL_SECONDS = 0.05  # each trial repeats the GEMM for about this long
PEAK_SIZE = 1024  # a square GEMM big enough to show the CPU's best rate, for context


def measure(model_name: str, batch: int) -> dict[str, Any]:
    """GEMM rates at the model's layer shapes and the resulting floor, in this (worker) process."""

    info = runtime.configure(
        deterministic=True, precision="float32", allow_cpu=True, max_threads=models.max_threads(model_name)
    )
    tf = runtime.import_tensorflow()
    threads = info["threads"]["intra_op"]
    steps = training_gemms(models.build(model_name), batch)
    square = Gemm("peak", PEAK_SIZE, PEAK_SIZE, PEAK_SIZE)
    runners = {"tensorflow": lambda g: _tf_runner(tf, g), "numpy": lambda g: _np_runner(np, g)}
    with threadpool_limits(limits=threads, user_api="blas"):
        rates = {lib: [_best_rate(runner(g), g.flops) for g in steps] for lib, runner in runners.items()}
        peak = {lib: _best_rate(runner(square), square.flops) / 1e9 for lib, runner in runners.items()}
    per_sample = sum(g.flops for g in steps) / batch
    rates["best"] = [max(pair) for pair in zip(rates["tensorflow"], rates["numpy"], strict=True)]
    # Seconds per sample: every GEMM of a step at its own measured rate, over the batch.
    floor = {lib: sum(g.flops / rate for g, rate in zip(steps, r, strict=True)) / batch for lib, r in rates.items()}
    return {
        "model": model_name,
        "threads": threads,
        "batch": batch,
        "training_flops_per_sample": per_sample,
        "gemms": [
            {**asdict(g), "flops": g.flops, **{lib: r[i] for lib, r in rates.items()}} for i, g in enumerate(steps)
        ],
        "peak_size": PEAK_SIZE,
        "peak_gflops": peak,
        # The model's FLOPs over the floor's time: the rate of its GEMMs together, each at its own shape.
        "gemm_gflops": {lib: per_sample / seconds / 1e9 for lib, seconds in floor.items()},
        "floor_samples_per_s": 1 / floor["best"],
        "tf_floor_samples_per_s": 1 / floor["tensorflow"],
    }


def _best_rate(run: Callable[[int], None], flops: int) -> float:
    """FLOP/s of the fastest of TRIALS trials, each `reps` GEMMs sized to last about TRIAL_SECONDS."""
    run(1)  # trace, allocate, warm the caches
    started = time.perf_counter()
    run(1)
    reps = max(1, round(TRIAL_SECONDS / max(time.perf_counter() - started, 1e-6)))
    times = []
    for _ in range(TRIALS):
        started = time.perf_counter()
        run(reps)
        times.append(time.perf_counter() - started)
    return reps * flops / min(times) if min(times) > 0 else float("nan")


def _tf_runner(tf: Any, gemm: Gemm) -> Callable[[int], None]:
    """`reps` GEMMs in one compiled loop: a Python call per GEMM would time the dispatch, not the arithmetic.

    The accumulation (m*n additions per k*m*n multiply-adds) keeps the GEMMs from being pruned as unused.
    """
    a, b = (tf.constant(operand) for operand in _operands(gemm))

    @tf.function
    def loop(reps: Any) -> Any:
        total = tf.zeros((gemm.m, gemm.n))
        for _ in tf.range(reps):
            total += tf.matmul(a, b)
        return total

    return lambda reps: loop(tf.constant(reps)).numpy()


def _np_runner(np: Any, gemm: Gemm) -> Callable[[int], None]:
    a, b = _operands(gemm)
    out = np.empty((gemm.m, gemm.n), dtype=np.float32)

    def run(reps: int) -> None:
        for _ in range(reps):
            np.matmul(a, b, out=out)

    return run


def _operands(gemm: Gemm) -> tuple[Any, Any]:
    """Random float32 operands, the same for both libraries."""

    rng = np.random.default_rng(0)
    return rng.random((gemm.m, gemm.k), dtype=np.float32), rng.random((gemm.k, gemm.n), dtype=np.float32)
