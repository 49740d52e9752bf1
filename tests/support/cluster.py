"""Helpers for tests that submit real jobs to the local Slurm cluster (start-local-slurm.sh).

Import it from a test module (``from support.cluster import ensure_cluster``: pytest puts ``tests/`` on
``sys.path``), and wrap ``ensure_cluster`` in a session fixture. ``MNIST_CV_SLURM`` decides what happens
when no cluster answers: ``0`` skips the Slurm tests, ``1`` starts one and makes a failure an error,
unset starts one when that can work here (root, and apt-get or the packages present) and skips otherwise.
A cluster this module starts is left running for the next session (a warm start is ~2 s, a no-op 0.3 s);
``tests/slurm/stop-local-slurm.sh`` stops it.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from . import ROOT

START_SCRIPT = ROOT / "tests" / "slurm" / "start-local-slurm.sh"  # the scripts stay in tests/slurm/ (CI and docs)
# written into every config file the start script manages: a cluster without it is not ours to restart
MANAGED_MARKER = "# managed-by: start-local-slurm.sh"
SLURM_CONF = Path("/etc/slurm/slurm.conf")
USABLE_NODE_STATES = {"idle", "mix", "alloc"}
StrPath = str | os.PathLike[str]


class SlurmError(RuntimeError):
    """A Slurm command failed; the message holds its stderr."""


def _run(
    args: list[str],
    cwd: StrPath | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 30,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=env, timeout=timeout, stdin=subprocess.DEVNULL, capture_output=True, text=True
    )


def cluster_info() -> dict[str, str] | None:
    """The default partition's node as sinfo reports it, or None when no usable cluster answers.

    Keys: partition, node, state, gres ("gpu:2", or "(null)" without GPUs), cpus, memory_mb.
    """
    try:
        # sinfo retries for ~9 s when slurmctld is down; `scontrol ping` answers at once
        if _run(["scontrol", "ping"]).returncode != 0:
            return None
        out = _run(["sinfo", "-h", "-N", "-o", "%P|%N|%t|%G|%c|%m"])
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        partition, node, state, gres, cpus, memory = line.split("|")
        if partition.endswith("*") and state in USABLE_NODE_STATES:
            return {
                "partition": partition.rstrip("*"),
                "node": node,
                "state": state,
                "gres": gres,
                "cpus": cpus,
                "memory_mb": memory,
            }
    return None


def _start(fake_gpus: int | None = None) -> dict[str, str] | str:
    """Run the start script; the cluster's info, or the reason it failed."""
    env = dict(os.environ)
    if fake_gpus is not None:
        env["SLURM_FAKE_GPUS"] = str(fake_gpus)
    t0 = time.monotonic()
    out = _run(["bash", str(START_SCRIPT)], env=env, timeout=600)
    print(f"{out.stdout}{out.stderr}start-local-slurm.sh: rc={out.returncode}, {time.monotonic() - t0:.1f}s")
    info = cluster_info()
    if out.returncode != 0 or info is None:
        return f"start-local-slurm.sh failed (rc={out.returncode}):\n{(out.stdout + out.stderr)[-3000:]}"
    return info


@functools.cache
def _cluster_once() -> dict[str, str] | str:
    """The running cluster's info, or why there is none; cached so a session tries to start it once.

    A cluster our start script manages is brought to the default config (its fake GPUs) whatever state an earlier
    run left it in: the tests that submit `slurm/array.sh` ask for a GPU and need two for two tasks at once."""
    info = cluster_info()
    if info is not None:
        managed = SLURM_CONF.is_file() and MANAGED_MARKER in SLURM_CONF.read_text()
        return _start() if managed else info  # a no-op (~0.3 s) when the config is already the default
    if os.environ.get("MNIST_CV_SLURM") != "1":
        if os.geteuid() != 0:
            return "no Slurm cluster answers, and starting one needs root (MNIST_CV_SLURM=1 to insist)"
        if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
            return "no Slurm cluster answers, and neither Slurm nor apt-get is installed"
    return _start()


def ensure_cluster() -> dict[str, str]:
    """The usable cluster's info (see cluster_info) as of the session's first call, starting it if needed."""
    mode = os.environ.get("MNIST_CV_SLURM")
    if mode == "0":
        pytest.skip("MNIST_CV_SLURM=0: Slurm tests disabled")
    result = _cluster_once()
    if isinstance(result, str):
        if mode == "1":
            pytest.fail(f"MNIST_CV_SLURM=1 but no Slurm cluster: {result}", pytrace=False)
        pytest.skip(result)
    return result


def reconfigure(fake_gpus: int | None = None) -> dict[str, str]:
    """Re-run the start script on the managed cluster, declaring ``fake_gpus`` fake GPUs (0: none).

    None means the default config (SLURM_FAKE_GPUS from our environment, else the script's 2). A no-op
    (~0.3 s) when nothing changes; otherwise slurmctld and slurmd restart (~2-3 s), so switch only with
    an empty queue. Returns the new info. Skips the test on a cluster the script did not configure.
    """
    ensure_cluster()
    if not (SLURM_CONF.is_file() and MANAGED_MARKER in SLURM_CONF.read_text()):
        pytest.skip(f"{SLURM_CONF} is not managed by {START_SCRIPT.name}: cannot reconfigure it")
    result = _start(fake_gpus)
    if isinstance(result, str):
        raise SlurmError(result)
    return result


def submit(args: list[str], cwd: StrPath | None = None, env: Mapping[str, str] | None = None) -> str:
    """``sbatch --parsable *args``; the job id. The job inherits ``env`` (default: ours), runs in ``cwd``."""
    out = _run(["sbatch", "--parsable", *args], cwd=cwd, env=env, timeout=60)
    if out.returncode != 0:
        raise SlurmError(f"sbatch {' '.join(args)} failed (rc={out.returncode}): {out.stderr.strip()}")
    return out.stdout.strip().split(";")[0]  # "ID" or "ID;cluster"


def _controller_states(job_id: str) -> dict[str, str]:
    """Task -> state from slurmctld's memory (finished jobs stay there for MinJobAge, 300 s)."""
    out = _run(["scontrol", "-o", "show", "job", job_id])
    states: dict[str, str] = {}
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        task = fields.get("ArrayTaskId")
        states[f"{fields['ArrayJobId']}_{task}" if task else fields["JobId"]] = fields["JobState"]
    return states


def wait_for_jobs(job_id: str, timeout: float = 120) -> dict[str, str]:
    """Wait until job ``job_id`` (all its array tasks) has ended and sacct reports it; task -> state.

    Keys are sacct's JobID ("12" or "12_3" for array tasks), values its State ("COMPLETED",
    "FAILED", "CANCELLED by 0"...). sacct lags squeue: slurmctld sends records to slurmdbd
    asynchronously, and right after squeue drops an array sacct may list only some of its tasks,
    the last one under the plain job id. So sacct is polled until it agrees with slurmctld's own states.
    """
    deadline = time.monotonic() + timeout
    while _run(["squeue", "-h", "-j", job_id, "-o", "%i"]).stdout.strip():
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still queued after {timeout}s")
        time.sleep(0.2)
    expected = _controller_states(job_id)
    while True:
        out = _run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "JobID,State"])
        if out.returncode != 0:
            raise SlurmError(f"sacct failed (is accounting on?): {out.stderr.strip()}")
        states = dict(line.split("|", 1) for line in out.stdout.splitlines())
        # Without slurmctld's record (ended over MinJobAge ago), sacct settled long ago.
        if states and all(states.get(t, "").split(" ")[0] == s for t, s in expected.items()):
            return states
        if time.monotonic() > deadline:
            raise TimeoutError(f"sacct for job {job_id} shows {states}, slurmctld says {expected}")
        time.sleep(0.2)


# --- the project's own array script, as the tests submit it -------------------------------------------------------

ARRAY_SCRIPT = ROOT / "slurm" / "array.sh"


def squeue_line(job: str, tasks: str, state: str, workdir: StrPath, command: str) -> str:
    """One line of squeue's as job/slurm.py asks for it (Slurm 22.05: each field ended by the unit separator), of a
    job named as slurm/array.sh names its own."""
    reason = "BeginTime" if state == "PENDING" else "None"
    node, used = ("", "0:00") if state == "PENDING" else ("localhost", "1:05")
    fields = [job, tasks, state, reason, node, used, "0", "1:00:00", "mnist-cv-pairs", str(workdir), command]
    return "".join(f"{field}\x1f" for field in fields)


def sacct(job: str, *fields: str) -> dict[str, dict[str, str]]:
    """Task -> {field: value} for each array task of `job`."""
    out = subprocess.run(
        ["sacct", "-j", job, "-X", "-n", "-P", "-o", ",".join(("JobID", *fields))],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = (line.split("|") for line in out.stdout.splitlines())
    return {row[0]: dict(zip(fields, row[1:], strict=True)) for row in rows}


def sacct_runs(job: str) -> dict[str, list[str]]:
    """Task -> the state of each of its runs, oldest first (-D keeps the runs that a requeue ended)."""
    out = subprocess.run(
        ["sacct", "-j", job, "-X", "-D", "-n", "-P", "-o", "JobID,State"], capture_output=True, text=True, check=True
    )
    runs: dict[str, list[str]] = {}
    for line in out.stdout.splitlines():
        task, state = line.split("|", 1)
        runs.setdefault(task, []).append(state.split(" ")[0])
    return runs


def with_gpus() -> dict[str, str]:
    """The cluster with its fake GPUs: slurm/array.sh asks for one GPU per task."""
    info = ensure_cluster()
    return info if info["gres"].startswith("gpu:") else reconfigure()


def array_env(data: StrPath, results: StrPath, **extra: str) -> dict[str, str]:
    """The environment a user submits slurm/array.sh with, for a job that writes under `results`."""
    return {
        **os.environ,
        "MNIST_CV_ALLOW_CPU": "1",  # the fake GPUs are allocated but TensorFlow sees none
        "MNIST_CV_PYTHON": sys.executable,  # jobs do not inherit the venv of pytest (gotcha 1 in README.md)
        "MNIST_CV_HOME": str(ROOT),  # the checkout: where slurm/job-step.sh is
        "MNIST_CV_DATA": str(data),
        "MNIST_CV_RESULTS": str(results),
        "MNIST_CV_RUN": "default",
        **extra,
    }


def submit_array(folder: StrPath, env: Mapping[str, str], job_args: Sequence[str], *sbatch_options: str) -> str:
    """sbatch the unchanged slurm/array.sh from `folder`, where its logs land; the job id."""
    # -c 1 --mem=3G: two tasks at a time on this 2-CPU node, whatever the script asks
    options = ["--cpus-per-task=1", "--mem=3G", f"--chdir={folder}", *sbatch_options]
    return submit([*options, str(ARRAY_SCRIPT), *job_args], cwd=folder, env=env)
