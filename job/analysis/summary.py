"""The numbers of a run: which results belong together, per-model statistics, the paired model comparison, and
the final models' test scores beside them.

Works on result dicts as `results.scan` returns them (each with its `_path`); reads no files, draws nothing.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from job.errors import JobError
from job.pair.data import MNIST_FILES
from job.pair.protocol import DEFAULT_MODELS, Pair, all_pairs, task_for_pair

STD_DEFINITION = "numpy population std (ddof=0), as the tutorial"
TEST_NAME = "Nadeau-Bengio corrected resampled t-test"
NO_RESULT = "no result"


def file_name(result: dict[str, Any]) -> str:
    """A result's file as MODEL/fold-K.json: short enough to name many in one line, unique within a run."""
    path = Path(result["_path"])
    return f"{path.parent.name}/{path.name}"


def data_fingerprint(result: dict[str, Any]) -> str:
    """A short hash of the dataset's content.

    Only the four files' content hashes count: the same MNIST read from IDX or from Keras's mnist.npz is the
    same data, though the npz adds its container's hash.
    """
    sha256 = result["data"]["sha256"]
    joined = ",".join(f"{name}={sha256.get(name)}" for name in MNIST_FILES)
    return hashlib.sha256(joined.encode()).hexdigest()[:12]


def _grouped(results: list[dict[str, Any]], key: Callable[[dict[str, Any]], str]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        groups[key(result)].append(result)
    return dict(groups)


def _describe(groups: dict[str, list[dict[str, Any]]]) -> str:
    return "; ".join(f"{key}: {', '.join(file_name(r) for r in members)}" for key, members in groups.items())


def select(results: list[dict[str, Any]], config_id: str | None = None) -> list[dict[str, Any]]:
    """The results to summarise: those of one config and one dataset, or a JobError naming the files that differ."""
    configs = _grouped(results, lambda r: r["config_id"])
    if config_id is not None:
        if config_id not in configs:
            present = ", ".join(configs) or "none"
            raise JobError(f"no result of config {config_id} (configs present: {present})")
        chosen = configs[config_id]
    elif len(configs) > 1:
        raise JobError(
            f"results of {len(configs)} configs are mixed ({_describe(configs)}): choose one with --config ID"
        )
    else:
        chosen = results
    datasets = _grouped(chosen, data_fingerprint)
    if len(datasets) > 1:
        # No flag overrides this: folds of different data are not one cross-validation.
        raise JobError(
            f"results of config {chosen[0]['config_id']} come from {len(datasets)} different datasets "
            f"({_describe(datasets)}): move the results of the wrong data to another run"
        )
    return chosen


def model_stats(results: list[dict[str, Any]]) -> dict[str, Any]:
    """n, mean, std, min, max of held-out accuracy (fractions) and the per-fold scores of one model's results."""
    ordered = sorted(results, key=lambda r: r["fold"])
    accuracy = np.array([r["score"]["accuracy"] for r in ordered], dtype=float)
    n = len(ordered)
    return {
        "n": n,
        "mean": float(accuracy.mean()) if n else None,
        "std": float(accuracy.std(ddof=0)) if n else None,
        "min": float(accuracy.min()) if n else None,
        "max": float(accuracy.max()) if n else None,
        "mean_fit_seconds": float(np.mean([r["timings"]["fit_seconds"] for r in ordered])) if n else None,
        "folds": [
            {
                "fold": r["fold"],
                "accuracy": r["score"]["accuracy"],
                "loss": r["score"]["loss"],
                "fit_seconds": r["timings"]["fit_seconds"],
                "file": file_name(r),
            }
            for r in ordered
        ],
    }


def compare(by_model: dict[str, list[dict[str, Any]]], baseline: str, candidate: str) -> dict[str, Any]:
    """Candidate minus baseline accuracy over the folds both have, with the Nadeau-Bengio corrected t-test.

    The folds' training sets overlap, so the plain paired t-test underestimates the variance of the mean
    difference; Nadeau & Bengio (2003) inflate its factor from 1/k to 1/k + n_test/n_train.
    """
    base = {r["fold"]: r for r in by_model.get(baseline, [])}
    cand = {r["fold"]: r for r in by_model.get(candidate, [])}
    both = sorted(base.keys() & cand.keys())
    # A pair is only a pair when both models were scored on the very same held-out images.
    folds = [f for f in both if base[f]["data"]["val_indices_sha256"] == cand[f]["data"]["val_indices_sha256"]]
    diffs = np.array([cand[f]["score"]["accuracy"] - base[f]["score"]["accuracy"] for f in folds], dtype=float)
    k = len(folds)
    outcome: dict[str, Any] = {
        "baseline": baseline,
        "candidate": candidate,
        "test": TEST_NAME,
        "folds": folds,
        "k": k,
        "differences": diffs.tolist(),
        "mean_difference": float(diffs.mean()) if k else None,
        "test_train_ratio": None,
        "t": None,
        "df": None,
        "p_value": None,
        "notes": [],
    }
    notes = outcome["notes"]
    if len(folds) < len(both):
        notes.append(f"folds {sorted(set(both) - set(folds))} left out: the models saw different held-out images")
    if k < 2:
        notes.append(f"{k} paired fold(s): the test needs at least 2")
        return outcome
    ratio = float(np.mean([r["data"]["n_val"] / r["data"]["n_train"] for f in folds for r in (base[f], cand[f])]))
    variance = float(diffs.var(ddof=1))
    outcome.update(test_train_ratio=ratio, df=k - 1)
    if variance == 0:
        notes.append("the difference is the same on every fold: t is undefined")
        return outcome
    outcome["t"] = float(diffs.mean() / math.sqrt((1 / k + ratio) * variance))
    outcome["p_value"] = _two_sided_p(outcome["t"], k - 1)
    if outcome["p_value"] is None:
        notes.append("scipy is not installed: no p-value")
    return outcome


def _two_sided_p(t: float, df: int) -> float | None:
    try:
        from scipy import stats  # deferred: arrives with scikit-learn, costs a second to import
    except ImportError:
        return None
    return float(2 * stats.t.sf(abs(t), df))


def final_stats(result: dict[str, Any], cv_config_id: str) -> dict[str, Any]:
    """A final model's test-set numbers, and whether it was trained with the config the cross-validation scored."""
    test = result["test"]
    same = result["config_id"] == cv_config_id
    return {
        "file": file_name(result),
        "accuracy": result["score"]["accuracy"],
        "loss": result["score"]["loss"],
        "n_train": result["data"]["n_train"],
        "n_test": test["n_images"],
        "n_misclassified": test["n_images"] - test["n_correct"],
        "config_id": result["config_id"],
        "same_config": same,
        # Shown, not refused: a final model of another protocol is still a model, but not the one CV estimated.
        "notes": []
        if same
        else [f"config {result['config_id']} is not the cross-validation's {cv_config_id}: CV did not estimate it"],
    }


def summarise(
    results: list[dict[str, Any]],
    *,
    run: str,
    unusable: dict[Pair, str],
    skipped: list[dict[str, str]],
    finals: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The summary of the (non-empty) results `select`ed from the run folder `run`.

    `unusable` says why a default pair has no usable result (a missing pair without an entry has none at all);
    `skipped` lists the files found but not used, with why; `finals` holds the final models' results by model.
    """
    first = results[0]
    n_folds = first["config"]["n_folds"]
    by_model = _grouped(results, lambda r: r["model"])
    expected = all_pairs(n_folds)
    present = {Pair(r["model"], r["fold"]) for r in results}
    missing = [
        {
            "model": p.model,
            "fold": p.fold,
            "task_id": task_for_pair(p, n_folds),
            "reason": unusable.get(p, NO_RESULT),
        }
        for p in expected
        if p not in present
    ]
    models = {}
    # The tutorial's two models first, even without results (as the task ids order them), then extra ones by name.
    for model in [*DEFAULT_MODELS, *sorted((by_model.keys() | finals.keys()) - set(DEFAULT_MODELS))]:
        models[model] = model_stats(by_model.get(model, []))
        models[model]["missing_folds"] = [m["fold"] for m in missing if m["model"] == model]
        models[model]["final"] = final_stats(finals[model], first["config_id"]) if model in finals else None
    return {
        "run": run,
        "config_id": first["config_id"],
        "config": first["config"],
        "data": {"name": first["data"]["name"], "sha256": {k: first["data"]["sha256"].get(k) for k in MNIST_FILES}},
        "metric": "held-out accuracy (fraction of the fold's images)",
        "std_definition": STD_DEFINITION,
        "complete": not missing,
        "n_expected": len(expected),
        "n_found": len(present & set(expected)),
        "missing": missing,
        "skipped": skipped,
        "models": models,
        "comparison": compare(by_model, *DEFAULT_MODELS),
    }
