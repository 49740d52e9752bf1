"""The read side (collect, status, pairs, the MLflow export) on copies of tests/data/run-folder/: a results folder of
real short runs, committed (tests/data/make_run_folder.py makes it and says what each file is). Nothing is trained,
no Slurm is asked, and the commands run where TensorFlow and Keras cannot be imported."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import ROOT, last_line, png_size

from job.analysis import report
from job.protocol import Pair, Protocol, all_pairs, task_for_pair
from job.results import checkpoint_state, store
from job.results.contract import Summary
from job.results.layout import RunLayout
from job.results.lease import read_holder
from job.results.status import PairState, PairStatus, status
from job.results.submissions import read_submissions
from job.slurm import TaskState

FIXTURE = ROOT / "tests" / "data" / "run-folder"
MINI = ROOT / "tests" / "data" / "mnist-mini"
RUN = "default"
CONFIG = Protocol().with_overrides(epochs=2, limit=1000)  # make_run_folder.py's
PROTOCOL = ("--epochs", "2", "--limit", "1000")
REPEATS = 2
# What the folder holds besides repeat 0 (tasks 0-9): repeat 1 in part.
DONE_IN_REPEAT_1 = [Pair("mlp", 0, 1), Pair("mlp", 1, 1)]
INTERRUPTED = Pair("mlp", 2, 1)  # task 12: a checkpoint, no result
LEASED = Pair("mlp", 3, 1)  # task 13: a lease of Slurm task 7001_3 on a host no machine has
FAILED_LOG = Path(RUN, "logs", "7002_2_0_log.err")  # task 16's, relative to the results folder as recorded
GONE_HOST = "gone.invalid"
# `python -m job` with TensorFlow and Keras unimportable: the read side must never need them.
NO_TENSORFLOW = (
    "import sys; sys.modules['tensorflow'] = sys.modules['keras'] = None; "
    "from job.cli import main; sys.exit(main(sys.argv[1:]))"
)


def copy(folder: Path) -> Path:
    return Path(shutil.copytree(FIXTURE, folder / "results"))


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A private copy of the committed folder."""
    return copy(tmp_path)


def command(*args: str) -> list[str]:
    """`python -m job ARGS`, but in an interpreter where importing TensorFlow or Keras fails."""
    return [sys.executable, "-c", NO_TENSORFLOW, *args]


def environment(**extra: str) -> dict[str, str]:
    """This checkout's code, without the settings of the caller's environment (an MLflow server's too)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MNIST_CV_") and k != "MLFLOW_TRACKING_URI"}
    return {**base, "PYTHONPATH": str(ROOT), "COLUMNS": "200", **extra}


def job_without_tensorflow(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(*args), env=environment(**(env or {})), capture_output=True, text=True, timeout=120)


@dataclass(frozen=True)
class Background:
    """A reader started before the module's first test on its own copy, so that it works while the other tests run:
    collect draws figures, and the MLflow export imports MLflow and sets up its SQLite store, for seconds each."""

    results: Path
    process: subprocess.Popen[bytes]
    out: Path
    err: Path

    @classmethod
    def start(cls, folder: Path, argv: Callable[[Path], list[str]]) -> Background:
        """Run `argv(COPY)` on a copy made in `folder`."""
        results, out, err = copy(folder), folder / "stdout", folder / "stderr"
        with out.open("wb") as stdout, err.open("wb") as stderr:  # files, not pipes: nothing waits for a reader
            process = subprocess.Popen(argv(results), env=environment(), stdout=stdout, stderr=stderr)
        return cls(results, process, out, err)

    def done(self) -> subprocess.CompletedProcess[str]:
        code = self.process.wait(timeout=120)
        return subprocess.CompletedProcess(self.process.args, code, self.out.read_text(), self.err.read_text())

    def stop(self) -> None:
        if self.process.poll() is None:  # its tests were not selected
            self.process.kill()
        self.process.wait()


@pytest.fixture(scope="module", autouse=True)
def collecting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Background]:
    """`collect --allow-partial --json` of a copy, in the background (its tests come last)."""
    started = Background.start(
        tmp_path_factory.mktemp("collect"),
        lambda results: command(
            "collect", "--results", str(results), "--allow-partial", "--json", "--data-dir", str(MINI)
        ),
    )
    yield started
    started.stop()


# The copy collected (its summary published), then exported twice into its own SQLite store, then its pair runs as
# MLflow's client reads them back.
MLFLOW_EXPORT = """
import json, sys
from pathlib import Path
import mlflow
from job.analysis.collect import Request, collect
from job.analysis.mlflow_export import RESULT_TAG, export
from job.results.layout import RunLayout

layout = RunLayout(sys.argv[1], "default")
published = collect(Request(Path(sys.argv[1]), "default", allow_partial=True, json=True))
exports = [export(layout, published), export(layout, published)]
client = mlflow.MlflowClient(tracking_uri=exports[0].tracking_uri)
experiment = client.get_experiment_by_name("mnist-cv/default")
runs = client.search_runs([experiment.experiment_id], run_view_type=mlflow.entities.ViewType.ALL)
print(json.dumps({
    "exports": [(e.logged, e.already, e.model_runs, e.tracking_uri) for e in exports],
    "runs": [
        (r.info.run_name, r.info.status, r.data.tags[RESULT_TAG], r.data.params["repeat"],
         r.data.metrics["score_accuracy"])
        for r in runs if RESULT_TAG in r.data.tags
    ],
}))
"""


@pytest.fixture(scope="module", autouse=True)
def exporting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Background]:
    """MLFLOW_EXPORT on a copy, in the background (its test comes last but one)."""
    started = Background.start(
        tmp_path_factory.mktemp("mlflow"), lambda results: [sys.executable, "-c", MLFLOW_EXPORT, str(results)]
    )
    yield started
    started.stop()


def read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


# --- the folder is what make_run_folder.py says -------------------------------------------------------------------


def test_the_committed_folder_holds_valid_results_and_each_kind_of_file() -> None:
    layout = RunLayout(FIXTURE, RUN)
    pairs = [*all_pairs(CONFIG.n_folds), *DONE_IN_REPEAT_1]
    assert layout.pair_results() == sorted(layout.pair_paths(p).result for p in pairs)
    for pair in pairs:
        paths = layout.pair_paths(pair)
        result = store.check_pair(paths.result, layout)
        assert (result.config_id, result.task_id) == (CONFIG.config_id, task_for_pair(pair))
        assert len(paths.csv.read_text().splitlines()) == 1 + CONFIG.epochs  # a header, then a row per epoch
    final = store.check_final(layout.final_paths("mlp").result, layout)  # its .keras file's SHA-256 too
    assert final.config_id == CONFIG.config_id and final.test.n_images == 1000

    assert layout.pair_checkpoints() == [layout.pair_paths(INTERRUPTED).checkpoint]
    assert checkpoint_state.epochs_done(layout.pair_paths(INTERRUPTED).checkpoint) == CONFIG.epochs
    holder = read_holder(layout.pair_paths(LEASED).lease)
    assert holder is not None and (holder.host, holder.slurm_task) == (GONE_HOST, "7001_3")
    for pair in (INTERRUPTED, LEASED):
        assert not layout.pair_paths(pair).result.exists()

    submitted = read_submissions(layout)
    assert {s.task_id: s.job_id for s in submitted} == {
        **{10 + i: f"7001_{i}" for i in range(4)},
        **{14 + i: f"7002_{i}" for i in range(5)},
    }
    assert {s.config_id for s in submitted} == {CONFIG.config_id}
    assert "no-such-mnist: no such file or folder" in (FIXTURE / FAILED_LOG).read_text()
    # Nothing the readers write: they run on copies.
    assert not [p for p in layout.folder.iterdir() if p.suffix in (".png", ".md", ".db") or p.name == "summary.json"]


# --- status, fed the scheduler's answers as data ------------------------------------------------------------------


def sacct(job_id: str, state: str, **fields: Any) -> TaskState:
    """A finished task as sacct reports it."""
    array_job, _, index = job_id.partition("_")
    return TaskState(array_job, int(index), state, "sacct", **fields)


def squeue(job_id: str, state: str, **fields: Any) -> TaskState:
    """A live task as squeue reports it."""
    array_job, _, index = job_id.partition("_")
    return TaskState(array_job, int(index), state, "squeue", **fields)


def statuses_of(results: Path, *states: TaskState) -> tuple[list[PairStatus], set[str]]:
    """status() of both repeats with `states` as the scheduler's answer; and the job ids it asked about."""
    asked: set[str] = set()

    def queue(job_ids: Any) -> dict[str, TaskState]:
        asked.update(job_ids)
        return {s.job_id: s for s in states}

    return status(RunLayout(results, RUN), CONFIG, repeats=REPEATS, queue=queue), asked


@pytest.fixture
def at_results(results: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The copy, as the working folder: the submissions name their logs relative to it."""
    monkeypatch.chdir(results)
    return results


def test_status_from_the_files_alone(at_results: Path) -> None:
    found, asked = statuses_of(at_results)
    assert asked == {*(f"7001_{i}" for i in range(4)), *(f"7002_{i}" for i in range(5))}
    assert [s.state for s in found] == [
        *[PairState.DONE] * 12,
        PairState.INTERRUPTED,
        PairState.RUNNING,  # a holder no one here can check is taken to be alive
        *[PairState.MISSING] * 6,
    ]
    layout = RunLayout(at_results, RUN)
    for done in found[:12]:
        assert done.accuracy == read(layout.pair_paths(done.pair).result)["score"]["accuracy"]
    assert [s.pair for s in found[10:14]] == [*DONE_IN_REPEAT_1, INTERRUPTED, LEASED]
    assert (found[12].epochs_done, found[12].detail) == (2, "checkpoint after epoch 2, nothing running")
    assert (found[13].job_id, found[13].node) == ("7001_3", GONE_HOST)
    assert found[13].detail.startswith(f"job 7001_3 on {GONE_HOST}, no epoch done yet, ")


def test_status_of_each_way_a_task_ends_or_waits(at_results: Path) -> None:
    found, _ = statuses_of(
        at_results,
        sacct("7001_0", "COMPLETED"),
        sacct("7001_1", "COMPLETED"),
        sacct("7001_2", "PREEMPTED"),
        sacct("7001_3", "NODE_FAIL", node="node3"),
        squeue("7002_0", "PENDING", reason="Priority"),
        squeue("7002_1", "RUNNING", node="node2", elapsed_s=65, time_limit_s=3600),
        sacct("7002_2", "FAILED", exit_code=1, node="node2", elapsed_s=9),
        sacct("7002_3", "CANCELLED"),
        # 7002_4 is not there: Slurm forgets a task cancelled before it started, not its array
    )
    rows = {s.task_id: s for s in found}
    assert [rows[t].state for t in range(10, 20)] == [
        PairState.DONE,
        PairState.DONE,
        PairState.PREEMPTED,
        PairState.FAILED,
        PairState.QUEUED,
        PairState.RUNNING,
        PairState.FAILED,
        PairState.CANCELLED,
        PairState.CANCELLED,
        PairState.MISSING,  # never submitted
    ]
    assert rows[12].detail == "job 7001_2 PREEMPTED; checkpoint after epoch 2; log default/logs/7001_2_0_log.err"
    assert rows[13].detail.endswith("; stale lease: its Slurm job 7001_3 has ended (NODE_FAIL)")
    assert (rows[14].job_id, rows[14].reason, rows[14].log) == (
        "7002_0",
        "Priority",
        Path(RUN, "logs/7002_0_0_log.err"),
    )
    assert rows[15].detail == "job 7002_1 on node2, no epoch done yet, 0:01:05 elapsed"
    failed = rows[16]
    assert (failed.slurm_state, failed.exit_code, failed.log) == ("FAILED", 1, FAILED_LOG)
    assert failed.last_error == last_line((at_results / FAILED_LOG).read_text())
    assert failed.last_error.startswith("mnist-cv run: error: no-such-mnist: no such file or folder")
    assert rows[17].detail.startswith("job 7002_3 CANCELLED; log ")
    assert rows[18].detail == "job 7002_4 cancelled before it started"
    assert rows[19].detail == ""


def test_status_of_a_requeued_pair_and_of_a_lease_whose_task_runs(at_results: Path) -> None:
    found, _ = statuses_of(
        at_results,
        squeue("7001_2", "PENDING", reason="BeginTime", restarts=1),
        squeue("7001_3", "RUNNING", node="node3", elapsed_s=30, time_limit_s=600),
    )
    requeued, leased = found[12], found[13]
    assert requeued.state == PairState.REQUEUED
    assert requeued.detail == "job 7001_2 (BeginTime), requeued 1x, resumes after epoch 2"
    assert (leased.state, leased.node, leased.elapsed_s) == (PairState.RUNNING, "node3", 30)
    assert leased.detail == "job 7001_3 on node3, no epoch done yet, 0:00:30 elapsed"


def test_a_running_task_with_a_checkpoint_is_projected_against_its_limit(at_results: Path) -> None:
    # Task 12's checkpoint holds both epochs, so it should end at its 40 s elapsed: past the requeue warning, which
    # comes 180 s before a 200 s limit.
    found, _ = statuses_of(at_results, squeue("7001_2", "RUNNING", node="n1", elapsed_s=40, time_limit_s=200))
    running = found[12]
    assert (running.state, running.epochs_done, running.projected_s) == (PairState.RUNNING, 2, 40)
    assert running.detail == (
        "job 7001_2 on n1, 2 epochs done, 0:00:40 elapsed; "
        "ends at about 0:00:40, past its 0:03:20 limit's requeue warning: expect a requeue and resume"
    )


def test_status_of_damaged_files(at_results: Path) -> None:
    layout = RunLayout(at_results, RUN)
    result = layout.pair_paths(Pair("cnn", 4)).result
    result.write_bytes(result.read_bytes()[:100])
    lease = layout.pair_paths(LEASED).lease
    lease.write_bytes(lease.read_bytes()[:100])  # a lease cut short: never one `Lease` writes
    found, _ = statuses_of(at_results)
    assert (found[9].state, found[13].state) == (PairState.CORRUPT, PairState.BAD_LEASE)
    assert "corrupt or truncated JSON" in found[9].detail and "not a readable lease" in found[13].detail
    assert found[13].state.blocked and not found[9].state.blocked

    other = status(layout, CONFIG.with_overrides(epochs=3), repeats=REPEATS, queue=lambda ids: {})
    expected = [PairState.OTHER_CONFIG] * 12
    expected[9] = PairState.CORRUPT
    assert [s.state for s in other[:12]] == expected
    assert other[0].detail == f"config {CONFIG.config_id}"


def test_status_and_pairs_commands_without_slurm_or_tensorflow(results: Path, tmp_path: Path) -> None:
    bin_folder = tmp_path / "bin"  # a PATH where squeue cannot be found
    bin_folder.mkdir()
    (bin_folder / "python").symlink_to(sys.executable)
    without = {"PATH": str(bin_folder)}
    where = ("--results", str(results), *PROTOCOL)

    table = job_without_tensorflow("status", *where, "--repeats", str(REPEATS), env=without)
    assert (table.returncode, table.stderr) == (0, "")
    lines = table.stdout.splitlines()
    assert lines[0] == f"{results}/{RUN}  (config {CONFIG.config_id}: --epochs 2 --limit 1000)"
    assert lines[-1] == "12 done, 1 interrupted, 1 running, 6 missing"
    row = next(line for line in lines if "7001_3" in line)
    assert [cell.strip() for cell in row.strip("│ ").split("│")][:5] == ["13", "1", "mlp", "3", "running"]

    missing = job_without_tensorflow("pairs", "--missing", *where, "--repeats", str(REPEATS), env=without)
    assert (missing.returncode, missing.stdout, missing.stderr) == (0, "12,14-19\n", "")
    # Repeat 0 alone (--repeats 1, a view: the run has 2) is done: nothing to submit, said by the exit code.
    none = job_without_tensorflow("pairs", "--missing", *where, "--repeats", "1", env=without)
    assert (none.returncode, none.stdout, none.stderr) == (1, "", "")

    listed = job_without_tensorflow("pairs", "--json", *where, "--repeats", str(REPEATS), env=without)
    rows = json.loads(listed.stdout)
    assert rows[0] == {"task_id": 0, "model": "mlp", "fold": 0, "repeat": 0, "state": "done"}
    assert [(r["task_id"], r["state"]) for r in rows[12:14]] == [(12, "interrupted"), (13, "running")]

    # status --check: what a script waits on. Repeat 0 is done (0); with repeat 1 a pair still runs (75); once the
    # running one is gone, pairs are missing and nothing is coming (1).
    check = ("status", "--check", *where)
    assert job_without_tensorflow(*check, "--repeats", "1", env=without).returncode == 0
    assert job_without_tensorflow(*check, "--repeats", str(REPEATS), env=without).returncode == 75
    RunLayout(results, RUN).pair_paths(LEASED).lease.unlink()
    assert job_without_tensorflow(*check, "--repeats", str(REPEATS), "--json", env=without).returncode == 1


# --- the MLflow export --------------------------------------------------------------------------------------------


def test_mlflow_export_logs_each_valid_result_once(exporting: Background) -> None:
    done = exporting.done()
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(last_line(done.stdout))
    layout = RunLayout(exporting.results, RUN)
    valid = store.scan(layout).records
    uri = f"sqlite:///{layout.mlflow_db.absolute()}"
    # The second finds them all there, and the model runs (mlp, cnn) holding the summary already.
    assert found["exports"] == [[12, 0, 2, uri], [0, 12, 0, uri]] and len(valid) == 12
    assert sorted(found["runs"]) == sorted(
        [
            layout.relative(r.path).removesuffix(".json"),  # mlp/repeat-1/fold-0, cnn/fold-4...
            "FINISHED",
            hashlib.sha256(r.path.read_bytes()).hexdigest(),
            str(r.result.repeat),
            r.result.score.accuracy,
        ]
        for r in valid
    )


# --- collect ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def collected(collecting: Background) -> tuple[Path, subprocess.CompletedProcess[str]]:
    return collecting.results, collecting.done()


def test_collect_summarises_the_files_numbers_and_prints_only_json(
    collected: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    results, done = collected
    assert (done.returncode, done.stderr) == (0, "")
    layout = RunLayout(results, RUN)
    found = read(layout.summary_json)
    assert json.loads(done.stdout) == found
    first = read(layout.pair_paths(Pair("mlp", 0)).result)
    assert found["config_id"] == first["config_id"] == CONFIG.config_id
    assert found["data"]["sha256"] == first["data"]["sha256"] and "ddof=0" in found["std_definition"]
    assert (found["complete"], found["repeats"], found["n_expected"], found["n_found"]) == (False, 2, 20, 12)
    assert [(m["task_id"], m["reason"]) for m in found["missing"]] == [
        (12, "in progress"),
        *[(task_id, "no result") for task_id in range(13, 20)],
    ]
    assert found["skipped"] == []
    assert found["run"] == str(layout.folder.absolute())  # the same wherever collect ran
    headline = report.title(Summary.from_json(found))
    assert headline.startswith(f"{RUN}: 2 x 5-fold cross-validation, 2 epochs, the first 1,000 images, config ")
    for model in ("mlp", "cnn"):
        # The numbers are of the complete repeat 0; repeat 1's results are listed, never averaged in.
        files = [read(layout.pair_paths(Pair(model, fold)).result) for fold in range(5)]
        scores = [f["score"]["accuracy"] for f in files]
        stats = found["models"][model]
        in_repeat_1 = [read(layout.pair_paths(p).result) for p in DONE_IN_REPEAT_1 if p.model == model]
        missing_in_repeat_1 = sorted(set(range(5)) - {f["fold"] for f in in_repeat_1})
        assert (stats["n"], stats["repeats_used"], stats["missing_folds"]) == (5, [0], missing_in_repeat_1)
        assert stats["mean"] == pytest.approx(statistics.mean(scores), abs=1e-12)
        assert stats["std"] == pytest.approx(statistics.pstdev(scores), abs=1e-12)
        assert (stats["min"], stats["max"]) == (min(scores), max(scores))
        assert stats["mean_fit_seconds"] == pytest.approx(statistics.mean(f["timings"]["fit_seconds"] for f in files))
        assert [(f["repeat"], f["fold"], f["accuracy"]) for f in stats["folds"]] == [
            (f["repeat"], f["fold"], f["score"]["accuracy"]) for f in files + in_repeat_1
        ]
        assert [(r["repeat"], r["n"], r["complete"]) for r in stats["repeats"]] == [
            (0, 5, True),
            (1, len(in_repeat_1), False),
        ]
    final = read(layout.final_paths("mlp").result)
    shown = found["models"]["mlp"]["final"]
    assert (shown["accuracy"], shown["n_test"], shown["same_config"]) == (final["score"]["accuracy"], 1000, True)
    assert found["models"]["cnn"]["final"] is None


def test_collect_draws_every_figure_as_a_png_and_writes_summary_md(
    collected: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    results, done = collected
    assert done.returncode == 0, done.stderr
    folder = RunLayout(results, RUN).folder
    figures = read(folder / "summary.json")["figures"]
    sizes = {name: png_size(folder / name) for name in figures}
    assert sizes["learning-curves-mlp.png"] == sizes["learning-curves-cnn.png"] == (1000, 400)
    assert (sizes["boxplot.png"], sizes["confusion-mlp.png"], sizes["misclassified-mlp.png"]) == (
        (600, 450),
        (700, 600),
        (900, 1000),
    )
    assert sorted(p.name for p in folder.glob("*.png")) == sorted(figures)
    markdown = (folder / "summary.md").read_text()
    assert "| model | n | mean ± std % |" in markdown and "![boxplot.png](boxplot.png)" in markdown


def test_a_stray_repeat_folder_is_skipped_and_never_makes_the_run_expect_more(results: Path) -> None:
    stray = results / RUN / "mlp" / "repeat-999999999" / "fold-0.json"
    stray.parent.mkdir()
    stray.write_text("{}")
    done = job_without_tensorflow("collect", "--results", str(results), "--allow-partial", "--json")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert (found["repeats"], found["n_expected"]) == (REPEATS, 10 * REPEATS)
    assert "mlp/repeat-999999999/fold-0.json" in {s["file"] for s in found["skipped"]}


def test_a_lease_whose_time_stamp_has_no_time_zone_is_a_bad_lease_not_a_crash(results: Path, tmp_path: Path) -> None:
    bin_folder = tmp_path / "bin"  # a PATH where squeue cannot be found: the files alone decide
    bin_folder.mkdir()
    (bin_folder / "python").symlink_to(sys.executable)
    lease = RunLayout(results, RUN).pair_paths(LEASED).lease
    holder = json.loads(lease.read_text())
    holder["start_utc"] = "2026-01-01T10:00:00"  # no zone: it once crashed status and pairs --missing
    lease.write_text(json.dumps(holder))
    where = ("--results", str(results), *PROTOCOL, "--repeats", str(REPEATS))
    done = job_without_tensorflow("status", "--json", *where, env={"PATH": str(bin_folder)})
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout)[13]
    assert row["state"] == "bad lease" and "has no time zone" in row["detail"]
