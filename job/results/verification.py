"""`verify`'s judgement, without TensorFlow: whether a rerun of a pair is its result to the bit, what differs between
the two environments that changes numbers, and the verification record written beside the result
(MODEL/fold-K.verify.json).

A rerun is identical when every number of its history (every epoch, every metric), its score, its weights' digest
and its predictions file's hash equal the result's exactly: the JSON numbers as floats, ==, no tolerance.
TensorFlow's op determinism promises that only on the same hardware and software, so a rerun whose TensorFlow,
Keras or numpy version, intra-op thread count, device kind, GPU model or CPU instruction set (as oneDNN may use it)
differs, or one of an XLA config (compiled without op determinism), or one that could not run the result's code, is
not comparable, whatever its numbers.

A record counts only while the result it judged is unchanged: it holds the result file's sha256.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from job import atomic
from job.errors import JobError
from job.files import read_bounded, sha256_file
from job.protocol import Pair
from job.results.contract import History, PairResult, ResultError
from job.results.layout import RunLayout
from job.results.store import MAX_RESULT_BYTES
from job.times import utc_now

RECORD_VERSION = 1
MAX_RECORD_BYTES = 1 << 20  # a record is a few kB, the rerun's provenance included
METRICS = tuple(field.name for field in dataclasses.fields(History))
PACKAGES = (("tensorflow", "TensorFlow"), ("keras", "Keras"), ("numpy", "numpy"))


class Verdict(str, Enum):
    IDENTICAL = "identical"
    DIFFERENT = "different"
    NOT_COMPARABLE = "not comparable"

    @property
    def exit_code(self) -> int:
        """`verify`'s exit status for this verdict (1 and 2 stay a runtime error and a usage error)."""
        return {"identical": 0, "different": 4, "not comparable": 5}[self.value]


def exit_code(verdicts: Iterable[Verdict]) -> int:
    """The worst of the verdicts: 4 when a pair is different, else 5 when one is not comparable, else 0."""
    found = set(verdicts)
    return next((v.exit_code for v in (Verdict.DIFFERENT, Verdict.NOT_COMPARABLE) if v in found), 0)


def compared(recorded: PairResult) -> tuple[str, ...]:
    """What a rerun is compared on: the history and the score, and the weights and predictions a version 3 result
    records."""
    extra = ("weights",) * (recorded.weights_sha256 is not None) + ("predictions",) * bool(recorded.predictions)
    return ("history", "score", *extra)


def first_difference(recorded: PairResult, rerun: PairResult) -> str | None:
    """The first thing in which the rerun is not the result, to the bit, in one line; None when it is the result:
    the history epoch by epoch (each metric in order), the score, the weights' digest, the predictions file."""
    for metric in METRICS:
        ours, theirs = getattr(recorded.history, metric), getattr(rerun.history, metric)
        if len(ours) != len(theirs):
            return f"history {metric}: {len(ours)} epochs recorded, {len(theirs)} rerun"
    for epoch in range(len(recorded.history.loss)):
        for metric in METRICS:
            ours, theirs = getattr(recorded.history, metric)[epoch], getattr(rerun.history, metric)[epoch]
            if ours != theirs:
                return f"epoch {epoch + 1} {metric}: {ours!r} recorded, {theirs!r} rerun"
    for name in ("accuracy", "loss"):
        ours, theirs = getattr(recorded.score, name), getattr(rerun.score, name)
        if ours != theirs:
            return f"score {name}: {ours!r} recorded, {theirs!r} rerun"
    if "weights" in compared(recorded) and recorded.weights_sha256 != rerun.weights_sha256:
        return (
            f"weights differ (sha256 {_short(recorded.weights_sha256)} recorded, {_short(rerun.weights_sha256)} rerun)"
        )
    ours_p, theirs_p = recorded.predictions, rerun.predictions
    if ours_p is not None and (theirs_p is None or ours_p.sha256 != theirs_p.sha256):
        theirs = _short(theirs_p.sha256 if theirs_p else None)
        return f"predictions differ (sha256 {_short(ours_p.sha256)} recorded, {theirs} rerun)"
    return None


def _short(digest: str | None) -> str:
    return "none" if digest is None else f"{digest[:12]}..."


def environment_differences(recorded: PairResult, rerun: PairResult) -> list[str]:
    """What differs between the result's environment and the rerun's that changes numbers, one phrase each."""
    ours, theirs = recorded.environment, rerun.environment
    found = []
    for package, name in PACKAGES:
        old, new = _get(ours, "packages", package), _get(theirs, "packages", package)
        if old != new:
            found.append(f"{name} {old or 'unknown'} recorded, {new or 'unknown'} here")
    # The intra-op threads split a reduction's sum; the inter-op ones run independent ops side by side.
    old, new = _get(ours, "threads", "intra_op"), _get(theirs, "threads", "intra_op")
    if old != new:
        found.append(f"{old} intra-op thread{'s' * (old != 1)} recorded, {new} here")
    old, new = str(ours.get("device_used")), str(theirs.get("device_used"))
    if old.split(":")[0] != new.split(":")[0]:
        found.append(f"device {old} recorded, {new} here")
    elif old.startswith("GPU") and old != new:
        found.append(f"GPU {old} recorded, {new} here")
    elif old.startswith("CPU"):
        old_isa, new_isa = _recorded_isa(ours), _recorded_isa(theirs)
        if old_isa != new_isa and None not in (old_isa, new_isa):  # a result of an earlier version records none
            found.append(f"CPU {old_isa} recorded, {new_isa} here")
    if recorded.config.jit:
        found.append("an XLA config (--xla), compiled without op determinism: no two runs need agree")
    elif ours.get("deterministic") is False or theirs.get("deterministic") is False:
        found.append("op determinism off")
    return found


def _recorded_isa(environment: Mapping[str, Any]) -> str | None:
    """The CPU instruction set oneDNN picks its kernels by (job/pair/runtime.py cpu_isa), as one phrase; None for a
    result of an earlier version. Its shape is the result schema's, checked when the result was read."""
    isa = environment.get("cpu_isa")
    if isa is None:
        return None
    cap = isa["onednn_max_cpu_isa"]
    return f"extensions {' '.join(isa['extensions']) or 'no known'}" + (f" (oneDNN capped at {cap})" if cap else "")


def _get(environment: Mapping[str, Any], section: str, key: str) -> Any:
    value = environment.get(section)
    return value.get(key) if isinstance(value, Mapping) else None


@dataclass(frozen=True)
class Verification:
    """A verification record: what was compared, where, when, with which code, and the verdict."""

    version: int
    result: str  # the result's file name, beside the record
    result_sha256: str  # of the result file judged: a changed result is no longer verified by this record
    verdict: Verdict
    detail: str  # one line: the first difference, what in the environment differs, the preemption
    first_difference: str | None  # None: none, the rerun is the result to the bit
    environment_differences: tuple[str, ...]
    compared: tuple[str, ...]  # history, score, weights, predictions
    code: Mapping[str, Any]  # commit, dirty, and where it came from (the running code, a snapshot, git archive)
    preempt: Mapping[str, Any] | None  # seed, step, signal, resumed_from: the rerun killed and resumed
    host: str
    time_utc: str
    environment: Mapping[str, Any]  # the rerun's provenance, as a result records it

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {**data, "verdict": self.verdict.value, "compared": list(self.compared)}

    @classmethod
    def from_json(cls, data: Any, where: str) -> Verification:
        expected = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or set(data) != expected:
            raise ResultError(f"{where}: not a verification record (its fields are not {', '.join(sorted(expected))})")
        if data["version"] != RECORD_VERSION:
            raise ResultError(f"{where}: a verification record of version {data['version']!r}, not {RECORD_VERSION}")
        try:
            verdict = Verdict(data["verdict"])
        except ValueError:
            raise ResultError(f"{where}: verdict {data['verdict']!r} is none of {[v.value for v in Verdict]}") from None
        strings = ("result", "result_sha256", "detail", "host", "time_utc")
        if not all(isinstance(data[key], str) for key in strings):
            raise ResultError(f"{where}: {', '.join(strings)} must be strings")
        lists = {key: tuple(data[key]) for key in ("environment_differences", "compared")}
        return cls(**{**data, "verdict": verdict, **lists})


def judge(
    recorded: PairResult,
    rerun: PairResult,
    *,
    result: Path,
    code: Mapping[str, Any],
    code_unavailable: str | None = None,
    preempt: Mapping[str, Any] | None = None,
) -> Verification:
    """The verdict on `rerun` against the result in `result` (read as `recorded`). `code_unavailable`: why the
    rerun could not run the result's code (it ran the code at hand): not comparable, whatever its numbers."""
    difference = first_difference(recorded, rerun)
    reasons = environment_differences(recorded, rerun)
    if code_unavailable:
        reasons.insert(0, f"code unavailable: {code_unavailable}")
    if reasons:
        verdict = Verdict.NOT_COMPARABLE
        anyway = f"the rerun differs too: {difference}" if difference else "the rerun is identical all the same"
        detail = f"{'; '.join(reasons)}; {anyway}"
    elif difference:
        verdict, detail = Verdict.DIFFERENT, difference
    else:
        verdict, detail = Verdict.IDENTICAL, f"{', '.join(compared(recorded))} equal to the bit"
    if "weights" not in compared(recorded):
        detail += f" (a schema version {recorded.schema_version} result: history and score only, no weights digest)"
    return Verification(
        version=RECORD_VERSION,
        result=result.name,
        result_sha256=sha256_file(result, MAX_RESULT_BYTES, "a result holds"),
        verdict=verdict,
        detail=detail,
        first_difference=difference,
        environment_differences=tuple(reasons),
        compared=compared(recorded),
        code=dict(code),
        preempt=None if preempt is None else dict(preempt),
        host=str(rerun.environment.get("hostname")),
        time_utc=utc_now(),
        environment=dict(rerun.environment),
    )


def write(layout: RunLayout, pair: Pair, record: Verification) -> Path:
    """Write the record beside the pair's result, atomically; its path."""
    path = layout.pair_paths(pair).verification
    assert path is not None  # a pair's paths always name it
    atomic.write_json(path, record.to_json())
    return path


def read(path: Path) -> Verification:
    """The record in `path`, or ResultError saying in one line why it is not one."""
    try:
        data = json.loads(read_bounded(path, MAX_RECORD_BYTES, "a verification record holds").decode())
    except JobError as error:
        raise ResultError(str(error)) from None
    except ValueError as error:  # not UTF-8, not JSON
        raise ResultError(f"{path}: not a verification record ({error})") from None
    return Verification.from_json(data, str(path))


def current(layout: RunLayout, pair: Pair) -> Verification | None:
    """The pair's verification record while it still speaks for its result: readable, and of the result file as
    it is now (same sha256). None otherwise: no record, an unreadable one, or a result changed since."""
    paths = layout.pair_paths(pair)
    if paths.verification is None or not paths.verification.exists() or not paths.result.exists():
        return None
    try:
        record = read(paths.verification)
        now = sha256_file(paths.result, MAX_RESULT_BYTES, "a result holds")
    except JobError:
        return None
    return record if record.result_sha256 == now else None


def summary_line(layout: RunLayout, pairs: Iterable[Pair]) -> str:
    """Which of `pairs` a rerun verified, by verdict, in one line (collect's)."""
    pairs = list(pairs)
    by_verdict: dict[Verdict, list[Pair]] = {}
    for pair in pairs:
        if (record := current(layout, pair)) is not None:
            by_verdict.setdefault(record.verdict, []).append(pair)
    if not by_verdict:
        return f"verified by a rerun: none of the {len(pairs)} pairs (`mnist-cv verify` reruns them bit for bit)"
    parts = [
        f"{len(found)} {verdict.value} ({', '.join(map(str, found))})"
        for verdict in Verdict
        if (found := by_verdict.get(verdict))
    ]
    checked = sum(len(found) for found in by_verdict.values())
    return f"verified by a rerun, bit for bit: {checked} of {len(pairs)} pairs: {'; '.join(parts)}"
