"""The typed result contract: every schema matches its dataclass, real results round-trip, and the one validity check
refuses every file that is not a valid result for the pair its path names."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import cli

from job import atomic
from job.errors import JobError, UsageError
from job.protocol import Pair, Protocol
from job.results import store
from job.results.contract import EnsembleResult, FinalResult, PairResult, ResultError, Summary, schema
from job.results.layout import RESERVED_NAMES, RunLayout
from job.results.status import status

QUICK = ("--epochs", "2", "--limit", "1000")
PROTOCOL = Protocol(epochs=2, limit=1000)


# --- each schema against its dataclass ----------------------------------------------------------------------------


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = root["$defs"][node["$ref"].removeprefix("#/$defs/")]
    if "oneOf" in node:  # "null or X": X is the typed part
        (node,) = [n for n in node["oneOf"] if n.get("type") != "null"]
        return _resolve(node, root)
    return node


def _typed(hint: Any) -> Any:
    """The dataclass a hint holds (directly, optionally, or as tuple/mapping items), or None."""
    if dataclasses.is_dataclass(hint):
        return hint
    args = [a for a in typing.get_args(hint) if a is not type(None) and a is not Ellipsis]
    return _typed(args[-1]) if args else None


def _compare(cls: Any, node: dict[str, Any], root: dict[str, Any], where: str) -> list[str]:
    """Where the schema `node` and the dataclass `cls` disagree on field names or required fields, recursively."""
    node = _resolve(node, root)
    fields = {f.name for f in dataclasses.fields(cls)}
    problems = []
    # Fields new in a later version are required by the "then" of that version's condition (older files lack them).
    conditions = [node, *node.get("allOf", [])]
    required = set(node.get("required", [])).union(*(c.get("then", {}).get("required", []) for c in conditions))
    if required != fields:
        problems.append(f"{where}: required {sorted(required)} != fields {sorted(fields)}")
    if set(node.get("properties", {})) != fields:
        problems.append(f"{where}: properties {sorted(node.get('properties', {}))} != fields {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    for name in fields & set(node.get("properties", {})):
        hint, child = hints[name], _resolve(node["properties"][name], root)
        inner = _typed(hint)
        if inner is None:
            continue
        origin = typing.get_origin(hint)
        if origin is tuple:
            child = _resolve(child["items"], root)
        elif origin in (Mapping, dict):
            child = _resolve(child["additionalProperties"], root)
        problems += _compare(inner, child, root, f"{where}/{name}")
    return problems


@pytest.mark.parametrize("cls", [PairResult, FinalResult, EnsembleResult, Summary])
def test_each_schema_names_exactly_the_fields_of_its_dataclass(cls: Any) -> None:
    root = schema(cls.SCHEMA)
    assert _compare(cls, root, root, cls.__name__) == []


# --- a real pair, and the validity check ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_run(mnist_full: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RESULTS with mlp folds 0 and 1, trained by `python -m job run`."""
    out = tmp_path_factory.mktemp("results")
    for fold in ("0", "1"):
        done = cli(
            "run", "--model", "mlp", "--fold", fold, *QUICK, "--data-dir", str(mnist_full), "--results", str(out)
        )
        assert done.returncode == 0, done.stderr
    return out


@pytest.mark.slow  # trains two real pairs once (the fixture), ~12 s
def test_a_real_result_round_trips_through_its_dataclass(real_run: Path) -> None:
    layout = RunLayout(real_run, "default")
    path = layout.pair_paths(Pair("mlp", 0)).result
    raw = json.loads(path.read_text())
    typed = store.check_pair(path, layout)
    assert raw["schema_version"] == 3 and typed.to_json() == raw
    assert typed.config == PROTOCOL and typed.score.accuracy == typed.history.val_accuracy[-1]
    assert typed.predictions is not None and typed.predictions.n_images == typed.data.n_val
    assert typed.weights_sha256 is not None and typed.model_file is None  # weights kept only with --keep-model


V3_FIELDS = ("weights_sha256", "predictions", "model_file")


@pytest.mark.slow  # uses the trained pairs of the fixture
def test_a_version_1_result_still_reads_as_repeat_0_with_no_resources(real_run: Path) -> None:
    layout = RunLayout(real_run, "default")
    raw = json.loads(layout.pair_paths(Pair("mlp", 0)).result.read_text())
    v1 = {key: value for key, value in raw.items() if key not in ("repeat", "resources", *V3_FIELDS)}
    typed = PairResult.from_json(v1 | {"schema_version": 1})
    assert (typed.repeat, typed.resources, typed.score) == (0, None, PairResult.from_json(raw).score)
    with pytest.raises(ResultError, match="repeat"):
        PairResult.from_json({**v1, "schema_version": 2})  # version 2 must say which repeat it is


@pytest.mark.slow  # uses the trained pairs of the fixture
def test_a_version_2_result_reads_with_no_predictions_and_version_3_must_have_them(real_run: Path) -> None:
    layout = RunLayout(real_run, "default")
    raw = json.loads(layout.pair_paths(Pair("mlp", 0)).result.read_text())
    v2 = {key: value for key, value in raw.items() if key not in V3_FIELDS} | {"schema_version": 2}
    typed = PairResult.from_json(v2)
    assert (typed.weights_sha256, typed.predictions, typed.model_file) == (None, None, None)
    with pytest.raises(ResultError, match="weights_sha256"):
        PairResult.from_json({**v2, "schema_version": 3})
    with pytest.raises(ResultError, match="a schema_version 2 file holding predictions"):
        PairResult.from_json({**v2, "predictions": raw["predictions"]})


def _set(keys: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(result: dict[str, Any]) -> None:
        *parents, last = keys.split("/")
        node = result
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value(node[int(last) if isinstance(node, list) else last])

    return change


# Edits a hand or a bad copy could make; each leaves valid JSON of the schema, but not a valid result of its pair.
EDITS: dict[str, Callable[[float], Callable[[dict[str, Any]], None]]] = {
    "score accuracy": lambda d: _set("score/accuracy", lambda v: min(1.0, max(0.0, v + d))),
    "score loss": lambda d: _set("score/loss", lambda v: v * (1 + d)),
    "last val_accuracy": lambda d: _set("history/val_accuracy/1", lambda v: min(1.0, max(0.0, v + d))),
    "fold number": lambda d: _set("fold", lambda v: 7),
    "model": lambda d: _set("model", lambda v: "cnn"),
    "config epochs": lambda d: _set("config/epochs", lambda v: 3),
    "config seed, id kept": lambda d: _set("config/seed", lambda v: 2),
    "split seed, id recomputed": lambda d: _recompute(_set("config/split_seed", lambda v: 2)),
    "limit, id recomputed": lambda d: _recompute(_set("config/limit", lambda v: 1200)),
    "config id": lambda d: _set("config_id", lambda v: "0123456789ab"),
    "held-out hash": lambda d: _set("data/val_indices_sha256", lambda v: "0" * 64),
    "held-out count": lambda d: _set("data/n_val", lambda v: v + 1),
    "history cut": lambda d: _set("history/loss", lambda v: v[:1]),
}


def _recompute(change: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def both(result: dict[str, Any]) -> None:
        change(result)
        result["config_id"] = Protocol.from_dict(result["config"]).config_id

    return both


@pytest.mark.slow  # trains two real pairs once (the fixture), ~12 s
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    edit=st.sampled_from(sorted(EDITS)),
    # Beyond store's tolerances (1e-6 absolute on accuracy, 1e-5 relative on loss), which absorb summation order.
    delta=st.one_of(st.floats(1e-4, 0.5), st.floats(-0.5, -1e-4)),
)
def test_an_edited_result_is_not_valid(real_run: Path, tmp_path: Path, edit: str, delta: float) -> None:
    layout = RunLayout(Path(tempfile.mkdtemp(dir=tmp_path)), "default")
    shutil.copytree(real_run / "default", layout.folder)
    path = layout.pair_paths(Pair("mlp", 0)).result
    result = json.loads(path.read_text())
    EDITS[edit](delta)(result)
    path.write_text(json.dumps(result))
    with pytest.raises(ResultError):
        store.check_pair(path, layout)
    # run's done-check, pairs/submit (status) and collect (scan) all agree: not done.
    assert not store.completed(path, PROTOCOL.config_id, read=lambda p: store.check_pair(p, layout))
    assert status(RunLayout(layout.results_dir, "default"), PROTOCOL)[0].state == "corrupt"
    assert path in store.scan(layout).problems


@pytest.mark.slow  # trains two real pairs once (the fixture), ~12 s
@pytest.mark.parametrize(("source", "target"), [(0, 1), (1, 0), (0, 4), (1, 3)])
def test_a_result_copied_under_another_folds_name_is_not_that_pair(
    real_run: Path, tmp_path: Path, source: int, target: int
) -> None:
    layout = RunLayout(tmp_path, "default")
    shutil.copytree(real_run / "default", layout.folder)
    path = layout.pair_paths(Pair("mlp", target)).result
    shutil.copy(layout.pair_paths(Pair("mlp", source)).result, path)
    with pytest.raises(ResultError, match=f"holds mlp/fold-{source}, not the pair its path names"):
        store.check_pair(path, layout)
    assert status(RunLayout(tmp_path, "default"), PROTOCOL)[target].state == "corrupt"


# --- numbers that are not numbers --------------------------------------------------------------


@pytest.mark.slow  # trains two real pairs once (the fixture), ~12 s
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
@pytest.mark.parametrize("where", ['"score": {\n  "accuracy": ', '"fit_seconds": ', '"loss": [\n   '])
def test_a_non_finite_number_in_a_result_file_makes_it_unusable(
    real_run: Path, tmp_path: Path, literal: str, where: str
) -> None:
    layout = RunLayout(tmp_path, "default")
    shutil.copytree(real_run / "default", layout.folder)
    path = layout.pair_paths(Pair("mlp", 0)).result
    text = path.read_text()
    start = text.index(where) + len(where)
    end = min(text.index(c, start) for c in ",\n}" if c in text[start:])
    path.write_text(text[:start] + literal + text[end:])
    json.loads(path.read_text())  # still JSON to Python's lenient parser: the number is what is wrong, not the syntax
    with pytest.raises(ResultError) as error:
        store.check_pair(path, layout)
    assert "\n" not in str(error.value)
    assert status(RunLayout(tmp_path, "default"), PROTOCOL)[0].state == "corrupt"


def fifo(path: Path) -> None:
    os.mkfifo(path)


def endless(path: Path) -> None:
    path.symlink_to("/dev/zero")


def huge(path: Path) -> None:
    with open(path, "wb") as f:
        f.truncate(1 << 40)  # sparse: costs nothing on disk, a terabyte to read


def folder(path: Path) -> None:
    path.mkdir()


@pytest.mark.parametrize("make", [fifo, endless, huge, folder])
def test_a_result_that_is_not_a_small_regular_file_is_refused_without_reading_it(
    tmp_path: Path, make: Callable[[Path], None]
) -> None:
    # A FIFO never ends its open(), /dev/zero and a sparse terabyte never end their read: pairs and status hung
    # or exhausted the memory. Refused in one line instead: a big file is corrupt, to be redone; what is no
    # regular file (a FIFO, a folder, a link out of the run) is in the way, for a person to remove.
    layout = RunLayout(tmp_path, "default")
    path = layout.pair_paths(Pair("mlp", 0)).result
    path.parent.mkdir(parents=True)
    make(path)
    with pytest.raises(ResultError, match="not a regular file|more than a result holds") as error:
        store.check_pair(path, layout)
    assert "\n" not in str(error.value)
    assert status(RunLayout(tmp_path, "default"), PROTOCOL)[0].state == ("corrupt" if make is huge else "in the way")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_number_is_refused_when_writing(tmp_path: Path, value: float) -> None:
    path = tmp_path / "x.json"
    with pytest.raises(JobError) as error:
        atomic.write_json(path, {"score": {"accuracy": value}})
    assert "\n" not in str(error.value) and not path.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.slow  # trains two real pairs once (the fixture), ~12 s
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_typed_result_with_a_non_finite_number_does_not_pass_its_own_check(real_run: Path, value: float) -> None:
    layout = RunLayout(real_run, "default")
    typed = store.check_pair(layout.pair_paths(Pair("mlp", 0)).result, layout)
    broken = dataclasses.replace(typed, score=dataclasses.replace(typed.score, loss=value))
    with pytest.raises(ResultError, match="score/loss is not a finite number"):
        PairResult.from_json(broken.to_json())


# --- names, not paths ---------------------------------------------------------------------------


@given(
    st.one_of(
        st.text(min_size=1).map(lambda s: s + "/" + s),
        st.sampled_from(["", ".", "..", "final", "logs", "/abs", "../up", "a\\b"]),
        st.text(alphabet=st.characters(categories=["Cc"]), min_size=1),
        st.text(min_size=1).map(lambda s: "." + s),
        st.text(alphabet="xé", min_size=128, max_size=300).filter(lambda s: len(s.encode()) > 255),  # > NAME_MAX
    )
)
def test_a_run_name_that_is_not_a_plain_name_is_refused(name: str) -> None:
    with pytest.raises(UsageError, match="must be a plain name"):
        RunLayout(Path("results"), name)


@given(
    model=st.text(alphabet=st.characters(categories=["Ll", "Nd"]) | st.just("-"), min_size=1, max_size=12).filter(
        lambda name: name not in RESERVED_NAMES  # refused as names (test above)
    ),
    fold=st.integers(0, 99),
)
def test_a_pair_path_names_its_pair(model: str, fold: int) -> None:
    layout = RunLayout(Path("results"), "run")
    for path in (layout.pair_paths(Pair(model, fold)).result, layout.pair_paths(Pair(model, fold)).checkpoint):
        assert layout.pair_of(path) == Pair(model, fold) and path.is_relative_to(layout.folder)
    assert layout.pair_of(layout.final_paths(model).result) is None


@pytest.mark.slow  # trains two real pairs once (the fixture), ~12 s
@pytest.mark.parametrize("name", ["../../escape.keras", "/tmp/x.keras", "cnn.keras", "mlp.json"])
def test_a_final_result_naming_another_model_file_is_refused(real_run: Path, name: str) -> None:
    from job.results.store import check_final

    layout = RunLayout(real_run, "default")
    pair = json.loads(layout.pair_paths(Pair("mlp", 0)).result.read_text())
    final = {**pair, "model_file": {"name": name, "sha256": "0" * 64}}
    # The pair's held-out images stand in for the test set, and its training images for all of custom data's:
    # every other claim of the file is true.
    n_images = pair["data"]["n_val"]
    final["test"] = {
        "n_images": n_images,
        "n_correct": round(pair["score"]["accuracy"] * n_images),
        "per_class_accuracy": [1.0] * 10,
        "confusion_matrix": [[1 if i == j else 0 for j in range(10)] for i in range(10)],
        "misclassified": [],
    }
    final["data"] = {**{k: pair["data"][k] for k in ("source", "n_train")}, "name": "custom", "n_test": n_images}
    final["data"]["sha256"] = {**pair["data"]["sha256"], "train-images-idx3-ubyte": "0" * 64}
    for key in ("fold", "task_id"):
        final.pop(key)
    path = layout.final_paths("mlp").result
    atomic.write_json(path, final)
    with pytest.raises(ResultError, match=f"names the file {name!r}, not mlp.keras"):
        check_final(path, layout)
    with pytest.raises(UsageError):
        layout.final_paths("../mlp")
