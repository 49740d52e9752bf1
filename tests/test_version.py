"""`mnist-cv --version`: the package's version and the commit of the code that runs."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata

from support import ROOT


def test_version_names_the_package_and_the_commit() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "job", "--version"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    assert re.fullmatch(
        rf"mnist-cv {re.escape(metadata.version('mnist-cv'))}, {commit}( with uncommitted changes)?\n", done.stdout
    ), done.stdout
