"""`bench`: the report's structure on a tiny run under load (not timed); the accuracy guard that withholds ratios."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import cli

from job.perf.report import FIGURES, VARIANTS, accuracy_check
from job.perf.startup import PHASES


def test_accepts_a_difference_within_noise() -> None:
    # 3 * sqrt(2 * 0.9685 * 0.0315 / 12000) + 0.001 (the spread of the repeats) = 0.0077
    check = accuracy_check([0.970, 0.971], [0.966, 0.967], n_val=12000)
    assert check.agree
    assert check.difference == pytest.approx(0.004)
    assert check.tolerance == pytest.approx(3 * (2 * 0.9685 * 0.0315 / 12000) ** 0.5 + 0.001)


def test_refuses_a_difference_beyond_noise() -> None:
    check = accuracy_check([0.970, 0.970], [0.955, 0.955], n_val=12000)
    assert not check.agree
    assert check.difference == pytest.approx(0.015)


def test_a_small_held_out_set_or_a_wide_spread_allows_more() -> None:
    assert accuracy_check([0.97], [0.955], n_val=200).agree  # 3 SE on 200 images is 0.05
    assert accuracy_check([0.97, 0.95], [0.955, 0.955], n_val=12000).agree  # the repeats themselves vary by 0.02


def test_needs_an_accuracy_per_variant() -> None:
    with pytest.raises(ValueError):
        accuracy_check([], [0.9], n_val=100)


def _busy_loops() -> set[int]:
    """Pids of every running busy loop of job.perf.load."""
    loops = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if "signal.alarm" in cmdline.read_bytes().decode(errors="replace"):
                loops.add(int(cmdline.parent.name))
        except OSError:
            pass  # ended while we looked
    return loops


@pytest.mark.slow
def test_a_tiny_bench_reports_every_figure(mnist_mini: Path) -> None:
    # Without --load: a busy loop would take one of CI's two cores for the whole bench from every other test.
    # tests/test_perf_load.py holds the loops to their promises (burn inside the block, reaped after, die with it).
    loops_before = _busy_loops()
    done = cli(
        "bench", "--model", "mlp", "--epochs", "1", "--limit", "1000", "--repeats", "1", "--load", "0", "--json",
        "--data-dir", str(mnist_mini), "--custom-data",
    )  # fmt: skip
    report = json.loads(done.stdout)

    assert report["load"] == 0 and _busy_loops() == loops_before
    assert [run["variant"] for run in report["runs"]] == list(VARIANTS)  # in the order they ran
    for run in report["runs"]:
        assert (run["n_train"], run["n_val"]) == (800, 200)
        assert len(run["train_seconds"]) == len(run["train_cpu_seconds"]) == len(run["validation_seconds"]) == 1
        assert 0 <= run["accuracy"] <= 1 and run["peak_rss_mb"] > run["rss_above_import_mb"] > 0
        assert run["load"] == 0 and run["load_1min"] >= 0
    assert report["same_initial_weights"]
    figures = {key for key, _, _ in FIGURES}
    assert all(figures <= report["summary"][variant].keys() for variant in VARIANTS)
    check = report["accuracy_check"]
    assert check["agree"] == (check["difference"] <= check["tolerance"])
    # Ratios only when the accuracies agree, and then the exit status says so.
    assert (report["ratios"] is not None) == check["agree"] == (done.returncode == 0)
    if check["agree"]:
        assert report["ratios"].keys() == figures

    # The machine's limit: every training variant as a fraction of the GEMM floor and of the bare loop.
    floor = report["floor"]
    assert floor["training_flops_per_sample"] == 2 * (2 * 784 * 128) + 3 * (2 * 128 * 10)
    roles = [(gemm["layer"], gemm["role"]) for gemm in floor["gemms"]]
    assert roles == [
        ("dense", "forward"),
        ("dense", "weights"),
        *(("dense_1", r) for r in ("forward", "weights", "inputs")),
    ]
    assert all(gemm["best"] == max(gemm["tensorflow"], gemm["numpy"]) > 0 for gemm in floor["gemms"])
    # Each GEMM counts at the faster library's rate, so the floor is at least as fast as TensorFlow's alone.
    assert floor["floor_samples_per_s"] >= floor["tf_floor_samples_per_s"] > 0
    assert floor["epoch_s"] == pytest.approx(800 / floor["floor_samples_per_s"])
    assert all(rate > 0 for rate in (*floor["gemm_gflops"].values(), *floor["peak_gflops"].values()))
    for variant in VARIANTS:
        fractions = report["fractions"][variant]
        assert fractions.keys() == {"of_floor", "of_tf_floor", "of_bare"}
        assert fractions["of_floor"] == pytest.approx(
            report["summary"][variant]["samples_per_s"] / floor["floor_samples_per_s"]
        )  # one repeat: the median is that repeat's
    assert report["fractions"]["bare"]["of_bare"] == 1

    # Start-up: the real task from process start to its first step beside a bare TensorFlow import, and ours'
    # worker's by phase.
    started = report["startup"]
    assert started["phases"].keys() == {phase for phase, _ in PHASES}
    assert started["ours_s"] == pytest.approx(sum(started["phases"].values()))
    (task_run,) = started["runs"]
    assert started["bare_import_s"] > 0 and started["task_s"] == task_run["task_s"] > 0
    assert started["ratio"] == pytest.approx(started["task_s"] / started["bare_import_s"])
    assert started["data_anatomy"].keys() == {"read_s", "gunzip_s", "sha256_s"}


def test_refuses_a_negative_load() -> None:
    done = cli("bench", "--load", "-1")
    assert done.returncode == 2 and "--load" in done.stderr
