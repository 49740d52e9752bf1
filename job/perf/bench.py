"""Bench: the tutorial's training code against ours on the same (model, fold) pair, and both against the machine.

The parent (`mnist-cv bench`) imports no TensorFlow: it starts `python -m job.perf.bench --worker KIND SPEC` for
each measurement, alternating the kinds, and reads the one JSON line each worker prints. A fresh process per
run keeps one variant's graphs, caches and allocator high-water mark out of the other's figures.

- baseline: the tutorial's code: float32 copies of every image, one-hot labels, categorical cross-entropy,
  `model.fit` on numpy arrays at batch 32 with `validation_data` (validated at batch 32), then `evaluate`.
- ours: `job.pair.train.fit_pair`, the production path itself (with a throwaway checkpoint folder); it also
  times its start-up, phase by phase (job.perf.startup).
- bare: the same model and batches in a bare compiled loop on tensors in memory (job.perf.bare).
- floor: the model's GEMMs timed with the job's threads (job.perf.floor): the arithmetic floor of an epoch.
- task: the real `mnist-cv run` on the pair, one epoch on a few images, timed to its first step (job.perf.task).
- import: a bare `python -c "import tensorflow"`, the yardstick of the task's start-up.

Training variants draw their initial weights from the same seed; each reports a fingerprint of them.
With `load` > 0, that many busy loops (job.perf.load) run beside every measurement.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from job import folds
from job.errors import JobError
from job.pair import data, models, runtime
from job.pair.checkpoint import Checkpoint
from job.pair.train import Hooks, fit_pair, model_seed
from job.perf import bare, floor, load, startup, task
from job.perf.report import VARIANTS, report
from job.perf.spec import Spec
from job.protocol import Pair

MEASURES = (*VARIANTS, "floor", "task", "import")  # everything a repeat measures, in its (alternating) order


# ---- the parent: run the workers


def bench(spec: Spec, repeats: int, n_load: int = 0, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure everything `repeats` times, each repeat in the previous one's reverse order (ABC CBA) so that
    drifting machine load hits all alike; `n_load` busy loops run beside every measurement."""
    measured: dict[str, list[dict[str, Any]]] = {kind: [] for kind in MEASURES}
    sequence = 0
    for repeat in range(repeats):
        for kind in MEASURES if repeat % 2 == 0 else MEASURES[::-1]:
            with load.busy(n_load):
                # The machine's other work skews the timings: keep it on record.
                run = {"seq": sequence, "repeat": repeat, "load": n_load, "load_1min": os.getloadavg()[0]}
                run.update(MEASURE[kind](spec))
            sequence += 1
            progress(f"repeat {repeat + 1}/{repeats} {kind}: {_progress_line(kind, run)}")
            measured[kind].append(run)
    return report(spec, measured)


def _progress_line(kind: str, run: dict[str, Any]) -> str:
    if kind == "floor":
        return f"floor {run['floor_samples_per_s']:,.0f} samples/s at {run['gemm_gflops']['best']:.1f} GFLOP/s"
    if kind == "import":
        return f"import tensorflow {run['import_s']:.2f}s"
    if kind == "task":
        return f"task's first call ended at {run['task_marks']['at']['first_call']:.2f}s"
    return f"{run['wall_s']:.1f}s, accuracy {run['accuracy']:.4f}"


def _worker_env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def _spawn(kind: str, spec: Spec) -> dict[str, Any]:
    env = startup.spawn_env(_worker_env())
    command = [sys.executable, "-m", "job.perf.bench", "--worker", kind, json.dumps(asdict(spec))]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise JobError(f"the {kind} worker failed (exit {done.returncode}): {last}")
    return json.loads(lines[-1])


def _training(kind: str) -> Callable[[Spec], dict[str, Any]]:
    return lambda spec: _derived(_spawn(kind, spec), spec)


MEASURE: dict[str, Callable[[Spec], dict[str, Any]]] = {
    **{variant: _training(variant) for variant in VARIANTS},
    "floor": lambda spec: _spawn("floor", spec),
    "task": lambda spec: task.measure(spec, _worker_env()),
    "import": lambda spec: startup.bare_import(_worker_env()),
}


def _derived(run: dict[str, Any], spec: Spec) -> dict[str, Any]:
    """Add the compared figures. Steady state is epochs 2..N (the first one also traces the graphs)."""
    steady = _steady(run["train_seconds"])
    step_s = steady / math.ceil(run["n_train"] / spec.protocol().batch_size)
    marks = run.get("startup")
    return {
        **run,
        **({"startup_phases": startup.phases(marks, step_s)} if marks else {}),
        "train_s_per_epoch": steady,
        "step_s": step_s,
        "samples_per_s": run["n_train"] / steady,
        "train_cpu_s_per_epoch": _steady(run["train_cpu_seconds"]),
        "first_epoch_train_s": run["train_seconds"][0],
        "validation_s_per_epoch": statistics.fmean(run["validation_seconds"]),
    }


def _steady(per_epoch: list[float]) -> float:
    return statistics.fmean(per_epoch[1:]) if len(per_epoch) > 1 else per_epoch[0]


# ---- the workers


class EpochClock:
    """Per-epoch training and validation seconds, from Keras callback hooks, and the initial weights' hash.

    Training time runs from epoch begin to validation begin; Keras reads the epoch's metrics in between,
    which waits for every queued step, so no training work leaks into the validation time. CPU seconds (all
    threads of the process) are kept too: on a shared machine they vary far less than wall time does.
    """

    def __init__(self) -> None:
        self.train_seconds: list[float] = []
        self.train_cpu_seconds: list[float] = []
        self.validation_seconds: list[float] = []
        self.initial_weights_sha256: str | None = None
        self._mark = (0.0, 0.0)

    def train_begins(self, model: Any) -> None:
        if self.initial_weights_sha256 is None:  # ours calls fit once per epoch
            digest = hashlib.sha256()
            for weight in model.get_weights():
                digest.update(weight.tobytes())
            self.initial_weights_sha256 = digest.hexdigest()

    def epoch_begins(self) -> None:
        self._lap()

    def validation_begins(self) -> None:
        wall, cpu = self._lap()
        self.train_seconds.append(wall)
        self.train_cpu_seconds.append(cpu)

    def epoch_ends(self) -> None:
        self.validation_seconds.append(self._lap()[0])

    def _lap(self) -> tuple[float, float]:
        """(wall, CPU) seconds since the previous lap."""
        now = (time.perf_counter(), time.process_time())
        elapsed, self._mark = (now[0] - self._mark[0], now[1] - self._mark[1]), now
        return elapsed

    def callback(self) -> Any:
        import keras

        clock = self

        class Timing(keras.callbacks.Callback):
            def on_train_begin(self, logs: Any = None) -> None:
                clock.train_begins(self.model)

            def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
                clock.epoch_begins()

            def on_test_begin(self, logs: Any = None) -> None:
                clock.validation_begins()

            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                clock.epoch_ends()

        return Timing()


@dataclass
class Outcome:
    accuracy: float
    n_train: int
    n_val: int
    extra: dict[str, Any] = field(default_factory=dict)


def _tutorial_arrays(dataset: Any, limit: int | None) -> tuple[Any, Any, Any, Any]:
    """The tutorial's load_dataset() + prep_pixels(): float32 copies of every image, one-hot labels."""
    from keras.utils import to_categorical

    train_x, test_x = dataset.x_train[:limit].reshape(-1, 28, 28, 1), dataset.x_test.reshape(-1, 28, 28, 1)
    train_y, test_y = to_categorical(dataset.y_train[:limit]), to_categorical(dataset.y_test)
    return train_x.astype("float32") / 255.0, train_y, test_x.astype("float32") / 255.0, test_y


def _baseline(spec: Spec, dataset: Any, clock: EpochClock, marks: startup.Marks) -> Outcome:
    """The tutorial's evaluate_model() for one fold."""
    import keras

    protocol = spec.protocol()
    # The tutorial keeps the prepared test set alive while the folds train: part of its memory.
    data_x, data_y, _test_x, _test_y = _tutorial_arrays(dataset, protocol.limit)
    train_ix, val_ix = folds.split(len(data_x), spec.fold, protocol)
    keras.utils.set_random_seed(model_seed(protocol, spec.fold))  # the weights ours starts from
    model = models.build(spec.model)  # the registry's layers; recompiled with the tutorial's loss
    model.compile(optimizer=model.optimizer, loss="categorical_crossentropy", metrics=["accuracy"])
    x, y, val_x, val_y = data_x[train_ix], data_y[train_ix], data_x[val_ix], data_y[val_ix]
    model.fit(
        x,
        y,
        epochs=protocol.epochs,
        batch_size=protocol.batch_size,
        validation_data=(val_x, val_y),
        verbose=0,
        callbacks=[clock.callback()],
    )
    _, accuracy = model.evaluate(val_x, val_y, verbose=0)
    return Outcome(float(accuracy), len(train_ix), len(val_ix))


def _ours(spec: Spec, dataset: Any, clock: EpochClock, marks: startup.Marks) -> Outcome:
    """The production path: thread and determinism set-up as `run` does it, then train.fit_pair (start-up marked)."""
    protocol = spec.protocol()
    info = runtime.configure_training(protocol, spec.model, allow_cpu=True)
    marks.mark("configure")
    with tempfile.TemporaryDirectory(prefix="mnist-cv-bench-") as folder:
        checkpoint = Checkpoint(Path(folder) / "checkpoint")
        callbacks = [clock.callback(), marks.callback()]
        trained = fit_pair(Pair(spec.model, spec.fold), protocol, dataset, checkpoint, Hooks(callbacks=callbacks))
    extra = {
        "device": info["device_used"],
        "threads": info["threads"]["intra_op"],
        "startup": marks.to_dict(),
        "data_anatomy": startup.data_anatomy(dataset.source),  # after training: not part of its timings
    }
    return Outcome(trained.outcome.score.accuracy, trained.data.n_train, trained.data.n_val, extra)


def _bare(spec: Spec, dataset: Any, clock: EpochClock, marks: startup.Marks) -> Outcome:
    run = bare.train(spec, dataset, clock)
    return Outcome(run["accuracy"], run["n_train"], run["n_val"], {"device": run["device"], "threads": run["threads"]})


RUNNERS: dict[str, Callable[[Spec, Any, EpochClock, startup.Marks], Outcome]] = {
    "baseline": _baseline,
    "ours": _ours,
    "bare": _bare,
}


def run_worker(variant: str, spec: Spec, marks: startup.Marks) -> dict[str, Any]:
    """Train one variant once; the wall clock starts after the (shared) data loading."""
    tf = runtime.import_tensorflow()
    marks.mark("tensorflow")
    import keras  # noqa: F401 - its import footprint belongs with TensorFlow's, the same in every variant

    marks.mark("keras")

    # ~0.7 GB of a worker's RSS is TensorFlow's shared libraries, mapped at import and shared with every
    # other process on the node; the peak above it is what this pair's data and training cost.
    rss_at_import = _peak_rss_mb()
    dataset = data.load(spec.data_dir, custom=spec.custom_data)
    marks.mark("data")
    clock = EpochClock()
    started = time.perf_counter()
    outcome = RUNNERS[variant](spec, dataset, clock, marks)
    wall = time.perf_counter() - started
    return {
        "variant": variant,
        "accuracy": outcome.accuracy,
        "n_train": outcome.n_train,
        "n_val": outcome.n_val,
        "train_seconds": clock.train_seconds,
        "train_cpu_seconds": clock.train_cpu_seconds,
        "validation_seconds": clock.validation_seconds,
        "wall_s": wall,
        "peak_rss_mb": _peak_rss_mb(),
        "rss_above_import_mb": _peak_rss_mb() - rss_at_import,
        "initial_weights_sha256": clock.initial_weights_sha256,
        "tensorflow": tf.__version__,
        **outcome.extra,
    }


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _worker_main(argv: list[str]) -> int:
    marks = startup.Marks()
    marks.mark("python")
    if len(argv) != 3 or argv[0] != "--worker" or argv[1] not in (*RUNNERS, "floor"):
        print(f"usage: python -m job.perf.bench --worker {{{','.join(RUNNERS)},floor}} SPEC_JSON", file=sys.stderr)
        return 2
    spec = Spec(**json.loads(argv[2]))
    try:
        if argv[1] == "floor":
            result = floor.measure(spec.model, spec.protocol().batch_size)
        else:
            result = run_worker(argv[1], spec, marks)
    except JobError as error:  # one line, which the parent passes on
        print(error, file=sys.stderr)
        return error.exit_code
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
