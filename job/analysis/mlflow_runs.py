"""What each MLflow run of `collect --mlflow` holds: its params, tags, metrics and artifacts, from the results and the
summary alone (no MLflow here; job/analysis/mlflow_export.py logs them).

Two kinds of run. A pair run per result, `MODEL/fold-K`: the config and the pair as params; the history at step =
epoch, stamped with the epoch's own end (the training's start plus the epochs' seconds so far); the score and the
resources at step 0. A model run per (model, config), `MODEL/cv`, the parent of its pair runs: the summary's numbers
for the model (mean, std, min, max, the 95% intervals, the final model's test score) and the paired comparison of the
two default models, logged on both of their model runs; the summary files and the figures as artifacts.

Every run carries MLflow's standard tags (user, source, git commit, run name; mlflow.parentRunId nests a pair run under
its model run) and ours, under `mnist_cv.`.
"""

from __future__ import annotations

import getpass
import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from job.results.contract import Comparison, PairResult, Summary
from job.results.layout import RunLayout
from job.times import parse_utc

TAG = "mnist_cv"  # the prefix of our tags
RESULT_TAG = f"{TAG}.result_sha256"  # a pair run: the SHA-256 of its result file
MODEL_RUN_TAG = f"{TAG}.model_run"  # a model run: its model
CONFIG_TAG = f"{TAG}.config_id"
SUMMARY_TAG = f"{TAG}.summary_sha256"  # a model run: the summary it was last filled from, set last
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: the run the UI nests this one under
COMMIT_TAG = "mlflow.source.git.commit"
# The tutorial's comparison (the default models, candidate - baseline), on each of the two model runs.
TESTS = {"ttest": lambda s: s.comparison, "repeated_ttest": lambda s: s.repeated_comparison}


def pair_params(result: PairResult) -> dict[str, Any]:
    return {"model": result.model, "fold": result.fold, "repeat": result.repeat, **vars(result.config)}


def pair_tags(result: PairResult, digest: str, name: str, parent: str | None) -> dict[str, str]:
    data = result.data
    slurm = result.environment.get("slurm")
    tags = {
        RESULT_TAG: digest,
        CONFIG_TAG: result.config_id,
        f"{TAG}.data.name": data.name,
        **{f"{TAG}.data.sha256.{file}": sha for file, sha in data.sha256.items()},
        f"{TAG}.val_indices_sha256": data.val_indices_sha256,
        # A Slurm task is a batch job to MLflow; a pair run at a shell is a local one.
        **_source("mnist-cv run", "JOB" if slurm else "LOCAL", name, _commits([result])),
    }
    if slurm and slurm.get("job_id"):
        tags[f"{TAG}.slurm_job_id"] = str(slurm["job_id"])
    if parent is not None:
        tags[PARENT_TAG] = parent
    return tags


def pair_metrics(result: PairResult) -> Iterator[tuple[str, float, int, int]]:
    """(key, value, timestamp in ms, step): the per-epoch curves at step = epoch (from 1), stamped with the epoch's
    end, then the one-off figures at step 0, stamped with the training's end.

    An epoch's end is the training's start plus the seconds of the epochs so far: a resumed pair's pause between its
    processes is in no epoch, so its later epochs are stamped earlier than they ended (but still in order)."""
    timings = result.timings
    ends, elapsed = [], 0.0
    for seconds in timings.epoch_seconds:
        elapsed += seconds
        # Strictly later than the epoch before, even when an epoch took under a millisecond.
        ends.append(max(ms(timings.start_utc) + round(1000 * elapsed), ends[-1] + 1 if ends else 0))
    curves = {**vars(result.history), "epoch_seconds": timings.epoch_seconds}
    for key, values in curves.items():
        for epoch, (value, stamp) in enumerate(zip(values, ends, strict=True), start=1):
            yield key, float(value), stamp, epoch
    end = max([ms(timings.end_utc), *ends])  # end_utc is to the second: never before the last epoch's end
    yield "score_accuracy", result.score.accuracy, end, 0
    yield "score_loss", result.score.loss, end, 0
    yield "fit_seconds", timings.fit_seconds, end, 0
    if result.resources is not None:
        for key in ("wall_seconds", "startup_seconds", "cpu_seconds", "peak_rss_bytes"):
            yield key, float(getattr(result.resources, key)), end, 0


def model_run_name(model: str) -> str:
    return f"{model}/cv"


def model_params(summary: Summary, model: str) -> dict[str, Any]:
    return {"model": model, **vars(summary.config)}


def model_tags(summary: Summary, model: str, results: Sequence[PairResult]) -> dict[str, str]:
    """The tags of a model run, `results` its pair runs' results. The git commit is MLflow's tag only when they all
    share it; `mnist_cv.git_commits` lists every one."""
    commits = _commits(results)
    return {
        MODEL_RUN_TAG: model,
        CONFIG_TAG: summary.config_id,
        f"{TAG}.data.name": summary.data.name,
        **{f"{TAG}.data.sha256.{file}": sha for file, sha in summary.data.sha256.items() if sha},
        f"{TAG}.git_commits": ",".join(commits),
        f"{TAG}.summary_run": summary.run,
        **_source("mnist-cv collect", "LOCAL", model_run_name(model), commits),
    }


def model_metrics(summary: Summary, model: str) -> Iterator[tuple[str, float]]:
    """The summary's numbers of one model (accuracies as fractions, as the summary holds them)."""
    stats = summary.models[model]
    if stats.n:
        yield "folds_used", float(stats.n)
        for key in ("mean", "std", "min", "max"):
            yield f"accuracy_{key}", getattr(stats, key)
        for interval in stats.ci95:
            over = interval.over.replace(" ", "_")  # folds, repeat_means
            yield f"accuracy_ci95_{over}_low", interval.low
            yield f"accuracy_ci95_{over}_high", interval.high
    if stats.mean_fit_seconds is not None:
        yield "mean_fit_seconds", stats.mean_fit_seconds
    if stats.std_of_repeat_means is not None:
        yield "std_of_repeat_means", stats.std_of_repeat_means
    if stats.final is not None:
        yield "final_test_accuracy", stats.final.accuracy
        yield "final_test_loss", stats.final.loss
    for prefix, of in TESTS.items():
        comparison = of(summary)
        if comparison is not None and model in (comparison.baseline, comparison.candidate):
            yield from _test_metrics(prefix, comparison)


def comparison_tags(summary: Summary, model: str) -> dict[str, str]:
    """What each comparison a model run holds is: which models, which way, which test."""
    return {
        f"{TAG}.{prefix}": f"{c.candidate} - {c.baseline}: {c.test}, k={c.k}"
        for prefix, of in TESTS.items()
        if (c := of(summary)) is not None and model in (c.baseline, c.candidate)
    }


def _test_metrics(prefix: str, comparison: Comparison) -> Iterator[tuple[str, float]]:
    figures = {
        "mean_difference": comparison.mean_difference,
        "t": comparison.t,
        "df": comparison.df,
        "p_value": comparison.p_value,
    }
    for key, value in figures.items():
        if value is not None:
            yield f"{prefix}_{key}", float(value)


def model_artifacts(layout: RunLayout, summary: Summary, model: str) -> list[tuple[Path, str | None]]:
    """(file, artifact folder): summary.json and summary.md at the root, then under figures/ the model's own figures
    (NAME-MODEL.FMT) and those of no one model (the box plot)."""

    def owner(name: str) -> str | None:
        stem = Path(name).stem
        mine = [m for m in summary.models if stem.endswith(f"-{m}")]
        return max(mine, key=len, default=None)  # learning-curves-mlp-wide is mlp-wide's, not wide's

    files: list[tuple[Path, str | None]] = [(layout.summary_json, None), (layout.summary_md, None)]
    return files + [(layout.folder / name, "figures") for name in summary.figures if owner(name) in (model, None)]


def summary_digest(summary: Summary) -> str:
    return hashlib.sha256(json.dumps(summary.to_json(), sort_keys=True).encode()).hexdigest()


def ms(utc: str) -> int:
    return int(parse_utc(utc).timestamp() * 1000)  # the result passed the check: a stamp with its zone


def _commit(result: PairResult) -> str | None:
    git = result.environment.get("git")
    return git.get("commit") if isinstance(git, dict) else None


def _commits(results: Sequence[PairResult]) -> list[str]:
    return sorted({c for r in results if (c := _commit(r))})


def _source(name: str, kind: str, run_name: str, commits: Sequence[str]) -> dict[str, str]:
    """MLflow's standard tags: who, what ran, and the one commit it ran (none when there were several)."""
    tags = {
        "mlflow.user": _user(),
        "mlflow.source.name": name,
        "mlflow.source.type": kind,
        "mlflow.runName": run_name,
    }
    if len(commits) == 1:
        tags[COMMIT_TAG] = commits[0]
    return tags


def _user() -> str:
    """Who exports: a result does not record who trained it. MLflow's own default for a run without one."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (a bare container)
        return "unknown"
