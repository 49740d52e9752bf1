"""`verify`'s rerun of one pair from what its result records: its config, pair and data, and the code of its recorded
commit, in a scratch folder under the run folder (RESULTS/RUN/.verify/...), removed after.

The rerun is a child `python -m job run` (the one training path, job/pair) with that code first on PYTHONPATH and as
its working folder: the running code when it is the recorded commit, clean; else the run's code snapshot of that
commit (RESULTS/RUN/code/, job/launch/snapshot.py); else `git archive` of the commit into the scratch folder. With
none of them, the running code reruns it and the verdict says the code was unavailable. The child is pinned to as
many CPUs as the result's training had intra-op threads, when this process has that many: the thread count is part
of what makes numbers equal.

With a preemption, the child is killed (SIGKILL, `run --kill-at-step`) after the step a seed chooses, and run again:
it must resume from its checkpoint to the same bits. Imports no TensorFlow.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from job import provenance, settings
from job.errors import JobError
from job.launch import snapshot
from job.protocol import Pair
from job.results import store
from job.results.contract import PairResult
from job.results.layout import RunLayout

RUN = "rerun"  # the scratch folder's run name
TAIL_LINES = 5  # of a failed child's output, in its one-line error


@dataclass(frozen=True)
class Code:
    """The code a rerun runs: a folder holding the package `job`, and what it is."""

    folder: Path
    commit: str | None
    dirty: bool
    source: str  # where it came from, in words
    unavailable: str | None = None  # why the result's own code is not at hand (`folder` is the running code then)

    def to_json(self) -> dict[str, Any]:
        return {"commit": self.commit, "dirty": self.dirty, "source": self.source}


def running_code() -> Code:
    git = provenance.git()
    commit, dirty = (git["commit"], git["dirty"]) if git else (None, False)
    return Code(snapshot.SOURCE, commit, dirty, "the running code")


def code_for(recorded: Mapping[str, Any] | None, layout: RunLayout, scratch: Path) -> Code:
    """The code of the commit a result records (`environment.git`): the running code, the run's snapshot, or a
    `git archive` into `scratch`; the running code, said unavailable, when none of them is that commit."""
    here = running_code()
    if not recorded or not recorded.get("commit"):
        return _unavailable(here, "the result records no commit")
    commit, dirty = str(recorded["commit"]), bool(recorded.get("dirty"))
    if not dirty and (here.commit, here.dirty) == (commit, False):
        return here
    snapshots = [f for f in _folders(layout.code) if snapshot.recorded(f) == (commit, dirty)]
    if len(snapshots) == 1:
        return Code(snapshots[0], commit, dirty, f"the run's code snapshot {snapshots[0].name}")
    if dirty:
        many = f"{len(snapshots)} snapshots of them in {layout.code}" if snapshots else f"no snapshot in {layout.code}"
        return _unavailable(here, f"the result ran uncommitted changes to {commit[:12]}, and there is {many}")
    try:
        folder = snapshot.freeze(snapshot.Code(commit, False, commit, ()), scratch / "code", snapshot.SOURCE)
    except JobError as error:
        return _unavailable(here, f"commit {commit[:12]} is not the running code, has no snapshot, and {error}")
    return Code(folder, commit, False, f"git archive of {commit[:12]}")


def freeze_for_tasks(recorded: Mapping[str, Any] | None, layout: RunLayout) -> None:
    """Before verifications are submitted: the run's snapshot of a result's clean commit, made from this checkout when
    it is not there (a task runs in a snapshot, where git knows no history); one git cannot make is left to the task
    to report."""
    if not recorded or not recorded.get("commit") or recorded.get("dirty"):
        return
    commit = str(recorded["commit"])
    if any(snapshot.recorded(f) == (commit, False) for f in _folders(layout.code)):
        return
    with contextlib.suppress(JobError):
        snapshot.freeze(snapshot.Code(commit, False, commit, ()), layout.code, snapshot.SOURCE)


def _unavailable(here: Code, why: str) -> Code:
    return Code(here.folder, here.commit, here.dirty, f"{here.source} (the result's is unavailable)", why)


def _folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def total_steps(result: PairResult) -> int:
    """The training steps of a pair's whole training: its epochs times the batches of its training images."""
    return result.config.epochs * math.ceil(result.data.n_train / result.config.batch_size)


def preempt_step(seed: int, pair: Pair, steps: int) -> int:
    """The step (1 to `steps`) after which `seed` kills `pair`'s rerun: a replay with the seed kills it there again."""
    digest = hashlib.sha256(f"{seed} {pair}".encode()).digest()
    return 1 + int.from_bytes(digest[:8], "big") % steps


@dataclass(frozen=True)
class Rerun:
    result: PairResult  # the rerun's result, as valid as any (store.check_pair)
    code: Code
    preempt: dict[str, Any] | None  # what the kill did: seed, step, signal, and the epoch it resumed from


@dataclass(frozen=True)
class Inputs:
    """What a rerun reads besides its result: the data (its folder, and whether it is custom data), the device."""

    data_dir: Path | None
    custom_data: bool
    allow_cpu: bool = False


def rerun(layout: RunLayout, recorded: PairResult, inputs: Inputs, preempt_seed: int | None = None) -> Rerun:
    """Retrain the pair of `recorded` in a scratch folder of `layout`'s run, with its code; its result."""
    pair = Pair(recorded.model, recorded.fold, recorded.repeat)
    with _scratch(layout, pair) as scratch:
        code = code_for(recorded.environment.get("git"), layout, scratch)
        results = scratch / "results"
        argv = _run_args(recorded, pair, results, inputs)
        preempted = None
        if preempt_seed is not None:
            step = preempt_step(preempt_seed, pair, total_steps(recorded))
            preempted = _killed(argv, code, recorded, step, preempt_seed)
        _child(argv, code, recorded, what=f"the rerun of {pair}")
        result = store.check_pair(RunLayout(results, RUN).pair_paths(pair).result, RunLayout(results, RUN))
        if preempted is not None and preempted.get("killed"):
            resumed = result.resume.from_epochs
            preempted["resumed_from_epoch"] = resumed[0] if resumed else 0
    if result.config_id != recorded.config_id:
        raise JobError(f"the rerun of {pair} trained config {result.config_id}, not its result's {recorded.config_id}")
    return Rerun(result, code, preempted)


@contextmanager
def _scratch(layout: RunLayout, pair: Pair) -> Iterator[Path]:
    """RESULTS/RUN/.verify/PAIR-XXXX/, removed after, and .verify/ with it once empty."""
    layout.verify_scratch.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=layout.verify_scratch, prefix=f"{str(pair).replace('/', '-')}-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):  # another rerun's folder is still there
            layout.verify_scratch.rmdir()


def _run_args(recorded: PairResult, pair: Pair, results: Path, inputs: Inputs) -> list[str]:
    argv = ["run", "--model", pair.model, "--fold", str(pair.fold), "--results", str(results), "--run", RUN]
    argv += ["--repeat", str(pair.repeat)] * bool(pair.repeat)  # older code knows no --repeat: only when needed
    argv += ["--data-dir", str(inputs.data_dir.absolute())] if inputs.data_dir is not None else []
    argv += ["--custom-data"] * inputs.custom_data + ["--allow-cpu"] * inputs.allow_cpu
    return [*argv, *recorded.config.as_options()]


def _killed(argv: list[str], code: Code, recorded: PairResult, step: int, seed: int) -> dict[str, Any]:
    """Run the child with --kill-at-step; what happened, for the record."""
    done = _start(argv + ["--kill-at-step", str(step)], code, recorded)
    about = {"seed": seed, "step": step, "steps": total_steps(recorded), "signal": "SIGKILL"}
    if done.returncode == -signal.SIGKILL:
        return {**about, "killed": True}
    if done.returncode == 2 and "--kill-at-step" in done.stdout:  # older code: its `run` has no such option
        return {**about, "killed": False, "why": f"the code of {str(code.commit)[:12]} has no run --kill-at-step"}
    raise JobError(_failure(f"the preempted rerun (--kill-at-step {step})", done))


def _child(argv: list[str], code: Code, recorded: PairResult, what: str) -> None:
    done = _start(argv, code, recorded)
    if done.returncode != 0:
        raise JobError(_failure(what, done))


def _start(argv: list[str], code: Code, recorded: PairResult) -> subprocess.CompletedProcess[str]:
    """`python -m job ARGV` with `code`, its output after ours on stderr (so stdout keeps the verdicts alone)."""
    env = {**os.environ, "PYTHONPATH": str(code.folder), "PYTHONUNBUFFERED": "1"}
    env.update(settings.provenance_env(code.commit, code.dirty, settings.settings().image_sha256))
    cpus = _cpus(recorded)
    done = subprocess.run(
        [sys.executable, "-m", "job", *argv],
        cwd=code.folder,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
    )
    sys.stderr.write(done.stdout)
    sys.stderr.flush()
    return done


def _cpus(recorded: PairResult) -> set[int] | None:
    """As many of our CPUs as the result's training had intra-op threads, when we have that many (its thread pool
    is sized to the CPUs it may run on); None: all of ours. A pair trained after another model in one process
    (`run --task-ids`) ran on that model's threads, which may be fewer than its own cap."""
    threads = recorded.environment.get("threads")
    intra_op = threads.get("intra_op") if isinstance(threads, Mapping) else None
    ours = sorted(os.sched_getaffinity(0))
    if not isinstance(intra_op, int) or not 0 < intra_op <= len(ours):
        return None
    return set(ours[:intra_op])


def _failure(what: str, done: subprocess.CompletedProcess[str]) -> str:
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()][-TAIL_LINES:]
    how = f"was killed by signal {-done.returncode}" if done.returncode < 0 else f"exited {done.returncode}"
    return f"{what} {how}: {' | '.join(lines) or '(no output)'}"
