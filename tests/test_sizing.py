"""Right-sizing: the request rules on numbers, and collect's sizing of real pairs from the resources they recorded.

The pairs are trained by `python -m job run`, which records its own resources (job/pair/usage.py); each is also
measured from outside by os.wait4 (the kernel's rusage of exactly that process: CPU seconds, peak RSS) and the wall
clock around it, and the recorded figures must agree with that outside view. One pair is turned into the version 1
file it would have been before resources were recorded, so collect must count it as unmeasured.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support import ROOT

from job import atomic
from job.analysis import sizing
from job.cli import main
from job.launch import resources as launch_resources
from job.protocol import Pair
from job.results.contract import GpuUse, PairResult, Resources, Summary
from job.results.layout import RunLayout
from job.results.packing import PairCost, pairs_per_task, time_limit_seconds
from job.results.projection import WARNING_S, clock, projection

GIB = 1 << 30
MIB = 1 << 20
QUICK = ("--epochs", "2", "--limit", "2000")
MEASURED_FOLDS = (0, 1)  # mlp folds trained with their resources; fold 2 is trained and made a version 1 file


# --- the rules, on numbers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wall", "rss", "cores", "cpu_count", "gpus", "options"),
    [
        # 10 s x1.5 + 180 s warning = 195 s -> 5 min; 830 MiB x1.25 = 1038 MiB -> 1536M; 0.92 cores -> 1
        (10.0, 830 * MIB, 0.92, 2, 0, "--time=0:05:00 --mem=1536M -c 1 --gres=none"),
        # 600 s x1.5 + 180 = 1080 s -> 20 min; exactly 3.2 GiB x1.25 = 4 GiB -> 4G; 1.3 cores -> 2
        (600.0, int(3.2 * GIB), 1.3, 2, 0, "--time=0:20:00 --mem=4G -c 2 --gres=none"),
        # a ratio a hair over 1 on a one-CPU allocation is clock noise: still 1 CPU; a GPU used is asked for
        (3000.0, 100 * MIB, 1.0001, 1, 1, "--time=1:20:00 --mem=512M -c 1 --gres=gpu:1"),
        # one busy core measured as 1.03 on a two-CPU node: still 1 CPU, not 2; 1.06 is a second core's work
        (10.0, 100 * MIB, 1.03, 2, 0, "--time=0:05:00 --mem=512M -c 1 --gres=none"),
        (10.0, 100 * MIB, 1.06, 2, 0, "--time=0:05:00 --mem=512M -c 2 --gres=none"),
    ],
)
def test_the_request_is_the_measured_peaks_with_the_stated_margin(
    wall: float, rss: int, cores: float, cpu_count: int, gpus: int, options: str
) -> None:
    found = sizing.request(wall, rss, cores, cpu_count, gpus)
    assert found.options == options
    assert found.options == f"--time={found.time} --mem={found.mem} -c {found.cpus} --gres={found.gres}"


@pytest.mark.parametrize(
    ("startup", "pair", "most", "pairs", "limit"),
    [
        # full mlp pairs: 3 s of start-up, 6 s each after it; 10 min want 100 of them, a run has 5: 33 s -> 5 min
        (3.0, 6.0, 5, 5, "0:05:00"),
        (3.0, 6.0, None, 100, "0:20:00"),  # 603 s x1.5 + 180 = 1084.5 s -> 20 min
        (3.0, 780.0, 5, 1, "0:25:00"),  # a full cnn pair lasts longer than the target alone
        (700.0, 1.0, 5, 1, "0:25:00"),  # a start-up past the target: one pair
    ],
)
def test_a_packed_task_takes_the_fewest_pairs_that_last_the_target(
    startup: float, pair: float, most: int | None, pairs: int, limit: str
) -> None:
    cost = PairCost(startup_seconds=startup, pair_seconds=pair, n_measured=5)
    assert pairs_per_task(cost, 600, most=most) == pairs
    assert clock(time_limit_seconds(cost.task_seconds(pairs))) == limit


# What one full pair of each model used (all 60,000 images, 10 epochs, one CPU), as docs/performance.md#sizing
# reports them: the slowest of the five mlp pairs and the cnn's fold 0, at commit f548be8.
MEASURED = {"mlp": (9.0, 695 * MIB, 1.01), "cnn": (779.0, 946 * MIB, 1.0)}
GPU_HOST_MIB = 2048  # docs/cluster.md#what-a-task-asks-for: CUDA's host memory, an allowance not measured on a GPU
FINAL_IMAGES = 60_000 / 48_000  # a final model trains on every training image, a pair on four folds of five


def test_the_scripts_ask_for_what_the_measured_pairs_used_with_the_stated_margin() -> None:
    """The #SBATCH defaults are collect's own request over both models' measured pairs (one array runs both), a GPU
    and its CUDA host memory added; the final model's are the cnn pair's for its 1.25x images."""
    pairs = [sizing.request(wall, rss, cores, 1, 1) for wall, rss, cores in MEASURED.values()]
    wall, rss, cores = MEASURED["cnn"]
    final = sizing.request(wall * FINAL_IMAGES, rss, cores, 1, 1)
    for script, requests in ((launch_resources.PAIRS_SCRIPT, pairs), (launch_resources.FINAL_SCRIPT, [final])):
        asked = launch_resources.resources(script)
        assert asked.time_min == max(launch_resources.minutes(r.time) for r in requests), script
        mem_mib = max(launch_resources.gigabytes(r.mem) for r in requests) * 1024 + GPU_HOST_MIB
        assert asked.mem_gb * 1024 == mem_mib, script
        assert (asked.cpus, asked.gpus) == (max(r.cpus for r in requests), 1), script
    assert launch_resources.sbatch_options(launch_resources.PAIRS_SCRIPT)["time"] == "00:25:00"


def test_the_requeue_warning_is_the_one_slurm_array_sh_asks_for() -> None:
    signal = launch_resources.sbatch_options(launch_resources.PAIRS_SCRIPT)["signal"]
    assert signal == f"B:USR1@{WARNING_S}"


def test_a_projection_says_within_or_past_the_limit() -> None:
    assert projection(100, 4, 10, 20.0, 1800) == (220, "ends at about 0:03:40, within its 0:30:00 limit")
    total, text = projection(100, 4, 10, 20.0, 300)  # 220 s is past 300 - 180
    assert total == 220 and "past its 0:05:00 limit's requeue warning" in text
    assert projection(100, 10, 10, 20.0, None) == (100, "ends at about 0:01:40")
    assert clock(3725.2) == "1:02:06"


# --- real pairs, measured from outside ----------------------------------------------------------------------------


def train_measured(results: Path, fold: int, data: Path) -> Resources:
    """Train mlp/fold-K with `python -m job run` and measure that very process: wall clock, rusage, CPUs it had."""
    args = ["run", "--model", "mlp", "--fold", str(fold), *QUICK, "--data-dir", str(data), "--custom-data"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = results / f"fold-{fold}.log"
    with open(log, "wb") as stderr:
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "job", *args, "--results", str(results)], env=env, stderr=stderr)
        _, status, usage = os.wait4(proc.pid, 0)  # the rusage of exactly this process
        wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, log.read_text()[-2000:]
    result = PairResult.from_json(
        json.loads(RunLayout(results, "default").pair_paths(Pair("mlp", fold)).result.read_text())
    )
    return Resources(
        wall_seconds=wall,
        # Start-up as seen from outside: everything but the fit (an upper bound of the in-process figure).
        startup_seconds=max(0.0, wall - result.timings.fit_seconds),
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        peak_rss_bytes=usage.ru_maxrss * 1024,  # kilobytes on Linux
        cpu_count=len(os.sched_getaffinity(0)),
        gpu=None,
    )


@pytest.fixture(scope="module")
def measured_run(mnist_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, Resources]]:
    """RESULTS with mlp folds 0-2 trained for real, and what the kernel measured of each; fold 2 as a v1 file."""
    results = tmp_path_factory.mktemp("measured")
    outside = {fold: train_measured(results, fold, mnist_mini) for fold in (*MEASURED_FOLDS, 2)}
    path = RunLayout(results, "default").pair_paths(Pair("mlp", 2)).result
    data = json.loads(path.read_text())
    later = ("repeat", "resources", "weights_sha256", "predictions", "model_file")  # what version 1 had not
    v1 = {key: value for key, value in data.items() if key not in later}
    atomic.write_json(path, {**v1, "schema_version": 1})
    return results, {fold: outside[fold] for fold in MEASURED_FOLDS}


def recorded(results: Path, fold: int) -> Resources:
    path = RunLayout(results, "default").pair_paths(Pair("mlp", fold)).result
    resources = PairResult.from_json(json.loads(path.read_text())).resources
    assert resources is not None
    return resources


@pytest.mark.slow  # uses the three trained pairs
def test_the_recorded_resources_agree_with_the_kernels_view_from_outside(
    measured_run: tuple[Path, dict[int, Resources]],
) -> None:
    results, outside = measured_run
    for fold, seen in outside.items():
        own = recorded(results, fold)
        # The process measures itself before it writes the result and exits: a little less than from outside.
        assert seen.wall_seconds - 10 < own.wall_seconds <= seen.wall_seconds
        assert seen.cpu_seconds - 5 < own.cpu_seconds <= seen.cpu_seconds + 0.05
        assert 0.8 * seen.peak_rss_bytes <= own.peak_rss_bytes <= seen.peak_rss_bytes
        assert 0 < own.startup_seconds < own.wall_seconds and own.gpu is None


@pytest.fixture
def collect(
    measured_run: tuple[Path, dict[int, Resources]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[], tuple[Path, str]]:
    results = Path(shutil.copytree(measured_run[0], tmp_path / "results"))
    monkeypatch.setenv("COLUMNS", "250")

    def call() -> tuple[Path, str]:
        capsys.readouterr()
        assert main(["collect", "--results", str(results), "--allow-partial"]) == 0
        return results / "default", capsys.readouterr().out

    return call


@pytest.mark.slow  # trains three real pairs (about 10 s each here)
def test_collect_sizes_the_measured_pairs_and_counts_the_unmeasured_one(
    collect: Callable[[], tuple[Path, str]], measured_run: tuple[Path, dict[int, Resources]]
) -> None:
    folder, out = collect()
    used = {fold: recorded(measured_run[0], fold) for fold in MEASURED_FOLDS}
    models = Summary.from_json(json.loads((folder / "summary.json").read_text())).sizing.models
    mlp = models["mlp"]
    assert list(models) == ["mlp"]  # no cnn pair: nothing to size
    assert (mlp.n_measured, mlp.n_unmeasured) == (2, 1)
    slowest = max(MEASURED_FOLDS, key=lambda f: used[f].wall_seconds)
    assert (mlp.max_wall_seconds, mlp.slowest_fold) == (used[slowest].wall_seconds, slowest)
    assert mlp.max_peak_rss_bytes == max(u.peak_rss_bytes for u in used.values())
    cores = max(u.cpu_seconds / u.wall_seconds for u in used.values())
    assert mlp.max_effective_cores == pytest.approx(cores)
    assert (mlp.gpu_count, mlp.max_gpu_memory_bytes) == (0, None)
    # The request, worked out here from the measured figures by the stated rules.
    minutes = math.ceil((1.5 * mlp.max_wall_seconds + WARNING_S) / 300) * 5
    mem_mib = math.ceil(1.25 * mlp.max_peak_rss_bytes / (512 * MIB)) * 512
    mem = f"{mem_mib // 1024}G" if mem_mib % 1024 == 0 else f"{mem_mib}M"
    cpus = max(1, math.ceil(min(cores, len(os.sched_getaffinity(0))) - 0.05))
    options = f"--time={minutes // 60}:{minutes % 60:02d}:00 --mem={mem} -c {cpus} --gres=none"
    assert mlp.request is not None and mlp.request.options == options
    assert f"mlp: suggested request {options}" in out
    # The packed task: the slowest start-up, then the slowest pair past its start-up, as many as last 10 min (at
    # most the run's five mlp pairs).
    startup = max(u.startup_seconds for u in used.values())
    pair = max(u.wall_seconds - u.startup_seconds for u in used.values())
    pairs = min(5, max(1, math.ceil((600 - startup) / pair)))
    minutes = math.ceil((1.5 * (startup + pairs * pair) + WARNING_S) / 300) * 5
    packed = f"--time={minutes // 60}:{minutes % 60:02d}:00 --mem={mem} -c {cpus} --gres=none"
    assert mlp.pairs_per_task == pairs and mlp.packed_request is not None and mlp.packed_request.options == packed
    assert f"mlp: packed, {pairs} pairs a task (submit --pack {pairs}): request {packed}" in out
    assert "2 of 3 pairs measured; 1 without resources (written before they were measured): not counted" in out
    rss = mlp.max_peak_rss_bytes
    assert (f"peak RSS {rss / MIB:.0f} MiB" if rss < GIB else f"peak RSS {rss / GIB:.2f} GiB") in out
    markdown = (folder / "summary.md").read_text()
    assert f"- mlp: suggested request `{options}`" in markdown and sizing.MARGIN in markdown


@pytest.mark.slow
def test_a_gpu_pair_asks_for_its_gpus_and_reports_its_memory(
    collect: Callable[[], tuple[Path, str]], measured_run: tuple[Path, dict[int, Resources]]
) -> None:
    """The GPU figures of one measured pair set by hand (no GPU here): count and peak memory, as TensorFlow gives."""
    folder, _ = collect()
    path = folder / "mlp" / "fold-0.json"
    data = json.loads(path.read_text())
    gpu = GpuUse(count=2, names=("NVIDIA A100",), peak_memory_bytes=3 * GIB, driver=None, cuda="12.3", cudnn="9")
    data["resources"]["gpu"] = {**vars(gpu), "names": list(gpu.names)}
    atomic.write_json(path, data)
    _, out = collect()
    mlp = Summary.from_json(json.loads((folder / "summary.json").read_text())).sizing.models["mlp"]
    assert (mlp.gpu_count, mlp.max_gpu_memory_bytes) == (2, 3 * GIB)
    assert mlp.request is not None and mlp.request.options.endswith("--gres=gpu:2")
    assert "2 GPUs, GPU memory peak 3.00 GiB" in out


@pytest.mark.slow
def test_a_run_without_any_resources_suggests_nothing(
    collect: Callable[[], tuple[Path, str]], measured_run: tuple[Path, dict[int, Resources]]
) -> None:
    folder, _ = collect()
    for fold in MEASURED_FOLDS:
        path = folder / "mlp" / f"fold-{fold}.json"
        atomic.write_json(path, {**json.loads(path.read_text()), "resources": None})
    _, out = collect()
    mlp = Summary.from_json(json.loads((folder / "summary.json").read_text())).sizing.models["mlp"]
    assert (mlp.n_measured, mlp.n_unmeasured, mlp.request) == (0, 3, None)
    assert "mlp: none of its 3 pairs records the resources it used" in out and "suggested request" not in out
