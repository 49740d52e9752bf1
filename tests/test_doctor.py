"""`mnist-cv doctor`, as a user runs it: on this CPU machine (each check's verdict, the GPU check skipped), with no
data, and inside a real Slurm task with a fake GPU allocated, which TensorFlow cannot see: that must fail, naming
what was allocated."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT, cli
from support.cluster import submit, wait_for_jobs, with_gpus

from job.pair import runtime

STEPS = ("--steps", "5")
NAMES = ["python", "packages", "slurm", "image", "build", "gpu", "threads", "cpu", "data", "steps"]


def checks(stdout: str) -> dict[str, tuple[str, str]]:
    """name -> (verdict, detail) of each check line (the last line is the count)."""
    found = {}
    for line in stdout.splitlines()[:-1]:
        name, verdict, detail = line.split(maxsplit=2)
        found[name] = (verdict, detail)
    return found


def outside_slurm() -> dict[str, str]:
    """Our environment without Slurm's variables: pytest may itself run inside an allocation."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}


@pytest.mark.slow  # one TensorFlow start-up and two short trainings
def test_on_this_cpu_machine_every_check_passes_or_says_why_it_is_skipped(mnist_mini: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "job", "doctor", "--data-dir", str(mnist_mini), "--custom-data", *STEPS],
        capture_output=True,
        text=True,
        env={**outside_slurm(), "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    found = checks(done.stdout)
    assert list(found) == NAMES and done.stdout.splitlines()[-1] == f"{len(NAMES)} checks: none failed"
    verdicts = {name: verdict for name, (verdict, _) in found.items()}
    assert verdicts == {**dict.fromkeys(NAMES, "ok"), "slurm": "skip", "image": "skip", "gpu": "skip"}
    assert found["slurm"][1].startswith("not inside a Slurm job")
    assert found["gpu"][1].startswith("no GPU allocated or visible: the GPU checks are skipped")
    assert found["packages"][1].startswith("tensorflow 2.") and "keras 3." in found["packages"][1]
    isa = runtime.cpu_isa()  # this process's environment is the doctor's: the same cap, if any
    cap = f"capped at {isa['onednn_max_cpu_isa']}" if isa["onednn_max_cpu_isa"] else "uses them as found"
    assert f", extensions {' '.join(isa['extensions']) or 'none known'}; oneDNN {cap}: " in found["cpu"][1]
    assert found["data"][1] == f"6,000 training and 1,000 test images from {mnist_mini}: custom data, structure valid"
    steps = found["steps"][1]
    assert steps.startswith("5 steps of mlp (batch 32) on CPU:0") and "twice from one seed: identical weights" in steps
    assert "images, labels and weights on CPU:0; no host call-outs in the step" in steps


def test_without_data_the_data_check_fails_and_the_steps_are_skipped(tmp_path: Path) -> None:
    done = cli("doctor", "--data-dir", str(tmp_path / "nowhere"), *STEPS, env={"MNIST_CV_CACHE": str(tmp_path)})
    assert done.returncode == 1, done.stdout + done.stderr
    found = checks(done.stdout)
    assert found["data"][0] == "fail" and str(tmp_path / "nowhere") in found["data"][1]
    assert found["steps"] == ("skip", "no data to train on (see data above)")
    assert done.stdout.splitlines()[-1] == f"{len(NAMES)} checks: failed: data"


@pytest.mark.slurm
def test_in_a_slurm_task_with_a_gpu_allocated_that_tensorflow_cannot_see_the_gpu_check_fails(
    mnist_mini: Path, tmp_path: Path
) -> None:
    with_gpus()
    command = f"{sys.executable} -m job doctor --data-dir {mnist_mini} --custom-data {' '.join(STEPS)}"
    job = submit(
        ["--gres=gpu:1", "--cpus-per-task=1", "--mem=3G", f"--output={tmp_path}/doctor.out", "--wrap", command],
        cwd=ROOT,
        env={**outside_slurm(), "PYTHONPATH": str(ROOT)},
    )
    state = wait_for_jobs(job, timeout=300)[job]
    out = (tmp_path / "doctor.out").read_text()
    assert state.startswith("FAILED"), out  # exit 1: a check failed
    found = checks("\n".join(line for line in out.splitlines() if line.split(" ", 1)[0] in NAMES) + "\nend")
    verdict, detail = found["gpu"]
    assert verdict == "fail" and detail.startswith("a GPU was allocated (SLURM_GPUS_ON_NODE=1"), out
    assert "but TensorFlow sees none" in detail
    assert found["slurm"][0] == "ok" and f"job {job} on " in found["slurm"][1]
    assert "1 CPU allocated" in found["slurm"][1]
    # The rest of the node still checks out: it trains, on the CPU, deterministically.
    assert found["steps"][0] == "ok" and "identical weights" in found["steps"][1]
    assert f"{len(NAMES)} checks: failed: gpu" in out


@pytest.mark.parametrize("name", ["../mlp", "mlp[bold]", "nosuch"])
def test_a_model_name_that_is_no_model_is_one_line_exit_2(name: str) -> None:
    done = cli("doctor", "--model", name)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize(
    ("env", "shown"),
    [
        ({"SLURM_JOB_GPUS": "0"}, {"SLURM_JOB_GPUS": "0"}),  # GPU index 0 is a GPU, not none
        ({"SLURM_GPUS_ON_NODE": "0", "SLURM_STEP_GPUS": ""}, {}),
        ({"SLURM_GPUS_ON_NODE": "2", "SLURM_STEP_GPUS": "0,1"}, {"SLURM_GPUS_ON_NODE": "2", "SLURM_STEP_GPUS": "0,1"}),
    ],
)
def test_what_slurm_allocated_is_read_once_for_doctor_and_for_a_training(
    env: dict[str, str], shown: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in (runtime.GPU_COUNT_VARIABLE, *runtime.GPU_LIST_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert runtime.allocated_gpus() == shown
    assert runtime.gpu_requested() == bool(shown)
