"""`collect --mlflow` with the real MLflow and its SQLite store: the runs are read back with MLflow's own client.

The results are real pair results (two mlp pairs of the committed run folder, tests/data/run-folder/, copied once
for the module); the export runs as a user runs it, `python -m job collect --mlflow`, twice, and a second time must
create nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support import cli, last_line

from job.protocol import Pair
from job.results import store
from job.results.layout import RunLayout

pytestmark = pytest.mark.slow  # MLflow's import and SQLite set-up take seconds a command

COMMITTED = Path(__file__).resolve().parent / "data" / "run-folder"
PAIRS = (Pair("mlp", 0), Pair("mlp", 1))


@pytest.fixture(autouse=True)
def no_tracking_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default store unless a test names one: a server set in the environment must not receive test runs."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def mlflow() -> Any:
    """MLflow, in the test extra; imported when a test runs, not when pytest collects (it takes seconds)."""
    import mlflow

    return mlflow


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> RunLayout:
    """A run folder holding only the results of PAIRS, as the committed run folder has them."""
    layout = RunLayout(tmp_path_factory.mktemp("results"), "default")
    for pair in PAIRS:
        path = layout.pair_paths(pair).result
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(RunLayout(COMMITTED, "default").pair_paths(pair).result, path)
    return layout


def collect_mlflow(layout: RunLayout, *more: str, env: dict[str, str] | None = None) -> Any:
    return cli("collect", "--allow-partial", "--mlflow", *more, "--results", str(layout.results_dir), env=env)


def runs_of(mlflow: Any, uri: str) -> list[Any]:
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("mnist-cv/default")
    return client.search_runs([experiment.experiment_id], run_view_type=mlflow.entities.ViewType.ALL)


def test_every_pair_becomes_one_finished_mlflow_run_in_the_run_folders_sqlite(run: RunLayout, mlflow: Any) -> None:
    done = collect_mlflow(run)
    assert done.returncode == 0, done.stderr
    uri = f"sqlite:///{run.mlflow_db.absolute()}"
    assert last_line(done.stdout).startswith("mlflow: 2 pair results logged, 0 already there")
    assert last_line(done.stdout).endswith(f"-> {uri}")
    runs = runs_of(mlflow, uri)
    assert sorted(r.info.run_name for r in runs) == ["mlp/fold-0", "mlp/fold-1"]
    client = mlflow.MlflowClient(tracking_uri=uri)
    for logged in runs:
        pair = Pair("mlp", int(logged.info.run_name[-1]))
        result = store.read_result(run.pair_paths(pair).result)
        assert logged.info.status == "FINISHED"
        params = logged.data.params
        assert params["model"] == "mlp" and params["fold"] == str(pair.fold) and params["repeat"] == "0"
        assert {k: params[k] for k in result["config"]} == {k: str(v) for k, v in result["config"].items()}
        tags = logged.data.tags
        assert tags["mnist_cv.config_id"] == result["config_id"]
        assert {k.removeprefix("mnist_cv.data.sha256."): v for k, v in tags.items() if ".sha256." in k} == result[
            "data"
        ]["sha256"]
        for key, values in result["history"].items():
            history = client.get_metric_history(logged.info.run_id, key)
            assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == list(
                enumerate(values, start=1)
            )
        assert logged.data.metrics["score_accuracy"] == result["score"]["accuracy"]
        assert logged.data.metrics["wall_seconds"] == result["resources"]["wall_seconds"]
        (artifact,) = client.list_artifacts(logged.info.run_id)
        local = Path(client.download_artifacts(logged.info.run_id, artifact.path))
        assert json.loads(local.read_text()) == result
    assert run.mlflow_artifacts.is_dir() and run.pair_results() == [run.pair_paths(p).result for p in PAIRS]


def test_exporting_again_creates_nothing_new(run: RunLayout, mlflow: Any) -> None:
    uri = f"sqlite:///{run.mlflow_db.absolute()}"
    before = collect_mlflow(run)
    assert before.returncode == 0, before.stderr
    ids = sorted(r.info.run_id for r in runs_of(mlflow, uri))
    again = collect_mlflow(run, "--json")
    assert again.returncode == 0, again.stderr
    json.loads(again.stdout)  # --json keeps stdout to the summary: the export's line goes to stderr
    assert "mlflow: 0 pair results logged, 2 already there" in again.stderr
    assert sorted(r.info.run_id for r in runs_of(mlflow, uri)) == ids


def test_an_export_killed_midway_is_redone_on_the_next(run: RunLayout, mlflow: Any, tmp_path: Path) -> None:
    """An MLflow run left RUNNING (its export was killed) is deleted, and the result logged again in full."""
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("mnist-cv/default", artifact_location=(tmp_path / "art").as_uri())
    digest = hashlib.sha256(run.pair_paths(PAIRS[0]).result.read_bytes()).hexdigest()
    torn = client.create_run(experiment, tags={"mnist_cv.result_sha256": digest}, run_name="mlp/fold-0")
    done = collect_mlflow(run, env={"MLFLOW_TRACKING_URI": uri})
    assert done.returncode == 0, done.stderr
    assert last_line(done.stdout).startswith("mlflow: 2 pair results logged, 0 already there")
    alive = client.search_runs([experiment])
    assert len(alive) == 2 and torn.info.run_id not in {r.info.run_id for r in alive}
    assert all(r.info.status == "FINISHED" for r in alive)


def test_without_mlflow_installed_it_is_one_line_naming_the_extra(run: RunLayout, tmp_path: Path) -> None:
    blocker = tmp_path / "mlflow"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('not installed')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    done = collect_mlflow(run, env=env)
    assert done.returncode == 1
    assert last_line(done.stderr) == (
        "mnist-cv collect: error: --mlflow needs MLflow, an optional extra: pip install 'mlflow>=3.7' (in the "
        "checkout: pip install -e '.[mlflow]')"
    )


def test_a_tracking_server_that_does_not_answer_is_one_line(run: RunLayout) -> None:
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}  # discard port
    done = collect_mlflow(run, env=env)
    assert done.returncode == 1
    line = last_line(done.stderr)
    assert line.startswith("mnist-cv collect: error: mlflow export to http://127.0.0.1:9 failed (")
    assert line.endswith("; 0 results logged before it") and "Traceback" not in done.stderr


# --- the store's faults and two exports at once, on copies of the committed run folder (no training) -----------


@pytest.fixture
def committed(tmp_path: Path) -> RunLayout:
    shutil.copytree(COMMITTED, tmp_path / "results")
    return RunLayout(tmp_path / "results", "default")


def _garbage_db(layout: RunLayout) -> dict[str, str]:
    layout.mlflow_db.write_bytes(b"not a database, " * 100)
    return {}


def _folder_as_db(layout: RunLayout) -> dict[str, str]:
    layout.mlflow_db.mkdir()
    return {}


def _unknown_scheme(layout: RunLayout) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": "garbage://nowhere"}


@pytest.mark.parametrize("damage", [_garbage_db, _folder_as_db, _unknown_scheme])
def test_a_broken_store_is_one_line_and_exit_1(committed: RunLayout, damage: Any) -> None:
    env = damage(committed)
    done = collect_mlflow(committed, "--json", env=env)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    assert last_line(done.stderr).startswith("mnist-cv collect: error: mlflow export to "), done.stderr[-2000:]
    json.loads(done.stdout)  # the summary was written and printed before the export


@pytest.mark.parametrize("existing", [False, True], ids=["first-exports", "existing-store"])
def test_two_exports_at_once_log_each_result_once(committed: RunLayout, mlflow: Any, existing: bool) -> None:
    if existing:
        assert collect_mlflow(committed).returncode == 0
        # Two results retrained since (new files): each must become exactly one new run.
        for fold in (0, 1):
            path = committed.pair_paths(Pair("mlp", fold)).result
            path.write_text(path.read_text().replace('"argv": [', '"argv": ["again", ', 1))
    both = [
        subprocess.Popen(
            [sys.executable, "-m", "job", "collect", "--allow-partial", "--mlflow", "--results",
             str(committed.results_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(2)
    ]  # fmt: skip
    for process in both:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]
    runs = runs_of(mlflow, f"sqlite:///{committed.mlflow_db}")
    valid = len(store.scan(committed).records)
    assert len(runs) == valid + (2 if existing else 0)
    assert {r.info.status for r in runs} == {"FINISHED"} and {r.info.lifecycle_stage for r in runs} == {"active"}
    digests = [r.data.tags["mnist_cv.result_sha256"] for r in runs]
    assert len(digests) == len(set(digests))
