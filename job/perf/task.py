"""The real task's start-up: `mnist-cv run` on the bench's pair, from process start to its first training step.

The parent runs `python -m job.perf.task RUN-ARGS...`: the very process `python -m job RUN-ARGS` is (job.cli.main,
the lease, the data load, the TensorFlow set-up, the model, the compiled steps), plus one callback appended to the
training's own callbacks (job.pair.session.training hands them to train.fit) that marks the fit's start and the
first compiled call's end against the parent's stamp (job.perf.startup). The marks are its last line of output.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from job.errors import JobError
from job.perf import startup

if TYPE_CHECKING:
    from job.perf.bench import Spec

# Start-up does not depend on the fold's size: the task trains one epoch on as few images as give two whole
# compiled calls (the second one times a step), at least this many (the whole data set is still loaded and verified).
MIN_TASK_IMAGES = 2000


def task_limit(spec: Spec) -> int:
    """Images for two whole calls and a step of the next in the training part (4/5) of one epoch, within the spec's."""
    from job.pair import models

    steps = 2 * models.steps_per_call(spec.model) + 1
    needed = max(MIN_TASK_IMAGES, math.ceil(steps * spec.protocol().batch_size * 5 / 4))
    return min(spec.limit or needed, needed)


def run_args(spec: Spec, results: str) -> list[str]:
    """The `run` command line of one epoch of the spec's pair on task_limit(spec) images."""
    limit = task_limit(spec)
    args = ["run", "--model", spec.model, "--fold", str(spec.fold), "--epochs", "1", "--limit", str(limit)]
    args += ["--results", results, "--allow-cpu"]
    if spec.data_dir:
        args += ["--data-dir", spec.data_dir]
    return [*args, "--custom-data"] if spec.custom_data else args


def measure(spec: Spec, env: dict[str, str]) -> dict[str, Any]:
    """Run the task once in a fresh process and return its marks (seconds since it was started)."""
    with tempfile.TemporaryDirectory(prefix="mnist-cv-bench-task-") as results:
        command = [sys.executable, "-m", "job.perf.task", *run_args(spec, results)]
        done = subprocess.run(command, capture_output=True, text=True, env=startup.spawn_env(env))
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise JobError(f"the task (mnist-cv {' '.join(command[3:])}) failed (exit {done.returncode}): {last}")
    marks = json.loads(lines[-1])
    if "first_call" not in marks["at"]:
        raise JobError("the task trained no step (was its pair already done?)")
    return {"task_marks": marks}


def _marked(real: Any, marks: startup.Marks) -> Any:
    """session.training, with the start-up marks' callback added to the callbacks it yields."""

    @contextmanager
    def training(*args: Any, **kwargs: Any) -> Iterator[Any]:
        with real(*args, **kwargs) as session:
            session.fit_options["callbacks"].append(marks.callback())
            yield session

    return training


def main(argv: list[str]) -> int:
    marks = startup.Marks()
    marks.mark("python")
    from job.cli import main as cli_main
    from job.pair import session

    session.training = _marked(session.training, marks)
    status = cli_main(argv)
    print(json.dumps(marks.to_dict()), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
