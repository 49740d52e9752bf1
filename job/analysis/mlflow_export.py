"""`collect --mlflow`: every valid pair result of a run logged into MLflow after the fact, from the result files alone.

One MLflow run per result, in the experiment `mnist-cv/RUN`: params are the config and the pair; metrics the history
and the epoch seconds per epoch (step = epoch, from 1), the score and the resources; the result JSON is an artifact;
tags hold the config id, the data's checksums, the held-out indices' checksum and the result file's own SHA-256.

Idempotent: a result whose SHA-256 is already the tag of a finished MLflow run is not logged again; an MLflow run
left unfinished by an export that was killed is deleted and logged anew. A retrained pair (another result file) is
a new MLflow run beside the old one.

The store: `MLFLOW_TRACKING_URI` when set (a tracking server: many writers welcome), else an SQLite file in the run
folder (RUN/mlflow.db, artifacts in RUN/mlartifacts/), written by this one process, never by the array's tasks.
MLflow is an optional extra, imported only here and only when asked for.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from job.errors import JobError
from job.files import sha256_file
from job.results import store
from job.results.contract import PairResult
from job.results.layout import RunLayout
from job.times import parse_utc

EXTRA_HINT = "pip install 'mlflow>=3.7' (in the checkout: pip install -e '.[mlflow]')"
TAG = "mnist_cv"  # the prefix of our tags
RESULT_TAG = f"{TAG}.result_sha256"
BATCH = 1000  # MLflow's limit of metrics per log_batch


@dataclass(frozen=True)
class Exported:
    logged: int
    already: int
    tracking_uri: str
    seconds: float

    def line(self) -> str:
        return (
            f"mlflow: {self.logged} pair result{'s' * (self.logged != 1)} logged, {self.already} already there "
            f"({self.seconds:.1f}s) -> {self.tracking_uri}"
        )


def export(layout: RunLayout) -> Exported:
    """Log every valid pair result of the run that MLflow does not hold yet."""
    started = time.monotonic()
    server = os.environ.get("MLFLOW_TRACKING_URI")  # MLflow's own variable
    uri = server or f"sqlite:///{layout.mlflow_db.absolute()}"
    mlflow = _import_mlflow()
    logged = already = 0
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
    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
        # In the run folder's own store the artifacts go beside it; a server keeps them where it is set up to.
        experiment = _experiment(client, layout, None if server else layout.mlflow_artifacts.absolute().as_uri())
        for record in store.scan(layout).records:
            digest = sha256_file(record.path, store.MAX_RESULT_BYTES, "a result holds")
            if _finished_run_of(client, experiment, digest):
                already += 1
                continue
            _log(client, mlflow.entities, experiment, layout, record.path, record.result, digest)
            logged += 1
    except failures as error:
        done = f"{logged} result{'s' * (logged != 1)} logged before it"
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        raise JobError(f"mlflow export to {uri} failed ({reason}); {done}") from None
    finally:
        os.close(lock)  # releases the lock
    return Exported(logged, already, uri, time.monotonic() - started)


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


def _experiment(client: Any, layout: RunLayout, artifact_location: str | None) -> str:
    name = f"mnist-cv/{layout.run}"
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


def _finished_run_of(client: Any, experiment: str, digest: str) -> bool:
    """True when a finished MLflow run holds this result; unfinished ones (a killed export) are deleted."""
    finished = False
    for run in client.search_runs([experiment], filter_string=f"tags.`{RESULT_TAG}` = '{digest}'"):
        if run.info.status == "FINISHED":
            finished = True
        else:
            client.delete_run(run.info.run_id)
    return finished


def _log(
    client: Any, entities: Any, experiment: str, layout: RunLayout, path: Path, result: PairResult, digest: str
) -> None:
    timings = result.timings
    run = client.create_run(
        experiment, start_time=_ms(timings.start_utc), tags=tags(result, digest), run_name=_name(layout, path)
    )
    run_id, end = run.info.run_id, _ms(timings.end_utc)
    params = [entities.Param(key, str(value)) for key, value in params_of(result).items()]
    metrics = [entities.Metric(key, value, end, step) for key, value, step in metrics_of(result)]
    client.log_batch(run_id, params=params)
    for start in range(0, len(metrics), BATCH):
        client.log_batch(run_id, metrics=metrics[start : start + BATCH])
    client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, "FINISHED", end_time=end)


def params_of(result: PairResult) -> dict[str, Any]:
    return {"model": result.model, "fold": result.fold, "repeat": result.repeat, **vars(result.config)}


def tags(result: PairResult, digest: str) -> dict[str, str]:
    data = result.data
    return {
        RESULT_TAG: digest,
        f"{TAG}.config_id": result.config_id,
        f"{TAG}.data.name": data.name,
        **{f"{TAG}.data.sha256.{name}": sha for name, sha in data.sha256.items()},
        f"{TAG}.val_indices_sha256": data.val_indices_sha256,
    }


def metrics_of(result: PairResult) -> Iterator[tuple[str, float, int]]:
    """(key, value, step): the per-epoch curves at step = epoch (from 1), then the one-off figures at step 0."""
    curves = {**vars(result.history), "epoch_seconds": result.timings.epoch_seconds}
    for key, values in curves.items():
        for epoch, value in enumerate(values, start=1):
            yield key, float(value), epoch
    yield "score_accuracy", result.score.accuracy, 0
    yield "score_loss", result.score.loss, 0
    yield "fit_seconds", result.timings.fit_seconds, 0
    if result.resources is not None:
        for key in ("wall_seconds", "startup_seconds", "cpu_seconds", "peak_rss_bytes"):
            yield key, float(getattr(result.resources, key)), 0


def _name(layout: RunLayout, path: Path) -> str:
    return layout.relative(path).removesuffix(".json")  # cnn/fold-0


def _ms(utc: str) -> int:
    return int(parse_utc(utc).timestamp() * 1000)  # the result passed the check: a stamp with its zone
