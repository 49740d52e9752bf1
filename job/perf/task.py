"""The real task's start-up: one pair trained by `run_pair`, as `mnist-cv run` trains it, from process start to its
first training step.

The parent runs `python -m job.perf.task SPEC RESULTS`: the very path a task takes (the lease, the data load, the
TensorFlow set-up, the model, the compiled steps), with one callback added to the training's own that marks the
fit's start and the first compiled call's end against the parent's stamp (job.perf.startup). The marks are its
last line of output.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from job.errors import JobError
from job.pair import models
from job.pair.job import run_pair
from job.pair.session import Inputs
from job.perf import startup
from job.perf.spec import Spec
from job.protocol import Pair
from job.results.layout import RunLayout

# Start-up does not depend on the fold's size: the task trains one epoch on as few images as give two whole
# compiled calls (the second one times a step), at least this many (the whole data set is still loaded and verified).
MIN_TASK_IMAGES = 2000


def task_spec(spec: Spec) -> Spec:
    """One epoch of the spec's pair on as few images as give two whole calls and a step of the next in the training
    part (4/5) of the epoch, never more than the spec's."""
    steps = 2 * models.steps_per_call(spec.model) + 1
    needed = max(MIN_TASK_IMAGES, math.ceil(steps * spec.protocol().batch_size * 5 / 4))
    return dataclasses.replace(spec, epochs=1, limit=min(spec.limit or needed, needed))


def measure(spec: Spec, env: dict[str, str]) -> dict[str, Any]:
    """Run the task once in a fresh process and return its marks (seconds since it was started)."""
    with tempfile.TemporaryDirectory(prefix="mnist-cv-bench-task-") as results:
        command = [sys.executable, "-m", "job.perf.task", json.dumps(dataclasses.asdict(task_spec(spec))), results]
        done = subprocess.run(command, capture_output=True, text=True, env=startup.spawn_env(env))
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise JobError(f"the task ({' '.join(command[3:])}) failed (exit {done.returncode}): {last}")
    marks = json.loads(lines[-1])
    if "first_call" not in marks["at"]:
        raise JobError("the task trained no step (was its pair already done?)")
    return {"task_marks": marks}


def main(argv: list[str]) -> int:
    marks = startup.Marks()
    marks.mark("python")
    spec, results = Spec(**json.loads(argv[0])), Path(argv[1])
    inputs = Inputs(
        data_dir=Path(spec.data_dir) if spec.data_dir else None, custom_data=spec.custom_data, allow_cpu=True
    )
    line = run_pair(
        RunLayout(results, "bench"), spec.protocol(), Pair(spec.model, spec.fold), inputs, callbacks=[marks.callback()]
    )
    print(line, flush=True)
    print(json.dumps(marks.to_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
