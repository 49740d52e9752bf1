"""What the test files share: the checkout's root and a way to run the CLI as a user does.

pytest puts ``tests/`` on ``sys.path`` (it holds conftest.py and is no package), so test modules import this as
``support`` (``from support import cli``; ``from support.cluster import ...`` for the local Slurm cluster).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def last_line(text: str) -> str:
    """The final line of a stream (TensorFlow's start-up chatter comes before ours)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
