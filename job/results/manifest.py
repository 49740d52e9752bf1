"""The run manifest, RESULTS/RUN/run.json: a run's protocol (with its config id) and repeats, recorded by the first
command that writes into the run, so that every later command needs only --run.

    {"schema_version": 1, "config_id": "2ee28e651620", "config": {"epochs": 1, ...}, "repeats": 1}

It is created complete or not at all (job/atomic.py's `create`: a temp file hard-linked to the name), so of two
processes starting a run at once exactly one records it; the other reads it and compares, and a second config is
refused. A larger --repeats rewrites it atomically. Two growths racing to different sizes can leave the smaller
one: a task beyond it is then refused, naming the --repeats that grows the run again.

A run folder of an earlier version has no manifest: it is derived from the run's valid results (the one config all
pair and final results share, and the highest repeat + 1). Readers use it without writing it; the first command
that writes into the run records it. A run holding results of several configs, and no manifest, has none.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any

from job import atomic
from job.errors import JobError, UsageError
from job.files import read_bounded
from job.protocol import Protocol, check_repeats
from job.results import store
from job.results.layout import RunLayout

SCHEMA_VERSION = 1
MAX_MANIFEST_BYTES = 1 << 16  # a manifest is about 250 bytes
_KEYS = ("schema_version", "config_id", "config", "repeats")


class Source(Enum):
    """Where a run's manifest comes from."""

    RECORDED = "recorded"  # its run.json
    DERIVED = "derived"  # no run.json: the one config of its valid results (a run of an earlier version)
    NEW = "new"  # no run.json and no valid result: the first command that writes records it
    MIXED = "mixed"  # no run.json and valid results of several configs: no manifest


@dataclass(frozen=True)
class Manifest:
    protocol: Protocol
    repeats: int

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "config_id": self.protocol.config_id,
            "config": self.protocol.to_dict(),
            "repeats": self.repeats,
        }

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_json(), indent=1) + "\n").encode()

    @classmethod
    def from_json(cls, data: Any, where: str) -> Manifest:
        """The manifest `data` holds, or a JobError naming `where` and the first thing wrong with it."""
        if not isinstance(data, dict):
            raise _not_a_manifest(where, "not a JSON object")
        version = data.get("schema_version")
        if type(version) is not int or version != SCHEMA_VERSION:
            raise _not_a_manifest(where, f"schema_version {_short(version)}, this code reads {SCHEMA_VERSION}")
        if sorted(data) != sorted(_KEYS):
            raise _not_a_manifest(where, f"its keys are {_short(sorted(data))}, not {', '.join(_KEYS)}")
        try:
            protocol = _protocol(data["config"])
            repeats = data["repeats"]
            if type(repeats) is not int:
                raise UsageError(f"repeats {_short(repeats)} is not a whole number")
            check_repeats(repeats, protocol)
        except UsageError as error:
            raise _not_a_manifest(where, str(error)) from None
        if (recorded := data["config_id"]) != protocol.config_id:
            raise _not_a_manifest(where, f"config_id {_short(recorded)} is not its config's, {protocol.config_id}")
        return cls(protocol, repeats)


def _short(value: Any) -> str:
    """A value as a message quotes it: its repr, cut (a manifest may hold 64 kB where one number belongs)."""
    shown = repr(value)
    return shown if len(shown) <= 60 else f"{shown[:60]}..."


def _not_a_manifest(where: str, why: str) -> JobError:
    return JobError(f"{where}: not a run manifest ({why}); nothing was overwritten: fix or remove it")


def _protocol(config: Any) -> Protocol:
    """The Protocol a manifest's config names: every field, each of its default's type (limit: a number or null)."""
    names = sorted(f.name for f in fields(Protocol))
    if not isinstance(config, dict) or sorted(config) != names:
        raise UsageError(f"its config must name exactly {', '.join(names)}")
    default = Protocol()
    for name, value in config.items():
        if type(value) is not type(getattr(default, name)) and not (name == "limit" and type(value) is int):
            raise UsageError(f"config {name} {_short(value)} is not of its type")
    return Protocol.from_dict(config)


@dataclass(frozen=True)
class Found:
    """A run's manifest (None for a new run or one of several configs) and where it comes from."""

    manifest: Manifest | None
    source: Source


def read(layout: RunLayout) -> Manifest | None:
    """The run's recorded manifest; None when it has none. A file that is not one is a JobError naming it."""
    path = layout.manifest
    if not os.path.lexists(path):
        return None
    if os.path.islink(path):  # the run's config must be the run folder's own, not a file elsewhere
        raise JobError(f"{path}: a symlink, not a run manifest; nothing was overwritten: remove it")
    raw = read_bounded(path, MAX_MANIFEST_BYTES, "a run manifest holds")  # a FIFO or a folder: one line
    try:
        data = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _not_a_manifest(str(path), f"corrupt or truncated JSON: {error}") from None
    return Manifest.from_json(data, str(path))


def find(layout: RunLayout) -> Found:
    """The run's manifest: the recorded one, else the one its results imply. Reads only."""
    recorded = read(layout)
    return Found(recorded, Source.RECORDED) if recorded is not None else derive(layout)


def derive(layout: RunLayout) -> Found:
    """The manifest a run without one implies: the one config of its valid pair and final results, and the highest
    repeat of its pairs + 1."""
    records = store.scan(layout).records
    configs = {r.result.config_id: r.result.config for r in records}
    for path in layout.final_results():
        try:
            final = store.check_final(path, layout)
        except JobError:
            continue  # not a valid result: it says nothing of the run's config
        configs[final.config_id] = final.config
    if not configs:
        return Found(None, Source.NEW)
    if len(configs) > 1:
        return Found(None, Source.MIXED)
    (protocol,) = configs.values()
    return Found(Manifest(protocol, 1 + max((r.result.repeat for r in records), default=0)), Source.DERIVED)


def record(layout: RunLayout, protocol: Protocol, repeats: int) -> str | None:
    """Make `protocol` the run's, with at least `repeats` repeats, before anything is written into the run: record
    the manifest (a run of an earlier version's with its results' repeats), or grow the recorded one. The line to
    print when it grew, else None. A run of several configs and no manifest is left as it is; a manifest of another
    config (a process that recorded it first) is a UsageError."""
    found = find(layout)
    if found.source is Source.MIXED:
        return None
    current = found.manifest
    if found.source is not Source.RECORDED:
        _check_same(layout, current, protocol)
        first = Manifest(protocol, max(repeats, current.repeats if current else 1))
        if atomic.create(layout.manifest, first.to_bytes()):
            return None
        current = read(layout)  # another process recorded it first: compare with its
        if current is None:
            raise JobError(f"{layout.manifest}: recorded by another process and removed at once; try again")
    assert current is not None  # a recorded manifest was found
    _check_same(layout, current, protocol)
    if current.repeats >= repeats:
        return None
    atomic.write_bytes(layout.manifest, Manifest(protocol, repeats).to_bytes())
    return f"run {layout.run}: grown from {current.repeats} to {repeats} repeats ({layout.manifest})"


def _check_same(layout: RunLayout, current: Manifest | None, protocol: Protocol) -> None:
    if current is not None and current.protocol != protocol:
        raise UsageError(
            f"run {layout.run} is {current.protocol.describe()} (config {current.protocol.config_id}); this is "
            f"{protocol.describe()} (config {protocol.config_id}): one run holds one config, use another --run"
        )
