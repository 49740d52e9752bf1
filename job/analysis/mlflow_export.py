"""`collect --mlflow`: a run's cross-validation logged into MLflow after the fact, from the result files and the
summary collect just published.

In the experiment `mnist-cv/RUN`: a model run `MODEL/cv` per model of the summary, holding its numbers, the
comparison, the summary files and the figures; nested under it (mlflow.parentRunId), a pair run `MODEL/fold-K` per
valid result of the summary's config. What each holds: job/analysis/mlflow_runs.py. A valid result of another config
is a pair run of its own, under no model run.

Idempotent: a result whose SHA-256 is already the tag of a finished pair run is not logged again (its tags are
brought up to date: its model run, say); a pair run left unfinished by an export that was killed is deleted and
logged anew. A retrained pair (another result file) is a new pair run beside the old one. A model run is one per
(model, config): it is filled again only when the summary changed since (its SHA-256 is its last tag), its metrics
then logged anew (the latest is the summary's) and its artifacts overwritten.

The store: `MLFLOW_TRACKING_URI` when set (a tracking server: many writers welcome), else an SQLite file in the run
folder (job/analysis/mlflow_store.py), written by this one process, never by the array's tasks. MLflow is an
optional extra, imported only here and only when asked for.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from job.analysis import mlflow_runs as runs
from job.analysis import mlflow_store
from job.errors import JobError
from job.files import sha256_file
from job.results import store
from job.results.contract import PairResult, Summary
from job.results.layout import RunLayout

EXTRA_HINT = "pip install 'mlflow>=3.7' (in the checkout: pip install -e '.[mlflow]')"
RESULT_TAG = runs.RESULT_TAG
BATCH = 1000  # MLflow's limit of metrics per log_batch


@dataclass(frozen=True)
class Exported:
    logged: int
    already: int
    model_runs: int  # the model runs filled from a summary they did not hold yet
    tracking_uri: str
    seconds: float

    def line(self) -> str:
        return (
            f"mlflow: {self.logged} pair result{'s' * (self.logged != 1)} logged, {self.already} already there, "
            f"{self.model_runs} model run{'s' * (self.model_runs != 1)} updated ({self.seconds:.1f}s) -> "
            f"{self.tracking_uri}"
        )


@dataclass
class _Session:
    """One export's MLflow client, its experiment and what it logged so far."""

    client: Any
    entities: Any
    experiment: str
    logged: int = 0
    already: int = 0
    model_runs: int = 0


def export(layout: RunLayout, summary: Summary) -> Exported:
    """Log the summary's model runs and every valid pair result of the run that MLflow does not hold yet."""
    started = time.monotonic()
    server = os.environ.get("MLFLOW_TRACKING_URI")  # MLflow's own variable
    uri = server or mlflow_store.uri(layout)
    mlflow = _import_mlflow()
    # MLflow and its SQLAlchemy store raise their own types (a locked or corrupt mlflow.db, a folder in its place,
    # an unknown URI scheme): at this boundary each becomes one line.
    import sqlalchemy.exc  # deferred: mlflow's store, installed with it

    failures = (mlflow.exceptions.MlflowException, sqlalchemy.exc.SQLAlchemyError, OSError, ValueError)
    if not server and os.path.lexists(layout.mlflow_db) and not layout.mlflow_db.is_file():
        # SQLite would retry a folder (or a FIFO) in its place for minutes before it fails
        raise JobError(f"mlflow export to {uri} failed ({layout.mlflow_db} is not a file); nothing logged")
    try:
        lock = _one_export_at_a_time(layout)
    except OSError as error:
        raise JobError(f"{layout.mlflow_lock}: cannot take the export lock ({error.strerror or error})") from None
    session = None
    try:
        # With a tracking server MLflow writes "View run ... at: URL" lines to stdout; stdout is collect's (its
        # --json), so MLflow's output goes to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            client = mlflow.MlflowClient(tracking_uri=uri)
            session = _Session(client, mlflow.entities, _experiment(client, layout, None if server else uri))
            _export(session, layout, summary)
    except failures as error:
        logged = session.logged if session else 0
        done = f"{logged} result{'s' * (logged != 1)} logged before it"
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        raise JobError(f"mlflow export to {uri} failed ({reason}); {done}") from None
    finally:
        os.close(lock)  # releases the lock
    return Exported(session.logged, session.already, session.model_runs, uri, time.monotonic() - started)


def _export(session: _Session, layout: RunLayout, summary: Summary) -> None:
    """The model runs first, so that each pair run is made nested; each model run is finished last, once its pair
    runs are all there."""
    records = store.scan(layout).records
    mine = {model: [r.result for r in records if _nested(r.result, summary, model)] for model in summary.models}
    parents = {model: _model_run(session, summary, model, results) for model, results in mine.items() if results}
    for record in records:
        parent = parents.get(record.result.model) if record.result.config_id == summary.config_id else None
        digest = sha256_file(record.path, store.MAX_RESULT_BYTES, "a result holds")
        tags = runs.pair_tags(record.result, digest, _name(layout, record), parent)
        found = _finished_run_of(session.client, session.experiment, digest)
        if found is None:
            _log_pair(session, record, tags)
            session.logged += 1
        else:
            _update_tags(session.client, found, tags)
            session.already += 1
    for model, parent in parents.items():
        session.model_runs += _fill_model_run(session, parent, layout, summary, model, mine[model])


def _nested(result: PairResult, summary: Summary, model: str) -> bool:
    return result.model == model and result.config_id == summary.config_id


def _one_export_at_a_time(layout: RunLayout) -> int:
    """Hold the run's export lock (an open descriptor; closing it releases the lock): a second export waits, then
    finds every result already there. Two at once would each find a result missing and log it twice, or delete
    the other's unfinished runs. flock: the exports of one run folder run on one host (a login node)."""
    fd = os.open(layout.mlflow_lock, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | os.O_NOFOLLOW, 0o644)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError("not a regular file")
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _import_mlflow() -> Any:
    try:
        import mlflow
        import mlflow.entities
        import mlflow.exceptions
    except ImportError:
        raise JobError(f"--mlflow needs MLflow, an optional extra: {EXTRA_HINT}") from None
    for name in ("mlflow", "alembic"):  # the store's set-up chatter; warnings and errors still show
        logging.getLogger(name).setLevel(logging.WARNING)
    return mlflow


def _experiment(client: Any, layout: RunLayout, own_store: str | None) -> str:
    """The run's experiment. In the run folder's own store (`own_store`, its URI) its artifacts are in the run
    folder: made there, or repointed there when the folder moved since (job/analysis/mlflow_store.py)."""
    name = f"mnist-cv/{layout.run}"
    here = mlflow_store.artifact_location(layout) if own_store else None
    found = client.get_experiment_by_name(name)
    if found is None:
        return client.create_experiment(name, artifact_location=here)
    location = found.artifact_location
    if own_store and here and location.rstrip("/") != here and mlflow_store.made_here(location):
        mlflow_store.repoint(own_store, found.experiment_id, location, here)
    return found.experiment_id


def _finished_run_of(client: Any, experiment: str, digest: str) -> Any:
    """The finished pair run holding this result, or None; unfinished ones (a killed export) are deleted."""
    finished = None
    for run in client.search_runs([experiment], filter_string=f"tags.`{RESULT_TAG}` = '{digest}'"):
        if run.info.status != "FINISHED":
            client.delete_run(run.info.run_id)
        elif finished is None:
            finished = run
    return finished


def _log_pair(session: _Session, record: store.Record, tags: dict[str, str]) -> None:
    client, entities, result = session.client, session.entities, record.result
    run = client.create_run(
        session.experiment, start_time=runs.ms(result.timings.start_utc), tags=tags, run_name=tags["mlflow.runName"]
    )
    run_id = run.info.run_id
    params = [entities.Param(key, str(value)) for key, value in runs.pair_params(result).items()]
    metrics = [entities.Metric(key, value, stamp, step) for key, value, stamp, step in runs.pair_metrics(result)]
    client.log_batch(run_id, params=params)
    for start in range(0, len(metrics), BATCH):
        client.log_batch(run_id, metrics=metrics[start : start + BATCH])
    client.log_artifact(run_id, str(record.path))
    client.set_terminated(run_id, "FINISHED", end_time=runs.ms(result.timings.end_utc))


def _update_tags(client: Any, run: Any, tags: dict[str, str]) -> None:
    """A run logged before brought up to date: a model run to nest under, tags an older export did not set."""
    for key, value in tags.items():
        if run.data.tags.get(key) != value:
            client.set_tag(run.info.run_id, key, value)


def _model_run(session: _Session, summary: Summary, model: str, results: Sequence[PairResult]) -> str:
    """The id of the model run of (model, config): found, else made (running until it is filled)."""
    client = session.client
    tags = runs.model_tags(summary, model, results)
    query = f"tags.`{runs.MODEL_RUN_TAG}` = '{model}' and tags.`{runs.CONFIG_TAG}` = '{summary.config_id}'"
    found = client.search_runs([session.experiment], filter_string=query, order_by=["attributes.start_time ASC"])
    if found:
        return found[0].info.run_id
    start = min(runs.ms(r.timings.start_utc) for r in results)
    return client.create_run(
        session.experiment, start_time=start, tags=tags, run_name=tags["mlflow.runName"]
    ).info.run_id


def _fill_model_run(
    session: _Session, run_id: str, layout: RunLayout, summary: Summary, model: str, results: Sequence[PairResult]
) -> bool:
    """Log the summary's numbers and files into the model run, unless it holds this summary already; True if so."""
    client, entities = session.client, session.entities
    run = client.get_run(run_id)
    digest = runs.summary_digest(summary)
    if run.data.tags.get(runs.SUMMARY_TAG) == digest and run.info.status == "FINISHED":
        return False
    tags = {**runs.model_tags(summary, model, results), **runs.comparison_tags(summary, model)}
    if runs.COMMIT_TAG in run.data.tags and runs.COMMIT_TAG not in tags:  # its pairs now ran more than one commit
        client.delete_tag(run_id, runs.COMMIT_TAG)
    # A param never changes (MLflow refuses another value): the config is the model run's identity.
    params = [
        entities.Param(k, str(v)) for k, v in runs.model_params(summary, model).items() if k not in run.data.params
    ]
    now = int(time.time() * 1000)  # step 0 at the export's time: the latest summary's numbers are the metrics shown
    metrics = [entities.Metric(key, float(value), now, 0) for key, value in runs.model_metrics(summary, model)]
    client.log_batch(run_id, params=params, metrics=metrics, tags=[entities.RunTag(k, v) for k, v in tags.items()])
    for path, folder in runs.model_artifacts(layout, summary, model):
        client.log_artifact(run_id, str(path), folder)
    client.set_tag(run_id, runs.SUMMARY_TAG, digest)  # last: a model run without it was not filled in full
    client.set_terminated(run_id, "FINISHED", end_time=max(runs.ms(r.timings.end_utc) for r in results))
    return True


def _name(layout: RunLayout, record: store.Record) -> str:
    return layout.relative(record.path).removesuffix(".json")  # cnn/fold-0, mlp/repeat-1/fold-2
