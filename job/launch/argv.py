"""The task's command line, built in this one place for slurm/job-step.sh and for submit's submitit task.

A task runs `PYTHON -m job ARGS...`, or with an image `apptainer exec --nv --bind WORKDIR,DATA,RESULTS --pwd
WORKDIR IMAGE python -m job ARGS...`, with the environment that tells it what it runs: the commit read with git
on the host (an image has no .git) and the image's digest. Standard library only, and Python 3.8 syntax at run
time, so the batch scripts can ask a host's `python3` without TensorFlow or numpy:

    python3 -m job.launch.argv run --task-id 0 --epochs 1       # the line, shell-quoted, to read
    python3 -m job.launch.argv --nul run --task-id 0            # `env NAME=VALUE... COMMAND...`, NUL-separated

Options before the job's arguments: --image, --python (defaults from job.settings), --workdir (default the
current folder).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from job import provenance
from job import settings as settings_module
from job.files import read_bounded, sha256_file
from job.launch import snapshot
from job.settings import Settings


@dataclass(frozen=True)
class TaskCommand:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # added to the environment the task inherits
    results: Path | None = None  # created before the task starts: an image binds only existing folders

    def prepare(self) -> None:
        if self.results is not None:
            self.results.mkdir(parents=True, exist_ok=True)

    def with_env(self) -> list[str]:
        """`env NAME=VALUE... COMMAND...`: the whole launch as one argv (what the batch scripts run)."""
        return ["env", *(f"{name}={value}" for name, value in sorted(self.env.items())), *self.argv]


def pair_args(task_id: int, run_args: Sequence[str], keep_model: bool = False) -> tuple[str, ...]:
    """One pair; `keep_model`: keep its trained weights beside its result (the fold ensemble's models)."""
    return ("run", "--task-id", str(task_id), *_keeping(keep_model), *run_args)


def pairs_args(task_ids: str, run_args: Sequence[str], keep_model: bool = False) -> tuple[str, ...]:
    """Several pairs one after another in one task; `task_ids` in --array syntax."""
    return ("run", "--task-ids", task_ids, *_keeping(keep_model), *run_args)


def _keeping(keep_model: bool) -> tuple[str, ...]:
    return ("--keep-model",) if keep_model else ()


def verify_args(task_id: int, verify_options: Sequence[str]) -> tuple[str, ...]:
    """The verification of one pair in one task."""
    return ("verify", "--task-ids", str(task_id), *verify_options)


def final_args(model: str, run_args: Sequence[str]) -> tuple[str, ...]:
    return ("final", "--model", model, *run_args)


def job_command(
    job_args: Sequence[str], *, image: str | None, python: str, workdir: str, binds: Sequence[str] = ()
) -> list[str]:
    """`PYTHON -m job JOB_ARGS`, or the same inside IMAGE (whose own python runs it; --nv brings the host's NVIDIA
    driver in). `binds` are the folders besides `workdir` the job reads or writes, as absolute paths."""
    job = ["-m", "job", *job_args]
    if image is None:
        return [python, *job]
    return ["apptainer", "exec", "--nv", "--bind", ",".join([workdir, *binds]), "--pwd", workdir, image, "python", *job]


# An image with TensorFlow, CUDA and cuDNN is 5-10 GB: anything far larger is not one.
MAX_IMAGE_BYTES = 64 << 30


def image_digest(image: str) -> str:
    """The image's sha256: from IMAGE.sha256 (written when it was built) if there, else hashed now."""
    digest_file = Path(f"{image}.sha256")
    if digest_file.is_file():
        fields = read_bounded(digest_file, 4096, "a digest file holds").decode(errors="replace").split()
        if fields:
            return fields[0]
    return sha256_file(Path(image), MAX_IMAGE_BYTES, "an image of this job holds")


PATH_OPTIONS = ("--data-dir", "--results")  # the job's options naming folders


def absolute_paths(job_args: Sequence[str], base: Path) -> list[str]:
    """`job_args` with the folders of PATH_OPTIONS made absolute against `base`."""
    out = list(job_args)
    for i, arg in enumerate(out):
        flag, eq, value = arg.partition("=")
        if flag in PATH_OPTIONS and eq:
            out[i] = f"{flag}={base / value}"
        elif i > 0 and out[i - 1] in PATH_OPTIONS:
            out[i] = str(base / arg)
    return out


def option_value(job_args: Sequence[str], flag: str) -> str | None:
    """The last value given to `flag` (`--flag VALUE` or `--flag=VALUE`) among the job's arguments."""
    value = None
    for i, arg in enumerate(job_args):
        if arg == flag and i + 1 < len(job_args):
            value = job_args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg[len(flag) + 1 :]
    return value


def task_command(
    job_args: Sequence[str],
    *,
    image: str | None,
    python: str,
    workdir: str,
    told: Settings | None = None,
    version: tuple[str, bool] | None = None,
    base: str | None = None,
) -> TaskCommand:
    """The command line and environment of a task running `job JOB_ARGS` in `workdir`.

    Data and results are where the job's arguments say, else where the settings say, relative to `base` (default
    `workdir`; given, every such folder is passed on absolute). The commit told to the task is `version` (commit,
    dirty), else the snapshot's that `workdir` is, else git's.
    """
    told = told or settings_module.settings()
    commit, dirty = version or snapshot.recorded(Path(workdir)) or _checkout_version()
    env = settings_module.provenance_env(commit, dirty, image_digest(image) if image else None)
    folders = Path(base or workdir)
    data_dir = option_value(job_args, "--data-dir") or told.data
    data = folders / data_dir if data_dir else None
    results = folders / (option_value(job_args, "--results") or told.results)
    if base is not None:
        job_args = absolute_paths(job_args, folders)
        env.update(settings_module.folders_env(data, results))
    if image is None:
        return TaskCommand(job_command(job_args, image=None, python=python, workdir=workdir), env)
    # A data folder that is not there is left out: the job then says so itself, in one line.
    binds = [str(data)] if data and data.exists() else []
    binds.append(str(results))
    return TaskCommand(job_command(job_args, image=image, python=python, workdir=workdir, binds=binds), env, results)


def _checkout_version() -> tuple[str | None, bool]:
    git = provenance.git()  # the commit a launcher told us if any, else the checkout's HEAD
    return (git["commit"], git["dirty"]) if git else (None, False)


def main(argv: list[str] | None = None) -> int:
    told = settings_module.settings()
    parser = argparse.ArgumentParser(
        prog="python3 -m job.launch.argv", description="Print the command line of a task running `job ARGS...`."
    )
    parser.add_argument("--nul", action="store_true", help="NUL-separated `env NAME=VALUE... COMMAND...`")
    parser.add_argument("--image", default=told.image, help=f"Apptainer image (default: ${settings_module.IMAGE.name})")
    parser.add_argument(
        "--python",
        default=told.python,
        help=f"interpreter without an image (default: ${settings_module.PYTHON.name} or python3)",
    )
    parser.add_argument("--workdir", default=str(Path.cwd()), help="the task's working folder")
    parser.add_argument("job_args", nargs=argparse.REMAINDER, help="the arguments of `python -m job`")
    args = parser.parse_args(argv)
    job_args = args.job_args[1:] if args.job_args[:1] == ["--"] else args.job_args
    # In a code snapshot (job.launch.snapshot), folders given relative are relative to where sbatch ran.
    base = os.environ.get("SLURM_SUBMIT_DIR") if snapshot.recorded(Path(args.workdir)) else None
    try:
        command = task_command(
            job_args, image=args.image, python=args.python, workdir=args.workdir, told=told, base=base
        )
        if args.nul:
            command.prepare()  # the caller runs it next
    except OSError as error:
        print(f"job.launch.argv: error: {error}", file=sys.stderr)
        return 1
    if args.nul:
        sys.stdout.write("".join(f"{arg}\0" for arg in command.with_env()))
    else:
        print(shlex.join(command.with_env()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
