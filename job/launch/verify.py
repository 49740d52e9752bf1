"""What `mnist-cv verify` does for each pair chosen: check the data is the result's, rerun it from what its result
records (job/launch/rerun.py), judge the rerun against the result to the bit (job/results/verification.py), and
write the verdict beside the result. Imports no TensorFlow: the data's hashes come from the caller."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from job.console import one_line
from job.errors import JobError
from job.launch import rerun
from job.protocol import Pair
from job.results import store, verification
from job.results.contract import PairResult
from job.results.layout import RunLayout
from job.results.verification import Verification

# (source, sha256 of each file) of the data in a folder (None: the default place), read as custom data or not.
DataHashes = Callable[[Path | None, bool], tuple[str, Mapping[str, str]]]


@dataclass(frozen=True)
class Request:
    layout: RunLayout
    pairs: Sequence[Pair]
    data_dir: Path | None
    data_hashes: DataHashes
    allow_cpu: bool = False
    preempt_seed: int | None = None  # None: no preemption


@dataclass(frozen=True)
class Verified:
    pair: Pair
    record: Verification
    path: Path  # where the record was written


def results_of(layout: RunLayout, pairs: Sequence[Pair]) -> dict[Pair, PairResult]:
    """The valid result of each pair, or a JobError naming the first that has none."""
    found = {}
    for pair in pairs:
        try:
            found[pair] = store.check_pair(layout.pair_paths(pair).result, layout)
        except store.ResultError as error:
            raise JobError(f"{pair}: nothing to verify: {error}") from None
    return found


def check_data(request: Request, results: Mapping[Pair, PairResult]) -> dict[bool, Path]:
    """The data folder of each kind (custom or not) the pairs need, once its files' hashes are those their results
    record; a JobError before any training when they are another dataset's."""
    sources: dict[bool, Path] = {}
    hashes: dict[bool, Mapping[str, str]] = {}
    for pair, result in results.items():
        custom = result.data.name != "mnist"
        if custom not in hashes:
            source, hashes[custom] = request.data_hashes(request.data_dir, custom)
            sources[custom] = Path(source)
        if dict(hashes[custom]) != dict(result.data.sha256):
            differ = sorted(
                k for k in {*hashes[custom], *result.data.sha256} if hashes[custom].get(k) != result.data.sha256.get(k)
            )
            raise JobError(
                f"{pair}: the data in {sources[custom]} is not the data its result was trained on "
                f"({', '.join(differ)} differ by sha256): give --data-dir the result's data"
            )
    return sources


def verify(request: Request) -> Iterator[Verified]:
    """Rerun and judge each pair in turn (the data checked for all of them first); each verdict as it is written."""
    layout = request.layout
    results = results_of(layout, request.pairs)
    sources = check_data(request, results)
    for pair, recorded in results.items():
        custom = recorded.data.name != "mnist"
        inputs = rerun.Inputs(sources[custom], custom, request.allow_cpu)
        done = rerun.rerun(layout, recorded, inputs, request.preempt_seed)
        record = verification.judge(
            recorded,
            done.result,
            result=layout.pair_paths(pair).result,
            code=done.code.to_json(),
            code_unavailable=done.code.unavailable,
            preempt=done.preempt,
        )
        yield Verified(pair, record, verification.write(layout, pair, record))


def line(pair: Pair, record: Verification) -> str:
    """The one line printed per pair: the verdict, what differed, and the preemption."""
    text = f"{pair}: {record.verdict.value}: {record.detail}"
    kill = record.preempt
    if kill is not None:
        if kill.get("killed"):
            resumed = kill.get("resumed_from_epoch")
            where = f"the checkpoint after epoch {resumed}" if resumed else "the start (no checkpoint yet)"
            text += f"; killed (SIGKILL) after step {kill['step']} of {kill['steps']} and resumed from {where}"
        else:
            text += f"; not preempted: {kill.get('why')}"
    # One line, whatever the recorded result or this environment hold (a version string, a variable's value).
    return one_line(f"{text}; code {record.code.get('source')}, on {record.host}")
