"""job/launch/snapshot.py: the submitted code is the code that runs. Unit tests on a small git repository, then on
the real local Slurm from a clone of this checkout: a pair queued with `--begin`, a commit that breaks the job made
while it waits, and the pair still runs (and records) the submitted commit, through `submit` and through
`sbatch slurm/array.sh`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.cluster import array_env, submit, wait_for_jobs, with_gpus

from job.errors import JobError
from job.launch import snapshot
from job.protocol import Pair
from job.results import store as results
from job.results.layout import RunLayout

ROOT = Path(__file__).resolve().parent.parent
QUICK = ("--epochs", "1", "--limit", "1000")
BROKEN = "raise SystemExit('edited after submission: this code must not run')\n"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "a.py").write_text("A = 1\n")
    (repo / "gone.txt").write_text("here\n")
    git(repo, "init", "-q")
    commit_all(repo, "first")
    return repo


def test_a_clean_tree_is_frozen_once_as_its_commit(repo: Path, tmp_path: Path) -> None:
    code = snapshot.plan(repo, allow_dirty=False)
    assert (code.commit, code.dirty, code.name, code.changed) == (
        git(repo, "rev-parse", "HEAD"),
        False,
        code.commit,
        (),
    )
    into = repo / "results" / "default" / "code"  # inside the checkout, as the default results folder is
    folder = snapshot.freeze(code, into, repo)
    assert folder == into / code.commit and (folder / "pkg" / "a.py").read_text() == "A = 1\n"
    assert snapshot.recorded(folder) == (code.commit, False)
    assert sorted(p.name for p in into.iterdir()) == [code.commit]  # no half-made folder left
    umask = os.umask(0)
    os.umask(umask)
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask  # as mkdir makes it: a group can read what ran
    (repo / "pkg" / "a.py").write_text("A = 2\n")  # edits after the freeze do not reach it
    assert snapshot.freeze(snapshot.plan(repo, allow_dirty=True), into, repo) != folder
    assert (folder / "pkg" / "a.py").read_text() == "A = 1\n"


def test_uncommitted_changes_are_refused_unless_allowed_then_taken_as_they_are(repo: Path, tmp_path: Path) -> None:
    (repo / "pkg" / "a.py").write_text("A = 2\n")
    (repo / "gone.txt").unlink()
    (repo / "untracked.txt").write_text("not part of the snapshot\n")
    with pytest.raises(JobError, match="has uncommitted changes: commit them, or pass --allow-dirty"):
        snapshot.plan(repo, allow_dirty=False)
    code = snapshot.plan(repo, allow_dirty=True)
    assert (
        code.dirty
        and code.name.startswith(f"{code.commit}-dirty-")
        and set(code.changed)
        == {
            "pkg/a.py",
            "gone.txt",
        }
    )
    folder = snapshot.freeze(code, tmp_path / "code", repo)
    assert (folder / "pkg" / "a.py").read_text() == "A = 2\n"
    assert not (folder / "gone.txt").exists() and not (folder / "untracked.txt").exists()
    assert json.loads((folder / snapshot.RECORD).read_text())["dirty"] is True


def test_a_folder_that_is_not_a_checkout_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(JobError, match="is not a git checkout: submit from one, or pass --live-code"):
        snapshot.plan(tmp_path, allow_dirty=False)


# --- on the real local Slurm ---------------------------------------------------------------------------------------


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A clone of this checkout's HEAD, where the test may commit."""
    folder = tmp_path / "clone"
    git(ROOT, "clone", "-q", str(ROOT), str(folder))
    return folder


def break_and_commit(clone: Path) -> None:
    (clone / "job" / "__main__.py").write_text(BROKEN)
    commit_all(clone, "break the job")


def start_now(job: str) -> None:
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, capture_output=True)


def assert_ran(out: Path, run: str, commit: str) -> None:
    result = results.read_result(RunLayout(out, run).pair_paths(Pair("mlp", 0)).result)
    assert result["environment"]["git"] == {"commit": commit, "dirty": False}
    assert (result["config"]["epochs"], result["config"]["limit"]) == (1, 1000)


@pytest.mark.slurm
def test_a_commit_made_while_submit_s_array_waits_does_not_change_what_runs(
    mnist_full: Path, clone: Path, tmp_path: Path
) -> None:
    with_gpus()
    submitted = git(clone, "rev-parse", "HEAD")
    out = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(clone), "MNIST_CV_ALLOW_CPU": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "job", "submit", "--executor", "slurm", "--task-ids", "0", *QUICK,
         "--data-dir", str(mnist_full), "--results", str(out), "--cpus-per-task", "1", "--mem-gb", "3",
         "--gpus-per-task", "0", "--slurm-additional", "begin=now+600"],
        cwd=clone, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    job = done.stdout.split("  mlp/fold-0  job ")[1].split()[0]
    assert f"code: {out}/default/code/{submitted} (commit {submitted})" in done.stdout
    break_and_commit(clone)
    start_now(job)
    assert wait_for_jobs(job, timeout=600) == {job: "COMPLETED"}
    assert_ran(out, "default", submitted)


@pytest.mark.slurm
def test_the_batch_script_runs_a_snapshot_given_as_mnist_cv_home(mnist_full: Path, clone: Path, tmp_path: Path) -> None:
    with_gpus()
    submitted = git(clone, "rev-parse", "HEAD")
    out = clone / "results"  # given relative: relative to where sbatch runs, not to the snapshot the task runs in
    env = array_env(mnist_full, "results", PYTHONPATH=str(clone))
    # The README's one-liner: MNIST_CV_HOME=$(python3 -m job.launch.snapshot) sbatch slurm/array.sh
    frozen = subprocess.run(
        [sys.executable, "-m", "job.launch.snapshot"], cwd=clone, env=env, capture_output=True, text=True
    )
    assert frozen.returncode == 0, frozen.stderr
    home = frozen.stdout.strip()
    assert home == f"{out}/default/code/{submitted}"
    env["MNIST_CV_HOME"] = home
    job = submit(
        ["--array=0", "--cpus-per-task=1", "--mem=3G", "--begin=now+600", "slurm/array.sh", *QUICK],
        cwd=clone,
        env=env,
    )
    break_and_commit(clone)
    start_now(job)
    states = wait_for_jobs(job, timeout=600)
    log = clone / f"mnist-cv-pairs_{job}_0.out"
    assert states == {f"{job}_0": "COMPLETED"}, log.read_text() if log.exists() else states
    assert f"in {home}" in log.read_text()
    assert_ran(out, "default", submitted)
