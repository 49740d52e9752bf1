"""Where results live, how they are written (atomically) and read back (validated).

Imports no TensorFlow: collect, pairs and the launchers read results through this module alone.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from job.errors import JobError
from job.pair.protocol import Pair

SCHEMA_VERSION = 1


class ResultError(JobError):
    """A result file that cannot be used: unreadable, truncated, not JSON, or not of the schema."""


def run_dir(results: Path, run: str) -> Path:
    return Path(results) / run


def pair_path(results: Path, run: str, pair: Pair) -> Path:
    return run_dir(results, run) / pair.model / f"fold-{pair.fold}.json"


def checkpoint_dir(results: Path, run: str, pair: Pair) -> Path:
    """The pair's resumable state, kept beside its (future) result."""
    return run_dir(results, run) / pair.model / f"fold-{pair.fold}.ckpt"


def ensure_writable(folder: Path) -> None:
    """Fail before training, not after it, when the results cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise JobError(f"cannot write to {folder}: {error.strerror or error}") from None


@cache
def schema(name: str = "result") -> dict[str, Any]:
    """A JSON schema shipped with the package: "result" (a pair) or "final" (a final model)."""
    return json.loads(resources.files("job.results").joinpath(f"{name}.schema.json").read_text())


def validate(result: Any, where: str = "result", schema_name: str = "result") -> None:
    """Raise ResultError naming the first schema violation and where it is."""
    import jsonschema  # deferred: only readers of results pay for it

    errors = sorted(
        jsonschema.Draft202012Validator(schema(schema_name)).iter_errors(result), key=lambda e: list(e.path)
    )
    if errors:
        location = "/".join(str(p) for p in errors[0].absolute_path) or "top level"
        raise ResultError(f"{where}: not a valid {schema_name} ({location}: {errors[0].message})")
    epochs = result["config"]["epochs"]
    for key, values in result["history"].items():
        if len(values) != epochs:
            raise ResultError(f"{where}: history {key} has {len(values)} epochs, config says {epochs}")


def load_json(path: Path) -> Any:
    """A result file's JSON, or ResultError saying in one line why it cannot be read."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ResultError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ResultError(f"{path}: unreadable ({error})") from None
    except json.JSONDecodeError as error:
        raise ResultError(f"{path}: corrupt or truncated JSON ({error.msg}: line {error.lineno})") from None


def read_result(path: Path) -> dict[str, Any]:
    result = load_json(path)
    validate(result, str(path))
    return result


def completed(path: Path, config_id: str, read: Callable[[Path], dict[str, Any]] = read_result) -> bool:
    """True when a valid result of this config is there; raises when one of another config would be overwritten."""
    if not path.exists():
        return False
    try:
        result = read(path)
    except ResultError:
        return False  # a torn or corrupt file is redone; the new result replaces it atomically
    if result["config_id"] != config_id:
        raise JobError(
            f"{path} holds config {result['config_id']}, not {config_id}: use another --run, or --force to replace it"
        )
    return True


@dataclass
class Scan:
    """What a run folder holds: the valid results, and the files that could not be used (path -> reason)."""

    results: list[dict[str, Any]] = field(default_factory=list)
    problems: dict[Path, str] = field(default_factory=dict)


def scan(results: Path, run: str) -> Scan:
    found = Scan()
    for path in sorted(run_dir(results, run).glob("*/fold-*.json")):
        try:
            result = read_result(path)
        except ResultError as error:
            found.problems[path] = str(error)
            continue
        result["_path"] = str(path)
        found.results.append(result)
    return found
