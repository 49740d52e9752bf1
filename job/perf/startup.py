"""Start-up: from a process's start to its first training step, by phase, beside a bare TensorFlow import.

The parent stamps the wall-clock time just before it starts a worker (SPAWNED_AT_ENV); the worker marks
the end of each phase against that stamp, so both the job's start-up and the bare import include the
interpreter's own start. The first compiled call runs several steps (steps_per_execution); all but the
first are taken off at the step time of the second call (else the steady-state one), so that what is left is
start-up and one step.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from job import settings
from job.errors import JobError
from job.files import read_bounded
from job.mnist import MNIST_FILES
from job.pair.data import MAX_IDX_BYTES

SPAWNED_AT_ENV = settings.BENCH_SPAWNED_AT.name
BARE_IMPORT = "import tensorflow, time; print(time.time())"
# The phases a worker marks, in order, and what each one covers.
PHASES: tuple[tuple[str, str], ...] = (
    ("python", "interpreter, job imports"),
    ("tensorflow", "import tensorflow"),
    ("keras", "import keras"),
    ("data", "data.load: cached copy read, sha256, check"),
    ("configure", "import train, threads"),
    ("build", "model, checkpoint, compiled steps"),
    ("first_call", "tracing and one step"),
)


def spawn_env(env: dict[str, str]) -> dict[str, str]:
    """`env` stamped with the time now, for a worker started right after."""
    return {**env, SPAWNED_AT_ENV: repr(time.time())}


def bare_import(env: dict[str, str]) -> dict[str, float]:
    """Seconds from starting `python -c "import tensorflow"` to the import done, and to the process's exit."""
    env = spawn_env(env)
    done = subprocess.run([sys.executable, "-c", BARE_IMPORT], env=env, capture_output=True, text=True)
    exited = time.time()
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise JobError(f"python -c 'import tensorflow' failed (exit {done.returncode})")
    spawned = float(env[SPAWNED_AT_ENV])
    return {"import_s": float(lines[-1]) - spawned, "exit_s": exited - spawned}


class Marks:
    """Seconds since the parent's stamp at which each phase ended (empty when run without a stamp)."""

    def __init__(self) -> None:
        stamp = os.environ.get(SPAWNED_AT_ENV)
        self._spawned = float(stamp) if stamp else None
        self.at: dict[str, float] = {}
        self.first_call_steps = 0
        self.second_call_steps = 0

    def mark(self, phase: str) -> None:
        if self._spawned is not None and phase not in self.at:
            self.at[phase] = time.time() - self._spawned

    def callback(self) -> Any:
        """Marks the model built (fit begins) and the first compiled call's end, with its number of steps."""
        import keras

        marks = self

        class Startup(keras.callbacks.Callback):
            def on_train_begin(self, logs: Any = None) -> None:
                marks.mark("build")

            def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
                # Keras passes the call's last step index; the second call times a step once traced.
                if "first_call" not in marks.at:
                    marks.first_call_steps = batch + 1
                    marks.mark("first_call")
                elif "second_call" not in marks.at:
                    marks.second_call_steps = batch + 1 - marks.first_call_steps
                    marks.mark("second_call")

        return Startup()

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at, "first_call_steps": self.first_call_steps, "second_call_steps": self.second_call_steps}


def phases(marks: dict[str, Any], step_s: float) -> dict[str, float] | None:
    """Each phase's seconds, the first call cut down to one step at the steady step time `step_s`."""
    at = marks["at"]
    if any(phase not in at for phase, _ in PHASES):
        return None
    ends = [at[phase] for phase, _ in PHASES]
    ends[-1] = first_step(marks, step_s)
    starts = [0.0, *ends[:-1]]
    return {phase: end - start for (phase, _), start, end in zip(PHASES, starts, ends, strict=True)}


def first_step(marks: dict[str, Any], step_s: float) -> float:
    """Seconds from the start to the end of the first training step: the first call's end less its other steps,
    each at the step time of the second call when there was one (same process, traced), else at `step_s` (from
    another process: never taken back past the fit's start)."""
    at, second = marks["at"], marks.get("second_call_steps", 0)
    if "second_call" in at and second > 0:
        return at["first_call"] - (marks["first_call_steps"] - 1) * (at["second_call"] - at["first_call"]) / second
    return max(at.get("build", 0.0), at["first_call"] - (marks["first_call_steps"] - 1) * step_s)


def data_anatomy(folder: str) -> dict[str, float] | None:
    """What reading a folder of MNIST IDX files costs, step by step: data.load's work without its verified cache."""

    paths = [next((p for p in (Path(folder) / f"{n}.gz", Path(folder) / n) if p.is_file()), None) for n in MNIST_FILES]
    if not Path(folder).is_dir() or None in paths:
        return None
    seconds = {"read_s": 0.0, "gunzip_s": 0.0, "sha256_s": 0.0}
    for path in paths:
        started = time.perf_counter()
        raw = read_bounded(path, MAX_IDX_BYTES, "an MNIST file holds")
        read = time.perf_counter()
        content = gzip.decompress(raw) if path.suffix == ".gz" else raw
        unzipped = time.perf_counter()
        hashlib.sha256(content).hexdigest()
        seconds["read_s"] += read - started
        seconds["gunzip_s"] += unzipped - read
        seconds["sha256_s"] += time.perf_counter() - unzipped
    return seconds
