"""The MNIST subset shipped in tests/data/mnist-mini/ (its hashes, how it loads, how it was cut), and the order in
which the tests look for the full set (tests/support/mnist.py)."""

from __future__ import annotations

import gzip
import hashlib
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import ROOT, mnist

from job.pair import data

MAKE_MINI = ROOT / "tests" / "data" / "make_mini.py"


def test_the_shipped_files_hold_what_sha256sums_records(mnist_mini: Path) -> None:
    sums = mnist.mini_sums()
    assert sorted(sums) == sorted(data.MNIST_FILES)
    for name, digest in sums.items():
        assert hashlib.sha256(gzip.decompress((mnist_mini / f"{name}.gz").read_bytes())).hexdigest() == digest, name
    assert sum(path.stat().st_size for path in mnist_mini.iterdir()) < 1_500_000  # well under 2 MB in the checkout


def test_the_users_loader_takes_it_as_custom_data_never_as_mnist(mnist_mini: Path) -> None:
    mini = data.load(mnist_mini, custom=True)
    assert (mini.name, mini.source) == ("custom", str(mnist_mini))
    assert (mini.x_train.shape, mini.y_train.shape) == ((6_000, 28, 28), (6_000,))
    assert (mini.x_test.shape, mini.y_test.shape) == ((1_000, 28, 28), (1_000,))
    assert mini.sha256 == mnist.mini_sums()
    # Every digit, in about MNIST's proportions: a fold of any --limit the tests use has all ten classes.
    assert np.bincount(mini.y_train[:1000], minlength=10).min() >= 80
    with pytest.raises(data.DataError, match="sha256 mismatch .* not the original MNIST"):
        data.load(mnist_mini)


def test_make_mini_cuts_the_same_files_from_the_verified_full_set(mnist_full: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(MAKE_MINI), str(mnist_full), "--to", str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    for name in data.MNIST_FILES:
        content = gzip.decompress((tmp_path / f"{name}.gz").read_bytes())
        assert content == gzip.decompress((mnist.MINI / f"{name}.gz").read_bytes()), name
    assert (tmp_path / "SHA256SUMS").read_text() == mnist.MINI_SUMS.read_text()
    full, mini = data.load(mnist_full), data.load(mnist.MINI, custom=True)
    assert (mini.x_train == full.x_train[:6_000]).all() and (mini.y_test == full.y_test[:1_000]).all()


def test_make_mini_refuses_anything_but_the_published_mnist(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(MAKE_MINI), str(mnist.MINI), "--to", str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 1 and done.stderr.startswith("make_mini: error: ") and "sha256 mismatch" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


# --- where the full set is looked for ---------------------------------------------------------------------------


@pytest.fixture
def nothing_at_hand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No variable set, an empty cache, and a mirror on a closed local port: the full set is nowhere. The cache."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    for name in ("MNIST_CV_TEST_DATA", "MNIST_CV_DATA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MNIST_CV_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MNIST_CV_MIRROR", f"http://127.0.0.1:{port}/")
    return tmp_path / "cache"


def test_without_the_full_set_the_reason_says_what_was_tried_and_how_to_provide_it(nothing_at_hand: Path) -> None:
    with pytest.raises(mnist.FullSetMissing) as missing:
        mnist.full_set()
    reason = str(missing.value)
    assert not isinstance(missing.value, mnist.FullSetBroken) and "\n" not in reason
    tried = f"MNIST_CV_TEST_DATA unset; MNIST_CV_DATA unset; cache {nothing_at_hand}: no MNIST .gz files; download: "
    assert reason.startswith(f"{mnist.SKIP_PREFIX} ({tried}http://127.0.0.1:")
    assert "download failed" in reason and "set MNIST_CV_TEST_DATA to a folder" in reason
    assert f"fetch-data --to {nothing_at_hand}`" in reason


def test_a_test_data_folder_that_is_not_the_full_set_is_an_error_not_a_skip(
    nothing_at_hand: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MNIST_CV_TEST_DATA", str(mnist.MINI))
    with pytest.raises(mnist.FullSetBroken, match=r"^MNIST_CV_TEST_DATA=.*mnist-mini: .*sha256 mismatch"):
        mnist.full_set()


def test_the_data_variable_then_the_cache_are_looked_in(
    mnist_full: Path, nothing_at_hand: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MNIST_CV_DATA", str(mnist_full))
    assert mnist.full_set() == mnist_full
    monkeypatch.setenv("MNIST_CV_DATA", str(mnist.MINI))  # a custom dataset there: passed over, not an error
    monkeypatch.setenv("MNIST_CV_CACHE", str(mnist_full))
    assert mnist.full_set() == mnist_full
