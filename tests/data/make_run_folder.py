"""Make tests/data/run-folder/: a small results folder of real short runs, for the tests of the read side (collect,
status, pairs, the MLflow export) that need no training of their own.

    PYTHONPATH=. python tests/data/make_run_folder.py    (from the checkout's root; 2-3 minutes on 2 cores)

It deletes the folder and builds it again from scratch by running the real CLI (`python -m job run`, `python -m job
final`) on the shipped subset tests/data/mnist-mini/, with --epochs 2 --limit 1000, into run `default`. Paths are
given relative to the checkout's root, so the results record the same data source and arguments on every machine.
What it holds (task ids as in `run --task-id`; repeat 1 is ids 10-19):

  default/mlp/fold-K.json, cnn/fold-K.json   repeat 0 complete: tasks 0-9, each with its per-epoch .csv and
                                             TensorBoard folder
  default/final/mlp.json, .keras, .csv, mlp/ a final MLP of the same config (scored on the subset's 1,000 test
                                             images), with the model file its result names
  default/mlp/repeat-1/fold-0.json, fold-1   repeat 1 partial: tasks 10 and 11 done
  default/mlp/repeat-1/fold-2.ckpt/          task 12 interrupted: its checkpoint after epoch 2 (trained with
                                             --keep-checkpoint, then its result deleted: killed before the write)
  default/mlp/repeat-1/fold-3.lease          task 13: the lease a real `Lease.acquire` wrote in a process that then
                                             exited without releasing it, as Slurm task 7001_3; its host is then
                                             renamed to one no machine has (gone.invalid), so whether it is alive
                                             is decided by the Slurm state a test feeds, on any machine
  default/logs/7002_2_0_log.err              the stderr of a real `run --task-id 16` that failed (no such data)
  default/submissions.jsonl                  two arrays, by record_submission: 7001 ran tasks 10-13 (indices 0-3),
                                             7002 tasks 14-18 (indices 0-4); task 19 was never submitted. Their log
                                             pattern is relative to the results folder: read status from there.

It holds no run.json: the folder stands for a run folder of a version before run manifests, whose config and
repeats the commands derive from its results (tests/test_manifest.py). Each training's TensorBoard logs (under
1 kB) are kept beside its CSV: the committed folder's are the single runs of the layout before train/ and
validation/ (fold-K.tb/), which no test reads. The interrupted pair is an mlp because a cnn checkpoint is 40 MB (its
10 million weights). Hosts, times and accuracies are whatever the runs record.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from job.protocol import Pair, Protocol
from job.results.layout import RunLayout
from job.results.lease import read_holder
from job.results.submissions import record_submission

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path("tests/data/run-folder")  # relative to ROOT, as every path given to the runs
MINI = Path("tests/data/mnist-mini")
RUN = "default"
EPOCHS, LIMIT = 2, 1000
CONFIG = Protocol().with_overrides(epochs=EPOCHS, limit=LIMIT)
REPEATS = 2
COMMON = ("--results", str(RESULTS), "--run", RUN, "--epochs", str(EPOCHS), "--limit", str(LIMIT))
DATA = ("--data-dir", str(MINI), "--custom-data")
JOB_NAME = "mnist-cv-pairs"
LOG = f"{RUN}/logs/%A_%a_0_log.err"  # submit's pattern (job/launch/submission.py), relative to RESULTS
# Two submissions of repeat 1: array index -> task id.
ARRAYS = {"7001": {0: 10, 1: 11, 2: 12, 3: 13}, "7002": {0: 14, 1: 15, 2: 16, 3: 17, 4: 18}}
INTERRUPTED, LEASED, FAILED = 12, 13, 16
GONE_HOST = "gone.invalid"  # .invalid is reserved (RFC 2606): never a machine's name
HOLD = "import sys; from job.results.lease import Lease; Lease.acquire(sys.argv[1], sys.argv[2])"


class Failed(Exception):
    """A step went otherwise than planned: the folder is not the one described above."""


def environment(**extra: str) -> dict[str, str]:
    """This checkout's code, and none of the settings or Slurm variables the caller may have."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MNIST_CV_"))}
    return {**kept, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "job", *args], cwd=ROOT, env=environment(), capture_output=True, text=True
    )
    if check and done.returncode != 0:
        raise Failed(f"`job {' '.join(args)}` failed:\n{done.stderr[-3000:]}")
    return done


def task(
    task_id: int, *more: str, data: tuple[str, ...] = DATA, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return cli("run", "--task-id", str(task_id), *COMMON, *data, *more, check=check)


def task_of(array_job: str, task_id: int) -> str:
    """The Slurm id (ARRAY_INDEX) of the array task that ran `task_id`."""
    (index,) = [i for i, t in ARRAYS[array_job].items() if t == task_id]
    return f"{array_job}_{index}"


def main() -> None:
    layout = RunLayout(ROOT / RESULTS, RUN)
    shutil.rmtree(layout.results_dir, ignore_errors=True)

    with ThreadPoolExecutor(2) as pool:  # two at a time: one per core
        runs = [pool.submit(task, t) for t in range(10)]
        runs += [pool.submit(task, t, "--repeats", str(REPEATS)) for t in (10, 11)]
        runs.append(pool.submit(task, INTERRUPTED, "--repeats", str(REPEATS), "--keep-checkpoint"))
        runs.append(pool.submit(cli, "final", "--model", "mlp", *COMMON, *DATA))
        for run in runs:
            run.result()  # re-raises a run's failure here

    interrupted = layout.pair_paths(Pair("mlp", 2, 1))
    if not interrupted.checkpoint.is_dir():
        raise Failed("--keep-checkpoint kept no checkpoint")
    interrupted.result.unlink()

    lease = layout.pair_paths(Pair("mlp", 3, 1)).lease
    array_job, _, index = task_of("7001", LEASED).partition("_")
    slurm = {"SLURM_JOB_ID": "7006", "SLURM_ARRAY_JOB_ID": array_job, "SLURM_ARRAY_TASK_ID": index}
    held = subprocess.run(
        [sys.executable, "-c", HOLD, str(lease), CONFIG.config_id],
        env=environment(**slurm, SLURM_RESTART_COUNT="0"),
        capture_output=True,
        text=True,
    )
    holder = read_holder(lease)
    if held.returncode != 0 or holder is None:
        raise Failed(f"no lease was left behind:\n{held.stderr[-3000:]}")
    lease.write_text(json.dumps(dataclasses.asdict(dataclasses.replace(holder, host=GONE_HOST))))

    failed = task(FAILED, "--repeats", str(REPEATS), data=("--data-dir", "no-such-mnist"), check=False)
    if failed.returncode != 1:
        raise Failed(f"task {FAILED} was to fail, it exited {failed.returncode}:\n{failed.stderr}")
    array_job, _, index = task_of("7002", FAILED).partition("_")
    log = layout.results_dir / LOG.replace("%A", array_job).replace("%a", index)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(failed.stderr)

    for array_job, tasks in ARRAYS.items():
        record_submission(
            layout, array_job_id=array_job, tasks=tasks, config_id=CONFIG.config_id, log=LOG, job_name=JOB_NAME
        )

    layout.manifest.unlink()  # recorded by the first run: see the docstring
    for folder in sorted(layout.folder.rglob("*"), reverse=True):  # deepest first: the failed run's empty folder
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()

    files = sorted(p for p in layout.results_dir.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in files)
    print(f"{len(files)} files, {size / 1e6:.2f} MB in {RESULTS}")


if __name__ == "__main__":
    try:
        main()
    except Failed as error:
        sys.exit(f"make_run_folder: {error}")
