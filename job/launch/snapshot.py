"""The code a submission runs, frozen at submission: `git archive` of HEAD (plus, when the user allows it, the
tracked files as they are in the work tree) unpacked into RESULTS/RUN/code/COMMIT[-dirty-HASH]/. Tasks use that
folder as their working directory, so `python -m job` runs it (the working directory comes first on sys.path),
and an edit or a commit made while the array waits in the queue never leaks in. Untracked files are not part of
the snapshot. A file there, `mnist-cv-code.json`, records the commit for the batch scripts' path, where
`python3 -m job.launch.snapshot` prints the folder to give them as their project folder (settings.HOME; the README
shows the one-liner). Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from job import settings
from job.errors import JobError
from job.results.layout import RunLayout

RECORD = "mnist-cv-code.json"
SOURCE = Path(__file__).resolve().parents[2]  # the checkout holding this package


def code_dir(results: Path, run: str) -> Path:
    """Where a run's snapshots go: RESULTS/RUN/code/."""

    return RunLayout(results, run).code


@dataclass(frozen=True)
class Code:
    commit: str
    dirty: bool
    name: str  # the folder's name under RESULTS/RUN/code/
    changed: tuple[str, ...]  # tracked paths that differ from the commit (copied from the work tree)


def _git(root: Path, *args: str) -> bytes:
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, check=True, timeout=60).stdout
    except FileNotFoundError:
        raise JobError("git is not on PATH: the submitted code is frozen with git archive") from None
    except subprocess.CalledProcessError as error:
        message = error.stderr.decode(errors="replace").strip().splitlines()
        raise JobError(f"git {args[0]} in {root}: {message[-1] if message else 'failed'}") from None


def plan(source: Path = SOURCE, *, allow_dirty: bool) -> Code:
    """Which tree a submission from `source` would freeze; nothing is written (what --dry-run shows)."""
    if not (source / ".git").exists():
        raise JobError(f"{source} is not a git checkout: submit from one, or pass --live-code to run it as it is")
    commit = _git(source, "rev-parse", "HEAD").decode().strip()
    diff = _git(source, "diff", "HEAD", "--binary", "--no-renames")  # staged and unstaged, tracked files only
    if diff and not allow_dirty:
        raise JobError(
            f"{source} has uncommitted changes: commit them, or pass --allow-dirty to run them as they are now"
        )
    changed = tuple(_git(source, "diff", "HEAD", "--name-only", "--no-renames", "-z").decode().split("\0")[:-1])
    name = f"{commit}-dirty-{hashlib.sha256(diff).hexdigest()[:12]}" if diff else commit
    return Code(commit, bool(diff), name, changed)


def freeze(code: Code, code_dir: Path, source: Path = SOURCE) -> Path:
    """RESULTS/RUN/code/NAME/ holding `code`, made once (a later submission of the same tree reuses it)."""
    folder = code_dir / code.name
    if (folder / RECORD).is_file():
        return folder
    code_dir.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=code_dir, prefix=f".{code.name}."))
    try:
        archive = _git(source, "archive", "--format=tar", code.commit)
        untar = subprocess.run(["tar", "-x", "-C", str(building)], input=archive, capture_output=True)
        if untar.returncode != 0:
            raise JobError(f"cannot unpack the code into {code_dir}: {untar.stderr.decode(errors='replace').strip()}")
        for path in code.changed:  # the work tree's version, or gone if deleted there
            target = building / path
            if (source / path).exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source / path, target)
            else:
                target.unlink(missing_ok=True)
        record = {"commit": code.commit, "dirty": code.dirty, "changed": list(code.changed)}
        (building / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        os.rename(building, folder)  # whole or not at all
    except OSError:
        if not (folder / RECORD).is_file():  # not a concurrent submission that made it first
            raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return folder


def recorded(folder: Path) -> tuple[str, bool] | None:
    """(commit, dirty) of a snapshot folder, None for any other folder."""
    try:
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
        return str(record["commit"]), bool(record["dirty"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def main(argv: list[str] | None = None) -> int:

    told = settings.settings()
    parser = argparse.ArgumentParser(
        prog="python3 -m job.launch.snapshot",
        description="Freeze the checkout's HEAD into RESULTS/RUN/code/ and print that folder "
        f"(for ${settings.HOME.name}).",
    )
    parser.add_argument("--results", type=Path, default=told.results, help="results folder")
    parser.add_argument("--run", default=told.run, help="run name")
    parser.add_argument("--allow-dirty", action="store_true", help="include uncommitted changes to tracked files")
    args = parser.parse_args(argv)
    try:
        folder = freeze(plan(allow_dirty=args.allow_dirty), code_dir(args.results, args.run))
    except (JobError, OSError) as error:
        print(f"job.launch.snapshot: error: {error}", file=sys.stderr)
        return 1
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
