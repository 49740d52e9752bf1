"""Fixtures shared by the test files: the real MNIST folder and a way to run the CLI as a user does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from job.pair.data import MNIST_FILES

ROOT = Path(__file__).resolve().parents[1]


def shared_mnist() -> Path:
    """The shared, read-only copy of the real MNIST beside the checkout ($MNIST_CV_TEST_DATA overrides it)."""
    return Path(os.environ.get("MNIST_CV_TEST_DATA") or ROOT.parent / "shared" / "data" / "mnist")


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    folder = shared_mnist()
    if not all((folder / f"{name}.gz").is_file() for name in MNIST_FILES):
        pytest.fail(f"the real MNIST .gz files are not in {folder}: set MNIST_CV_TEST_DATA to a copy")
    return folder


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 600):
    """Run `python -m job ARGS` in a fresh interpreter, as a user or a Slurm task would."""
    return subprocess.run(
        [sys.executable, "-m", "job", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def last_line(text: str) -> str:
    """The final line of a stream (TensorFlow's start-up chatter comes before ours)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
