"""Busy neighbours: N pure-Python busy loops beside a measured run, the way other jobs on a node compete for it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

# Each loop ends itself (SIGALRM's default action) after this long, so a bench that dies cannot leave it spinning.
BOUND_S = 3600
_LOOP = "import signal; signal.alarm({bound})\nwhile True: pass"


@contextmanager
def busy(n: int, bound_s: int = BOUND_S) -> Iterator[list[subprocess.Popen]]:
    """Run `n` busy loops (each one core's worth of work) until the block ends, or at most `bound_s` seconds."""
    if n < 0 or bound_s < 1:
        raise ValueError(f"need n >= 0 loops and a bound of at least 1 s, got {n} and {bound_s}")
    loops: list[subprocess.Popen] = []
    try:
        for _ in range(n):
            loops.append(subprocess.Popen([sys.executable, "-c", _LOOP.format(bound=bound_s)]))
        yield loops
    finally:
        for loop in loops:
            loop.kill()
        for loop in loops:
            loop.wait()
