"""Output is never the job: a training whose stdout or stderr is closed, whose reader leaves early (`| head -1`) or
whose terminal hangs up goes on to its result and exits with its own status; a listing read by `head` exits 0.

Every case is a real `python -m job` process on the real small MNIST, its streams handled by the shell or the
kernel as a user's would be."""

from __future__ import annotations

import json
import os
import pty
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT, wait_for
from support.mnist import MINI

from job.protocol import Pair
from job.results import store
from job.results.layout import RunLayout

QUICK = ["--data-dir", str(MINI), "--custom-data", "--epochs", "1", "--limit", "100"]
# Long enough to stop in: 50 epochs of 800 images, the first one's checkpoint waited for before the signal.
STOPPABLE = ["--epochs", "50", "--limit", "1000"]
TRAININGS = {
    "run": ["run", "--model", "mlp", "--fold", "0"],
    "final": ["final", "--model", "mlp"],
}
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}


def job_command(*args: str) -> str:
    return shlex.join([sys.executable, "-m", "job", *args])


def shell(script: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`script` in bash, as a user types it (no pipefail: each exit status is read from PIPESTATUS)."""
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=timeout, env=ENV, cwd=ROOT)


def check_result(command: str, results: Path) -> None:
    """The training's result, valid: the pair's JSON, or the final model's JSON with its model file."""
    layout = RunLayout(results, "default")
    if command == "run":
        store.check_pair(layout.pair_paths(Pair("mlp", 0)).result, layout)
    else:
        store.check_final(layout.final_paths("mlp").result, layout)


def statuses(done: subprocess.CompletedProcess[str]) -> list[int]:
    """The exit statuses the script's last line printed: `echo ${PIPESTATUS[@]}` or `echo $?`."""
    return [int(word) for word in done.stdout.split("\n")[-2].split()]


@pytest.mark.slow
@pytest.mark.parametrize("command", TRAININGS)
def test_a_training_read_by_head_finishes_and_writes_its_result(command: str, tmp_path: Path) -> None:
    training = job_command(*TRAININGS[command], "--results", str(tmp_path), *QUICK)
    done = shell(f"{training} 2>{tmp_path}/err | head -1; echo ${{PIPESTATUS[@]}}")
    assert statuses(done) == [0, 0], (tmp_path / "err").read_text()[-2000:]
    assert done.stdout.startswith("mlp")  # head's one line: the training's first
    check_result(command, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(("command", "closed"), [("run", ">&-"), ("run", ">&- 2>&-"), ("final", "2>&-")])
def test_a_training_with_a_closed_stream_finishes_and_writes_its_result(
    command: str, closed: str, tmp_path: Path
) -> None:
    training = job_command(*TRAININGS[command], "--results", str(tmp_path), *QUICK)
    # The exit status goes to a file: stdout may be the closed stream.
    done = shell(f"{training} {closed}; echo $? >{tmp_path}/status")
    assert (tmp_path / "status").read_text().split() == ["0"], done.stderr[-2000:]
    check_result(command, tmp_path)
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr


@pytest.mark.slow
def test_a_training_whose_terminal_hangs_up_finishes_and_writes_its_result(tmp_path: Path) -> None:
    """stdout a terminal (the live progress bar), closed after the first line: every later write fails with EIO."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "job", *TRAININGS["run"], "--results", str(tmp_path), *QUICK],
        stdout=terminal,
        stderr=subprocess.PIPE,
        env={**ENV, "COLUMNS": "80"},
        cwd=ROOT,
    )
    os.close(terminal)
    try:
        first = b""
        while b"\n" not in first:
            first += os.read(controller, 1024)
    finally:
        os.close(controller)  # the terminal is gone: an ssh session dropped
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]
    check_result("run", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("gone", ["stdout", "stderr"])
def test_a_training_stopped_by_a_signal_with_its_reader_gone_exits_3_and_keeps_its_checkpoint(
    gone: str, tmp_path: Path
) -> None:
    """The stop signal's own message meets the broken pipe: the training still stops at its safe point, with the
    status that says stopped (3), never 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "job", *TRAININGS["run"], "--results", str(tmp_path), *QUICK, *STOPPABLE],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
        cwd=ROOT,
    )
    getattr(proc, gone).close()  # its reader is gone before the first write
    paths = RunLayout(tmp_path, "default").pair_paths(Pair("mlp", 0))
    wait_for("the first epoch's checkpoint", lambda: (paths.checkpoint / "state.json").exists(), timeout=120)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 3
    assert (paths.checkpoint / "state.json").exists() and not paths.result.exists()


FAILING = ["--data-dir", "/nonexistent", "--custom-data", "--epochs", "1", "--limit", "1000"]
# Each writes the training's exit status to a file named after it (its stdout may be the closed stream).
OUTPUT_GONE = {
    "reader-gone-at-once": "| head -n 0; echo ${PIPESTATUS[0]}",
    "both-closed": ">&- 2>&-; echo $?",
}


@pytest.mark.parametrize("redirect", OUTPUT_GONE.values(), ids=OUTPUT_GONE)
def test_a_failing_training_with_its_output_gone_still_exits_1(redirect: str, tmp_path: Path) -> None:
    training = job_command(*TRAININGS["run"], "--results", str(tmp_path), *FAILING)
    shell(f"{training} {redirect} >{tmp_path}/status")
    assert (tmp_path / "status").read_text().split() == ["1"]
    assert not (tmp_path / "default" / "mlp" / "fold-0.json").exists()


@pytest.mark.parametrize("listing", [["status"], ["pairs", "--missing"]], ids=" ".join)
@pytest.mark.parametrize("head", ["head -1", "head -n 0"])  # the reader leaves after a line, or before any
def test_a_listing_read_by_head_exits_0_quietly(listing: list[str], head: str, tmp_path: Path) -> None:
    done = shell(f"{job_command(*listing, '--results', str(tmp_path))} | {head}; echo ${{PIPESTATUS[@]}}")
    assert statuses(done) == [0, 0]
    assert done.stderr == ""


def test_collect_json_read_by_head_still_writes_the_summary(tmp_path: Path) -> None:
    """A command with files to write writes them, whoever reads its stdout (on a copy of the committed run)."""
    results = Path(shutil.copytree(ROOT / "tests" / "data" / "run-folder", tmp_path / "results"))
    collect = job_command("collect", "--results", str(results), "--allow-partial", "--json")
    done = shell(f"{collect} | head -n 0; echo ${{PIPESTATUS[@]}}")
    assert statuses(done) == [0, 0], done.stderr
    assert json.loads((results / "default" / "summary.json").read_text(encoding="utf-8"))["models"]["mlp"]["n"] == 5
