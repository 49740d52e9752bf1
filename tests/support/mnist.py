"""The MNIST the tests train on: the subset shipped in tests/data/mnist-mini/, and the full set when it is at hand.

Most tests need only a few thousand real images and use the subset, loaded as a custom dataset (it is not the
published MNIST, so the loader names it "custom"). Tests of the full set's own properties (its published hashes,
its 10,000 test images) look for it in this order: ``$MNIST_CV_TEST_DATA``, ``$MNIST_CV_DATA``, the project's own
download cache (where job.pair.data downloads to; ``fetch-data --to`` it fills it), else a download into that
cache through the project's verified download path. Without any of them they are skipped with one reason that
says how to provide the data, or fail when ``MNIST_CV_REQUIRE_FULL_DATA=1`` (CI: nothing may be skipped there).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from job.pair import data

from . import ROOT

MINI = ROOT / "tests" / "data" / "mnist-mini"
MINI_SUMS = MINI / "SHA256SUMS"
REQUIRE_FULL = "MNIST_CV_REQUIRE_FULL_DATA"
SKIP_PREFIX = "needs the full MNIST"  # .ci/run fails on a skip reason holding it
DOWNLOAD_TIMEOUT_S = 10  # per network operation: offline must not cost a minute per session


class FullSetMissing(Exception):
    """No folder with the verified full MNIST; the message says what was tried and how to provide one."""


class FullSetBroken(FullSetMissing):
    """$MNIST_CV_TEST_DATA names a folder that does not hold the full MNIST: a wrong setting, never a skip."""


def full_set() -> Path:
    """The first folder holding the four verified full MNIST .gz files, in the order of the module docstring."""
    named = os.environ.get("MNIST_CV_TEST_DATA")
    if named:
        problem = _problem(Path(named))
        if problem:
            raise FullSetBroken(f"MNIST_CV_TEST_DATA={named}: {problem} (it must name the full MNIST's folder)")
        return Path(named)
    cache = data._default_cache_dir()
    tried = ["MNIST_CV_TEST_DATA unset"]
    for label, value in (("MNIST_CV_DATA", os.environ.get("MNIST_CV_DATA")), ("cache", str(cache))):
        problem = _problem(Path(value)) if value else None
        if value and problem is None:
            return Path(value)
        tried.append(f"{label} {value}: {problem}" if value else f"{label} unset")
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(data, "DOWNLOAD_TIMEOUT_S", DOWNLOAD_TIMEOUT_S)
            return data.fetch(cache)
    except data.DataError as exc:
        tried.append(f"download: {str(exc).split(' - ')[0]}")  # without the loader's hint: ours follows
    raise FullSetMissing(
        f"{SKIP_PREFIX} ({'; '.join(tried)}): set MNIST_CV_TEST_DATA to a folder with the four MNIST .gz files, "
        f"or fill the cache with `python -m job fetch-data --to {cache}` where there is a network"
    )


def _problem(folder: Path) -> str | None:
    """Why `folder` is not the full MNIST as the tests use it (the four .gz files, verified), or None."""
    missing = [f"{name}.gz" for name in data.MNIST_FILES if not (folder / f"{name}.gz").is_file()]
    if missing:
        return f"no {', '.join(missing)}" if len(missing) < len(data.MNIST_FILES) else "no MNIST .gz files"
    try:
        data.load(folder)  # not custom: anything but the published hashes is refused
    except data.DataError as exc:
        return str(exc)
    return None


def mini_sums() -> dict[str, str]:
    """The recorded SHA-256 of each uncompressed file of the subset, keyed by the MNIST file names."""
    pairs = (line.split() for line in MINI_SUMS.read_text().splitlines() if line.strip())
    return {name: digest for digest, name in pairs}
