"""Busy neighbours: N pure-Python busy loops beside a measured run, the way other jobs on a node compete for it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

# Each loop ends itself (SIGALRM's default action) after this long, and is killed by the kernel if the bench dies
# (prctl PR_SET_PDEATHSIG, then a check that the parent is still the one that started it): none is left spinning.
BOUND_S = 3600
_PR_SET_PDEATHSIG = 1
_LOOP = (
    "import ctypes, os, signal\n"
    "ctypes.CDLL(None).prctl({prctl}, signal.SIGKILL)\n"
    "signal.alarm({bound})\n"
    "if os.getppid() == {parent}:\n"
    "    while True: pass\n"
)


@contextmanager
def busy(n: int, bound_s: int = BOUND_S) -> Iterator[list[subprocess.Popen]]:
    """Run `n` busy loops (each one core's worth of work) until the block ends, or at most `bound_s` seconds."""
    if n < 0 or bound_s < 1:
        raise ValueError(f"need n >= 0 loops and a bound of at least 1 s, got {n} and {bound_s}")
    loops: list[subprocess.Popen] = []
    try:
        for _ in range(n):
            code = _LOOP.format(prctl=_PR_SET_PDEATHSIG, bound=bound_s, parent=os.getpid())
            loops.append(subprocess.Popen([sys.executable, "-c", code]))
        yield loops
    finally:
        for loop in loops:
            loop.kill()
        for loop in loops:
            loop.wait()
