"""Bench: the tutorial's training code against ours on the same (model, fold) pair, each run in its own process.

The parent (`mnist-cv bench`) imports no TensorFlow: it starts `python -m job.perf.bench --worker VARIANT SPEC` for
each run, alternating the variants, and reads the one JSON line each worker prints. A fresh process per run
keeps one variant's graphs, caches and allocator high-water mark out of the other's figures.

- baseline: the tutorial's code: float32 copies of every image, one-hot labels, categorical cross-entropy,
  `model.fit` on numpy arrays at batch 32 with `validation_data` (validated at batch 32), then `evaluate`.
- ours: `job.pair.train.fit_pair`, the production path itself (with a throwaway checkpoint folder).

Both draw their initial weights from the same seed; each worker reports a fingerprint of its initial weights.
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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from job.errors import JobError
from job.pair.protocol import Pair, Protocol

VARIANTS = ("baseline", "ours")
NOISE_SIGMAS = 3

# (key, column label, higher is better): the per-run figures the summary compares (legend: `bench --help`).
FIGURES: tuple[tuple[str, str, bool], ...] = (
    ("samples_per_s", "samples/s", True),
    ("train_s_per_epoch", "s/epoch", False),
    ("train_cpu_s_per_epoch", "CPU s/epoch", False),
    ("first_epoch_train_s", "1st epoch s", False),
    ("validation_s_per_epoch", "val s/epoch", False),
    ("wall_s", "wall s", False),
    ("peak_rss_mb", "RSS MB", False),
    ("rss_above_import_mb", "RSS-imp MB", False),
)


@dataclass(frozen=True)
class Spec:
    """What one worker trains; the same for both variants."""

    model: str
    fold: int
    epochs: int
    limit: int | None = None
    data_dir: str | None = None
    custom_data: bool = False

    def protocol(self) -> Protocol:
        return Protocol().with_overrides(epochs=self.epochs, limit=self.limit)


# ---- the accuracy guard


@dataclass(frozen=True)
class AccuracyCheck:
    baseline: float  # median held-out accuracy over the repeats
    ours: float
    tolerance: float

    @property
    def difference(self) -> float:
        return abs(self.ours - self.baseline)

    @property
    def agree(self) -> bool:
        return self.difference <= self.tolerance


def accuracy_check(baseline: Sequence[float], ours: Sequence[float], n_val: int) -> AccuracyCheck:
    """Compare the median held-out accuracies against what noise alone could explain.

    An accuracy on n_val images has binomial standard error sqrt(p(1-p)/n_val), so the difference of two has
    sqrt(2 p(1-p)/n_val), p being their mean. The tolerance is NOISE_SIGMAS of that plus the widest range
    either variant showed across its repeats (the run-to-run noise this very bench observed).
    """
    if n_val < 1 or not baseline or not ours:
        raise ValueError("need at least one accuracy per variant and one held-out image")
    mid_baseline, mid_ours = statistics.median(baseline), statistics.median(ours)
    p = (mid_baseline + mid_ours) / 2
    binomial = NOISE_SIGMAS * math.sqrt(2 * p * (1 - p) / n_val)
    spread = max(max(values) - min(values) for values in (baseline, ours))
    return AccuracyCheck(mid_baseline, mid_ours, binomial + spread)


# ---- the parent: run the workers, summarise


def bench(spec: Spec, repeats: int, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Run both variants `repeats` times, ABBA-ordered so that drifting machine load hits both alike."""
    runs = []
    for repeat in range(repeats):
        order = VARIANTS if repeat % 2 == 0 else VARIANTS[::-1]
        for variant in order:
            run = _spawn(variant, spec)
            progress(f"repeat {repeat + 1}/{repeats} {variant}: {run['wall_s']:.1f}s, accuracy {run['accuracy']:.4f}")
            runs.append({"repeat": repeat, **run})
    return report(spec, runs)


def _spawn(variant: str, spec: Spec) -> dict[str, Any]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, "-m", "job.perf.bench", "--worker", variant, json.dumps(asdict(spec))]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise JobError(f"the {variant} worker failed (exit {done.returncode}): {last}")
    return _derived(json.loads(lines[-1]))


def _derived(run: dict[str, Any]) -> dict[str, Any]:
    """Add the compared figures. Steady state is epochs 2..N (the first one also traces the graphs)."""
    steady = _steady(run["train_seconds"])
    return {
        **run,
        "train_s_per_epoch": steady,
        "samples_per_s": run["n_train"] / steady,
        "train_cpu_s_per_epoch": _steady(run["train_cpu_seconds"]),
        "first_epoch_train_s": run["train_seconds"][0],
        "validation_s_per_epoch": statistics.fmean(run["validation_seconds"]),
    }


def _steady(per_epoch: list[float]) -> float:
    return statistics.fmean(per_epoch[1:]) if len(per_epoch) > 1 else per_epoch[0]


def report(spec: Spec, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per variant, the accuracy check, and ours/baseline ratios unless the check refuses them."""
    by_variant = {v: [r for r in runs if r["variant"] == v] for v in VARIANTS}
    summary = {v: _medians(by_variant[v]) for v in VARIANTS}
    check = accuracy_check(
        [r["accuracy"] for r in by_variant["baseline"]],
        [r["accuracy"] for r in by_variant["ours"]],
        runs[0]["n_val"],
    )
    ours_run = by_variant["ours"][0]
    return {
        "spec": asdict(spec),
        "repeats": len(by_variant["baseline"]),
        "steady_epochs": f"2..{spec.epochs}" if spec.epochs > 1 else "1 (tracing included)",
        "machine": {"device": ours_run["device"], "threads": ours_run["threads"], "tensorflow": ours_run["tensorflow"]},
        "same_initial_weights": len({r["initial_weights_sha256"] for r in runs}) == 1,
        "runs": runs,
        "summary": summary,
        "accuracy_check": {**asdict(check), "difference": check.difference, "agree": check.agree},
        "ratios": _ratios(by_variant) if check.agree else None,
    }


def _medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in runs) for key in ("accuracy", *(k for k, _, _ in FIGURES))}


def _ratios(by_variant: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """ours/baseline per repeat (the two runs of a repeat ran back to back), then the median over repeats."""
    pairs = list(zip(*(sorted(by_variant[v], key=lambda r: r["repeat"]) for v in VARIANTS), strict=True))
    return {key: statistics.median(ours[key] / base[key] for base, ours in pairs) for key, _, _ in FIGURES}


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


def _baseline(spec: Spec, dataset: Any, clock: EpochClock) -> Outcome:
    """The tutorial's evaluate_model() for one fold."""
    import keras

    from job.pair import folds, models
    from job.pair.train import model_seed

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


def _ours(spec: Spec, dataset: Any, clock: EpochClock) -> Outcome:
    """The production path: thread and determinism set-up as `run` does it, then train.fit_pair."""
    from job.pair import models, runtime
    from job.pair.checkpoint import Checkpoint
    from job.pair.train import fit_pair

    protocol = spec.protocol()
    info = runtime.configure(
        deterministic=not protocol.jit,
        precision=protocol.precision,
        allow_cpu=True,
        max_threads=models.max_threads(spec.model),
    )
    with tempfile.TemporaryDirectory(prefix="mnist-cv-bench-") as folder:
        checkpoint = Checkpoint(Path(folder) / "checkpoint")
        pair = Pair(spec.model, spec.fold)
        trained, data = fit_pair(pair, protocol, dataset, checkpoint, callbacks=[clock.callback()])
    extra = {"device": info["device_used"], "threads": info["threads"]["intra_op"]}
    return Outcome(trained.score.accuracy, data.n_train, data.n_val, extra)


RUNNERS: dict[str, Callable[[Spec, Any, EpochClock], Outcome]] = {"baseline": _baseline, "ours": _ours}


def run_worker(variant: str, spec: Spec) -> dict[str, Any]:
    """Train one variant once; the wall clock starts after the (shared) data loading."""
    from job.pair import data, runtime

    tf = runtime.import_tensorflow()
    import keras  # noqa: F401 - its import footprint belongs with TensorFlow's, the same in both variants

    # ~0.7 GB of a worker's RSS is TensorFlow's shared libraries, mapped at import and shared with every
    # other process on the node; the peak above it is what this pair's data and training cost.
    rss_at_import = _peak_rss_mb()
    load = os.getloadavg()[0]  # other work on the machine skews the timings: keep it on record
    dataset = data.load(spec.data_dir, custom=spec.custom_data)
    clock = EpochClock()
    started = time.perf_counter()
    outcome = RUNNERS[variant](spec, dataset, clock)
    wall = time.perf_counter() - started
    return {
        "variant": variant,
        "load_1min": load,
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
    if len(argv) != 3 or argv[0] != "--worker" or argv[1] not in RUNNERS:
        print(f"usage: python -m job.perf.bench --worker {{{','.join(RUNNERS)}}} SPEC_JSON", file=sys.stderr)
        return 2
    try:
        result = run_worker(argv[1], Spec(**json.loads(argv[2])))
    except JobError as error:  # one line, which the parent passes on
        print(error, file=sys.stderr)
        return error.exit_code
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
