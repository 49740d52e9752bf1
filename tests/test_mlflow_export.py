"""`collect --mlflow` with the real MLflow: its SQLite store in the run folder, and a real `mlflow server` on
127.0.0.1; the runs are read back with MLflow's own client (over REST for the server).

The results are real pair results: repeat 0 of the committed run folder, tests/data/run-folder/ (both models' five
folds and the final mlp), copied once for the module; nothing is trained. The export runs as a user runs it,
`python -m job collect --mlflow`, and a second time must create nothing.
"""

from __future__ import annotations

import dataclasses
import getpass
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import cli, last_line

from job.analysis import mlflow_runs
from job.protocol import Pair
from job.results import store
from job.results.layout import RunLayout

pytestmark = pytest.mark.slow  # MLflow's import and SQLite set-up take seconds a command

COMMITTED = Path(__file__).resolve().parent / "data" / "run-folder"
MINI = Path(__file__).resolve().parent / "data" / "mnist-mini"
VALID = 10  # the pair results of repeat 0
SERVER_START_SECONDS = 240  # a loaded machine took 40 s


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
    """Repeat 0 of the committed run folder: ten pair results and the final mlp (no partial repeat, no lease)."""
    results = tmp_path_factory.mktemp("results")
    shutil.copytree(COMMITTED, results, dirs_exist_ok=True, ignore=shutil.ignore_patterns("repeat-1", "logs"))
    return RunLayout(results, "default")


def collect_mlflow(layout: RunLayout, *more: str, env: dict[str, str] | None = None) -> Any:
    return cli(
        "collect", "--allow-partial", "--mlflow", *more, "--results", str(layout.results_dir), "--data-dir",
        str(MINI), env=env,
    )  # fmt: skip


def runs_of(mlflow: Any, uri: str) -> list[Any]:
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("mnist-cv/default")
    return client.search_runs([experiment.experiment_id], run_view_type=mlflow.entities.ViewType.ALL)


def pair_runs(runs: list[Any]) -> list[Any]:
    return [r for r in runs if mlflow_runs.RESULT_TAG in r.data.tags]


def sqlite_uri(layout: RunLayout) -> str:
    return f"sqlite:///{layout.mlflow_db.absolute()}"


def check_export(mlflow: Any, uri: str, layout: RunLayout) -> dict[str, str]:
    """The run `layout` as MLflow holds it at `uri`, against its summary.json and result files: a model run per
    model holding the summary's numbers, config, tags and files; each result a pair run nested under its model's,
    with MLflow's source tags and its epochs stamped with their own times. The run ids by run name."""
    summary = json.loads(layout.summary_json.read_text())
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = runs_of(mlflow, uri)
    by_name = {r.info.run_name: r for r in runs}
    records = store.scan(layout).records
    pairs = [layout.relative(r.path).removesuffix(".json") for r in records]
    assert sorted(by_name) == sorted(["mlp/cv", "cnn/cv", *pairs]) and len(runs) == len(by_name) == 2 + VALID
    assert {(r.info.status, r.info.lifecycle_stage) for r in runs} == {("FINISHED", "active")}
    (commit,) = {json.loads(r.path.read_text())["environment"]["git"]["commit"] for r in records}
    for model, stats in summary["models"].items():
        parent = by_name[f"{model}/cv"]
        metrics, tags = parent.data.metrics, parent.data.tags
        assert {k: metrics[f"accuracy_{k}"] for k in ("mean", "std", "min", "max")} == {
            k: stats[k] for k in ("mean", "std", "min", "max")
        }
        (interval,) = stats["ci95"]  # one complete repeat: over its folds
        assert interval["over"] == "folds" and interval["low"] < stats["mean"] < interval["high"]
        assert (metrics["accuracy_ci95_folds_low"], metrics["accuracy_ci95_folds_high"]) == (
            interval["low"],
            interval["high"],
        )
        comparison = summary["comparison"]  # cnn - mlp, on both model runs
        assert (metrics["ttest_t"], metrics["ttest_p_value"], metrics["ttest_df"]) == (
            comparison["t"],
            comparison["p_value"],
            comparison["df"],
        )
        assert tags["mnist_cv.ttest"].startswith("cnn - mlp: Nadeau-Bengio corrected resampled t-test")
        final = stats["final"]
        assert metrics.get("final_test_accuracy") == (final["accuracy"] if final else None)
        assert parent.data.params == {"model": model, **{k: str(v) for k, v in summary["config"].items()}}
        assert (tags["mlflow.source.name"], tags["mlflow.source.type"]) == ("mnist-cv collect", "LOCAL")
        assert (tags["mlflow.runName"], tags["mlflow.user"]) == (f"{model}/cv", getpass.getuser())
        assert tags["mlflow.source.git.commit"] == tags["mnist_cv.git_commits"] == commit
        assert mlflow_runs.PARENT_TAG not in tags and tags["mnist_cv.config_id"] == summary["config_id"]
        files = {a.path for a in client.list_artifacts(parent.info.run_id)}
        figures = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
        assert files == {"summary.json", "summary.md", "figures"}
        other = "cnn" if model == "mlp" else "mlp"
        mine = {f"figures/{name}" for name in summary["figures"] if not Path(name).stem.endswith(f"-{other}")}
        assert figures == mine and f"figures/learning-curves-{model}.png" in figures
        local = Path(client.download_artifacts(parent.info.run_id, "summary.json"))
        assert json.loads(local.read_text()) == summary
    for record in records:
        result = json.loads(record.path.read_text())
        logged = by_name[layout.relative(record.path).removesuffix(".json")]
        tags, params = logged.data.tags, logged.data.params
        assert tags[mlflow_runs.PARENT_TAG] == by_name[f"{result['model']}/cv"].info.run_id
        assert tags["mlflow.source.git.commit"] == result["environment"]["git"]["commit"]
        assert (tags["mlflow.source.name"], tags["mlflow.source.type"]) == ("mnist-cv run", "LOCAL")
        assert (tags["mlflow.runName"], tags["mlflow.user"]) == (logged.info.run_name, getpass.getuser())
        assert tags[mlflow_runs.RESULT_TAG] == hashlib.sha256(record.path.read_bytes()).hexdigest()
        assert tags["mnist_cv.config_id"] == result["config_id"]
        assert {k.removeprefix("mnist_cv.data.sha256."): v for k, v in tags.items() if ".sha256." in k} == result[
            "data"
        ]["sha256"]
        assert (params["model"], params["fold"], params["repeat"]) == (result["model"], str(result["fold"]), "0")
        assert {k: params[k] for k in result["config"]} == {k: str(v) for k, v in result["config"].items()}
        timings = result["timings"]
        start = mlflow_runs.ms(timings["start_utc"])
        assert logged.info.start_time == start
        for key, values in result["history"].items():
            history = sorted(client.get_metric_history(logged.info.run_id, key), key=lambda m: m.step)
            assert [(m.step, m.value) for m in history] == list(enumerate(values, start=1))
            stamps = [m.timestamp for m in history]
            assert stamps[0] == start + round(1000 * timings["epoch_seconds"][0])
            assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)  # each epoch at its own end
        assert logged.data.metrics["score_accuracy"] == result["score"]["accuracy"]
        assert logged.data.metrics["wall_seconds"] == result["resources"]["wall_seconds"]
        (artifact,) = client.list_artifacts(logged.info.run_id)
        local = Path(client.download_artifacts(logged.info.run_id, artifact.path))
        assert json.loads(local.read_text()) == result
    return {name: r.info.run_id for name, r in by_name.items()}


def test_the_run_becomes_model_runs_with_their_pairs_nested_in_the_run_folders_sqlite(
    run: RunLayout, mlflow: Any
) -> None:
    done = collect_mlflow(run)
    assert done.returncode == 0, done.stderr
    assert last_line(done.stdout).startswith(f"mlflow: {VALID} pair results logged, 0 already there, 2 model runs")
    assert last_line(done.stdout).endswith(f"-> {sqlite_uri(run)}")
    check_export(mlflow, sqlite_uri(run), run)
    assert run.mlflow_artifacts.is_dir()
    assert sorted(run.pair_results()) == sorted(
        run.pair_paths(Pair(m, f)).result for m in ("mlp", "cnn") for f in range(5)
    )


def test_exporting_again_creates_nothing_new(run: RunLayout, mlflow: Any) -> None:
    uri = sqlite_uri(run)
    before = collect_mlflow(run)
    assert before.returncode == 0, before.stderr
    ids = sorted(r.info.run_id for r in runs_of(mlflow, uri))
    again = collect_mlflow(run, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == json.loads(run.summary_json.read_text())  # the export's line: stderr
    assert f"mlflow: 0 pair results logged, {VALID} already there, 0 model runs updated" in again.stderr
    assert sorted(r.info.run_id for r in runs_of(mlflow, uri)) == ids


def test_a_moved_run_folder_keeps_its_artifacts_and_writes_none_at_the_old_place(
    run: RunLayout, mlflow: Any, tmp_path: Path
) -> None:
    """MLflow records artifact locations absolute: the export repoints the run folder's own store to where it is."""
    assert collect_mlflow(run).returncode == 0  # exported (a no-op after the tests above)
    before = artifacts_at(run)
    moved = RunLayout(Path(shutil.copytree(run.results_dir, tmp_path / "moved")), "default")
    done = collect_mlflow(moved)
    assert done.returncode == 0, done.stderr
    # The summary names its folder: the model runs take the new summary; the pair runs are all there.
    assert f"mlflow: 0 pair results logged, {VALID} already there, 2 model runs updated" in done.stdout
    client = mlflow.MlflowClient(tracking_uri=sqlite_uri(moved))
    here = moved.mlflow_artifacts.absolute().as_uri()
    assert client.get_experiment_by_name("mnist-cv/default").artifact_location == here
    runs = runs_of(mlflow, sqlite_uri(moved))
    assert all(r.info.artifact_uri.startswith(f"{here}/") for r in runs)
    check_export(mlflow, sqlite_uri(moved), moved)  # every artifact read from the new place
    assert artifacts_at(run) == before


def artifacts_at(layout: RunLayout) -> dict[str, tuple[int, int]]:
    """The files under the run folder's mlartifacts/, with their size and time of change."""
    files = (p for p in layout.mlflow_artifacts.rglob("*") if p.is_file())
    return {str(p.relative_to(layout.folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in files}


def test_an_epoch_under_a_millisecond_is_still_stamped_after_the_one_before(run: RunLayout) -> None:
    result = store.check_pair(run.pair_paths(Pair("mlp", 0)).result, run)
    fast = dataclasses.replace(result, timings=dataclasses.replace(result.timings, epoch_seconds=(0.0001, 0.0002)))
    stamps = [stamp for key, _, stamp, _ in mlflow_runs.pair_metrics(fast) if key == "loss"]
    start = mlflow_runs.ms(result.timings.start_utc)
    assert stamps == [start, start + 1]


def test_an_export_killed_midway_is_redone_on_the_next(run: RunLayout, mlflow: Any, tmp_path: Path) -> None:
    """An MLflow run left RUNNING (its export was killed) is deleted, and the result logged again in full."""
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("mnist-cv/default", artifact_location=(tmp_path / "art").as_uri())
    digest = hashlib.sha256(run.pair_paths(Pair("mlp", 0)).result.read_bytes()).hexdigest()
    torn = client.create_run(experiment, tags={"mnist_cv.result_sha256": digest}, run_name="mlp/fold-0")
    done = collect_mlflow(run, env={"MLFLOW_TRACKING_URI": uri})
    assert done.returncode == 0, done.stderr
    assert last_line(done.stdout).startswith(f"mlflow: {VALID} pair results logged, 0 already there")
    alive = client.search_runs([experiment])
    assert len(alive) == VALID + 2 and torn.info.run_id not in {r.info.run_id for r in alive}
    assert all(r.info.status == "FINISHED" for r in alive)


# --- a real tracking server -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 at a free port, its own SQLite store and artifacts in a temp folder; its URL.
    Stopped at the end of the module; the tests that need it skip, saying why, if it cannot start."""
    folder = tmp_path_factory.mktemp("server")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{folder / 'server.db'}", "--artifacts-destination", str(folder / "art"),
    ]  # fmt: skip
    log = folder / "server.log"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    # Without its job runner (GenAI scorers' huey consumers, a dozen processes): tracking is all the export uses.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    with log.open("wb") as out:  # its own session: stopping it stops its uvicorn worker too
        server = subprocess.Popen(argv, cwd=folder, env=env, stdout=out, stderr=out, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        reason = _wait_for(server, url, log)
        if reason:
            pytest.skip(f"mlflow server could not start on {url}: {reason}")
        yield url
    finally:
        _stop(server)


def _wait_for(server: subprocess.Popen[bytes], url: str, log: Path) -> str | None:
    """None once the server answers /health; else why it will not (it exited, or it never answered)."""
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            return f"it exited with {server.returncode}: {log.read_text()[-500:]}"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
                if answer.status == 200:
                    return None
        except OSError:
            time.sleep(1)
    return f"no answer on /health in {SERVER_START_SECONDS} s: {log.read_text()[-500:]}"


def _stop(server: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if server.poll() is None:
            os.killpg(server.pid, sig)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                continue


def test_a_tracking_server_gets_the_model_runs_and_nested_pairs_and_stdout_stays_the_json(
    run: RunLayout, mlflow: Any, server: str
) -> None:
    done = collect_mlflow(run, "--json", env={"MLFLOW_TRACKING_URI": server})
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout) == json.loads(run.summary_json.read_text())  # nothing else on stdout
    # MLflow writes a "View run" link per finished run for a server: on stderr, with the export's own line.
    assert f"🏃 View run mlp/cv at: {server}/#/experiments/" in done.stderr
    assert f"mlflow: {VALID} pair results logged, 0 already there, 2 model runs updated" in done.stderr
    ids = check_export(mlflow, server, run)
    again = collect_mlflow(run, "--json", env={"MLFLOW_TRACKING_URI": server})
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout) == json.loads(run.summary_json.read_text())
    assert f"mlflow: 0 pair results logged, {VALID} already there, 0 model runs updated" in again.stderr
    assert check_export(mlflow, server, run) == ids


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
    runs = pair_runs(runs_of(mlflow, f"sqlite:///{committed.mlflow_db}"))
    valid = len(store.scan(committed).records)
    assert len(runs) == valid + (2 if existing else 0)
    assert {r.info.status for r in runs} == {"FINISHED"} and {r.info.lifecycle_stage for r in runs} == {"active"}
    digests = [r.data.tags["mnist_cv.result_sha256"] for r in runs]
    assert len(digests) == len(set(digests))
