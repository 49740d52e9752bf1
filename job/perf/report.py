"""The bench's report: medians per variant, the accuracy guard, and every ratio taken within a repeat.

A ratio is only ever taken between two measurements of the same repeat (they ran back to back, under the
same machine load), then the median over repeats is reported.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from job.perf import startup
from job.perf.spec import Spec

VARIANTS = ("baseline", "ours", "bare")  # the training runs; ours/baseline is the headline ratio
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


def report(spec: Spec, measured: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians per variant, the accuracy check, ours/baseline ratios unless the check refuses them, each training
    variant's throughput as a fraction of the floor and of the bare loop, and ours' start-up against the import."""
    summary = {v: _medians(measured[v]) for v in VARIANTS}
    check = accuracy_check(
        [r["accuracy"] for r in measured["baseline"]],
        [r["accuracy"] for r in measured["ours"]],
        measured["ours"][0]["n_val"],
    )
    ours_run = measured["ours"][0]
    runs = sorted((r for v in VARIANTS for r in measured[v]), key=lambda r: r["seq"])
    return {
        "spec": asdict(spec),
        "repeats": len(measured["baseline"]),
        "load": ours_run["load"],
        "steady_epochs": f"2..{spec.epochs}" if spec.epochs > 1 else "1 (tracing included)",
        "machine": {"device": ours_run["device"], "threads": ours_run["threads"], "tensorflow": ours_run["tensorflow"]},
        "same_initial_weights": len({r["initial_weights_sha256"] for r in runs}) == 1,
        "runs": runs,
        "summary": summary,
        "accuracy_check": {**asdict(check), "difference": check.difference, "agree": check.agree},
        "ratios": _ratios(measured) if check.agree else None,
        "fractions": _fractions(measured),
        "floor": _floor_summary(measured["floor"], ours_run["n_train"]),
        "startup": _startup_summary(measured["ours"], measured["task"], measured["import"]),
    }


def _medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in runs) for key in ("accuracy", *(k for k, _, _ in FIGURES))}


def _per_repeat(a: list[dict[str, Any]], b: list[dict[str, Any]], ratio: Callable[[Any, Any], float]) -> float:
    """The median over repeats of ratio(a's run, b's run), the two of a repeat measured back to back."""
    pairs = zip(*(sorted(runs, key=lambda r: r["repeat"]) for runs in (a, b)), strict=True)
    return statistics.median(ratio(x, y) for x, y in pairs)


def _ratios(measured: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """ours/baseline per repeat, then the median over repeats."""
    return {
        key: _per_repeat(measured["ours"], measured["baseline"], lambda ours, base, k=key: ours[k] / base[k])
        for key, _, _ in FIGURES
    }


def _fractions(measured: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Each training variant's samples/s over the floor's (and the TensorFlow-only floor's) and the bare loop's."""

    def over(key: str) -> Callable[[dict[str, Any], dict[str, Any]], float]:
        return lambda run, ref: run["samples_per_s"] / ref[key]

    return {
        variant: {
            "of_floor": _per_repeat(measured[variant], measured["floor"], over("floor_samples_per_s")),
            "of_tf_floor": _per_repeat(measured[variant], measured["floor"], over("tf_floor_samples_per_s")),
            "of_bare": _per_repeat(measured[variant], measured["bare"], over("samples_per_s")),
        }
        for variant in VARIANTS
    }


def _floor_summary(runs: list[dict[str, Any]], n_train: int) -> dict[str, Any]:
    def median(pick: Callable[[dict[str, Any]], float]) -> float:
        return statistics.median(pick(r) for r in runs)

    libraries = ("tensorflow", "numpy", "best")
    return {
        "runs": runs,
        "threads": runs[0]["threads"],
        "training_flops_per_sample": runs[0]["training_flops_per_sample"],
        "peak_size": runs[0]["peak_size"],
        "floor_samples_per_s": median(lambda r: r["floor_samples_per_s"]),
        "epoch_s": n_train / median(lambda r: r["floor_samples_per_s"]),  # the arithmetic floor of an epoch
        "tf_floor_samples_per_s": median(lambda r: r["tf_floor_samples_per_s"]),
        "gemm_gflops": {lib: median(lambda r, lib=lib: r["gemm_gflops"][lib]) for lib in libraries},
        "peak_gflops": {lib: median(lambda r, lib=lib: r["peak_gflops"][lib]) for lib in libraries[:2]},
        "gemms": [
            {**gemm, **{lib: median(lambda r, i=i, lib=lib: r["gemms"][i][lib]) for lib in libraries}}
            for i, gemm in enumerate(runs[0]["gemms"])
        ],
    }


def _startup_summary(
    ours: list[dict[str, Any]], tasks: list[dict[str, Any]], imports: list[dict[str, Any]]
) -> dict[str, Any]:
    """The real task's seconds to its first step against a bare TensorFlow import's, per repeat, then medians; ours'
    worker's phases (the same path without the command line) say where the time goes."""
    if any(r.get("startup_phases") is None for r in ours):
        return {"runs": [], "imports": imports, "ratio": None}
    per_repeat = [
        {
            "repeat": o["repeat"],
            # The task's first call ran several steps: all but one are taken off at ours' steady step time.
            "task_s": startup.first_step(t["task_marks"], o["step_s"]),
            "ours_s": sum(o["startup_phases"].values()),
            "bare_import_s": i["import_s"],
        }
        for o, t, i in zip(*(sorted(runs, key=lambda r: r["repeat"]) for runs in (ours, tasks, imports)), strict=True)
    ]
    anatomies = [r["data_anatomy"] for r in ours if r.get("data_anatomy")]
    return {
        "runs": per_repeat,
        "imports": imports,
        "task_s": statistics.median(r["task_s"] for r in per_repeat),
        "ours_s": statistics.median(r["ours_s"] for r in per_repeat),
        "bare_import_s": statistics.median(r["bare_import_s"] for r in per_repeat),
        "ratio": statistics.median(r["task_s"] / r["bare_import_s"] for r in per_repeat),
        "phases": {phase: statistics.median(r["startup_phases"][phase] for r in ours) for phase, _ in startup.PHASES},
        "data_anatomy": {k: statistics.median(a[k] for a in anatomies) for k in anatomies[0]} if anatomies else None,
    }
