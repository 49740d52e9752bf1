"""Which tests must run in the same pytest-xdist worker (`--dist loadgroup`, pyproject.toml's addopts).

Three kinds of tests may not be split between the two workers:
- the tests that submit to the one local Slurm cluster (marked `slurm`): some restart it with another GPU count
  (tests/support/cluster.py's reconfigure), which must never happen under another test's jobs, and each waits
  for the node's two CPUs, so two of them at once would only queue behind each other;
- the tests that share a module- or session-scoped fixture of their own module (ten pairs trained once, say):
  split, each worker would train them again;
- the tests that watch processes machine-wide (TOGETHER).
A value wanted on both sides of that line (by a Slurm test and a local one) is made through support/shared.py's
`Once` from a function-scoped fixture instead: it binds no tests together, and is still made once.
So the tests are joined wherever they share such a fixture; a group holding a `slurm` test is the `slurm` group,
any other one is named after its module (or TOGETHER's name), and a test that shares nothing is scheduled alone.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest

SLURM = "slurm"
# Modules whose tests watch processes machine-wide (the bench's busy loops: every one gone after the bench), so
# they must not run beside each other.
TOGETHER = {"tests/test_bench.py": "busy-loops", "tests/test_perf_load.py": "busy-loops"}
_SHARED_SCOPES = {"module", "package", "session"}


def _shared_fixtures(item: pytest.Item) -> Iterable[tuple[str, str]]:
    """(module, fixture name) of each fixture of the item's own module that outlives one test."""
    info = getattr(item, "_fixtureinfo", None)
    module = item.nodeid.split("::")[0]
    for name in info.names_closure if info else ():
        defs = info.name2fixturedefs.get(name)
        if defs and defs[-1].scope in _SHARED_SCOPES and defs[-1].baseid == module:
            yield module, name


def assign(items: list[pytest.Item]) -> dict[pytest.Item, str]:
    """The group of each item that has one (see the module docstring)."""
    parent: dict[object, object] = {}

    def root(key: object) -> object:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    for item in items:
        for fixture in _shared_fixtures(item):
            parent[root(item)] = root(fixture)
        if item.get_closest_marker(SLURM):
            parent[root(item)] = root(SLURM)
        if together := TOGETHER.get(item.nodeid.split("::")[0]):
            parent[root(item)] = root(together)
    groups: dict[pytest.Item, str] = {}
    for item in items:
        top = root(item)
        if top == root(SLURM):
            groups[item] = SLURM
        elif top != item:
            groups[item] = (
                top if isinstance(top, str) else item.nodeid.split("::")[0].split("/")[-1].removesuffix(".py")
            )
    return groups


def distribute(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under `--dist loadgroup`: mark each item's group, and order the groups biggest first (the slurm group, then
    the shared fixtures', then single tests), so that the long ones start at once and the short ones fill the end."""
    # On a worker xdist sets `dist` to "no" and keeps whether it was loadgroup here.
    if not (hasattr(config, "workerinput") and getattr(config.option, "loadgroup", False)):
        return
    groups = assign(items)
    for item, group in groups.items():
        item.add_marker(pytest.mark.xdist_group(group))
        _suffix(item, group)
    rank = {item: 0 if groups.get(item) == SLURM else 1 if item in groups else 2 for item in items}
    items.sort(key=rank.__getitem__)


def _suffix(item: pytest.Item, group: str) -> None:
    """loadgroup reads a test's group from the `@GROUP` end of its id, which xdist (3.8) writes into `_nodeid`;
    pytest 9.2 reads ids from `_id` instead, so without this every test would be a group of its own."""
    if hasattr(item, "_id") and not item.nodeid.endswith(f"@{group}"):
        from _pytest.nodeid import NodeId

        item._id = NodeId.parse(f"{item.nodeid}@{group}")
