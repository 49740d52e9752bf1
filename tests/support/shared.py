"""A value computed once in a pytest run and read by every pytest-xdist worker that asks for it.

A fixture of a test module that outlives one test binds that module's tests to one worker (tests/support/groups.py),
so that the worker trains it once. A value wanted by tests that must not share a worker (a Slurm test and a local
one, say) is made through `once` instead, from a function-scoped fixture: the first worker to ask makes it under a
file lock in the pytest run's temp folder, the others wait for it and read it back.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


class Once:
    """`once(name, make)`: make(folder)'s JSON value, made by one worker of this pytest run and read by the others."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        base = tmp_path_factory.getbasetemp()
        # Under xdist each worker's base is a folder of the run's own (pytest-N/popen-gwK): its parent is shared
        # by this run's workers alone. Without xdist the base is the run's own already.
        self.folder = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base

    def __call__(self, name: str, make: Callable[[Path], Any]) -> Any:
        made = self.folder / f"{name}.json"
        with open(self.folder / f"{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, even if make() fails
            if made.exists():
                return json.loads(made.read_text())
            work = self.folder / name
            work.mkdir(exist_ok=True)
            value = make(work)
            partial = made.with_suffix(".tmp")
            partial.write_text(json.dumps(value))
            partial.rename(made)  # a worker killed mid-write leaves no half value behind
            return value
