"""Repeated cross-validation: R shuffles x 5 folds as one array.

Fast: every repeat's folds against scikit-learn's KFold, the task-id map, the streams, the layout, and the corrected
repeated k-fold t-test on a hand-derived example. Slow: real pairs trained through `python -m job run` (repeat 0 of a
repeated run is the plain run, byte for byte; repeat 1 is another training in its own folder), and collect, pairs,
status and submit on a repeated run whose files are real results with chosen accuracies.
"""

from __future__ import annotations

import copy
import json
import math
import re
import statistics
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.model_selection import KFold
from support import cli, cluster

from job import atomic, folds
from job.analysis import summary
from job.errors import UsageError
from job.protocol import (
    MAX_REPEATS,
    MAX_SEED,
    Pair,
    Protocol,
    all_pairs,
    check_repeats,
    pair_for_task,
    task_for_pair,
)
from job.results import store
from job.results.contract import ResultError
from job.results.layout import RunLayout, short_name

# --- the split of every repeat ----------------------------------------------------------------------------------------


def check_against_sklearn(n: int, k: int, split_seed: int, repeat: int) -> None:
    protocol = Protocol(n_folds=k, split_seed=split_seed)
    reference = KFold(k, shuffle=True, random_state=split_seed + repeat).split(np.zeros((n, 1)))
    held_out = []
    for fold, (train_ref, val_ref) in enumerate(reference):
        train_ix, val_ix = folds.split(n, fold, protocol, repeat)
        np.testing.assert_array_equal(train_ix, train_ref)
        np.testing.assert_array_equal(val_ix, val_ref)
        assert folds.indices_sha256(val_ix) == folds.indices_sha256(val_ref)
        assert not np.intersect1d(train_ix, val_ix).size and len(train_ix) + len(val_ix) == n
        held_out.append(val_ix)
    # Disjoint and covering: every image is held out exactly once per repeat.
    np.testing.assert_array_equal(np.sort(np.concatenate(held_out)), np.arange(n))


@pytest.mark.parametrize("repeat", [0, 1, 2, 3, 9])
def test_every_repeat_of_the_full_set_is_sklearns_kfold(repeat: int) -> None:
    check_against_sklearn(60_000, 5, 1, repeat)


@given(
    n=st.integers(2, 3000),
    k=st.integers(2, 12),
    split_seed=st.integers(0, MAX_SEED - 20) | st.just(MAX_SEED - 20),
    repeat=st.integers(0, 20),
)
def test_the_numpy_split_is_sklearns_kfold_for_any_size_folds_and_seed(
    n: int, k: int, split_seed: int, repeat: int
) -> None:
    if n >= k:
        check_against_sklearn(n, k, split_seed, repeat)


def test_repeats_are_different_shuffles_and_repeat_0_is_the_tutorials() -> None:
    protocol = Protocol()
    shas = [folds.indices_sha256(folds.split(60_000, 0, protocol, r)[1]) for r in range(3)]
    assert shas[0] == "fc25291844f0a88d7e28d8e6c068b8d99f3873b53e4e8e732d1ec5c8e8edbe68"  # test_protocol's pin
    assert len(set(shas)) == 3


def test_a_repeat_beyond_the_seed_range_is_refused_cleanly() -> None:
    top = Protocol(split_seed=MAX_SEED - 1)
    folds.split(100, 0, top, 1)  # split seed 2**32 - 1: the last one numpy takes
    with pytest.raises(UsageError, match="beyond 4294967295: at most 2 repeats"):
        folds.split(100, 0, top, 2)
    assert check_repeats(2, top) == 2
    with pytest.raises(UsageError, match="at most 2 repeats"):
        check_repeats(3, top)
    with pytest.raises(UsageError, match="at least 1"):
        check_repeats(0, Protocol())
    with pytest.raises(UsageError, match=f"outside 0-{MAX_REPEATS - 1}"):
        folds.split(100, 0, Protocol(), MAX_REPEATS)


def test_the_split_imports_no_scikit_learn() -> None:
    code = "import sys, job.folds, job.results.store, job.pair.job; print('sklearn' in sys.modules)"
    done = cli_python(code)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr


def cli_python(code: str) -> Any:
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


# --- task ids, names and streams --------------------------------------------------------------------------------------


def test_task_ids_run_repeat_by_repeat_mlp_then_cnn() -> None:
    pairs = all_pairs(repeats=3)
    assert len(pairs) == 30 and pairs[:10] == all_pairs()  # repeat 0: today's ten
    for task, pair in enumerate(pairs):
        assert task == pair.repeat * 10 + ("mlp", "cnn").index(pair.model) * 5 + pair.fold
        assert pair_for_task(task, repeats=3) == pair and pair_for_task(task, repeats=None) == pair
        assert task_for_pair(pair) == task
    assert pair_for_task(27, repeats=None) == Pair("cnn", 2, 2)
    with pytest.raises(UsageError, match="task id 30 is outside 0-29"):
        pair_for_task(30, repeats=3)
    assert task_for_pair(Pair("cnn-small", 0, 1)) is None


def test_a_pair_is_named_by_its_repeat_only_beyond_repeat_0() -> None:
    assert (str(Pair("mlp", 0)), str(Pair("mlp", 0, 0)), str(Pair("mlp", 0, 1))) == (
        "mlp/fold-0",
        "mlp/fold-0",
        "mlp/repeat-1/fold-0",
    )


def test_streams_keep_repeat_0_and_never_collide() -> None:
    from job.pair.final import FINAL_STREAM

    k = Protocol.n_folds
    assert [Pair("mlp", f).stream(k) for f in range(k)] == list(range(k))  # today's: the fold
    streams = [Pair("mlp", f, r).stream(k) for r in range(MAX_REPEATS) for f in range(k)]
    assert len(set(streams)) == len(streams) and max(streams) < FINAL_STREAM
    assert Pair("mlp", 99, MAX_REPEATS - 1).stream(100) < FINAL_STREAM  # 100 folds still fit


# --- layout -----------------------------------------------------------------------------------------------------------


def test_repeat_0_keeps_todays_paths_and_others_get_a_folder() -> None:
    layout = RunLayout(Path("results"), "run")
    assert layout.pair_paths(Pair("mlp", 3)).result == Path("results/run/mlp/fold-3.json")
    assert layout.pair_paths(Pair("mlp", 3, 2)).result == Path("results/run/mlp/repeat-2/fold-3.json")
    assert layout.pair_paths(Pair("cnn", 0, 1)).checkpoint == Path("results/run/cnn/repeat-1/fold-0.ckpt")
    assert layout.pair_paths(Pair("cnn", 0, 1)).lease == Path("results/run/cnn/repeat-1/fold-0.lease")
    assert short_name(layout.pair_paths(Pair("cnn", 0, 1)).result) == "cnn/repeat-1/fold-0.json"
    assert short_name(layout.pair_paths(Pair("cnn", 0)).result) == "cnn/fold-0.json"
    assert short_name(layout.final_paths("cnn").result) == "final/cnn.json"
    for foreign in ("run/mlp/repeat-0/fold-1.json", "run/mlp/repeat-01/fold-1.json", "run/mlp/x/fold-1.json"):
        assert layout.pair_of(Path("results") / foreign) is None, foreign
    assert layout.pair_of(Path("results/run/mlp/repeat-1/repeat-2/fold-0.json")) is None
    # A model called like a repeat folder is still a model: the depth tells them apart.
    assert layout.pair_of(Path("results/run/repeat-1/fold-0.json")) == Pair("repeat-1", 0)
    assert layout.pair_of(Path("results/run/repeat-1/repeat-2/fold-0.json")) == Pair("repeat-1", 0, 2)


@given(
    model=st.text(alphabet=st.characters(categories=["Ll", "Nd"]) | st.just("-"), min_size=1, max_size=12).filter(
        lambda name: name not in ("final", "logs", "code")
    ),
    fold=st.integers(0, 99),
    repeat=st.integers(0, 10**6),
)
def test_a_repeat_pair_path_names_its_pair(model: str, fold: int, repeat: int) -> None:
    layout = RunLayout(Path("results"), "run")
    pair = Pair(model, fold, repeat)
    for path in (
        layout.pair_paths(pair).result,
        layout.pair_paths(pair).checkpoint,
        layout.pair_paths(pair).lease.with_suffix(".json"),
    ):
        assert layout.pair_of(path) == pair


# --- the corrected repeated k-fold t-test on fixed numbers ------------------------------------------------------------


def fake_record(model: str, repeat: int, fold: int, accuracy: float) -> Any:
    """What compare() reads of a record: a pair's identity, its score, and its held-out set (200 of 1,000)."""
    data = types.SimpleNamespace(n_val=200, n_train=800, val_indices_sha256=f"{repeat}/{fold}")
    result = types.SimpleNamespace(
        model=model, repeat=repeat, fold=fold, score=types.SimpleNamespace(accuracy=accuracy, loss=0.3), data=data
    )
    return types.SimpleNamespace(path=Path(f"{model}/{fold}.json"), result=result)


# Differences (cnn - mlp) of 2 repeats x 5 folds: 1..5 thousandths in each repeat. By hand: mean 3e-3, variance
# (ddof 1) (4+1+0+1+4) * 2 / 9 * 1e-6 = 20/9 * 1e-6, n_test/n_train = 200/800 = 1/4, so
# t = 3e-3 / sqrt((1/10 + 1/4) * 20/9 * 1e-6) = 3 / sqrt(7/9) = 9 / sqrt(7) = 3.40168..., df = 2 * 5 - 1 = 9.
# On repeat 0 alone (Nadeau-Bengio, k = 5): variance 10/4 * 1e-6, t = 3 / sqrt((1/5 + 1/4) * 10/4) = 2 * sqrt(2).
DIFFERENCES = [0.001 * d for d in (1, 2, 3, 4, 5)]
REPEATED_LIMIT = 5000


def fake_run(repeats: int = 2) -> dict[str, list[Any]]:
    mlp = [fake_record("mlp", r, f, 0.9 + 0.01 * r + 0.001 * f) for r in range(repeats) for f in range(5)]
    cnn = [
        fake_record("cnn", m.result.repeat, m.result.fold, m.result.score.accuracy + DIFFERENCES[m.result.fold])
        for m in mlp
    ]
    return {"mlp": mlp, "cnn": cnn}


def test_the_corrected_repeated_t_test_is_the_hand_derived_one() -> None:
    from scipy import stats

    by_model = fake_run()
    repeated = summary.compare(by_model, "mlp", "cnn", {0, 1}, summary.REPEATED_TEST_NAME)
    assert (repeated.k, repeated.df, repeated.repeats, repeated.folds) == (
        10,
        9,
        (0,) * 5 + (1,) * 5,
        (0, 1, 2, 3, 4) * 2,
    )
    assert repeated.mean_difference == pytest.approx(0.003, rel=1e-9)
    assert repeated.test_train_ratio == 0.25
    assert repeated.t == pytest.approx(9 / math.sqrt(7), rel=1e-9)
    assert repeated.p_value == pytest.approx(2 * stats.t.sf(9 / math.sqrt(7), 9), rel=1e-9)
    assert repeated.p_value == pytest.approx(0.00785, abs=5e-5)  # a t table: t = 3.40 at 9 df, two-sided
    # The same numbers through an independent route: the plain paired t, deflated by the correction's factor.
    plain = stats.ttest_rel(
        [r.result.score.accuracy for r in by_model["cnn"]], [r.result.score.accuracy for r in by_model["mlp"]]
    )
    assert repeated.t == pytest.approx(plain.statistic * math.sqrt((1 / 10) / (1 / 10 + 1 / 4)), rel=1e-9)
    one_split = summary.compare(by_model, "mlp", "cnn")
    assert (one_split.k, one_split.df, one_split.repeats) == (5, 4, (0,) * 5)
    assert one_split.t == pytest.approx(2 * math.sqrt(2), rel=1e-9)
    assert one_split.test == summary.TEST_NAME


def test_model_stats_average_complete_repeats_only() -> None:
    records = fake_run(3)["mlp"][:-2]  # repeat 2 lacks folds 3 and 4
    stats = summary.model_stats(
        [types.SimpleNamespace(path=r.path, result=_with(r.result)) for r in records], repeats=3
    )
    assert (stats.n, stats.repeats_used) == (10, (0, 1))
    assert stats.mean == pytest.approx(statistics.fmean([0.902, 0.912]), rel=1e-12)
    assert stats.std_of_repeat_means == pytest.approx(0.005, rel=1e-9)
    assert [(r.repeat, r.n, r.complete, r.missing_folds) for r in stats.repeats] == [
        (0, 5, True, ()),
        (1, 5, True, ()),
        (2, 3, False, (3, 4)),
    ]
    assert stats.repeats[2].mean == pytest.approx(0.921, rel=1e-9) and len(stats.folds) == 13
    # A fourth repeat asked for and not begun: all its folds missing, and nothing else changes.
    more = summary.model_stats([types.SimpleNamespace(path=r.path, result=_with(r.result)) for r in records], repeats=4)
    assert (more.repeats[3].n, more.repeats[3].complete, more.repeats[3].missing_folds) == (0, False, (0, 1, 2, 3, 4))
    assert (more.n, more.mean, more.repeats_used) == (stats.n, stats.mean, stats.repeats_used)


def test_the_95_percent_intervals_are_corrected_over_the_complete_repeats_folds_and_plain_over_their_means() -> None:
    from scipy import stats as scipy_stats

    records = [types.SimpleNamespace(path=r.path, result=_with(r.result)) for r in fake_run(3)["mlp"][:-2]]
    folds, means = summary.model_stats(records, repeats=3).ci95
    assert (folds.over, folds.n, means.over, means.n) == ("folds", 10, "repeat means", 2)
    accuracies = [0.9 + 0.01 * r + 0.001 * f for r in (0, 1) for f in range(5)]  # repeat 2 is partial: left out
    # Nadeau-Bengio's corrected variance: the held-out share n_test/n_train widens the naive s^2/n.
    ratio = statistics.fmean(r.result.data.n_val / r.result.data.n_train for r in records[:10])
    assert ratio == pytest.approx(0.25, rel=0.01)
    spread = statistics.stdev(accuracies) * math.sqrt(1 / 10 + ratio)
    low, high = scipy_stats.t.interval(0.95, 9, loc=statistics.fmean(accuracies), scale=spread)
    assert (folds.low, folds.high) == (pytest.approx(low, rel=1e-12), pytest.approx(high, rel=1e-12))
    # Two repeat means, 0.902 and 0.912: mean 0.907 ± t(0.975, 1 df) = 12.706 (a t table) x 0.005.
    assert (means.low, means.high) == (
        pytest.approx(0.907 - 0.06353, abs=1e-5),
        pytest.approx(0.907 + 0.06353, abs=1e-5),
    )
    one = summary.model_stats(records[:5], repeats=1).ci95  # one complete repeat: its folds only
    assert [(i.over, i.n) for i in one] == [("folds", 5)]
    assert summary.model_stats(records[:3], repeats=1).ci95 == ()  # no complete repeat: no interval


def _with(result: Any) -> Any:
    """A fake result with what model_stats reads besides compare's (no predictions: as of an earlier version)."""
    return types.SimpleNamespace(
        **vars(result), config=Protocol(), timings=types.SimpleNamespace(fit_seconds=1.0), predictions=None
    )


# --- real pairs -------------------------------------------------------------------------------------------------------

QUICK = ("--epochs", "1", "--limit", "100")


@pytest.fixture(scope="module")
def trained(mnist_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RESULTS with run 'plain' (mlp fold 0 as today) and run 'rep' (tasks 0 and 10 of a --repeats 2 run)."""
    out = tmp_path_factory.mktemp("repeats")
    data = ("--data-dir", str(mnist_mini), "--custom-data", "--results", str(out))
    plain = cli("run", "--model", "mlp", "--fold", "0", *QUICK, *data, "--run", "plain")
    assert plain.returncode == 0, plain.stderr[-2000:]
    for task in ("0", "10"):
        done = cli("run", "--task-id", task, "--repeats", "2", *QUICK, *data, "--run", "rep")
        assert done.returncode == 0, done.stderr[-2000:]
    return out


@pytest.mark.slow  # three real trainings (~20 s here)
def test_repeat_0_of_a_repeated_run_is_the_plain_run_and_repeat_1_another(trained: Path) -> None:
    plain = store.read_result(trained / "plain" / "mlp" / "fold-0.json")
    first = store.read_result(trained / "rep" / "mlp" / "fold-0.json")
    second = store.read_result(trained / "rep" / "mlp" / "repeat-1" / "fold-0.json")
    assert first["history"] == plain["history"] and first["score"] == plain["score"]  # exactly, not approximately
    assert first["data"] == plain["data"] and first["config_id"] == plain["config_id"] == second["config_id"]
    assert (first["repeat"], first["task_id"], second["repeat"], second["task_id"]) == (0, 0, 1, 10)
    assert second["data"]["val_indices_sha256"] != first["data"]["val_indices_sha256"]
    assert second["history"] != first["history"]
    _, held_out = folds.split(100, 0, Protocol(epochs=1, limit=100), 1)
    assert second["data"]["val_indices_sha256"] == folds.indices_sha256(held_out)
    found = sorted(p.relative_to(trained / "rep").as_posix() for p in (trained / "rep").rglob("*.json"))
    assert found == ["mlp/fold-0.json", "mlp/repeat-1/fold-0.json", "run.json"]


@pytest.mark.slow
def test_a_result_at_another_repeats_path_is_refused(trained: Path, tmp_path: Path) -> None:
    layout = RunLayout(tmp_path, "rep")
    first, second = trained / "rep" / "mlp" / "fold-0.json", trained / "rep" / "mlp" / "repeat-1" / "fold-0.json"
    store.check_pair(second, RunLayout(trained, "rep"))
    target = layout.pair_paths(Pair("mlp", 0, 2)).result
    atomic.write_json(target, json.loads(second.read_text()))
    with pytest.raises(ResultError, match="holds mlp/repeat-1/fold-0, not the pair its path names"):
        store.check_pair(target, layout)
    # Its repeat field edited to match the path: the held-out images still give it away.
    edited = {**json.loads(second.read_text()), "repeat": 2}
    atomic.write_json(target, edited)
    with pytest.raises(ResultError, match="held-out images are not fold 0 of repeat 2"):
        store.check_pair(target, layout)
    # A repeat-0 result moved into repeat 1, its repeat edited: refused the same way.
    target = layout.pair_paths(Pair("mlp", 0, 1)).result
    atomic.write_json(target, {**json.loads(first.read_text()), "repeat": 1})
    with pytest.raises(ResultError, match="held-out images are not fold 0 of repeat 1"):
        store.check_pair(target, layout)


# --- collect, pairs, status and submit on a repeated run --------------------------------------------------------------


V3_FIELDS = ("weights_sha256", "predictions", "model_file")


@pytest.fixture
def repeated_run(trained: Path, tmp_path: Path) -> Path:
    """RESULTS/rep with 3 repeats of both models, cnn's repeat 2 lacking folds 3 and 4: real results (the repeat-0
    mlp's, retargeted to each pair: its fold's held-out images, its task id) with the accuracies of fake_run, on
    5,000 images so that fake_run's accuracies are counts of the 1,000 held-out ones (as a result's must be)."""
    template = json.loads((trained / "rep" / "mlp" / "fold-0.json").read_text())
    layout = RunLayout(tmp_path, "rep")
    protocol = Protocol(epochs=1, limit=REPEATED_LIMIT)
    template["config"]["limit"], template["config_id"] = REPEATED_LIMIT, protocol.config_id
    # Retargeted results have no predictions of their own held-out images: as a version 2 result, they need none.
    template = {key: value for key, value in template.items() if key not in V3_FIELDS} | {"schema_version": 2}
    for model, records in fake_run(3).items():
        for record in records:
            pair = Pair(model, record.result.fold, record.result.repeat)
            if pair.model == "cnn" and pair.repeat == 2 and pair.fold >= 3:
                continue
            train_ix, val_ix = folds.split(REPEATED_LIMIT, pair.fold, protocol, pair.repeat)
            result = copy.deepcopy(template)
            result.update(model=pair.model, fold=pair.fold, repeat=pair.repeat, task_id=task_for_pair(pair))
            result["data"].update(
                n_train=len(train_ix), n_val=len(val_ix), val_indices_sha256=folds.indices_sha256(val_ix)
            )
            result["score"]["accuracy"] = record.result.score.accuracy
            result["history"]["val_accuracy"] = [record.result.score.accuracy]
            atomic.write_json(layout.pair_paths(pair).result, result)
            store.check_pair(layout.pair_paths(pair).result, layout)
    return tmp_path


@pytest.mark.slow
def test_collect_reports_a_partial_repeat_and_tests_over_the_complete_ones(repeated_run: Path) -> None:
    from scipy import stats

    common = ("--results", str(repeated_run), "--run", "rep")
    refused = cli("collect", *common)
    assert refused.returncode == 1
    assert "2 of 30 pairs missing (cnn/repeat-2/fold-3, cnn/repeat-2/fold-4; task ids 28-29)" in refused.stderr

    done = cli("collect", *common, "--allow-partial", "--json")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert (found["repeats"], found["n_expected"], found["n_found"], found["complete"]) == (3, 30, 28, False)
    assert found["missing"][0] == {"model": "cnn", "fold": 3, "repeat": 2, "task_id": 28, "reason": "no result"}
    mlp, cnn = found["models"]["mlp"], found["models"]["cnn"]
    assert (mlp["n"], mlp["repeats_used"], cnn["n"], cnn["repeats_used"]) == (15, [0, 1, 2], 10, [0, 1])
    assert mlp["mean"] == pytest.approx(0.912, rel=1e-9)
    assert mlp["std_of_repeat_means"] == pytest.approx(0.01 * math.sqrt(2 / 3), rel=1e-9)
    assert [r["complete"] for r in cnn["repeats"]] == [True, True, False] and cnn["repeats"][2]["n"] == 3
    repeated = found["repeated_comparison"]
    assert (repeated["k"], repeated["df"], sorted(set(repeated["repeats"]))) == (10, 9, [0, 1])
    assert repeated["t"] == pytest.approx(9 / math.sqrt(7), rel=1e-6)
    assert repeated["p_value"] == pytest.approx(2 * stats.t.sf(9 / math.sqrt(7), 9), rel=1e-6)
    assert "repeats [2] left out: not complete for both models" in repeated["notes"]
    assert found["comparison"]["t"] == pytest.approx(2 * math.sqrt(2), rel=1e-6)

    shown = cli("collect", *common, "--allow-partial", env={"COLUMNS": "200"})
    assert shown.returncode == 0, shown.stderr
    assert "3 x 5-fold cross-validation" in shown.stdout
    assert re.search(
        r"cnn: n=10 \(complete repeats 0, 1\).*repeat 2 92\.\d+ \(partial: 3 of 5 folds, left out\)", shown.stdout
    )
    assert "over the complete repeats: cnn - mlp: +0.300 points" in shown.stdout
    assert "Bouckaert-Frank corrected repeated k-fold t-test: t=3.402, df=9" in shown.stdout
    assert (repeated_run / "rep" / "boxplot.png").is_file()

    # --repeats 2: repeat 2 is out of the summary (skipped, said why), and what is left is complete.
    two = cli("collect", *common, "--repeats", "2", "--json")
    assert two.returncode == 0, two.stderr
    found = json.loads(two.stdout)
    assert (found["repeats"], found["complete"], found["models"]["mlp"]["n"]) == (2, True, 10)
    assert sum("beyond --repeats 2" in s["reason"] for s in found["skipped"]) == 5 + 3


@pytest.mark.slow
def test_pairs_status_and_submit_take_repeats(repeated_run: Path) -> None:
    common = ("--results", str(repeated_run), "--run", "rep", "--epochs", "1", "--limit", str(REPEATED_LIMIT))
    missing = cli("pairs", "--missing", "--repeats", "3", *common)
    assert (missing.returncode, missing.stdout.strip()) == (0, "28-29")
    assert cli("pairs", "--missing", *common).stdout == "28-29\n"  # the run's three repeats, from its results
    assert cli("pairs", "--missing", "--repeats", "1", *common).returncode == 1  # a view: repeat 0 alone is done
    listed = cli("status", "--json", "--repeats", "3", *common)
    rows = json.loads(listed.stdout)
    assert len(rows) == 30 and rows[28]["repeat"] == 2 and rows[28]["state"] == "missing"
    assert [row["task_id"] for row in rows] == list(range(30))
    plan = cli("submit", "--executor", "local", "--dry-run", "--live-code", "--repeats", "3", *common, cwd=repeated_run)
    assert plan.returncode == 0, plan.stderr
    assert "would submit 2 pairs" in plan.stdout and "cnn/repeat-2/fold-4:" in plan.stdout
    assert "run --task-id 29 " in plan.stdout and "--repeats" not in plan.stdout.split("each task running:")[1]
    wrong = cli("submit", "--executor", "local", "--task-ids", "20", "--repeats", "2", *common, cwd=repeated_run)
    assert wrong.returncode == 2 and "task ids are 0-19 (--repeats 2), got 20" in wrong.stderr


def test_run_refuses_a_repeat_beyond_repeats_in_one_line(tmp_path: Path) -> None:
    for args, message in (
        (["--task-id", "20", "--repeats", "2"], "task id 20 is outside 0-19"),
        (["--model", "mlp", "--fold", "0", "--repeat", "2", "--repeats", "2"], "--repeat 2 is outside 0-1"),
        (["--task-id", "1", "--repeat", "1"], "--fold and --repeat need --model"),
        (["--task-id", "1", "--repeats", "0"], "argument --repeats: must be 1 to 10000, got 0"),
    ):
        done = cli("run", *args, "--results", str(tmp_path), timeout=120)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and not any(tmp_path.iterdir())


# --- the real Slurm: the documented sbatch line -----------------------------------------------------------------------


@pytest.mark.slurm
def test_sbatch_array_forwards_repeats_and_a_task_beyond_9_trains_its_repeat(mnist_mini: Path, tmp_path: Path) -> None:
    cluster.ensure_cluster()
    env = cluster.array_env(mnist_mini, tmp_path / "results")
    job = cluster.submit_array(tmp_path, env, ("--repeats", "2", *QUICK, "--custom-data"), "--array=15", "--gres=none")
    states = cluster.wait_for_jobs(job, timeout=600)
    assert set(states.values()) == {"COMPLETED"}, states
    result = store.read_result(tmp_path / "results" / "default" / "cnn" / "repeat-1" / "fold-0.json")
    assert (result["model"], result["fold"], result["repeat"], result["task_id"]) == ("cnn", 0, 1, 15)
