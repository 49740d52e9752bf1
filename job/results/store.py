"""Reading results back: the one check that a file is a valid result for the pair (or final model, or fold
ensemble) its path names, and the scan of a run folder. Writing is atomic (job/results/atomic.py); paths come from
job/results/layout.py.

Imports no TensorFlow: collect, pairs, status and the launchers read results through this module alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from job import folds
from job.errors import JobError
from job.files import FileError, read_bounded, sha256_file
from job.mnist import MNIST_COUNTS, MNIST_SHA256, TEST_IMAGES, TRAIN_IMAGES
from job.protocol import Pair, task_for_pair
from job.results.contract import (
    EnsembleResult,
    FinalData,
    FinalResult,
    PairData,
    PairResult,
    ResultError,
    TestScore,
    check_schema,
)
from job.results.layout import JobPaths, RunLayout
from job.results.predictions import max_bytes
from job.times import parse_utc

# Evaluation after the last epoch and that epoch's validation are the same Keras evaluate() on the same weights
# and batches, so they agree exactly on the CPU; on a GPU a reduction may sum in another order. A float32 mean of
# fewer than 2**24 values moves by a few ulps (about 1e-6 relative) from the order; the smallest honest change of an
# accuracy is one image in 60,000 (1.7e-5), so these tolerances accept the order and refuse any edit of the score.
ACCURACY_TOLERANCE = 1e-6
LOSS_RELATIVE_TOLERANCE = 1e-5
# A result is a few kB (its history grows by about 100 bytes an epoch): anything this large is not one.
MAX_RESULT_BYTES = 16 << 20
# The registry's largest model, the cnn, saves to about 40 MB with its optimizer's state.
MAX_MODEL_BYTES = 1 << 30
MODEL_HOLDS = "a model of the registry holds"
# Keras's accuracy is a float32 mean of 0/1 matches: correct/images to 2**-24 relative, far below one image.
COUNT_TOLERANCE = 1e-6


def in_the_way(layout: RunLayout, paths: JobPaths) -> str | None:
    """What stands where a training would write or delete, in one line; None when nothing does.

    In the way: a symlink at any of the job's paths or folders below the run folder (writes and deletes would
    follow it out of the run), a folder where a file goes, a file where a folder goes. Checked before training, so a
    pair that could only fail shows as blocked, not missing, and no epoch is spent on it."""
    folder = paths.result.parent
    below_run = [folder, *folder.parents][: len(folder.relative_to(layout.folder).parts)]
    expected = [(f, True) for f in below_run] + [(paths.checkpoint, True), (paths.tensorboard, True)]
    files = (paths.result, paths.lease, paths.csv, paths.model_file, paths.predictions, paths.verification)
    expected += [(p, False) for p in files if p is not None]
    for path, is_folder in expected:
        if not os.path.lexists(path):
            continue
        kind = os.lstat(path).st_mode
        if stat.S_ISLNK(kind):
            return f"{path} is a symlink; remove it (this job writes only inside its run folder)"
        if not (stat.S_ISDIR(kind) if is_folder else stat.S_ISREG(kind)):
            want = "a folder" if is_folder else "a regular file"
            return f"{path} is in the way: it should be {want}; remove it or use another --run"
    return None


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
    return _parse(path, _read(path))


def _read(path: Path) -> bytes:
    if not os.path.lexists(path):
        raise ResultError(f"{path}: missing")
    try:  # a FIFO, /dev/zero or a folder is refused before any read
        return read_bounded(Path(path), MAX_RESULT_BYTES, "a result holds")
    except JobError as error:
        raise ResultError(str(error)) from None


def _parse(path: Path, raw: bytes) -> Any:
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
    (limited) training images; a history as long as its epochs, whose last validation numbers are the score; the
    files it names (predictions, kept weights) beside it with their hashes.
    """
    return check_pair_read(path, layout)[0]


def check_pair_read(path: Path, layout: RunLayout) -> tuple[PairResult, str]:
    """check_pair, and the sha256 of the very bytes it checked (what a fold ensemble records of the result it used)."""
    pair = layout.pair_of(path)
    if pair is None:
        raise ResultError(f"{path}: not a pair result's path (RUN/MODEL/fold-K.json or RUN/MODEL/repeat-R/fold-K.json)")
    raw = _read(path)
    result = PairResult.from_json(_parse(path, raw), str(path))
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
    if result.task_id != task_for_pair(pair, config.n_folds):
        raise ResultError(f"{path}: task_id {result.task_id}, but {pair} is task {task_for_pair(pair, config.n_folds)}")
    if config.limit is not None and result.data.n_train + result.data.n_val != config.limit:
        raise ResultError(f"{path}: {result.data.n_train + result.data.n_val} images, its config says {config.limit}")
    check_claims(result, str(path))
    paths = layout.pair_paths(pair)
    if (predictions := result.predictions) is not None:
        bound, holds = max_bytes(predictions.n_images), f"the predictions of {predictions.n_images} images hold"
        _check_file(path, predictions.file, predictions.sha256, paths.predictions, bound, holds)
    if result.model_file is not None:
        _check_file(path, result.model_file.name, result.model_file.sha256, paths.model_file, MAX_MODEL_BYTES)
    return result, hashlib.sha256(raw).hexdigest()


def check_final(path: Path, layout: RunLayout) -> FinalResult:
    """The result in `path` if it is a valid final result for the model its name says, naming its very model file."""
    result = FinalResult.from_json(load_json(path), str(path))
    if result.model != layout.final_model_of(path):
        raise ResultError(f"{path}: holds the final {result.model}, not the model its name says")
    if result.config_id != result.config.config_id:
        raise ResultError(f"{path}: config_id {result.config_id} is not its config's ({result.config.config_id})")
    check_claims(result, str(path))
    _check_test(result.test, result.score.accuracy, result.data.n_test, str(path))
    model_file = layout.final_paths(result.model).model_file
    _check_file(path, result.model_file.name, result.model_file.sha256, model_file, MAX_MODEL_BYTES)
    return result


def _check_test(test: TestScore, accuracy: float, n_test: int, where: str) -> None:
    """A test score whose counts agree with the accuracy and the test images it claims."""
    if test.n_images != n_test or abs(test.n_correct / max(test.n_images, 1) - accuracy) > ACCURACY_TOLERANCE:
        raise ResultError(f"{where}: {test.n_correct} of {test.n_images} test images right is not its score's accuracy")
    if any(m.index >= test.n_images for m in test.misclassified):
        raise ResultError(f"{where}: a misclassified index beyond its {test.n_images} test images")


def check_ensemble(path: Path, layout: RunLayout) -> EnsembleResult:
    """The result in `path` if it is a valid fold ensemble of the model and repeat its path names, made of the fold
    results that are in the run now; ResultError saying why not (a fold retrained since makes it stale)."""
    named = layout.ensemble_of(path)
    if named is None:
        raise ResultError(f"{path}: not a fold ensemble's path (RUN/ensemble/MODEL.json or RUN/ensemble/repeat-R/...)")
    result = EnsembleResult.from_json(load_json(path), str(path))
    check_ensemble_claims(result, layout, str(path))
    if (result.model, result.repeat) != named:
        raise ResultError(f"{path}: holds the ensemble of {result.model} repeat {result.repeat}, not its path's")
    return result


def check_ensemble_claims(result: EnsembleResult, layout: RunLayout, where: str) -> None:
    """Everything a fold ensemble says agrees with itself, and its members are the run's fold results as they are
    now (each file's sha256), else ResultError naming the first claim that cannot hold."""
    config, test = result.config, result.test
    if result.config_id != config.config_id:
        raise ResultError(f"{where}: config_id {result.config_id} is not its config's ({config.config_id})")
    member_folds = [member.fold for member in result.members]
    if member_folds != list(range(config.n_folds)):
        raise ResultError(
            f"{where}: members of folds {member_folds}, not the {config.n_folds} folds of its config in order"
        )
    _check_test(test, result.score.accuracy, result.data.n_test, where)
    confusion = test.confusion_matrix
    if sum(map(sum, confusion)) != test.n_images or sum(row[d] for d, row in enumerate(confusion)) != test.n_correct:
        raise ResultError(f"{where}: a confusion matrix that is not its {test.n_correct} of {test.n_images} right")
    if len(test.misclassified) != test.n_images - test.n_correct:
        raise ResultError(f"{where}: {len(test.misclassified)} misclassified images listed, its counts say otherwise")
    if result.data.name == "mnist" and (
        result.data.n_test != MNIST_COUNTS[TEST_IMAGES]
        or any(result.data.sha256.get(name) != digest for name, digest in MNIST_SHA256.items())
    ):
        raise ResultError(
            f"{where}: data named mnist without MNIST's hashes and {MNIST_COUNTS[TEST_IMAGES]} test images"
        )
    for member in result.members:
        _check_count(member.score.accuracy, test.n_images, f"{where}: fold {member.fold}'s test accuracy")
    start = _parse_utc(result.timings.start_utc, f"{where}: start_utc")
    if _parse_utc(result.timings.end_utc, f"{where}: end_utc") < start:
        raise ResultError(f"{where}: end_utc {result.timings.end_utc} is before start_utc {result.timings.start_utc}")
    for member in result.members:
        fold_result = layout.pair_paths(Pair(result.model, member.fold, result.repeat)).result
        if member.file != layout.relative(fold_result):
            raise ResultError(f"{where}: fold {member.fold} is {member.file!r}, not {layout.relative(fold_result)}")
        try:
            found = sha256_file(fold_result, MAX_RESULT_BYTES, "a result holds")
        except FileError as error:
            raise ResultError(f"{where}: its fold result is gone or unreadable ({error})") from None
        if found != member.sha256:
            raise ResultError(f"{where}: {member.file} changed since the ensemble was made (rerun `mnist-cv ensemble`)")


def _check_file(
    result: Path, name: str, sha256: str, expected: Path | None, max_bytes: int, holds: str = MODEL_HOLDS
) -> None:
    """A file a result names (its model, its predictions) is the one its layout puts beside it, with its hash."""
    if expected is None or name != expected.name:
        raise ResultError(f"{result}: names the file {name!r}, not {expected.name if expected else 'none'}")
    try:
        found = sha256_file(expected, max_bytes, holds)
    except FileError as error:
        raise ResultError(f"{error}; {result.name} names it") from None
    if found != sha256:
        raise ResultError(f"{expected}: not the file {result.name} names (sha256 differs)")


def check_claims(result: PairResult | FinalResult, where: str) -> None:
    """Everything a result says agrees with itself and could be true, else ResultError naming the first claim that
    cannot: a history of `epochs` values per metric whose last validation numbers are the score; every accuracy a
    count of correct images over the images it was measured on; no negative loss; one time per epoch, summing to
    the fit's, between a start and an end that parse with their time zone; resumptions from epochs that exist; data
    named MNIST only with MNIST's hashes and sizes."""
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
    n_train = result.data.n_train
    n_held_out = result.data.n_val if isinstance(result, PairResult) else result.data.n_test
    for name, values, images in (
        ("accuracy", history.accuracy, n_train),
        ("val_accuracy", history.val_accuracy, n_held_out),
    ):
        for epoch, value in enumerate(values, 1):
            _check_count(value, images, f"{where}: history {name} of epoch {epoch}")
    for name, values in (("loss", history.loss), ("val_loss", history.val_loss)):
        if any(value < 0 for value in values):
            raise ResultError(f"{where}: a negative {name} ({min(values)}), which cross-entropy cannot be")
    _check_timings(result, where)
    _check_resume(result, where)
    _check_data(result, where)
    if isinstance(result, PairResult) and (predictions := result.predictions) is not None:
        if predictions.n_images != n_held_out or predictions.n_correct > n_held_out:
            raise ResultError(f"{where}: predictions of {predictions.n_images} images, of {n_held_out} held out")
        if abs(predictions.n_correct / n_held_out - score.accuracy) > ACCURACY_TOLERANCE:
            raise ResultError(
                f"{where}: its predictions have {predictions.n_correct} of {n_held_out} right, not its score's accuracy"
            )


def _check_count(accuracy: float, images: int, what: str) -> None:
    """An accuracy is correct/images for a whole number of correct images (to float32's precision)."""
    correct = accuracy * images
    if not 0 <= accuracy <= 1 or abs(correct - round(correct)) > COUNT_TOLERANCE * max(images, 1):
        raise ResultError(f"{what} is {accuracy}, which no count of correct images out of {images} gives")


def _parse_utc(text: str, what: str) -> datetime:
    try:
        return parse_utc(text)
    except ValueError as error:
        raise ResultError(f"{what} {error}") from None


def _check_timings(result: PairResult | FinalResult, where: str) -> None:
    timings, epochs = result.timings, result.config.epochs
    if len(timings.epoch_seconds) != epochs or any(s < 0 for s in timings.epoch_seconds):
        raise ResultError(f"{where}: {len(timings.epoch_seconds)} epoch times for {epochs} epochs, or a negative one")
    if not math.isclose(timings.fit_seconds, sum(timings.epoch_seconds), rel_tol=1e-6, abs_tol=0.01):
        raise ResultError(f"{where}: fit_seconds {timings.fit_seconds} is not the sum of its epoch times")
    start = _parse_utc(timings.start_utc, f"{where}: start_utc")
    if _parse_utc(timings.end_utc, f"{where}: end_utc") < start:
        raise ResultError(f"{where}: end_utc {timings.end_utc} is before start_utc {timings.start_utc}")


def _check_resume(result: PairResult | FinalResult, where: str) -> None:
    resume, epochs = result.resume, result.config.epochs
    froms = resume.from_epochs
    if resume.count != len(froms) or any(not 1 <= e < epochs for e in froms) or list(froms) != sorted(froms):
        raise ResultError(
            f"{where}: resumed {resume.count} times from epochs {list(froms)}, which a {epochs}-epoch training cannot"
        )


def _check_data(result: PairResult | FinalResult, where: str) -> None:
    """MNIST by name has MNIST's hashes and its 60,000 training images (the first `limit`); custom data is not MNIST."""
    data, limit = result.data, result.config.limit
    is_mnist = all(data.sha256.get(name) == digest for name, digest in MNIST_SHA256.items())
    if data.name == "custom" and is_mnist:
        raise ResultError(f"{where}: data named custom holds MNIST's hashes (MNIST is always named mnist)")
    if data.name != "mnist":
        return
    if not is_mnist:
        raise ResultError(f"{where}: data named mnist without MNIST's published hashes")
    used = data.n_train + data.n_val if isinstance(data, PairData) else data.n_train
    if used != (limit or MNIST_COUNTS[TRAIN_IMAGES]):
        raise ResultError(
            f"{where}: {used} training images of MNIST, its config takes {limit or MNIST_COUNTS[TRAIN_IMAGES]}"
        )
    if isinstance(data, FinalData) and data.n_test != MNIST_COUNTS[TEST_IMAGES]:
        raise ResultError(f"{where}: {data.n_test} test images of MNIST, which has {MNIST_COUNTS[TEST_IMAGES]}")


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
