"""The run folder's own MLflow store, used when no MLFLOW_TRACKING_URI names another: RUN/mlflow.db, its artifacts
in RUN/mlartifacts/, and what keeps the two together when the run folder moves.

MLflow records every artifact location absolute: an experiment's (a relative one is resolved against the current
folder when the experiment is made) and every run's, copied from its experiment's when the run is made. It has no
call that changes either. A run folder moved or copied elsewhere would hold an mlflow.db whose artifacts are at the
old place, and the next export would write there, outside the run folder. So the export repoints them first: in
this store, which only the export writes, the experiment's location and its runs' artifact URIs under the old
RUN/mlartifacts/ become the new one's, in one transaction, under the export lock.

A tracking server needs none of this: serving artifacts (its default), it gives runs `mlflow-artifacts:/...` URIs,
which it resolves against its own --artifacts-destination at every request.
"""

from __future__ import annotations

from job.results.layout import MLFLOW_ARTIFACTS, RunLayout


def uri(layout: RunLayout) -> str:
    return f"sqlite:///{layout.mlflow_db.absolute()}"


def artifact_location(layout: RunLayout) -> str:
    return layout.mlflow_artifacts.absolute().as_uri()


def made_here(location: str) -> bool:
    """An artifact location this store's export made: some run folder's mlartifacts/ (a moved one's, say)."""
    return location.startswith("file://") and location.rstrip("/").endswith(f"/{MLFLOW_ARTIFACTS}")


def repoint(store_uri: str, experiment_id: str, old: str, new: str) -> None:
    """The experiment's artifact location `old` becomes `new`, and so do its runs' artifact URIs under `old`."""
    import sqlalchemy  # deferred: sqlalchemy (MLflow's store, installed with it)

    old, new = old.rstrip("/"), new.rstrip("/")
    engine = sqlalchemy.create_engine(store_uri)
    try:
        with engine.begin() as db:  # one transaction: all of it or none
            db.execute(
                sqlalchemy.text(
                    "UPDATE runs SET artifact_uri = :new || substr(artifact_uri, :tail)"
                    " WHERE experiment_id = :id AND substr(artifact_uri, 1, :tail) = :old || '/'"
                ),
                {"new": new, "old": old, "tail": len(old) + 1, "id": int(experiment_id)},
            )
            db.execute(
                sqlalchemy.text("UPDATE experiments SET artifact_location = :new WHERE experiment_id = :id"),
                {"new": new, "id": int(experiment_id)},
            )
    finally:
        engine.dispose()
