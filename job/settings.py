"""Every `MNIST_CV_*` environment variable, read in this one module: its name, default, meaning and readers.

`Settings.from_env()` reads them all; `VARIABLES` lists them (the README's table is `markdown_table()`, and
tests/test_settings.py checks the two agree). Standard library only: the batch scripts' host-side helper
(`python3 -m job.launch.argv`) imports it where TensorFlow is not installed.

Two variables are read by shell before any Python starts, and `SHELL_READERS` names where: MNIST_CV_HOME (the
batch scripts `cd` there to find slurm/job-step.sh) and MNIST_CV_PYTHON (job-step.sh runs it to ask for the task's
command line). Tests read MNIST_CV_TEST_DATA and MNIST_CV_SLURM themselves: the test suite is not the job.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Variable:
    name: str
    default: str  # as the README shows it
    meaning: str
    readers: str  # who reads it


DATA = Variable(
    "MNIST_CV_DATA",
    "unset: ~/.keras/datasets/mnist.npz, else a download",
    "folder with the four MNIST IDX files (.gz or plain) or a Keras mnist.npz; bound into the image",
    "run, final, collect (`--data-dir`), the task command line (which passes it absolute into a code snapshot)",
)
RESULTS = Variable(
    "MNIST_CV_RESULTS",
    "`results`",
    "results folder (`--results`); bound into the image",
    "every command, the task command line (which passes it absolute into a code snapshot)",
)
RUN = Variable("MNIST_CV_RUN", "`default`", "run name: results go to RESULTS/RUN/ (`--run`)", "every command")
IMAGE = Variable(
    "MNIST_CV_IMAGE",
    "unset: no image",
    "Apptainer .sif the tasks run in, with `--nv` (`submit --image`)",
    "submit, the task command line",
)
PYTHON = Variable(
    "MNIST_CV_PYTHON",
    "`python3`",
    "interpreter of the tasks without an image (point it at the venv); also runs `job.launch.argv` on the host",
    "slurm/job-step.sh, the task command line",
)
HOME = Variable(
    "MNIST_CV_HOME",
    "the submit directory",
    "the project folder the batch scripts `cd` to (Slurm runs a spool copy of them)",
    "slurm/array.sh, slurm/final.sh",
)
ALLOW_CPU = Variable(
    "MNIST_CV_ALLOW_CPU",
    "unset",
    "`1`: run on the CPU even when a GPU was allocated but is not visible (`--allow-cpu`)",
    "run, final",
)
CACHE = Variable(
    "MNIST_CV_CACHE",
    "`~/.cache/mnist-cv/mnist`",
    "where a downloaded MNIST is kept",
    "run, final, fetch-data",
)
MIRROR = Variable(
    "MNIST_CV_MIRROR",
    "TensorFlow's MNIST mirror",
    "base URL holding the four .gz files (`fetch-data --mirror`)",
    "run, final, fetch-data",
)
GIT_COMMIT = Variable(
    "MNIST_CV_GIT_COMMIT",
    "read with git on the host",
    "commit of the code the task runs, recorded in each result (an image or a code snapshot has no .git)",
    "set by the task command line; read by run, final",
)
GIT_DIRTY = Variable(
    "MNIST_CV_GIT_DIRTY",
    "read with git on the host",
    "`1`: that code had uncommitted changes",
    "set by the task command line; read by run, final",
)
IMAGE_SHA256 = Variable(
    "MNIST_CV_IMAGE_SHA256",
    "IMAGE.sha256, else the image hashed",
    "digest of the image, recorded in each result",
    "set by the task command line; read by run, final",
)
TEST_DATA = Variable(
    "MNIST_CV_TEST_DATA",
    "unset: `MNIST_CV_DATA`, the download cache, a download",
    "folder with the full MNIST for the tests that need all of it (the others use tests/data/mnist-mini)",
    "tests/support/mnist.py",
)
SLURM = Variable(
    "MNIST_CV_SLURM",
    "unset: start a local cluster if root, skip otherwise",
    "`0`: skip the Slurm tests; `1`: a cluster that cannot start is an error",
    "tests/support/cluster.py",
)
REQUIRE_FULL_DATA = Variable(
    "MNIST_CV_REQUIRE_FULL_DATA",
    "unset: skip",
    "`1`: a test that needs the full MNIST and cannot find it fails instead of being skipped (CI sets it)",
    "tests/support/mnist.py",
)

BENCH_SPAWNED_AT = Variable(
    "MNIST_CV_BENCH_SPAWNED_AT",
    "unset",
    "set by `mnist-cv bench` for its workers: the wall-clock time it started them (their start-up is timed from it)",
    "bench's workers (job/perf/startup.py)",
)

VARIABLES: tuple[Variable, ...] = (
    DATA, RESULTS, RUN, IMAGE, PYTHON, HOME, ALLOW_CPU, CACHE, MIRROR,
    GIT_COMMIT, GIT_DIRTY, IMAGE_SHA256, TEST_DATA, SLURM, REQUIRE_FULL_DATA, BENCH_SPAWNED_AT,
)  # fmt: skip

# The shell scripts that read a variable before Python starts (everything else reads Settings).
SHELL_READERS: dict[str, tuple[str, ...]] = {
    HOME.name: ("slurm/array.sh", "slurm/final.sh"),
    PYTHON.name: ("slurm/job-step.sh",),
}


@dataclass(frozen=True)
class Settings:
    """The variables' values, read once; `None` where unset (the commands then apply their own defaults)."""

    data: Path | None
    results: Path
    run: str
    image: str | None
    python: str
    home: Path | None
    allow_cpu: bool
    cache: Path
    mirror: str | None
    git_commit: str | None
    git_dirty: bool
    image_sha256: str | None
    test_data: Path | None
    slurm: str | None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(variable: Variable) -> str | None:
            return env.get(variable.name) or None  # set but empty counts as unset, as in the shell scripts

        def path(variable: Variable) -> Path | None:
            value = get(variable)
            return None if value is None else Path(value).expanduser()

        return cls(
            data=path(DATA),
            results=path(RESULTS) or Path("results"),
            run=get(RUN) or "default",
            image=get(IMAGE),
            python=get(PYTHON) or "python3",
            home=path(HOME),
            allow_cpu=get(ALLOW_CPU) == "1",
            cache=path(CACHE) or Path.home() / ".cache" / "mnist-cv" / "mnist",
            mirror=get(MIRROR),
            git_commit=get(GIT_COMMIT),
            git_dirty=get(GIT_DIRTY) == "1",
            image_sha256=get(IMAGE_SHA256),
            test_data=path(TEST_DATA),
            slurm=get(SLURM),
        )


def settings() -> Settings:
    """The current environment's settings (read anew: tests and the CLI change the environment)."""
    return Settings.from_env()


def provenance_env(commit: str | None, dirty: bool, image_sha256: str | None) -> dict[str, str]:
    """What the launcher tells a task about the code and image it runs (read back by `Settings`)."""
    env = {IMAGE_SHA256.name: image_sha256} if image_sha256 else {}
    if commit:
        env.update({GIT_COMMIT.name: commit, GIT_DIRTY.name: "1" if dirty else "0"})
    return env


def folders_env(data: Path | None, results: Path) -> dict[str, str]:
    """The data and results folders for a task that starts elsewhere than they were given relative to."""
    env = {RESULTS.name: str(results)}
    if data is not None:
        env[DATA.name] = str(data)
    return env


def markdown_table() -> str:
    """The README's table of variables (between its `<!-- settings-table -->` markers)."""
    rows = ["| Variable | Default | Meaning | Read by |", "|---|---|---|---|"]
    rows += [f"| `{v.name}` | {v.default} | {v.meaning} | {v.readers} |" for v in VARIABLES]
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
