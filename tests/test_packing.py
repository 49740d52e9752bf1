"""Several pairs in one process: `run --task-ids`, `run --pairs-per-task` (what `sbatch slurm/array.sh --pairs-per-task
N` runs) and `submit --pack`. Each packed pair ends with exactly the numbers of its single run, skips when done, and a
pair that fails or is held does not stop the next one; status and `pairs --missing` see each pair of a packed task.

Every training here is pinned to one CPU (so one TensorFlow thread for either model): the thread count changes the
float summation order, and only runs with the same count are comparable bitwise.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from support import ROOT, cli, last_line, start_pinned, wait_for
from support.cluster import array_env, sacct, sacct_runs, squeue_line, submit_array, wait_for_jobs, with_gpus

from job import slurm
from job.cli import build_parser, plain_arrays, run
from job.launch import resources as launch_resources
from job.protocol import Pair, Protocol, all_pairs, packed_task_ids
from job.results import store
from job.results.contract import PairResult
from job.results.layout import RunLayout
from job.results.lease import Lease
from job.results.packing import pair_cost, pairs_per_task, time_limit_seconds
from job.results.status import PairState, PlainTask, status
from job.results.submissions import ArrayTask, read_submissions, record_running_task, record_submission

QUICK = ("--epochs", "2", "--limit", "1000", "--custom-data")
CONFIG = Protocol().with_overrides(epochs=2, limit=1000)
PACKED = "3-5"  # mlp/fold-3, mlp/fold-4, then cnn/fold-0: a model after one of its own kind, then after the other
SINGLES = (3, 4, 5)
# What must be equal to the bit between a packed pair and its single run.
NUMBERS = ("history", "score", "data", "config", "config_id", "model", "fold", "task_id")


class Finished(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def start(args: list[str], results: Path, data: Path, cpu_index: int = 0) -> subprocess.Popen[str]:
    """`python -m job run ARGS` in the background, pinned to one CPU."""
    return start_pinned(["run", *args, *QUICK, "--data-dir", str(data), "--results", str(results)], cpu_index)


def finish(proc: subprocess.Popen[str], timeout: float = 600) -> Finished:
    stdout, stderr = proc.communicate(timeout=timeout)
    return Finished(proc.returncode, stdout, stderr)


def run_on_one_cpu(args: list[str], results: Path, data: Path, cpu_index: int = 0) -> Finished:
    return finish(start(args, results, data, cpu_index))


def result(results: Path, task_id: int) -> dict[str, Any]:
    return store.read_result(RunLayout(results, "default").pair_paths(all_pairs()[task_id]).result)


def numbers(found: dict[str, Any]) -> dict[str, Any]:
    return {key: found[key] for key in NUMBERS}


class Trained(NamedTuple):
    packed: Path  # RESULTS of `run --task-ids 3-5`
    singles: Path  # RESULTS of `run --task-id 3`, 4 and 5, one process each
    run: Finished  # the packed process


@pytest.fixture(scope="module")
def trained(mnist_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """The three pairs packed in one process on one CPU while, on the other, each trains alone in its own."""
    packed, singles = tmp_path_factory.mktemp("packed"), tmp_path_factory.mktemp("singles")
    pack = start(["--task-ids", PACKED], packed, mnist_mini, cpu_index=0)
    for task_id in SINGLES:
        alone = run_on_one_cpu(["--task-id", str(task_id)], singles, mnist_mini, cpu_index=1)
        assert alone.returncode == 0, alone.stderr
    done = finish(pack)
    assert done.returncode == 0, done.stderr
    return Trained(packed, singles, done)


def test_a_packed_pair_ends_with_the_numbers_of_its_single_run(trained: Trained) -> None:
    for task_id in SINGLES:
        packed, alone = result(trained.packed, task_id), result(trained.singles, task_id)
        assert numbers(packed) == numbers(alone)
        assert packed["environment"]["threads"]["intra_op"] == alone["environment"]["threads"]["intra_op"] == 1
    assert last_line(trained.run.stdout) == "3 pairs, mlp/fold-3 to cnn/fold-0: 3 done"
    reported = [line.split(":")[0] for line in trained.run.stdout.splitlines() if "held-out accuracy" in line]
    assert reported == ["mlp/fold-3", "mlp/fold-4", "cnn/fold-0"]
    assert not list(trained.packed.rglob("*.lease")) and not list(trained.packed.rglob("*.ckpt"))


def test_done_pairs_are_skipped_and_a_failing_pair_does_not_stop_the_next(
    trained: Trained, mnist_mini: Path, tmp_path: Path
) -> None:
    """Task ids 1-4: 1 trains, 2 fails (a folder in its result's place), 3 is done, 4 (its result removed) trains."""
    results = Path(shutil.copytree(trained.packed, tmp_path / "results"))
    layout = RunLayout(results, "default")
    layout.pair_paths(all_pairs()[4]).result.unlink()
    layout.pair_paths(all_pairs()[2]).result.mkdir(parents=True)
    done_before = layout.pair_paths(all_pairs()[3]).result.read_bytes()

    done = run_on_one_cpu(["--task-ids", "1-4"], results, mnist_mini)
    assert done.returncode == 1, done.stderr
    failures = [line for line in done.stderr.splitlines() if line.startswith("mlp/fold-")]
    assert len(failures) == 1 and failures[0].startswith("mlp/fold-2: error: "), done.stderr
    assert "Traceback" not in done.stderr
    assert "mlp/fold-3: already done with config" in done.stdout
    assert last_line(done.stdout) == "4 pairs, mlp/fold-1 to mlp/fold-4: 3 done, 1 failed (mlp/fold-2)"
    assert layout.pair_paths(all_pairs()[3]).result.read_bytes() == done_before
    assert numbers(result(results, 4)) == numbers(result(trained.singles, 4))
    assert result(results, 1)["fold"] == 1


def test_a_pair_held_by_another_process_is_skipped_and_the_pack_exits_75(trained: Trained, tmp_path: Path) -> None:
    results = Path(shutil.copytree(trained.packed, tmp_path / "results"))
    layout = RunLayout(results, "default")
    layout.pair_paths(all_pairs()[3]).result.unlink()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from job.results.lease import Lease; "
         "lease = Lease.acquire(sys.argv[1], sys.argv[2]); print('held', flush=True); time.sleep(600)",
         str(layout.pair_paths(all_pairs()[3]).lease), CONFIG.config_id],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        # Nothing to train: the held pair is refused at its lease, the other is done; no data load, no TensorFlow.
        done = cli(
            "run", "--task-ids", "3-4", *QUICK, "--data-dir", str(tmp_path / "nowhere"), "--results", str(results)
        )
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 75, done.stderr
    assert done.stderr.startswith("mlp/fold-3: skipped: mlp/fold-3 is being trained by pid ")
    assert len(done.stderr.splitlines()) == 1
    assert last_line(done.stdout) == "2 pairs, mlp/fold-3 to mlp/fold-4: 1 done, 1 held by another process (mlp/fold-3)"


@pytest.mark.slow  # trains cnn pairs for about a minute
def test_a_stop_signal_checkpoints_the_current_pair_and_ends_the_pack_with_3(
    trained: Trained, mnist_mini: Path, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    pack = start(["--task-ids", "5-6"], results, mnist_mini)
    state = RunLayout(results, "default").pair_paths(all_pairs()[5]).checkpoint / "state.json"
    wait_for("cnn/fold-0's first checkpoint", lambda: state.exists() or pack.poll() is not None, timeout=600)
    time.sleep(0.5)  # into epoch 2, which lasts seconds
    pack.send_signal(signal.SIGTERM)
    stopped = finish(pack)
    assert stopped.returncode == 3, stopped.stderr
    assert "received SIGTERM" in stopped.stderr
    assert last_line(stopped.stderr).endswith("2 of 2 pairs left to a rerun: cnn/fold-0, cnn/fold-1")
    second = RunLayout(results, "default").pair_paths(all_pairs()[6])
    assert not second.result.exists() and not second.checkpoint.exists() and not list(results.rglob("*.lease"))

    again = run_on_one_cpu(["--task-ids", "5-6"], results, mnist_mini)
    assert again.returncode == 0, again.stderr
    resumed = result(results, 5)
    assert resumed["resume"] == {"count": 1, "from_epochs": [1]}
    assert numbers(resumed) == numbers(result(trained.singles, 5))
    assert result(results, 6)["resume"]["count"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task-ids", "x"], "argument --task-ids: not task ids like 0,5 or 5-9: 'x'"),
        (["--task-ids", "2-1"], "argument --task-ids: not task ids like 0,5 or 5-9: '2-1'"),
        (["--task-ids", "0-10", "--repeats", "1"], "task id 10 is outside 0-9"),
        (["--task-ids", "0-1", "--task-id", "0"], "give --task-ids alone"),
        (["--task-ids", "0-1", "--model", "mlp", "--fold", "0"], "give --task-ids alone"),
        (["--pairs-per-task", "0", "--task-id", "0"], "argument --pairs-per-task: must be 1 to 100000, got 0"),
        (["--pairs-per-task", "x", "--task-id", "0"], "argument --pairs-per-task: not a whole number: 'x'"),
        (
            ["--pairs-per-task", "5", "--task-id", "2"],
            "task 2 with --pairs-per-task 5 starts at task id 10, past the run's last, 9 (--repeats 1)",
        ),
        (["--pairs-per-task", "5", "--model", "mlp", "--fold", "0"], "--pairs-per-task makes a task id's pack"),
        (["--pairs-per-task", "5"], "no pair given"),
    ],
)
def test_bad_pair_lists_are_one_line_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    done = cli("run", *args, "--results", str(tmp_path), env={"SLURM_ARRAY_TASK_ID": ""})
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not any(tmp_path.iterdir())


def resolved(argv: list[str]) -> tuple[list[Pair], ArrayTask | None]:
    """`run`'s pairs for these arguments, in a new run (whose repeats are --repeats, else 1)."""
    args = build_parser().parse_args(["run", *argv])
    return run.resolve_pairs(args, CONFIG, args.repeats or 1)


def test_pairs_per_task_makes_array_index_i_train_task_ids_n_i_to_n_i_plus_n_minus_1_capped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert [packed_task_ids(i, 5, repeats=1) for i in range(3)] == [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9), ()]
    assert [packed_task_ids(i, 3, repeats=1) for i in range(4)] == [(0, 1, 2), (3, 4, 5), (6, 7, 8), (9,)]
    assert packed_task_ids(5, 5, repeats=3) == (25, 26, 27, 28, 29) and packed_task_ids(6, 5, repeats=3) == ()
    assert packed_task_ids(0, 100_000, repeats=2) == tuple(range(20))

    pairs, task = resolved(["--task-id", "1", "--pairs-per-task", "5"])
    assert pairs == [Pair("cnn", fold) for fold in range(5)] and task == ArrayTask(1, (5, 6, 7, 8, 9))
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    pairs, task = resolved(["--pairs-per-task", "3"])
    assert pairs == [Pair("cnn", 4)] and task == ArrayTask(3, (9,))
    pairs, task = resolved(["--pairs-per-task", "4", "--repeats", "2"])
    assert pairs == [Pair("mlp", 2, 1), Pair("mlp", 3, 1), Pair("mlp", 4, 1), Pair("cnn", 0, 1)]
    assert task == ArrayTask(3, (12, 13, 14, 15))
    assert resolved(["--task-ids", "9,0-1"]) == ([Pair("mlp", 0), Pair("mlp", 1), Pair("cnn", 4)], None)
    assert resolved([]) == ([Pair("mlp", 3)], ArrayTask(3, (3,)))
    assert resolved(["--model", "mlp", "--fold", "3"]) == ([Pair("mlp", 3)], None)


def test_a_packed_task_records_each_of_its_pairs_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = RunLayout(tmp_path, "default")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    record_running_task(layout, "cfg", ArrayTask(0, (0, 1, 2, 3, 4)))  # another index: a `submit` array's task
    assert read_submissions(layout) == []
    for _ in range(2):
        record_running_task(layout, "cfg", ArrayTask(1, (5, 6, 7, 8, 9)))
    recorded = read_submissions(layout)
    assert [(s.job_id, s.task_id, s.pack) for s in recorded] == [("4242_1", i, (5, 6, 7, 8, 9)) for i in range(5, 10)]
    assert json.loads(layout.submissions.read_text())["tasks"] == {"1": [5, 6, 7, 8, 9]}


def test_status_shows_each_pair_of_a_running_a_requeued_and_a_queued_packed_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Task 0 of array 700 trains task ids 0-4 and holds mlp/fold-2's lease: 0 and 1 were gone past without a
    result, 3 and 4 wait their turn. Task 1 (5-9) was requeued. Array 800, a plain `sbatch --array=0-2 slurm/array.sh
    --pairs-per-task 5` not started, would train the same pairs: its tasks 0 and 1 are found, but the live ones of
    700 speak for the pairs."""
    layout = RunLayout(tmp_path / "results", "default")
    record_submission(
        layout, array_job_id="700", tasks={0: (0, 1, 2, 3, 4), 1: (5, 6, 7, 8, 9)}, config_id=CONFIG.config_id,
        log=str(tmp_path / "%A_%a.log"), job_name="mnist-cv-pairs",
    )  # fmt: skip
    (tmp_path / "700_0.log").write_text("mlp/fold-1: error: something went wrong\n")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "700")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    monkeypatch.setenv("SLURM_JOB_ID", "701")
    lease = Lease.acquire(layout.pair_paths(Pair("mlp", 2)).lease, CONFIG.config_id)
    running = slurm.TaskState("700", 0, "RUNNING", "squeue", node="localhost", elapsed_s=30)
    requeued = slurm.TaskState("700", 1, "PENDING", "squeue", reason="BeginTime", restarts=1)
    scheduler = {"700_0": running, "700_1": requeued}

    def queue(ids: Any) -> dict[str, slurm.TaskState]:
        return {job: state for job, state in scheduler.items() if job in ids}

    script = f"{ROOT}/slurm/array.sh --pairs-per-task 5 {' '.join(QUICK)} --results {layout.results_dir}"
    lines = [squeue_line("800", "[0-2]", "PENDING", tmp_path, script)]

    def plain(asked: RunLayout, protocol: Protocol) -> list[PlainTask]:
        return plain_arrays.matching(slurm._parse_squeue("\n".join(lines) + "\n"), asked, protocol)

    # 800_2 would start past the last pair: it trains none.
    assert [(t.state.job_id, t.task_ids) for t in plain(layout, CONFIG)] == [
        ("800_0", (0, 1, 2, 3, 4)), ("800_1", (5, 6, 7, 8, 9))
    ]  # fmt: skip
    try:
        found = status(layout, CONFIG, queue=queue, plain_arrays=plain)
    finally:
        lease.release()
    states = [s.state for s in found]
    assert states[:5] == [PairState.FAILED, PairState.FAILED, PairState.RUNNING, PairState.QUEUED, PairState.QUEUED]
    assert found[1].detail == f"job 700_0 went past it without a result; log {tmp_path}/700_0.log: " + (
        "mlp/fold-1: error: something went wrong"
    )
    assert found[2].job_id == "700_0" and found[2].detail.startswith("job 700_0 on localhost")
    assert found[3].detail == "job 700_0 on localhost trains its 5 pairs in turn: this is number 4"
    # A live task speaks for the pair before a queued one; requeued beats the plain array's pending one.
    assert states[5:] == [PairState.REQUEUED] * 5 and {s.job_id for s in found[5:]} == {"700_1"}


def test_submit_pack_runs_fewer_tasks_and_auto_packs_by_the_measured_pairs(mnist_mini: Path, tmp_path: Path) -> None:
    results, quick = tmp_path / "results", ("--epochs", "1", "--limit", "500", "--custom-data")
    common = (*quick, "--data-dir", str(mnist_mini), "--results", str(results), "--live-code")
    done = cli("submit", "--executor", "debug", "--pack", "2", "--task-ids", "0-2", *common, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "submitted 2 tasks (3 pairs) of config" in done.stdout
    assert "  mlp x2 (task ids 0-1)  job DEBUG_" in done.stdout and "  mlp/fold-2  job DEBUG_" in done.stdout
    assert "[1/2] 2 pairs, mlp/fold-0 to mlp/fold-1: 2 done" in done.stdout
    config = Protocol().with_overrides(epochs=1, limit=500)
    assert [s.state for s in status(RunLayout(results, "default"), config, queue=lambda ids: {})][:3] == [
        PairState.DONE
    ] * 3

    plan = cli("submit", "--dry-run", "--pack", "auto", "--pack-minutes", "1", *common, cwd=ROOT)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    measured = [PairResult.from_json(result(results, task_id)) for task_id in range(3)]
    cost = pair_cost(measured, measured)
    assert cost is not None
    size = pairs_per_task(cost, 60, most=2)  # mlp/fold-3 and 4 are left
    assert size == min(2, max(1, math.ceil((60 - cost.startup_seconds) / cost.pair_seconds)))
    assert (
        f"--pack auto: mlp: {cost.startup_seconds:.1f} s of start-up, then {cost.pair_seconds:.1f} s a pair"
        in plan.stdout
    )
    assert "--pack auto: no cnn pair of this run and config records what it took yet: 1 pair a task" in plan.stdout
    cnn = [line for line in plan.stdout.splitlines() if line.startswith("  cnn/fold-")]
    assert len(cnn) == 5 and f"would submit {5 + math.ceil(2 / size)} " in plan.stdout
    # One limit for the array: its longest task's, the measured mlp pack's by the sizing rule or a cnn pair's (the
    # script's --time).
    limit = max(math.ceil(time_limit_seconds(cost.task_seconds(size)) / 60), launch_resources.pairs().time_min)
    assert f"timeout_min={limit}," in plan.stdout


# --- on the real local Slurm cluster ----------------------------------------------------------------------------


class PackedArray(NamedTuple):
    folder: Path
    job: str
    held: dict[str, Any]  # what status, pairs --missing said while the array was held
    runs: dict[str, list[str]]  # sacct: task -> the state of each of its runs, oldest first


@pytest.fixture(scope="module")
def packed_array(mnist_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> PackedArray:
    """`sbatch --array=0-1 --begin=now+1hour slurm/array.sh --pairs-per-task 5`: looked at while held, then started;
    task 1 gets the time-limit warning once its first pair is done, checkpoints, requeues and finishes its pairs."""
    with_gpus()  # the script asks for a GPU
    folder = tmp_path_factory.mktemp("packed-array")
    where = ("--results", str(folder / "results"), "--run", "default", "--epochs", "1", "--limit", "500")
    env = array_env(mnist_mini, folder / "results")
    job = submit_array(
        folder, env, (*where, "--custom-data", "--pairs-per-task", "5"), "--array=0-1", "--begin=now+1hour"
    )
    try:
        held = {
            "status": json.loads(cli("status", "--json", *where).stdout),
            "missing": cli("pairs", "--missing", *where),
            "records": (folder / "results" / "default" / "submissions.jsonl").exists(),
        }
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, capture_output=True)
        first_cnn = RunLayout(folder / "results", "default").pair_paths(Pair("cnn", 0)).result
        wait_for("cnn/fold-0's result", first_cnn.exists, timeout=600)
        subprocess.run(["scancel", "--signal=USR1", "--batch", f"{job}_1"], check=True, capture_output=True)
        wait_for_jobs(job, timeout=600)
    finally:
        subprocess.run(["scancel", job], check=False, capture_output=True)
    return PackedArray(folder, job, held, sacct_runs(job))


@pytest.mark.slurm
def test_a_held_packed_array_shows_its_ten_pairs_queued_and_none_missing(packed_array: PackedArray) -> None:
    job, held = packed_array.job, packed_array.held
    assert [(s["state"], s["job_id"]) for s in held["status"]] == [
        ("queued", f"{job}_{task_id // 5}") for task_id in range(10)
    ]
    assert (held["missing"].returncode, held["missing"].stdout) == (1, "")
    assert not held["records"]  # no task started: squeue alone told


@pytest.mark.slurm
def test_two_packed_tasks_train_the_ten_pairs_and_a_warned_one_requeues_and_resumes(
    packed_array: PackedArray,
) -> None:
    folder, job = packed_array.folder, packed_array.job
    assert packed_array.runs == {f"{job}_0": ["COMPLETED"], f"{job}_1": ["REQUEUED", "COMPLETED"]}
    layout = RunLayout(folder / "results", "default")
    for task_id, pair in enumerate(all_pairs()):
        found = store.check_pair(layout.pair_paths(pair).result, layout)
        assert found.config.epochs == 1 and found.task_id == task_id
        assert found.environment["slurm"]["array_task_id"] == str(task_id // 5)
    log = (folder / f"mnist-cv-pairs_{job}_1.out").read_text()
    assert "received SIGUSR1" in log and f"requeueing {job}_1" in log
    assert "cnn/fold-0: already done with config" in log  # the requeued run skips it at once
    assert log.count("5 pairs, cnn/fold-0 to cnn/fold-4: 5 done") == 1
    recorded = read_submissions(layout)
    assert sorted((s.job_id, s.task_id) for s in recorded) == [(f"{job}_{t // 5}", t) for t in range(10)]
    accounting = sacct(job, "ExitCode")
    assert accounting[f"{job}_1"]["ExitCode"] == "0:0"
    assert not list(layout.folder.rglob("*.lease")) and not list(layout.folder.rglob("*.ckpt"))
