"""What produced a result: interpreter and package versions, host, Slurm ids, git commit, container image."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from job.settings import settings

PACKAGES = ("tensorflow", "keras", "numpy", "mnist-cv")

# Slurm's variables worth keeping, under shorter names.
SLURM_VARS = {
    "job_id": "SLURM_JOB_ID",
    "array_job_id": "SLURM_ARRAY_JOB_ID",
    "array_task_id": "SLURM_ARRAY_TASK_ID",
    "job_name": "SLURM_JOB_NAME",
    "partition": "SLURM_JOB_PARTITION",
    "node": "SLURMD_NODENAME",
    "cpus_per_task": "SLURM_CPUS_PER_TASK",
    "gpus": "SLURM_JOB_GPUS",
    "gpus_on_node": "SLURM_GPUS_ON_NODE",
    "restart_count": "SLURM_RESTART_COUNT",
    "cuda_visible_devices": "CUDA_VISIBLE_DEVICES",
}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def slurm() -> dict[str, str] | None:
    if "SLURM_JOB_ID" not in os.environ:
        return None
    return {key: os.environ[var] for key, var in SLURM_VARS.items() if var in os.environ}


def git() -> dict[str, Any] | None:
    """The commit of the code that ran: from the launcher (images carry no .git), else from a source checkout."""
    told = settings()
    if told.git_commit:
        return {"commit": told.git_commit, "dirty": told.git_dirty}
    source = Path(__file__).resolve().parent
    try:
        commit = _git(source, "rev-parse", "HEAD")
        dirty = bool(_git(source, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"commit": commit, "dirty": dirty}


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
    ).stdout.strip()


def container() -> dict[str, Any] | None:
    """Apptainer sets APPTAINER_CONTAINER inside an image; the launcher passes the image's digest."""
    image = os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER")
    if not image:
        return None
    return {"runtime": "apptainer", "image": image, "sha256": settings().image_sha256}


def environment(runtime_info: dict[str, Any]) -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "hostname": socket.gethostname(),
        **runtime_info,
        "slurm": slurm(),
        "git": git(),
        "container": container(),
        "argv": sys.argv,
    }
