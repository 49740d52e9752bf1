"""`status` and `pairs --missing` on one run folder with real `job run` tasks on the real local Slurm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT, cli, cli_without_reader, last_line, wait_for
from support.cluster import array_env, ensure_cluster, squeue_line, submit, submit_array, with_gpus

from job import slurm
from job.cli import plain_arrays
from job.launch.submission import Request, pairs_to_submit
from job.protocol import Pair, Protocol
from job.results.layout import RunLayout
from job.results.status import PairState, PairStatus, PlainTask, status
from job.results.submissions import read_submissions, record_submission

PROTOCOL = ["--limit", "2000", "--epochs", "60"]  # tens of seconds of training a pair: long enough to watch it
CONFIG = Protocol().with_overrides(limit=2000, epochs=60)
JOB_NAME = "mnist-cv-pairs"
# The stand-in for a task of the hooked `run` that holds its pair's lease (until the lead wires the lease into run).
HOLD_LEASE = (
    "import sys, time; from job.results.lease import Lease; "
    "lease = Lease.acquire(sys.argv[1], sys.argv[2]); time.sleep(600)"
)


class Run:
    """A run folder whose pairs are submitted as the launchers do: sbatch, then record_submission."""

    def __init__(self, folder: Path, mnist: Path) -> None:
        self.results = folder / "results"
        self.logs = folder / "logs"
        self.logs.mkdir(parents=True)
        self.mnist = mnist
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "MNIST_CV_ALLOW_CPU": "1"}

    def submit(self, task_id: int, command: str, *options: str) -> str:
        log = f"{self.logs}/%x_%A_%a.out"
        sbatch = ["--cpus-per-task=1", "--mem=3G", "--time=10", f"--array={task_id}", "-J", JOB_NAME, f"-o{log}"]
        job = submit([*sbatch, *options, "--wrap", command], cwd=self.logs, env=self.env)
        record_submission(
            RunLayout(self.results, "default"),
            array_job_id=job,
            tasks={task_id: task_id},
            config_id=CONFIG.config_id,
            log=log,
            job_name=JOB_NAME,
        )
        return job

    def run_command(self, data: Path | None = None) -> str:
        data = data or self.mnist
        options = " ".join([*PROTOCOL, "--results", str(self.results), "--data-dir", str(data)])
        return f"{sys.executable} -m job run {options}"  # the task id comes from $SLURM_ARRAY_TASK_ID

    def status(self) -> list[PairStatus]:
        return status(RunLayout(self.results, "default"), CONFIG)


def row(statuses: list[PairStatus], task_id: int) -> PairStatus:
    return statuses[task_id]


@pytest.mark.slurm
def test_status_shows_every_state_of_a_run_and_pairs_missing_skips_queued_and_running(
    tmp_path: Path, mnist_full: Path
) -> None:
    ensure_cluster()
    run = Run(tmp_path, mnist_full)
    jobs: list[str] = []
    try:
        done = subprocess.Popen(
            [sys.executable, "-m", "job", "run", "--task-id", "0", *PROTOCOL, "--results", str(run.results)]
            + ["--data-dir", str(mnist_full), "--allow-cpu"],
            env=run.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        jobs.append(failed := run.submit(1, run.run_command(tmp_path / "no-such-folder")))
        jobs.append(cancelled := run.submit(2, run.run_command(), "--hold"))  # released once the rest is set
        jobs.append(queued := run.submit(3, run.run_command(), "--hold"))
        jobs.append(requeued := run.submit(4, run.run_command()))
        lease = RunLayout(run.results, "default").pair_paths(Pair("cnn", 0)).lease
        jobs.append(leased := run.submit(5, f"{sys.executable} -c '{HOLD_LEASE}' {lease} {CONFIG.config_id}"))
        assert sorted(s.task_id for s in read_submissions(RunLayout(run.results, "default"))) == [1, 2, 3, 4, 5]

        wait_for("task 4 to run", lambda: getattr(slurm.task(f"{requeued}_4"), "state", "") == "RUNNING")
        subprocess.run(["scontrol", "requeuehold", f"{requeued}_4"], check=True)  # requeued, and kept pending
        assert done.wait(timeout=600) == 0, done.stderr.read()  # type: ignore[union-attr]
        wait_for("the lease of task 5", lease.exists)
        wait_for("task 1 to fail", lambda: row(run.status(), 1).state == PairState.FAILED)
        subprocess.run(["scontrol", "release", f"{cancelled}_2"], check=True)

        def training() -> list[PairStatus] | None:
            statuses = run.status()
            return statuses if statuses[2].state == PairState.RUNNING and statuses[2].epochs_done else None

        during: list[PairStatus] = wait_for("task 2 to train an epoch", training)  # type: ignore[assignment]
        missing = cli("pairs", "--missing", "--results", str(run.results), *PROTOCOL)
        # Cancelled at once: task 2 (an mlp) trains its 60 epochs in seconds, and a busy machine would let it finish.
        subprocess.run(["scancel", f"{cancelled}_2"], check=True)
        # Wide enough that no cell wraps: the test folder's path is longer under xdist (popen-gw0/).
        out = cli("status", "--results", str(run.results), *PROTOCOL, env={"COLUMNS": "200"})
        assert out.returncode == 0, out.stderr
        print(out.stdout)  # the table, as a user sees it (pytest -s)
        shown = json.loads(cli("status", "--json", "--results", str(run.results), *PROTOCOL).stdout)
        assert [s["state"] for i, s in enumerate(shown) if i != 2] == [s.state.value for s in during if s.task_id != 2]
        states = [s.state for s in during]
        assert states == [
            PairState.DONE,
            PairState.FAILED,
            PairState.RUNNING,
            PairState.QUEUED,
            PairState.REQUEUED,
            PairState.RUNNING,
            *[PairState.MISSING] * 4,
        ], [f"{s.state.value}: {s.detail}" for s in during]
        assert 0.5 < during[0].accuracy <= 1
        assert (during[1].slurm_state, during[1].exit_code) == ("FAILED", 1)
        assert during[1].log == run.logs / f"{JOB_NAME}_{failed}_1.out"
        assert during[1].last_error is not None and "no-such-folder: no such file or folder" in during[1].last_error
        assert during[2].job_id == f"{cancelled}_2" and during[2].node and during[2].elapsed_s is not None
        assert (during[3].job_id, during[3].reason) == (f"{queued}_3", "JobHeldUser")
        assert during[4].job_id == f"{requeued}_4" and "requeued 1x" in during[4].detail
        assert during[5].job_id == f"{leased}_5" and "no epoch done yet" in during[5].detail
        assert f"{leased}_5" in out.stdout and "no-such-folder" in out.stdout

        assert (missing.returncode, missing.stdout) == (0, "1,6-9\n")  # not the running, queued, requeued ones

        wait_for("task 2 to be cancelled", lambda: row(run.status(), 2).state == PairState.CANCELLED)
        after = row(run.status(), 2)
        assert after.slurm_state == "CANCELLED" and "checkpoint after epoch" in after.detail
        again = cli("pairs", "--missing", "--results", str(run.results), *PROTOCOL)
        assert again.stdout == "1-2,6-9\n"
    finally:
        subprocess.run(["scancel", *jobs], check=False)


@pytest.mark.slurm
def test_pairs_missing_prints_nothing_and_exits_1_when_every_pair_is_queued(tmp_path: Path) -> None:
    ensure_cluster()
    results = tmp_path / "results"
    job = submit(["--hold", "--array=0-9", "--mem=100M", "-J", JOB_NAME, "--wrap", "true"], cwd=tmp_path)
    try:
        record_submission(
            RunLayout(results, "default"),
            array_job_id=job,
            tasks={i: i for i in range(10)},
            config_id=CONFIG.config_id,
            log=f"{tmp_path}/%x_%A_%a.out",
            job_name=JOB_NAME,
        )
        out = cli("pairs", "--missing", "--results", str(results), *PROTOCOL)
        assert (out.returncode, out.stdout, out.stderr) == (1, "", "")
        guarded = subprocess.run(
            [
                "bash",
                "-c",
                f'ids=$("$0" -m job pairs --missing --results {results} {" ".join(PROTOCOL)}) && echo "$ids"',
            ]
            + [sys.executable],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            check=False,
        )
        assert guarded.returncode == 1 and guarded.stdout == ""  # the README's form submits nothing
    finally:
        subprocess.run(["scancel", job], check=True)
    assert [s.state for s in status(RunLayout(results, "default"), CONFIG, queue=lambda ids: {})] == [
        PairState.MISSING
    ] * 10


def test_status_without_slurm_reads_leases_and_names_are_printed_as_text(tmp_path: Path) -> None:
    from job.results.lease import Lease

    run = "x[red]y[bold]z"  # rich markup, but a plain name (no slash)
    with Lease.acquire(RunLayout(tmp_path, run).pair_paths(Pair("mlp", 3)).lease, CONFIG.config_id):
        states = [s.state for s in status(RunLayout(tmp_path, run), CONFIG, queue=lambda ids: {})]
        assert states == [PairState.MISSING] * 3 + [PairState.RUNNING] + [PairState.MISSING] * 6
        table = cli("status", "--results", str(tmp_path), "--run", run, *PROTOCOL, env={"COLUMNS": "200"})
        listing = cli("pairs", "--results", str(tmp_path), "--run", run, *PROTOCOL, env={"COLUMNS": "200"})
    assert table.returncode == 0 and listing.returncode == 0, table.stderr + listing.stderr
    for out in (table.stdout, listing.stdout):
        assert out.startswith(f"{tmp_path}/{run}  (config {CONFIG.config_id}: --epochs 60 --limit 2000)\n")
    assert "pid " in table.stdout and "1 running" in last_line(table.stdout)


@pytest.mark.slurm
def test_a_task_of_sbatch_array_sh_records_itself_once_with_its_log(tmp_path: Path) -> None:
    ensure_cluster()
    results = tmp_path / "results"
    record = (
        "import sys; from job.results.layout import RunLayout; from job.results.submissions import ArrayTask, "
        "record_running_task as r; run = RunLayout(sys.argv[1], 'default'); r(run, 'cfg', ArrayTask(7, (7,))); "
        "r(run, 'cfg', ArrayTask(7, (7,))); r(run, 'cfg', ArrayTask(3, (3,)))"
    )
    options = ["--array=7", "--mem=200M", "-J", JOB_NAME, f"--output={tmp_path}/%x_%A_%a.out"]
    job = submit(
        [*options, "--wrap", f'{sys.executable} -c "{record}" {results}'],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    wait_for("the task to end", lambda: getattr(slurm.task(f"{job}_7"), "finished", False))
    (recorded,) = read_submissions(RunLayout(results, "default"))
    assert (recorded.job_id, recorded.task_id, recorded.config_id) == (f"{job}_7", 7, "cfg")
    assert recorded.log_path() == tmp_path / f"{JOB_NAME}_{job}_7.out"
    assert len((results / "default" / "submissions.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize("command", [["pairs"], ["status"], ["status", "--json"]])
def test_a_reader_that_leaves_early_is_not_a_failure(command: list[str], tmp_path: Path) -> None:
    # `mnist-cv pairs | head -1`: the reader is gone before the table is written. rich ends a broken pipe with a
    # silent exit 1 of its own; the README promises the end of the reader is not a failure of ours.
    assert cli_without_reader(*command, "--results", str(tmp_path)) == (0, "")


def test_a_plain_array_sh_array_counts_for_the_run_and_config_its_workdir_and_arguments_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The caller's own settings say nothing of where a job it did not start writes.
    monkeypatch.setenv("MNIST_CV_RESULTS", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("MNIST_CV_RUN", "elsewhere")
    results, script = tmp_path / "results", f"{ROOT}/slurm/array.sh"
    lines = [
        # results/default under the working folder, the default; a pending range as one line
        squeue_line("101", "[0-3%2]", "PENDING", tmp_path, f"slurm/array.sh {' '.join(PROTOCOL)}"),
        # an absolute --results and its own working folder: running, its lease not taken yet
        squeue_line("102", "4", "RUNNING", "/nowhere", f"{script} --epochs=60 --limit 2000 --results {results}"),
        squeue_line("103", "5", "PENDING", tmp_path, f"{script} --limit 2000 --epochs 61"),  # another config
        squeue_line("104", "6", "PENDING", tmp_path, f"{script} {' '.join(PROTOCOL)} --run other|run"),  # another run
        squeue_line("105", "7", "PENDING", tmp_path, f"{tmp_path}/submission_file_1.sh"),  # a `submit` array's
        squeue_line("106", "8", "PENDING", tmp_path, f"{script} {' '.join(PROTOCOL)} --task-id 3"),  # picks its pair
        squeue_line("107", "9", "PENDING", tmp_path, f"{script} {' '.join(PROTOCOL)} --no-such-option"),
        squeue_line("108", "9", "PENDING", tmp_path, "(null)"),  # a --wrap job of that name
        squeue_line("109", "9", "PENDING", tmp_path, f"{script} {' '.join(PROTOCOL)} --help"),
    ]
    tasks = slurm._parse_squeue("\n".join(lines) + "\n")
    assert len(tasks) == 12 and tasks[6].command.endswith("--run other|run")
    layout = RunLayout(results, "default")
    matched = plain_arrays.matching(tasks, layout, CONFIG)
    assert [(t.state.job_id, t.task_ids) for t in matched] == [
        ("101_0", (0,)), ("101_1", (1,)), ("101_2", (2,)), ("101_3", (3,)), ("102_4", (4,))
    ]  # fmt: skip
    assert capsys.readouterr() == ("", "")  # a job's --help is read, never acted on

    def plain(asked: RunLayout, protocol: Protocol) -> list[PlainTask]:
        return plain_arrays.matching(tasks, asked, protocol)

    found = status(layout, CONFIG, queue=lambda ids: {}, plain_arrays=plain)
    assert [s.state for s in found] == [PairState.QUEUED] * 4 + [PairState.RUNNING] + [PairState.MISSING] * 5
    assert (found[0].job_id, found[0].detail) == ("101_0", "job 101_0 (BeginTime)")
    assert found[4].detail == "job 102_4 on localhost, no epoch done yet, 0:01:05 elapsed"
    request = Request("slurm", layout, CONFIG, job_options=(), plain_arrays=plain)
    assert [s.task_id for s in pairs_to_submit(request)] == [5, 6, 7, 8, 9]
    other = RunLayout(results, "other|run")
    assert [t.state.job_id for t in plain_arrays.matching(tasks, other, CONFIG)] == ["104_6"]

    # Once a task has started it records itself: the record speaks for it, the pair is counted once.
    record_submission(layout, array_job_id="101", tasks={2: 2}, config_id=CONFIG.config_id, log="", job_name=JOB_NAME)
    started = slurm.TaskState("101", 2, "RUNNING", "squeue", node="localhost", elapsed_s=3)
    again = status(layout, CONFIG, queue=lambda ids: {"101_2": started} if "101_2" in ids else {}, plain_arrays=plain)
    assert [s.state.value for s in again[:5]] == ["queued", "queued", "running", "queued", "running"]


@pytest.mark.slurm
def test_a_held_sbatch_array_sh_array_is_queued_and_never_submitted_twice(mnist_mini: Path, tmp_path: Path) -> None:
    """`sbatch slurm/array.sh ARGS` held for an hour: no task starts, so none records itself; squeue alone tells."""
    with_gpus()  # the script asks for a GPU
    results = tmp_path / "results"
    where = ("--results", str(results), "--run", "held", "--epochs", "1", "--limit", "1000")
    job = submit_array(tmp_path, array_env(mnist_mini, results), (*where, "--custom-data"), "--begin=now+1hour")
    try:
        shown = json.loads(cli("status", "--json", *where).stdout)
        assert [(s["state"], s["job_id"]) for s in shown] == [("queued", f"{job}_{i}") for i in range(10)]
        missing = cli("pairs", "--missing", *where)
        assert (missing.returncode, missing.stdout) == (1, "")
        again = cli("submit", "--executor", "slurm", "--dry-run", *where, cwd=ROOT)
        assert again.returncode == 0 and again.stdout.startswith("nothing to submit"), again.stdout + again.stderr
        other = cli("pairs", "--missing", *where, "--epochs", "2")  # another config: the array is not its
        assert (other.returncode, other.stdout) == (0, "0-9\n")
    finally:
        subprocess.run(["scancel", job], check=False)
    assert not (results / "held" / "submissions.jsonl").exists()
