"""`python -m job submit` and job/launch/task.py: the command line each pair runs, the mapping of the options,
submitit's checkpoint protocol, and end to end with the local executor and on the real local Slurm cluster.

The local node declares fake GPUs: a GPU request is accepted there but TensorFlow sees none, so every run
here sets MNIST_CV_ALLOW_CPU=1. One test asks for a GPU to show the request reaches Slurm; the others ask
for none, so that they never wait for one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import submitit
from support import cli, last_line
from support.cluster import ensure_cluster, wait_for_jobs

from job.cli import build_parser, submit
from job.cli.options import protocol_overrides
from job.launch import argv as launch_argv
from job.launch import task as launch
from job.pair.train import Preempted
from job.protocol import Pair, Protocol, all_pairs
from job.results import store as results
from job.results.layout import RunLayout
from job.results.status import PairState, status

GOLDEN = Path(__file__).resolve().parent / "golden"
QUICK = ("--epochs", "1", "--limit", "100", "--custom-data")
SMALL_TASK = ("--cpus-per-task", "1", "--mem-gb", "3")  # two pairs at a time on the 2-CPU node
ENV = {"MNIST_CV_ALLOW_CPU": "1"}
DIRTY_OK = ("--allow-dirty",)  # the tasks run a snapshot of this checkout, which may hold uncommitted changes


def submit_args(*argv: str) -> object:
    return build_parser().parse_args(["submit", *argv])


# --- the command line of a pair ----------------------------------------------------------------------------------


def executor_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """What submit gives submitit's update_parameters() for these parsed arguments."""
    from job.launch import submission

    return submission.executor_parameters(submit.request_from_args(args))


def test_without_an_image_a_pair_runs_the_cli_in_the_given_python() -> None:
    command = launch_argv.job_command(
        launch_argv.pair_args(7, ["--epochs", "1"]), image=None, python="/venv/bin/python", workdir="/w"
    )
    assert command == ["/venv/bin/python", "-m", "job", "run", "--task-id", "7", "--epochs", "1"]


def test_with_an_image_a_pair_runs_exactly_what_slurm_array_sh_runs() -> None:
    # The golden file holds what array.sh passes to `apptainer` (tests/test_container.py checks that side).
    command = launch_argv.job_command(
        launch_argv.pair_args(0, ["--epochs", "1", "--limit", "1000"]),
        image="<IMAGE>",
        python="/ignored/python",
        workdir="<HOME>",
        binds=["<DATA>", "<RESULTS>"],
    )
    assert command[0] == "apptainer"
    assert "\n".join(command[1:]) + "\n" == (GOLDEN / "array-apptainer-argv.txt").read_text()


def test_the_image_digest_comes_from_its_sha256_file_else_from_its_bytes(tmp_path: Path) -> None:
    image = tmp_path / "mnist-cv.sif"
    image.write_bytes(b"not really an image\n")
    assert launch_argv.image_digest(str(image)) == hashlib.sha256(image.read_bytes()).hexdigest()
    Path(f"{image}.sha256").write_text(f"{'ab' * 32}  mnist-cv.sif\n")
    assert launch_argv.image_digest(str(image)) == "ab" * 32


def test_the_preempted_exit_status_is_the_jobs() -> None:
    assert Preempted.exit_code == launch.PREEMPTED_EXIT


# --- the options ------------------------------------------------------------------------------------------------


def test_shared_options_reach_the_pair_as_given_with_absolute_paths(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for variable in ("MNIST_CV_RESULTS", "MNIST_CV_RUN", "MNIST_CV_DATA"):
        monkeypatch.delenv(variable, raising=False)
    args = submit_args(
        "--results", "out", "--run", "r1", "--data-dir", "data", "--custom-data",
        "--epochs", "2", "--batch-size", "64", "--seed", "0", "--limit", "500", "--mixed-precision", "--xla",
    )  # fmt: skip
    run_args = submit.run_args(args, Protocol().with_overrides(**protocol_overrides(args)))
    assert run_args == [
        "--results", str(tmp_path / "out"), "--run", "r1", "--data-dir", str(tmp_path / "data"), "--custom-data",
        "--epochs", "2", "--batch-size", "64", "--seed", "0", "--limit", "500", "--mixed-precision", "--xla",
    ]  # fmt: skip
    # ... and `job run` reads them back into the same protocol.
    run = build_parser().parse_args(["run", "--task-id", "0", *run_args])
    assert protocol_overrides(run) == protocol_overrides(args)
    # Defaults are forwarded too (they may come from $MNIST_CV_RESULTS...); unset options are left out.
    assert submit.run_args(submit_args(), Protocol()) == ["--results", str(tmp_path / "results"), "--run", "default"]
    # Only --run given: the tasks are given the run's protocol (its manifest's), as options.
    only_run = submit.run_args(submit_args(), Protocol(epochs=1, limit=500))
    assert only_run == ["--results", str(tmp_path / "results"), "--run", "default", "--epochs", "1", "--limit", "500"]


def test_resources_map_to_submitits_parameters_and_sbatch_options(tmp_path: Path) -> None:
    args = submit_args(
        "--partition", "gpu", "--account", "proj", "--qos", "high", "--time", "30", "--gpus-per-task", "2",
        "--cpus-per-task", "3", "--mem-gb", "5", "--array-parallelism", "4",
        "--slurm-additional", "constraint=a100", "--slurm-additional", "exclusive",
    )  # fmt: skip
    params = executor_parameters(args)
    assert params == {
        "name": "mnist-cv-pairs",
        "timeout_min": 30,
        "cpus_per_task": 3,
        "mem_gb": 5.0,
        "slurm_signal_delay_s": 180,  # the batch scripts' --signal=B:USR1@180, not submitit's 90
        "gpus_per_node": 2,
        "slurm_partition": "gpu",
        "slurm_account": "proj",
        "slurm_qos": "high",
        "slurm_array_parallelism": 4,
        "slurm_additional_parameters": {"requeue": True, "constraint": "a100", "exclusive": True},
    }
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
    executor.update_parameters(**params)
    sbatch = executor._executor._make_submission_file_text("true", "uid")  # what sbatch would be given
    for option in ("--gpus-per-node=2", "--cpus-per-task=3", "--mem=5GB", "--time=30", "--partition=gpu",
                   "--account=proj", "--qos=high", "--constraint=a100", "--exclusive", "--requeue"):  # fmt: skip
        assert f"#SBATCH {option}\n" in sbatch
    # No GPU asked: no GPU option at all (Slurm refuses a zero count on some versions).
    assert "gpus_per_node" not in executor_parameters(submit_args("--gpus-per-task", "0"))
    # The defaults are slurm/array.sh's: one GPU, 1 CPU, 3.5 GB, 25 minutes; with --final, slurm/final.sh's.
    defaults = executor_parameters(submit_args())
    assert (defaults["gpus_per_node"], defaults["cpus_per_task"], defaults["mem_gb"], defaults["timeout_min"]) == (
        1, 1, 3.5, 25,
    )  # fmt: skip
    final_defaults = executor_parameters(submit_args("--final", "mlp"))
    assert (final_defaults["name"], final_defaults["timeout_min"]) == ("mnist-cv-final", 30)


def test_only_the_pairs_not_done_are_submitted_unless_all() -> None:
    assert (submit_args().all, submit_args("--missing-only").all, submit_args("--all").all) == (False, False, True)


@pytest.mark.parametrize(
    ("spec", "ids"), [("0,5", {0, 5}), ("5-9", {5, 6, 7, 8, 9}), ("0-2,7", {0, 1, 2, 7}), ("3", {3})]
)
def test_task_ids_take_slurms_array_syntax(spec: str, ids: set[int]) -> None:
    assert submit.check_task_ids(submit.task_ids(spec), repeats=1) == ids


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--task-ids", "10"], "task ids are 0-9"),
        (["--task-ids", "0-9999999999"], "--task-ids: must be 0 to 99999, got 9999999999"),  # never expanded
        (["--task-ids", "5-3"], "not task ids like 0,5 or 5-9"),
        (["--task-ids", "a-b"], "not task ids like 0,5 or 5-9"),
        (["--task-ids", "\u0663"], "not task ids like 0,5 or 5-9"),  # an Arabic-Indic 3: int() takes it silently
        (["--task-ids", "1-"], "not task ids like 0,5 or 5-9"),  # sbatch refuses it; it was read as 1
        (["--task-ids", "0_5"], "not task ids like 0,5 or 5-9"),  # int() reads '0_5' as 5
        (["--task-ids", " 3"], "not task ids like 0,5 or 5-9"),
        (["--time", "\u0663"], "not a whole number"),
        (["--epochs", "\u0663"], "--epochs: not a whole number"),  # a shared option: `run` and `final` too
        (["--mem-gb", "nan"], "argument --mem-gb: not a number: 'nan'"),
        (["--mem-gb", "inf"], "argument --mem-gb: not a number: 'inf'"),
        (["--mem-gb", "0"], "argument --mem-gb: must be 0.0009765625 to 1048576 GB"),
        (["--mem-gb", "0.0001"], "1 MB at least"),  # submitit would ask sbatch for --mem=0MB: all of the node's
        (["--time", "0"], "argument --time: must be 1 to 525600, got 0"),
        (["--slurm-additional", "=x"], "not KEY=VALUE"),
        (["--missing-only", "--all"], "not allowed with argument"),
        (["--image", "/nonexistent.sif"], "no image file /nonexistent.sif"),
    ],
)
def test_bad_options_are_one_line_errors(argv: list[str], message: str, tmp_path: Path) -> None:
    done = cli("submit", "--executor", "local", "--results", str(tmp_path), *argv, cwd=tmp_path)
    assert done.returncode == (1 if "image" in message else 2)
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing submitted


# --- JobTask in this process -----------------------------------------------------------------------------------


def test_a_failing_pair_raises_with_its_command_and_last_lines(tmp_path: Path) -> None:
    args = launch_argv.pair_args(0, ["--epochs", "0"])
    task = launch.JobTask("mlp/fold-0", args, None, sys.executable, str(tmp_path))
    with pytest.raises(launch.JobFailed) as failed:
        task()
    message = str(failed.value)
    assert message.startswith(f"mlp/fold-0: `{sys.executable} -m job run --task-id 0 --epochs 0` exited")
    assert "exited with status 2; its last lines:" in message
    assert (
        last_line(message).strip() == "mnist-cv run: error: argument --epochs: must be 1 to 100000, got 0 (see --help)"
    )


# Plays `python -m job run`: prints, then waits for a stop signal and exits 3 as the job does at its safe point.
FAKE_JOB = """\
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))
print("training", flush=True)
time.sleep(60)
"""


def test_checkpoint_stops_the_child_and_requeues_a_fresh_task(tmp_path: Path, monkeypatch) -> None:
    fake_python = tmp_path / "python"
    fake_python.write_text(f"#!/bin/sh\nexec {sys.executable} -c '{FAKE_JOB}'\n")
    fake_python.chmod(0o755)
    monkeypatch.setattr(launch, "REQUEUE_GRACE_S", 0)  # no USR2 is coming: this test plays submitit itself
    args = launch_argv.pair_args(3, ["--epochs", "1"])
    task = launch.JobTask("mlp/fold-3", args, None, str(fake_python), str(tmp_path))
    outcome: list[BaseException] = []

    def run_task() -> None:
        try:
            task()
        except launch.JobFailed as error:
            outcome.append(error)

    runner = threading.Thread(target=run_task)
    runner.start()
    deadline = time.monotonic() + 30
    while not (task._child and task._child.tail):  # started and printing
        assert time.monotonic() < deadline
        time.sleep(0.05)

    requeued = task.checkpoint()  # what submitit's USR2 handler calls
    assert task._child.returncode == launch.PREEMPTED_EXIT  # stopped and waited for before returning
    fresh = requeued.function
    assert fresh == task and fresh is not task and fresh._child is None and requeued.args == ()
    assert pickle.loads(pickle.dumps(fresh)) == task  # small strings only: what submitit pickles
    runner.join(30)
    # Stopped with no requeue to follow (here: none at all) is a failure, not a success.
    assert "no requeue followed" in str(outcome[0]) and "training" in str(outcome[0])


# --- end to end -------------------------------------------------------------------------------------------------


def submit_locally(what: list[str], mnist_mini: Path, tmp_path: Path) -> tuple[Path, subprocess.CompletedProcess]:
    """`submit --executor local ... --wait` of `what` on QUICK: (its results folder, the finished command)."""
    out = tmp_path / "results"
    done = cli(
        "submit", "--executor", "local", *DIRTY_OK, *what, *QUICK, "--data-dir", str(mnist_mini),
        "--results", str(out), "--gpus-per-task", "0", "--wait",
        cwd=tmp_path, env=ENV,
    )  # fmt: skip
    return out, done


@pytest.mark.slow
def test_the_local_executor_runs_two_pairs_and_waits_for_them(mnist_mini: Path, tmp_path: Path) -> None:
    out, done = submit_locally(["--task-ids", "0,5"], mnist_mini, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "submitted 2 pairs" in done.stdout and f"logs: {out / 'default' / 'logs'}" in done.stdout
    assert "[2/2]" in done.stdout and "held-out accuracy" in done.stdout
    assert last_line(done.stdout) == "collect: skipped, 8 pairs not done (task ids 1-4,6-9)"
    for pair in (Pair("mlp", 0), Pair("cnn", 0)):
        result = results.read_result(RunLayout(out, "default").pair_paths(pair).result)
        assert result["config"]["epochs"] == 1 and result["environment"]["slurm"] is None


@pytest.mark.slow
def test_the_final_model_is_submitted_the_same_way(mnist_mini: Path, tmp_path: Path) -> None:
    out, done = submit_locally(["--final", "mlp"], mnist_mini, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "submitted 1 final model" in done.stdout and "  mlp/final  job " in done.stdout
    assert "[1/1] mlp/final: test accuracy" in done.stdout
    layout = RunLayout(out, "default")
    result = results.check_final(layout.final_paths("mlp").result, layout)
    assert result.config.epochs == 1 and result.data.n_train == 100


def test_the_debug_executor_runs_in_this_process_and_reports_a_failed_pair(tmp_path: Path) -> None:
    done = cli(
        "submit", "--executor", "debug", *DIRTY_OK, "--task-ids", "3", "--data-dir", str(tmp_path / "nowhere"),
        "--results", str(tmp_path), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    report = done.stdout.split("[1/1] FAILED mlp/fold-3 [job DEBUG_")[1]
    assert f"{tmp_path / 'nowhere'}: no such file or folder" in report
    assert last_line(done.stderr) == (
        "mnist-cv submit: error: 1 of 1 pair failed (mlp/fold-3); the same command resubmits only the pair not done"
    )


# --- on the real local Slurm cluster ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> dict[str, str]:
    return ensure_cluster()


def job_ids(stdout: str) -> list[str]:
    """The job ids `submit` prints, one line per pair ("  mlp/fold-0  job 103_0")."""
    return re.findall(r"^  \S+  job (\S+)$", stdout, flags=re.MULTILINE)


@pytest.mark.slurm
def test_pairs_blocked_by_a_path_are_refused_before_anything_is_submitted_then_each_pair_runs_once(
    cluster: dict[str, str], mnist_mini: Path, tmp_path: Path
) -> None:
    """Refused while a path is in the way; once it is gone the ten pairs run and collect follows. The same `submit`
    again while they are queued or running sees them (the first's submission record) and submits nothing: sacct
    shows ten tasks, each pair's once."""
    out = tmp_path / "results"
    blocker = out / "default" / "cnn"  # a file where the cnn results go: the five cnn pairs could only fail
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")
    # A GPU when the node declares some: the request must reach Slurm, and the job records what it got.
    gpus = "1" if cluster["gres"].startswith("gpu:") else "0"
    command = ["submit", "--executor", "slurm", *DIRTY_OK, *QUICK, "--data-dir", str(mnist_mini), "--results", str(out),
               *SMALL_TASK, "--gpus-per-task", gpus, "--wait"]  # fmt: skip

    first = cli(*command, cwd=tmp_path, env=ENV)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "submitted" not in first.stdout and not (out / "default" / "submissions.jsonl").exists()
    refusal = last_line(first.stderr)
    assert refusal.startswith("mnist-cv submit: error: a task would fail at once on a path in the way: cnn/fold-0 (")
    assert f"{blocker} is in the way: it should be a folder" in refusal

    blocker.unlink()
    waiting = subprocess.Popen(
        [sys.executable, "-m", "job", *command], cwd=tmp_path, env={**os.environ, **ENV}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        printed = []
        for line in waiting.stdout:  # type: ignore[union-attr]
            printed.append(line)
            if len(job_ids("".join(printed))) == 10:
                break
        again = cli(*[arg for arg in command if arg != "--wait"], cwd=tmp_path, env=ENV)
        stdout, stderr = waiting.communicate(timeout=600)
    finally:
        waiting.kill()
    second = subprocess.CompletedProcess(waiting.args, waiting.returncode, "".join(printed) + stdout, stderr)
    assert second.returncode == 0, second.stdout + second.stderr
    submitted = re.findall(r"^  (\S+)  job ", second.stdout, flags=re.MULTILINE)
    assert "submitted 10 pairs" in second.stdout and submitted == [str(pair) for pair in all_pairs()]
    assert again.returncode == 0 and again.stdout.startswith("nothing to submit"), again.stdout + again.stderr
    array = job_ids(second.stdout)[0].split("_")[0]
    states = wait_for_jobs(array, timeout=120)
    assert sorted(states) == sorted(f"{array}_{i}" for i in range(10)) and set(states.values()) == {"COMPLETED"}
    finished = status(RunLayout(out, "default"), Protocol().with_overrides(epochs=1, limit=100))
    assert [s.state for s in finished] == [PairState.DONE] * 10
    assert (out / "default" / "summary.json").is_file(), "collect did not run"
    assert "wrote summary.json" in second.stdout
    for pair in all_pairs():
        result = results.read_result(RunLayout(out, "default").pair_paths(pair).result)
        slurm = result["environment"]["slurm"]
        assert slurm["job_name"] == "mnist-cv-pairs" and slurm["cpus_per_task"] == "1"
        if gpus == "1":
            assert slurm["gpus_on_node"] == "1" and result["environment"]["device_used"].startswith("CPU")


@pytest.mark.slurm
def test_a_preempted_pair_is_requeued_and_ends_as_if_uninterrupted(
    cluster: dict[str, str], mnist_mini: Path, tmp_path: Path
) -> None:
    out = tmp_path / "results"
    # A cnn epoch on 800 images takes about 6 CPU-seconds (34-62 s on a loaded machine): once epoch 1 is
    # checkpointed, two more leave time to preempt it before the training ends.
    command = ["submit", "--executor", "slurm", *DIRTY_OK, "--task-ids", "5", "--epochs", "3", "--limit", "1000",
               "--custom-data", "--data-dir", str(mnist_mini), "--results", str(out), *SMALL_TASK,
               "--gpus-per-task", "0"]  # fmt: skip
    reference = cli(*command, "--run", "reference", cwd=tmp_path, env=ENV)
    assert reference.returncode == 0, reference.stderr
    # The preempted pair's submitter waits through the requeue, as a user's would.
    waiting = subprocess.Popen(
        [sys.executable, "-m", "job", *command, "--run", "preempted", "--wait"],
        cwd=tmp_path,
        env={**os.environ, **ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        job_id = next((ids[0] for line in waiting.stdout if (ids := job_ids(line))), None)
        assert job_id is not None, waiting.communicate()
        state = RunLayout(out, "preempted").pair_paths(Pair("cnn", 0)).checkpoint / "state.json"
        deadline = time.monotonic() + 120
        while not (state.exists() and json.loads(state.read_text())["epochs_done"] >= 1):
            assert time.monotonic() < deadline, "no epoch checkpointed in time"
            time.sleep(0.2)
        submitit.SlurmJob(out / "preempted" / "logs", job_id)._interrupt()  # preemption: TERM, then USR2
        stdout, stderr = waiting.communicate(timeout=240)
    finally:
        waiting.kill()
    assert waiting.returncode == 0, stdout + stderr
    assert "held-out accuracy" in stdout
    reference_id = job_ids(reference.stdout)[0]
    assert wait_for_jobs(reference_id, timeout=120) == {reference_id: "COMPLETED"}

    assert wait_for_jobs(job_id) == {job_id: "COMPLETED"}  # sacct has caught up; -D shows every run
    runs = subprocess.run(["sacct", "-j", job_id, "-D", "-X", "-nP", "-o", "State"], capture_output=True, text=True)
    assert runs.stdout.split() == ["REQUEUED", "COMPLETED"]
    log = (out / "preempted" / "logs" / f"{job_id}_0_log.out").read_text()
    assert "Calling checkpoint method" in log and "resuming from the checkpoint after epoch" in log
    preempted = results.read_result(RunLayout(out, "preempted").pair_paths(Pair("cnn", 0)).result)
    uninterrupted = results.read_result(RunLayout(out, "reference").pair_paths(Pair("cnn", 0)).result)
    assert preempted["resume"]["count"] >= 1 and preempted["resume"]["from_epochs"][0] >= 1
    assert preempted["environment"]["slurm"]["restart_count"] == "1"
    assert uninterrupted["resume"] == {"count": 0, "from_epochs": []}
    assert preempted["history"] == uninterrupted["history"] and preempted["score"] == uninterrupted["score"]


@pytest.mark.slurm
@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        # More GPUs than the node has (or any GPU on a node without): refused at once, never dropped silently.
        (["--gpus-per-task", "9"], "(Requested node configuration is not available|Invalid generic resource)"),
        (["--partition", "nosuch", "--gpus-per-task", "0"], "Invalid partition name specified"),
    ],
)
def test_a_refused_submission_is_a_one_line_error(
    cluster: dict[str, str], argv: list[str], reason: str, tmp_path: Path
) -> None:
    done = cli("submit", "--executor", "slurm", *DIRTY_OK, "--results", str(tmp_path), *SMALL_TASK, *argv, cwd=tmp_path)
    assert done.returncode == 1
    assert re.fullmatch(
        f"mnist-cv submit: error: sbatch refused the array: sbatch: error: .*{reason}.*", last_line(done.stderr)
    )
