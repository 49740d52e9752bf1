"""The typed result contract: a pair's result, a final model's result, a fold ensemble's result and collect's summary.

Each is a frozen dataclass with one builder (`build`), `to_json()` and `from_json()`. from_json validates the JSON
against the type's schema (job/results/*.schema.json) before it builds anything, so a typed result is always a
valid one; tests/test_contract.py checks every schema against its dataclass, field by field.

schema_version 3 is the current version of all four. Versions 1 and 2 still read (a summary is only ever read
back by the collect that wrote it, and fold ensembles came with version 3, so those two are version 3 only): a v1
pair result is repeat 0 of its run and, like a v1 final result, says nothing of the resources it used (`resources`
None); a v1 or v2 result records no hash of its final weights, and a v1 or v2 pair result no held-out predictions
(None); see `_OLDER_DEFAULTS`.
Imports no TensorFlow (collect, pairs and the launchers use it).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, TypeVar

from job.errors import JobError
from job.protocol import Protocol

SCHEMA_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)


class ResultError(JobError):
    """A result file that cannot be used: unreadable, truncated, not JSON, not of the schema, or not what it claims."""


# --- the pieces ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class History:
    """Per-epoch metrics, one value per epoch (the validation ones on the held-out images)."""

    loss: tuple[float, ...]
    accuracy: tuple[float, ...]
    val_loss: tuple[float, ...]
    val_accuracy: tuple[float, ...]


@dataclass(frozen=True)
class Score:
    accuracy: float
    loss: float


@dataclass(frozen=True)
class Timings:
    start_utc: str
    end_utc: str
    fit_seconds: float
    epoch_seconds: tuple[float, ...]


@dataclass(frozen=True)
class Resume:
    count: int
    from_epochs: tuple[int, ...]


@dataclass(frozen=True)
class GpuUse:
    """The GPUs a training saw; None-valued fields are the ones TensorFlow or nvidia-smi could not tell."""

    count: int
    names: tuple[str, ...]
    peak_memory_bytes: int | None  # tf.config.experimental.get_memory_info("GPU:0")["peak"]
    driver: str | None
    cuda: str | None
    cudnn: str | None


@dataclass(frozen=True)
class Resources:
    """What training the pair cost, summed or maxed over every process that worked on it (resumes included)."""

    wall_seconds: float  # sum over the processes: each one's start to its result (or to its last checkpoint)
    startup_seconds: float  # the last process: its start to its first training step
    cpu_seconds: float  # user + system, summed over the processes
    peak_rss_bytes: int  # the largest peak resident set of any of the processes
    cpu_count: int  # the CPUs the last process could run on (its affinity mask)
    gpu: GpuUse | None  # None on the CPU


@dataclass(frozen=True)
class Outcome:
    """What a training returns: the sections every result has besides its config, data and provenance."""

    history: History
    score: Score
    timings: Timings
    resume: Resume


@dataclass(frozen=True)
class PairData:
    name: str
    source: str
    sha256: Mapping[str, str]
    n_train: int
    n_val: int
    val_indices_sha256: str


@dataclass(frozen=True)
class FinalData:
    name: str
    source: str
    sha256: Mapping[str, str]
    n_train: int
    n_test: int


@dataclass(frozen=True)
class ModelFile:
    name: str
    sha256: str


@dataclass(frozen=True)
class HeldOutPredictions:
    """The file of a pair's predictions on its held-out images, beside its result (job/results/predictions.py)."""

    file: str  # its name, in the result's folder
    sha256: str
    n_images: int  # the held-out images, in the order of their indices
    n_correct: int  # those whose predicted digit is their label: the score's accuracy as a count


@dataclass(frozen=True)
class Misclassified:
    index: int
    label: int
    predicted: int
    probability: float


@dataclass(frozen=True)
class TestScore:
    n_images: int
    n_correct: int
    per_class_accuracy: tuple[float | None, ...]
    confusion_matrix: tuple[tuple[int, ...], ...]  # [true digit][predicted digit]
    misclassified: tuple[Misclassified, ...]


# --- the results --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairResult:
    """One (model, fold) pair of the cross-validation (RESULTS/RUN/MODEL/fold-K.json)."""

    schema_version: int
    model: str
    fold: int
    repeat: int  # 0: the tutorial's shuffle; r: KFold's random_state is split_seed + r
    task_id: int | None
    config: Protocol
    config_id: str
    history: History
    score: Score
    data: PairData
    environment: Mapping[str, Any]  # provenance, kept as recorded
    timings: Timings
    resume: Resume
    resources: Resources | None  # None only in version 1 files
    weights_sha256: str | None  # the trained weights' values (job/pair/weights.py); None before version 3
    predictions: HeldOutPredictions | None  # None before version 3
    model_file: ModelFile | None  # the trained weights, kept when asked (run --keep-model); else None

    SCHEMA = "result"

    @classmethod
    def build(
        cls,
        *,
        model: str,
        fold: int,
        task_id: int | None,
        protocol: Protocol,
        outcome: Outcome,
        data: PairData,
        environment: Mapping[str, Any],
        weights_sha256: str,
        predictions: HeldOutPredictions,
        repeat: int = 0,
        resources: Resources | None = None,
        model_file: ModelFile | None = None,
    ) -> PairResult:
        return cls(
            SCHEMA_VERSION, model, fold, repeat, task_id, protocol, protocol.config_id, outcome.history,
            outcome.score, data, environment, outcome.timings, outcome.resume, resources, weights_sha256, predictions,
            model_file,
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return _to_json(self)

    @classmethod
    def from_json(cls, data: Any, where: str = "result") -> PairResult:
        return _from_json(cls, data, where)


@dataclass(frozen=True)
class FinalResult:
    """A model trained on all training images and scored on the test images (RESULTS/RUN/final/MODEL.json)."""

    schema_version: int
    model: str
    config: Protocol
    config_id: str
    model_file: ModelFile
    history: History
    score: Score
    test: TestScore
    data: FinalData
    environment: Mapping[str, Any]
    timings: Timings
    resume: Resume
    resources: Resources | None  # None only in version 1 files
    weights_sha256: str | None  # the trained weights' values (job/pair/weights.py); None before version 3

    SCHEMA = "final"

    @classmethod
    def build(
        cls,
        *,
        model: str,
        protocol: Protocol,
        model_file: ModelFile,
        outcome: Outcome,
        test: TestScore,
        data: FinalData,
        environment: Mapping[str, Any],
        weights_sha256: str,
        resources: Resources | None = None,
    ) -> FinalResult:
        return cls(
            SCHEMA_VERSION, model, protocol, protocol.config_id, model_file, outcome.history, outcome.score, test,
            data, environment, outcome.timings, outcome.resume, resources, weights_sha256,
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return _to_json(self)

    @classmethod
    def from_json(cls, data: Any, where: str = "final result") -> FinalResult:
        return _from_json(cls, data, where)


@dataclass(frozen=True)
class EnsembleMember:
    """One fold model of a fold ensemble: the result it was read from, and its own score on the same test images."""

    fold: int
    file: str  # the fold's result, relative to the run folder: MODEL/fold-K.json, MODEL/repeat-R/fold-K.json
    sha256: str  # of that result file as read; it names the kept weights' sha256 in turn
    score: Score  # the fold model alone: accuracy and mean cross-entropy on the test images


@dataclass(frozen=True)
class EnsembleData:
    """The test images the ensemble was scored on, and the hashes of the data its fold models were trained on."""

    name: str
    source: str
    sha256: Mapping[str, str]
    n_test: int


@dataclass(frozen=True)
class EnsembleTimings:
    start_utc: str
    end_utc: str
    seconds: float  # loading the fold models and predicting the test images, set-up excluded


@dataclass(frozen=True)
class EnsembleResult:
    """The fold models of one model and repeat, their softmax outputs averaged on the test images
    (RESULTS/RUN/ensemble/MODEL.json; ensemble/repeat-R/MODEL.json of a repeat R >= 1)."""

    schema_version: int
    model: str
    repeat: int
    config: Protocol
    config_id: str
    members: tuple[EnsembleMember, ...]  # one per fold, in fold order
    score: Score  # of the averaged probabilities: accuracy, and their mean cross-entropy
    test: TestScore
    data: EnsembleData
    environment: Mapping[str, Any]
    timings: EnsembleTimings

    SCHEMA = "ensemble"

    @classmethod
    def build(
        cls,
        *,
        model: str,
        repeat: int,
        protocol: Protocol,
        members: tuple[EnsembleMember, ...],
        score: Score,
        test: TestScore,
        data: EnsembleData,
        environment: Mapping[str, Any],
        timings: EnsembleTimings,
    ) -> EnsembleResult:
        return cls(
            SCHEMA_VERSION, model, repeat, protocol, protocol.config_id, members, score, test, data, environment,
            timings,
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return _to_json(self)

    @classmethod
    def from_json(cls, data: Any, where: str = "ensemble result") -> EnsembleResult:
        return _from_json(cls, data, where)


# --- the summary --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SummaryData:
    name: str
    sha256: Mapping[str, str | None]


@dataclass(frozen=True)
class MissingPair:
    model: str
    fold: int
    repeat: int
    task_id: int | None
    reason: str


@dataclass(frozen=True)
class Skipped:
    file: str
    reason: str


@dataclass(frozen=True)
class FoldScore:
    fold: int
    repeat: int
    accuracy: float
    loss: float
    fit_seconds: float
    file: str


@dataclass(frozen=True)
class FinalStats:
    file: str
    accuracy: float
    loss: float
    n_train: int
    n_test: int
    n_misclassified: int
    config_id: str
    same_config: bool
    notes: tuple[str, ...]


@dataclass(frozen=True)
class EnsembleStats:
    """A model's fold ensemble on the test images, beside its final model's score."""

    file: str
    repeat: int
    n_folds: int
    accuracy: float
    loss: float
    n_test: int
    n_misclassified: int
    fold_accuracies: tuple[float, ...]  # each fold model alone on the same test images, in fold order


@dataclass(frozen=True)
class RepeatStats:
    """One repeat of one model: complete when every fold of it is there."""

    repeat: int
    n: int
    mean: float | None
    complete: bool
    missing_folds: tuple[int, ...]


@dataclass(frozen=True)
class MeanInterval:
    """A 95% t interval of a model's mean accuracy, over `n` values: "folds" (Nadeau-Bengio corrected variance) or
    "repeat means"."""

    over: str
    n: int
    low: float
    high: float


@dataclass(frozen=True)
class ClassAccuracy:
    """One digit's held-out accuracy: pooled over the report's images, and its spread over the folds."""

    digit: int
    n_images: int
    accuracy: float | None  # pooled: right / images of this digit; None without any
    mean: float | None  # over the folds holding the digit (population std, as the headline numbers)
    std: float | None
    min: float | None
    max: float | None


@dataclass(frozen=True)
class ConfusedPair:
    """The two digits most often taken for each other, both ways counted."""

    digits: tuple[int, ...]  # (a, b), a < b
    a_as_b: int
    b_as_a: int


@dataclass(frozen=True)
class CalibrationBin:
    low: float  # the bin holds the max probabilities in (low, high]
    high: float
    n: int
    confidence: float | None  # the mean max probability of its images; None when empty
    accuracy: float | None


@dataclass(frozen=True)
class Calibration:
    binning: str  # how the bins are made, in words
    ece: float  # expected calibration error: sum over the bins of n/N * |accuracy - confidence|
    bins: tuple[CalibrationBin, ...]


@dataclass(frozen=True)
class FoldMistake:
    """A held-out image its fold's model got wrong; index into the (limited) training images."""

    repeat: int
    fold: int
    index: int
    label: int
    predicted: int
    probability: float  # the model's probability for its (wrong) digit


@dataclass(frozen=True)
class OutOfFold:
    """The folds' held-out predictions pooled: every image of the repeats used, predicted by the model that did not
    train on it."""

    n_images: int
    n_correct: int
    confusion_matrix: tuple[tuple[int, ...], ...]  # [true digit][predicted digit]
    per_class: tuple[ClassAccuracy, ...]
    most_confused: ConfusedPair | None  # None without a mistake
    worst_class: int | None  # the digit of the lowest pooled accuracy
    calibration: Calibration
    n_mistakes: int
    mistakes: tuple[FoldMistake, ...]  # the most confident ones, most confident first


@dataclass(frozen=True)
class CrossValidationReport:
    """A model's out-of-fold report, over the results its headline numbers are of: drawn only when every one of them
    has its predictions."""

    n_results: int
    n_with_predictions: int
    notes: tuple[str, ...]  # what is missing: the predictions of a result, the images of the grid
    pooled: OutOfFold | None


@dataclass(frozen=True)
class ModelStats:
    n: int  # the results the numbers below are of: those of the complete repeats (`repeats_used`)
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    mean_fit_seconds: float | None
    folds: tuple[FoldScore, ...]  # every result found, partial repeats too
    missing_folds: tuple[int, ...]  # the folds missing in at least one repeat (per repeat: `repeats`)
    final: FinalStats | None
    ensemble: EnsembleStats | None  # its fold ensemble (mnist-cv ensemble), when one of these results exists
    repeats: tuple[RepeatStats, ...]
    repeats_used: tuple[int, ...]  # the complete repeats; with none, every repeat with a result (a partial run)
    std_of_repeat_means: float | None  # over the complete repeats' means; None below two
    ci95: tuple[MeanInterval, ...]  # over the complete repeats' folds, then their means (two or more); none: ()
    cross_validation: CrossValidationReport | None  # None without a result


@dataclass(frozen=True)
class Comparison:
    baseline: str
    candidate: str
    test: str
    folds: tuple[int, ...]  # the fold of each paired difference
    repeats: tuple[int, ...]  # its repeat (all 0 for the one-split comparison)
    k: int  # the paired differences: folds x repeats
    differences: tuple[float, ...]
    mean_difference: float | None
    test_train_ratio: float | None
    t: float | None
    df: int | None
    p_value: float | None
    notes: tuple[str, ...]


@dataclass(frozen=True)
class SlurmRequest:
    """The request that fits what a model's pairs used, with Sizing.margin on top (job/analysis/sizing.py)."""

    time: str  # --time, H:MM:SS
    mem: str  # --mem, whole G or M
    cpus: int  # -c
    gres: str  # --gres: "gpu:N" when the pairs used a GPU, "none" when they did not
    options: str  # the sbatch options as one line: --time=0:05:00 --mem=1536M -c 1 --gres=none


@dataclass(frozen=True)
class ModelSizing:
    """What one model's pairs used, measured (the peaks over its pairs), and the request that fits it."""

    n_measured: int  # pairs whose result says what it used
    n_unmeasured: int  # pairs without resources (version 1 files): counted, never guessed
    max_wall_seconds: float | None
    slowest_fold: int | None
    max_startup_seconds: float | None
    max_peak_rss_bytes: int | None
    max_effective_cores: float | None  # the busiest pair's cpu_seconds / wall_seconds
    cpu_count: int | None  # the most CPUs a pair could run on
    gpu_count: int  # the most GPUs a pair saw; 0 on the CPU
    max_gpu_memory_bytes: int | None  # None without a GPU or when TensorFlow could not tell
    request: SlurmRequest | None  # None when no pair was measured
    pairs_per_task: int | None  # the fewest pairs a packed task that lasts job.results.packing.TASK_MINUTES
    packed_request: SlurmRequest | None  # the request of such a task; None when no pair was measured


@dataclass(frozen=True)
class Sizing:
    margin: str  # the margin the requests carry, in words
    models: Mapping[str, ModelSizing]  # the models with at least one valid result


@dataclass(frozen=True)
class Summary:
    """collect's summary of a run (RESULTS/RUN/summary.json): built once, with the figures drawn beside it."""

    schema_version: int
    run: str
    config_id: str
    config: Protocol
    data: SummaryData
    metric: str
    std_definition: str
    complete: bool
    n_expected: int
    n_found: int
    missing: tuple[MissingPair, ...]
    skipped: tuple[Skipped, ...]
    models: Mapping[str, ModelStats]
    comparison: Comparison  # on the tutorial's split (repeat 0)
    figures: tuple[str, ...]
    repeats: int  # the repeats summarised: asked for (collect --repeats), or found in the files
    repeated_comparison: Comparison | None  # over the repeats complete for both models; None for one repeat
    sizing: Sizing

    SCHEMA = "summary"

    @classmethod
    def build(cls, **sections: Any) -> Summary:
        return cls(schema_version=SCHEMA_VERSION, **sections)

    def to_json(self) -> dict[str, Any]:
        return _to_json(self)

    @classmethod
    def from_json(cls, data: Any, where: str = "summary") -> Summary:
        return _from_json(cls, data, where)


# --- JSON <-> dataclasses -----------------------------------------------------------------------------------------


@cache
def schema(name: str) -> dict[str, Any]:
    """A JSON schema shipped with the package: "result" (a pair), "final" (a final model), "ensemble" or "summary"."""
    return json.loads(resources.files("job.results").joinpath(f"{name}.schema.json").read_text())


def check_schema(data: Any, name: str, where: str) -> None:
    """Raise ResultError naming the first schema violation, or a number that is not finite, and where it is."""
    import jsonschema  # deferred: only readers of results pay for it

    errors = sorted(jsonschema.Draft202012Validator(schema(name)).iter_errors(data), key=lambda e: list(e.path))
    if errors:
        location = "/".join(str(p) for p in errors[0].absolute_path) or "top level"
        raise ResultError(f"{where}: not a valid {name} ({location}: {errors[0].message})")
    if (bad := _non_finite(data)) is not None:
        raise ResultError(f"{where}: {bad or 'top level'} is not a finite number")


def _non_finite(value: Any, at: str = "") -> str | None:
    """The location of the first NaN or infinity in a JSON value, or None (a schema's "number" accepts both)."""
    if isinstance(value, float) and not math.isfinite(value):
        return at
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        if (found := _non_finite(child, f"{at}/{key}" if at else str(key))) is not None:
            return found
    return None


_T = TypeVar("_T")

# What an older file of each schema lacks, by its version, as the current version spells "nothing recorded" or "the
# default". A field listed for a version is one that version has not: a file of it that holds one is refused.
_V3_FIELDS: dict[str, dict[str, Any]] = {
    "result": {"weights_sha256": None, "predictions": None, "model_file": None},
    "final": {"weights_sha256": None},
}
_OLDER_DEFAULTS: dict[int, dict[str, dict[str, Any]]] = {
    1: {
        "result": {"repeat": 0, "resources": None, **_V3_FIELDS["result"]},
        "final": {"resources": None, **_V3_FIELDS["final"]},
    },
    2: _V3_FIELDS,
}


def _from_json(cls: type[_T], data: Any, where: str) -> _T:
    check_schema(data, cls.SCHEMA, where)  # type: ignore[attr-defined]
    if data["schema_version"] not in READABLE_VERSIONS:
        raise ResultError(f"{where}: schema_version {data['schema_version']} is newer than this code reads")
    version = data["schema_version"]
    if version in _OLDER_DEFAULTS:
        defaults = _OLDER_DEFAULTS[version].get(cls.SCHEMA, {})  # type: ignore[attr-defined]
        later = sorted(defaults.keys() & data.keys())
        if later:  # fields the version did not have: such a file was written by no version of this code
            raise ResultError(
                f"{where}: a schema_version {version} file holding {', '.join(later)}, which version {version} has not"
            )
        data = {**defaults, **data}
    try:
        return _build(cls, data)
    except JobError as error:  # a Protocol the schema lets through but the code refuses
        raise ResultError(f"{where}: {error}") from None


def _build(hint: Any, value: Any) -> Any:
    """A value of type `hint` from its JSON: dataclasses by field, tuples and mappings item by item."""
    if value is None:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        (hint,) = [a for a in args if a is not type(None)]
        return _build(hint, value)
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return hint(**{f.name: _build(hints[f.name], value[f.name]) for f in dataclasses.fields(hint)})
    if origin is tuple:
        return tuple(_build(args[0], item) for item in value)
    if origin is Mapping:
        return {key: _build(args[1], item) for key, item in value.items()}
    if hint is float:
        return float(value)  # JSON writes 1.0 as 1 in other tools
    return value


def _to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_to_json(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _to_json(item) for key, item in value.items()}
    return value
