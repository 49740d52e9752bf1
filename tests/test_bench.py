"""`bench`: the report's structure on a tiny run (not timed), and the accuracy guard that withholds the ratios."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import cli

from job.perf.bench import FIGURES, VARIANTS, accuracy_check


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


@pytest.mark.slow
def test_a_tiny_bench_reports_every_figure(mnist_mini: Path) -> None:
    done = cli(
        "bench", "--model", "mlp", "--epochs", "1", "--limit", "1000", "--repeats", "1", "--json",
        "--data-dir", str(mnist_mini), "--custom-data",
    )  # fmt: skip
    report = json.loads(done.stdout)

    assert {run["variant"] for run in report["runs"]} == set(VARIANTS)
    for run in report["runs"]:
        assert (run["n_train"], run["n_val"]) == (800, 200)
        assert len(run["train_seconds"]) == len(run["train_cpu_seconds"]) == len(run["validation_seconds"]) == 1
        assert 0 <= run["accuracy"] <= 1 and run["peak_rss_mb"] > run["rss_above_import_mb"] > 0
    assert report["same_initial_weights"]
    figures = {key for key, _, _ in FIGURES}
    assert all(figures <= report["summary"][variant].keys() for variant in VARIANTS)
    check = report["accuracy_check"]
    assert check["agree"] == (check["difference"] <= check["tolerance"])
    # Ratios only when the accuracies agree, and then the exit status says so.
    assert (report["ratios"] is not None) == check["agree"] == (done.returncode == 0)
    if check["agree"]:
        assert report["ratios"].keys() == figures
