"""`--load`: the busy loops run while the block runs, are gone after it, and end themselves at their bound."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from job.perf import load


def _cpu_ticks(pid: int) -> int:
    """User + system clock ticks the process has used (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_loops_burn_cpu_inside_the_block_and_are_reaped_after() -> None:
    with load.busy(2) as loops:
        assert len(loops) == 2
        time.sleep(1.0)
        assert all(loop.poll() is None for loop in loops)
        assert all(_cpu_ticks(loop.pid) > 10 for loop in loops)  # busy, not sleeping: > 0.1 CPU s each
    assert all(loop.returncode == -signal.SIGKILL for loop in loops)
    assert not any(Path(f"/proc/{loop.pid}").exists() for loop in loops)


def test_loops_are_reaped_when_the_block_fails() -> None:
    with pytest.raises(KeyError), load.busy(1) as loops:
        raise KeyError("a failed measurement")
    assert loops[0].returncode is not None


def test_a_loop_ends_itself_at_its_bound() -> None:
    with load.busy(1, bound_s=1) as loops:
        assert loops[0].wait(timeout=30) == -signal.SIGALRM


def test_loops_die_with_a_killed_bench() -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from job.perf import load\n"
         "with load.busy(1) as loops:\n    print(loops[0].pid, flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    loop_pid = int(holder.stdout.readline())
    assert _cpu_ticks(loop_pid) >= 0  # running
    holder.kill()  # SIGKILL: no finally block runs
    holder.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{loop_pid}").exists() and _state(loop_pid) != "Z" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{loop_pid}").exists() or _state(loop_pid) == "Z"  # gone, or dead awaiting init's reaping


def test_no_load_starts_nothing() -> None:
    with load.busy(0) as loops:
        assert loops == []


def test_refuses_a_negative_count() -> None:
    with pytest.raises(ValueError), load.busy(-1):
        pass
