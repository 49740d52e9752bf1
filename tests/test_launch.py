"""job/launch/argv.py and resources.py: the task command line built once (for slurm/job-step.sh and for submit),
on a Python without TensorFlow or numpy; the resources read from the #SBATCH lines; `submit --dry-run` and
`sbatch --test-only` submitting nothing."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import cli
from support.cluster import ensure_cluster

from job.cli import build_parser, submit
from job.launch import argv as launch_argv
from job.launch import resources, submission
from job.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
QUICK = ("--epochs", "1", "--limit", "1000")


def host_python(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """This interpreter with no site-packages (-S): no TensorFlow, numpy, submitit, as a cluster's host python3."""
    clean = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-S", *args], cwd=ROOT, env={**clean, **(env or {})}, capture_output=True, text=True
    )


# --- the command line ---------------------------------------------------------------------------------------------


def test_argv_needs_only_the_standard_library() -> None:
    probe = "import sys; import job.launch.argv, job.launch.resources, job.settings; print(sorted(sys.modules))"
    done = host_python("-c", probe)
    assert done.returncode == 0, done.stderr
    loaded = set(eval(done.stdout))
    assert not loaded & {"numpy", "tensorflow", "keras", "submitit", "sklearn"}
    done = host_python("-m", "job.launch.argv", "run", "--task-id", "0", env={"MNIST_CV_PYTHON": "/venv/python"})
    assert done.returncode == 0, done.stderr
    assert shlex.split(done.stdout)[-6:] == ["/venv/python", "-m", "job", "run", "--task-id", "0"]


def test_binds_come_from_the_jobs_arguments_else_the_settings(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    image = tmp_path / "img.sif"
    image.write_bytes(b"x")
    told = Settings.from_env({"MNIST_CV_DATA": str(tmp_path / "data"), "MNIST_CV_RESULTS": "out"})
    command = launch_argv.task_command(("run",), image=str(image), python="p", workdir=str(tmp_path), told=told)
    assert command.argv[:5] == ["apptainer", "exec", "--nv", "--bind", f"{tmp_path},{tmp_path}/data,{tmp_path}/out"]
    assert command.env["MNIST_CV_IMAGE_SHA256"] == launch_argv.image_digest(str(image))
    assert not (tmp_path / "out").exists()  # building the line creates nothing (--dry-run); prepare() does
    command.prepare()
    assert (tmp_path / "out").is_dir()
    # Arguments win over the settings; a data folder that is not there is not bound (the job then says so).
    given = ("run", "--data-dir", "nowhere", "--results=/abs/res")
    command = launch_argv.task_command(given, image=str(image), python="p", workdir=str(tmp_path), told=told)
    assert command.argv[4] == f"{tmp_path},/abs/res"
    # Without an image: the settings' interpreter, and the commit still told (a code snapshot has no .git).
    plain = launch_argv.task_command(("run",), image=None, python="/venv/python", workdir="/w", told=told)
    assert plain.argv == ["/venv/python", "-m", "job", "run"]
    assert set(plain.env) <= {"MNIST_CV_GIT_COMMIT", "MNIST_CV_GIT_DIRTY"}


def test_in_a_snapshot_relative_folders_are_the_submit_folders(tmp_path: Path) -> None:
    told = Settings.from_env({"MNIST_CV_DATA": "data", "MNIST_CV_RESULTS": "out"})
    args = ("run", "--results", "r1", "--data-dir=d1", "--epochs", "1")
    command = launch_argv.task_command(args, image=None, python="p", workdir="/code", told=told, base="/submit")
    assert command.argv == [
        "p",
        "-m",
        "job",
        "run",
        "--results",
        "/submit/r1",
        "--data-dir=/submit/d1",
        "--epochs",
        "1",
    ]
    assert (command.env["MNIST_CV_RESULTS"], command.env["MNIST_CV_DATA"]) == ("/submit/r1", "/submit/d1")
    command = launch_argv.task_command(("run",), image=None, python="p", workdir="/code", told=told, base="/submit")
    assert (command.env["MNIST_CV_RESULTS"], command.env["MNIST_CV_DATA"]) == ("/submit/out", "/submit/data")


def test_job_step_sh_runs_the_line_job_launch_argv_builds(tmp_path: Path) -> None:
    """The batch scripts' side: task_command in job-step.sh fills `job` with exactly the Python function's argv."""
    image = tmp_path / "img.sif"
    image.write_bytes(b"x")
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith("MNIST_CV_")},
        "MNIST_CV_PYTHON": sys.executable,
        "MNIST_CV_IMAGE": str(image),
        "MNIST_CV_RESULTS": str(tmp_path / "res"),
        "SLURM_JOB_ID": "1",
        "SLURM_JOB_NAME": "t",
    }
    script = '. slurm/job-step.sh >/dev/null && task_command "$@" && printf "%s\\0" "${job[@]}"'
    done = subprocess.run(
        ["bash", "-c", script, "bash", "run", "--task-id", "4", *QUICK],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    expected = launch_argv.task_command(
        ("run", "--task-id", "4", *QUICK),
        image=str(image),
        python=sys.executable,
        workdir=str(ROOT),
        told=Settings.from_env(env),
    )
    assert done.stdout.split("\0")[:-1] == expected.with_env()
    assert (tmp_path / "res").is_dir()  # made before the task starts, so the image can bind it


# --- resources ----------------------------------------------------------------------------------------------------


def test_the_batch_scripts_sbatch_lines_are_the_resources() -> None:
    assert resources.pairs() == resources.Resources("mnist-cv-pairs", 25, 1, 1, 3.5, True, 180)
    assert resources.final() == resources.Resources("mnist-cv-final", 30, 1, 1, 3.5, True, 180)
    # ... and the README says what array.sh asks.
    pairs = resources.sbatch_options(resources.PAIRS_SCRIPT)
    asked = " ".join(f"--{key}={pairs[key]}" for key in ("gres", "cpus-per-task", "mem", "time"))
    assert f"The script asks for `{asked}`" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("final", [False, True])
def test_submit_defaults_are_the_scripts(final: bool) -> None:
    asked = resources.final() if final else resources.pairs()
    args = build_parser().parse_args(["submit", *(["--final", "mlp"] if final else [])])
    params = submission.executor_parameters(submit.request_from_args(args))
    assert params == {
        "name": asked.job_name,
        "timeout_min": asked.time_min,
        "gpus_per_node": asked.gpus,
        "cpus_per_task": asked.cpus,
        "mem_gb": asked.mem_gb,
        "slurm_signal_delay_s": asked.warning_s,
        "slurm_additional_parameters": {"requeue": asked.requeue},
    }


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("01:00:00", 60), ("2-00:00:00", 2880), ("90", 90), ("10:30", 11), ("1-1", 1500), ("1-0:30", 1470)],
)
def test_slurm_times_in_minutes(text: str, minutes: int) -> None:
    assert resources.minutes(text) == minutes


@pytest.mark.parametrize(("text", "gb"), [("16G", 16.0), ("16384M", 16.0), ("2048", 2.0), ("1T", 1024.0)])
def test_slurm_memory_in_gb(text: str, gb: float) -> None:
    assert resources.gigabytes(text) == gb


# --- submitting nothing -------------------------------------------------------------------------------------------


def jobs_run_in(folder: Path, since: str) -> list[str]:
    """The Slurm jobs (queued, running or finished since `since`) whose working folder is `folder`."""
    queued = subprocess.run(["squeue", "-h", "-o", "%i|%Z"], capture_output=True, text=True, check=True)
    past = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-o", "JobID,WorkDir", "-S", since], capture_output=True, text=True, check=True
    )
    rows = (line.split("|") for line in (queued.stdout + past.stdout).splitlines() if "|" in line)
    return [job for job, workdir in rows if Path(workdir) == folder]


@pytest.mark.slurm
def test_dry_run_prints_the_plan_and_submits_nothing(mnist_full: Path, tmp_path: Path) -> None:
    ensure_cluster()
    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    out = tmp_path / "results"
    done = cli("submit", "--dry-run", "--allow-dirty", "--task-ids", "0,7", *QUICK, "--data-dir", str(mnist_full),
               "--results", str(out), cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert re.fullmatch(r"would submit 2 pairs of config [0-9a-f]{12} \(slurm\), each task running:", lines[0])
    for line, (name, task_id) in zip(lines[1:3], [("mlp/fold-0", 0), ("cnn/fold-2", 7)], strict=True):
        assert line.startswith(f"  {name}: env MNIST_CV_GIT_COMMIT=")
        command = shlex.split(line.split(": ", 1)[1])
        assert command[command.index("-m") :] == [
            "-m", "job", "run", "--task-id", str(task_id), "--results", str(out), "--run", "default",
            "--data-dir", str(mnist_full), *QUICK,
        ]  # fmt: skip
    assert lines[3] == (
        "resources: name=mnist-cv-pairs, timeout_min=25, cpus_per_task=1, mem_gb=3.5, slurm_signal_delay_s=180, "
        "slurm_additional_parameters={'requeue': True}, gpus_per_node=1"
    )
    assert re.fullmatch(f"code: {out}/default/code/[0-9a-f]{{40}}(-dirty-[0-9a-f]{{12}})? \\(commit .*", lines[4])
    assert lines[5].startswith(f"logs: {out}/default/logs/JOB_0_log.out and .err")
    assert list(tmp_path.iterdir()) == []  # no results or logs folder
    assert jobs_run_in(tmp_path, since) == []


def test_submit_keep_model_is_forwarded_to_each_tasks_run(tmp_path: Path) -> None:
    out = tmp_path / "results"
    common = ("submit", "--dry-run", "--executor", "local", "--allow-dirty", "--keep-model", *QUICK)
    for which, expected in [
        (("--task-ids", "0,7"), [["run", "--task-id", "0", "--keep-model"], ["run", "--task-id", "7", "--keep-model"]]),
        (("--pack", "5"), [["run", "--task-ids", "0-4", "--keep-model"], ["run", "--task-ids", "5-9", "--keep-model"]]),
    ]:
        done = cli(*common, *which, "--results", str(out), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        tasks = [shlex.split(line.split(": ", 1)[1]) for line in done.stdout.splitlines()[1:3]]
        assert [task[task.index("job") + 1 :] for task in tasks] == [
            [*head, "--results", str(out), "--run", "default", *QUICK] for head in expected
        ]
    final = cli("submit", "--dry-run", "--final", "mlp", "--keep-model", "--results", str(out), cwd=tmp_path)
    assert final.returncode == 2 and "--keep-model keeps the pairs' weights: not with --final" in final.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slurm
def test_sbatch_test_only_checks_the_batch_scripts_without_submitting(tmp_path: Path) -> None:
    ensure_cluster()
    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    small = ("-c", "1", "--mem=3G")  # the local node has 2 CPUs: the scripts' 4 would be refused, as they should
    for script in ("array.sh", "final.sh"):
        done = subprocess.run(
            ["sbatch", "--test-only", *small, str(ROOT / "slurm" / script)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        assert re.search(r"sbatch: Job \d+ to start at \S+ using \d+ processors on nodes \S+", done.stderr)
    assert jobs_run_in(tmp_path, since) == []
