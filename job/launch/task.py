"""The submitit side of the fan-out: one small picklable callable per job (a pair, or the final model), running
`python -m job ...` as a child.

The child process keeps TensorFlow out of submitit's process, and it makes this path run the very same command
line as slurm/array.sh, with or without an Apptainer image. Imports no TensorFlow (nor scikit-learn).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from submitit.helpers import DelayedSubmission

from job.launch.argv import TaskCommand, task_command

# The exit status of `job run` or `job final` stopped by a signal at a safe point (job.pair.train.Preempted.exit_code;
# importing job.pair.train here would load the training's modules, half a second, into every submitit process).
PREEMPTED_EXIT = 3
# _interrupt() and preemption send TERM, then submitit's USR2 within milliseconds; USR2 runs checkpoint(),
# which requeues. A child stopped with no USR2 after this long (a plain scancel) was stopped for good.
REQUEUE_GRACE_S = 10
# The child stops after its current compiled call; past this it is stuck and killed (its last epoch-end
# checkpoint is safe either way). Well inside the 180 s between submitit's USR2 and the time limit.
STOP_TIMEOUT_S = 60
POLL_S = 0.2
TAIL_LINES = 20


class JobFailed(RuntimeError):
    """The job exited non-zero; the message ends with its last lines, for job.exception() and the log."""


class _Child:
    """The running job: its output is copied to ours (submitit's log) and its last lines are kept.

    A thread owns reading and reaping; the main thread only sleeps and sends signals. submitit's USR2 handler
    interrupts the main thread anywhere, so nothing it calls may wait on a lock the main thread could hold
    (Popen.wait holds one for as long as it blocks).
    """

    def __init__(self, command: list[str], cwd: str, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.returncode: int | None = None
        threading.Thread(target=self._follow, daemon=True).start()

    def _follow(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            self.tail.append(line.rstrip("\n"))
        self.returncode = self.process.wait()

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit status, or None if still running after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None and (deadline is None or time.monotonic() < deadline):
            time.sleep(POLL_S)
        return self.returncode

    def stop(self) -> None:
        """Make the job stop at its next safe point (TERM, which it treats like USR1/USR2) and wait for it."""
        if self.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            if self.wait(STOP_TIMEOUT_S) is None:
                self.process.kill()
                self.wait()


@dataclasses.dataclass
class JobTask:
    """One job for submitit: a (model, fold) pair, or the final model. It holds small strings only: the data loads
    in the child, and all training state lives in the job's folder on disk, so a requeued task resumes from there."""

    name: str  # what reports call it: mlp/fold-0, cnn/final
    job_args: tuple[str, ...]
    image: str | None
    python: str
    workdir: str  # the submitted code's snapshot (job.launch.snapshot), or the checkout with --live-code
    version: tuple[str, bool] | None = None  # (commit, dirty) of that code, fixed at submission
    _child: _Child | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def launch(self) -> TaskCommand:
        """The command line and environment, exactly as slurm/job-step.sh gets them."""
        return task_command(
            self.job_args, image=self.image, python=self.python, workdir=self.workdir, version=self.version
        )

    @property
    def command(self) -> list[str]:
        return self.launch().argv

    def __call__(self) -> str:
        """Run the job; its last output line (the score, or 'already done'). Raises JobFailed on failure."""
        launch = self.launch()
        launch.prepare()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **launch.env}  # unbuffered: the log shows progress live
        self._child = child = _Child(launch.argv, self.workdir, env)
        try:
            returncode = child.wait()
        finally:
            child.stop()  # on any exception here (Ctrl-C, submitit's exit after a requeue), never orphan the job
        if returncode == 0:
            return child.tail[-1] if child.tail else ""
        if returncode == PREEMPTED_EXIT:
            time.sleep(REQUEUE_GRACE_S)  # a USR2 now runs checkpoint(), requeues and exits from inside this sleep
        raise JobFailed(self._failure(returncode, list(child.tail)))

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """submitit's checkpoint protocol: called by its USR2 handler (preemption, time limit near) in this process.

        The child saves at every epoch end, so all that is left is to stop it at its next safe point and wait
        for it (it may have had the signal already: Slurm signals the whole step). submitit then requeues this
        task with a fresh instance, which resumes from the job's folder.
        """
        if self._child is not None:
            self._child.stop()
        return DelayedSubmission(dataclasses.replace(self))

    def _failure(self, returncode: int, tail: list[str]) -> str:
        if returncode < 0:
            how = f"was killed by signal {-returncode} ({signal.strsignal(-returncode)})"
        elif returncode == PREEMPTED_EXIT:
            how = f"stopped on a signal (exit {returncode}) and no requeue followed within {REQUEUE_GRACE_S}s"
        else:
            how = f"exited with status {returncode}"
        last = "\n".join(f"    {line}" for line in tail) or "    (no output)"
        return f"{self.name}: `{shlex.join(self.command)}` {how}; its last lines:\n{last}"
