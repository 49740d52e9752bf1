"""What the test files share: the checkout's root and a way to run the CLI as a user does.

pytest puts ``tests/`` on ``sys.path`` (it holds conftest.py and is no package), so test modules import this as
``support`` (``from support import cli``; ``from support.cluster import ...`` for the local Slurm cluster).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run `python -m job ARGS` in a fresh interpreter, as a user or a Slurm task would."""
    return subprocess.run(
        [sys.executable, "-m", "job", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_pinned(args: Sequence[str], cpu_index: int = 0, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`python -m job ARGS` in the background, pinned to one CPU (so one TensorFlow thread: the thread count changes
    the float summation order), `env` added to the environment. No SLURM_* variables: a pytest inside an allocation
    must not size the thread pool from them."""
    cpus = sorted(os.sched_getaffinity(0))
    cpu = cpus[cpu_index % len(cpus)]
    outside = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return subprocess.Popen(
        [sys.executable, "-m", "job", *args],
        env={**outside, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
    )


def script_json(code: str, *args: str, timeout: float = 600, env: dict[str, str] | None = None) -> Any:
    """Run `python -c CODE ARGS` on this checkout in a fresh interpreter (a training's own TensorFlow state), `env`
    added to the environment; the JSON its last line of output holds. Fails the test, with the script's stderr,
    when it exits non-zero."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(last_line(done.stdout))


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG header: the signature, then the IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def last_line(text: str) -> str:
    """The final line of a stream (TensorFlow's start-up chatter comes before ours)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def steps_per_epoch(limit: int, fold: int) -> int:
    """Training steps of one epoch of a pair trained with `--limit LIMIT` and the protocol's other defaults: its
    fold's training images (job/folds.py's split) in batches."""
    from job import folds
    from job.protocol import Protocol

    protocol = Protocol().with_overrides(limit=limit)
    train, _ = folds.split(limit, fold, protocol)
    return math.ceil(len(train) / protocol.batch_size)


def trained_run(folder: Path, *args: str) -> Path:
    """`python -m job ARGS --results FOLDER`, which must succeed (a module's training, done once); FOLDER."""
    done = cli(*args, "--results", str(folder))
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


def copy_of(results: Path, tmp_path: Path) -> Path:
    """A copy of a trained RESULTS folder, for one test to edit."""
    return Path(shutil.copytree(results, tmp_path / "results"))


def cli_without_reader(*args: str) -> tuple[int, str]:
    """`python -m job ARGS | head -0`: the command's stdout reader is gone before it writes; (exit code, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "job", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    proc.stdout.close()  # no reader: the first write fails with EPIPE
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def wait_for(what: str, check: Callable[[], object], timeout: float = 300) -> object:
    """Poll until check() is truthy; the node is shared with other jobs, so a task may wait for a free CPU."""
    import pytest

    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}", pytrace=False)
        time.sleep(0.5)
    return value
