"""Reading results back: the one check that a file is a valid result for the pair its path names, and the scan of
a run folder. Writing is atomic (job/results/atomic.py); paths come from job/results/layout.py.

Imports no TensorFlow: collect, pairs, status and the launchers read results through this module alone.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from job import folds
from job.errors import JobError
from job.files import FileError, read_bounded, sha256_file
from job.protocol import Pair
from job.results.contract import FinalResult, PairResult, ResultError, check_schema
from job.results.layout import RunLayout

# Evaluation after the last epoch and that epoch's validation are the same Keras evaluate() on the same weights
# and batches, so they agree exactly on the CPU; on a GPU a reduction may sum in another order. A float32 mean of
# fewer than 2**24 values moves by a few ulps (about 1e-6 relative) from the order; the smallest honest change of an
# accuracy is one image in 60,000 (1.7e-5), so these tolerances accept the order and refuse any edit of the score.
ACCURACY_TOLERANCE = 1e-6
LOSS_RELATIVE_TOLERANCE = 1e-5
# A result is a few kB (its history grows by about 100 bytes an epoch): anything this large is not one.
MAX_RESULT_BYTES = 16 << 20


def ensure_writable(folder: Path) -> None:
    """Fail before training, not after it, when the results cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise JobError(f"cannot write to {folder}: {error.strerror or error}") from None


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as infinity
        raise ValueError(f"{text} is not a finite number")
    return value


def load_json(path: Path) -> Any:
    """A file's JSON with finite numbers only, or ResultError saying in one line why it cannot be read."""
    if not os.path.lexists(path):
        raise ResultError(f"{path}: missing")
    try:  # a FIFO, /dev/zero or a folder is refused before any read
        raw = read_bounded(Path(path), MAX_RESULT_BYTES, "a result holds")
    except JobError as error:
        raise ResultError(str(error)) from None
    try:
        return json.loads(raw.decode(), parse_constant=_refuse_constant, parse_float=_finite_float)
    except UnicodeDecodeError as error:
        raise ResultError(f"{path}: unreadable ({error})") from None
    except json.JSONDecodeError as error:
        raise ResultError(f"{path}: corrupt or truncated JSON ({error.msg}: line {error.lineno})") from None
    except ValueError as error:
        raise ResultError(f"{path}: {error}") from None


def read_result(path: Path) -> dict[str, Any]:
    """A pair result's JSON, schema-valid and finite (what tests and tools look into field by field)."""
    result = load_json(path)
    check_schema(result, PairResult.SCHEMA, str(path))
    return result


def check_pair(path: Path, layout: RunLayout) -> PairResult:
    """The result in `path` if it is a valid result for the pair its path names; ResultError saying why not.

    Valid: schema-valid JSON with finite numbers; model, fold and repeat those of the path and the fold one of its
    config; config_id the hash of its config; the held-out indices those of that fold of that repeat's split of the
    (limited) training images; a history as long as its epochs, whose last validation numbers are the score.
    """

    pair = layout.pair_of(path)
    if pair is None:
        raise ResultError(f"{path}: not a pair result's path (RUN/MODEL/fold-K.json or RUN/MODEL/repeat-R/fold-K.json)")
    result = PairResult.from_json(load_json(path), str(path))
    config = result.config
    held = Pair(result.model, result.fold, result.repeat)
    if held != pair:
        raise ResultError(f"{path}: holds {held}, not the pair its path names")
    if result.fold >= config.n_folds:
        raise ResultError(f"{path}: fold {result.fold} of a {config.n_folds}-fold config")
    if result.config_id != config.config_id:
        raise ResultError(f"{path}: config_id {result.config_id} is not its config's ({config.config_id})")
    try:
        _, held_out = folds.split(result.data.n_train + result.data.n_val, result.fold, config, result.repeat)
    except JobError as error:  # a repeat beyond what the split seed allows
        raise ResultError(f"{path}: {error}") from None
    if folds.indices_sha256(held_out) != result.data.val_indices_sha256:
        where = f"fold {result.fold}" + (f" of repeat {result.repeat}" if result.repeat else "")
        raise ResultError(f"{path}: its held-out images are not {where} of its config")
    if config.limit is not None and result.data.n_train + result.data.n_val != config.limit:
        raise ResultError(f"{path}: {result.data.n_train + result.data.n_val} images, its config says {config.limit}")
    check_history(result, str(path))
    return result


def check_final(path: Path, layout: RunLayout) -> FinalResult:
    """The result in `path` if it is a valid final result for the model its name says, naming its very model file."""
    result = FinalResult.from_json(load_json(path), str(path))
    if result.model != layout.final_model_of(path):
        raise ResultError(f"{path}: holds the final {result.model}, not the model its name says")
    if result.config_id != result.config.config_id:
        raise ResultError(f"{path}: config_id {result.config_id} is not its config's ({result.config.config_id})")
    check_history(result, str(path))
    test = result.test
    if any(m.index >= test.n_images for m in test.misclassified):
        raise ResultError(f"{path}: a misclassified index beyond its {test.n_images} test images")
    model_file = layout.final_paths(result.model).model_file
    if result.model_file.name != model_file.name:
        raise ResultError(f"{path}: names the model file {result.model_file.name!r}, not {model_file.name}")
    try:
        found = sha256_file(model_file)
    except FileError as error:
        raise ResultError(f"{error}; {path.name} names it") from None
    if found != result.model_file.sha256:
        raise ResultError(f"{model_file}: not the model {path.name} names")
    return result


def check_history(result: PairResult | FinalResult, where: str) -> None:
    """A history of `epochs` values per metric, whose last validation numbers are the result's score."""
    history, epochs = result.history, result.config.epochs
    for name, values in vars(history).items():
        if len(values) != epochs:
            raise ResultError(f"{where}: history {name} has {len(values)} epochs, config says {epochs}")
    score = result.score
    if abs(history.val_accuracy[-1] - score.accuracy) > ACCURACY_TOLERANCE or not math.isclose(
        history.val_loss[-1], score.loss, rel_tol=LOSS_RELATIVE_TOLERANCE, abs_tol=1e-9
    ):
        raise ResultError(
            f"{where}: score (accuracy {score.accuracy}, loss {score.loss}) is not its last epoch's validation "
            f"(accuracy {history.val_accuracy[-1]}, loss {history.val_loss[-1]})"
        )


def completed(path: Path, config_id: str, read: Callable[[Path], Any]) -> bool:
    """True when a valid result of this config is there; raises when one of another config would be overwritten.

    `read` is the validity check of the kind of result (check_pair with its layout, or the final result's).
    An invalid file is not done: it is redone, and the new result replaces it atomically.
    """
    if not path.exists():
        return False
    try:
        result = read(path)
    except ResultError:
        return False
    if result.config_id != config_id:
        raise JobError(
            f"{path} holds config {result.config_id}, not {config_id}: use another --run, or --force to replace it"
        )
    return True


class Record(NamedTuple):
    """A valid result and the file it was read from."""

    path: Path
    result: PairResult


@dataclass
class Scan:
    """What a run folder holds: the valid results, and the files that could not be used (path -> reason)."""

    records: list[Record] = field(default_factory=list)
    problems: dict[Path, str] = field(default_factory=dict)


def scan(layout: RunLayout) -> Scan:
    found = Scan()
    for path in layout.pair_results():
        try:
            found.records.append(Record(path, check_pair(path, layout)))
        except ResultError as error:
            found.problems[path] = str(error)
    return found
