"""Fixtures shared by the test files: the MNIST they train on (tests/support/mnist.py says where it comes from);
values made once for all the workers (tests/support/shared.py); and which tests share a pytest-xdist worker
(tests/support/groups.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import groups, mnist
from support.shared import Once


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups into the test ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    groups.distribute(config, items)


@pytest.fixture(scope="session")
def mnist_mini() -> Path:
    """The real subset shipped with the tests (6,000 training, 1,000 test images): load it with custom=True."""
    return mnist.MINI


@pytest.fixture(scope="session")
def mnist_full() -> Path:
    """A folder with the four verified full MNIST .gz files; skipped without one (failed if it is required)."""
    try:
        return mnist.full_set()
    except mnist.FullSetMissing as exc:
        missing = exc
    # Outside the except block: the report shows the reason alone, not a chain of two exceptions.
    if isinstance(missing, mnist.FullSetBroken) or os.environ.get(mnist.REQUIRE_FULL) == "1":
        pytest.fail(str(missing), pytrace=False)
    pytest.skip(str(missing))


@pytest.fixture(scope="session")
def once(tmp_path_factory: pytest.TempPathFactory) -> Once:
    """Makes a value once for the pytest run, whichever worker asks first (tests/support/shared.py)."""
    return Once(tmp_path_factory)
