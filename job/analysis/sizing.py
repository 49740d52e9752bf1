"""Right-sizing: what each model's pairs really used (the `resources` their results record) and the Slurm request that
fits it with a stated margin. The limit must also leave room for the requeue warning (WARNING_S): a limit shorter than
the pair plus the warning would requeue it every time. Also how many pairs a packed task should train to last at
least TASK_MINUTES, and the request that covers such a task (job/results/packing.py, shared with `submit --pack`).

Pure: typed results in, typed sizing and lines of text out; reads no file, imports no TensorFlow. A pair whose result
records no resources (a version 1 file) is counted as unmeasured and said so, never guessed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from job.results.contract import ModelSizing, PairResult, Resources, Sizing, SlurmRequest
from job.results.packing import TASK_MINUTES, TIME_MARGIN, TIME_STEP_S, pair_cost, pairs_per_task, time_limit_seconds
from job.results.projection import WARNING_S, clock

MEM_MARGIN = 1.25
MEM_STEP_MIB = 512
# CPU seconds per wall second this far over a whole number are clock noise (a pair on one core measures 1.00-1.02,
# its few helper threads included), not a core more: rounded up past it, the request would double a one-core pair.
CORE_NOISE = 0.05
BEFORE = " (written before they were measured)"
MIB = 1 << 20
GIB = 1 << 30
MARGIN = (
    f"--time: the slowest pair x{TIME_MARGIN:g} plus the {WARNING_S} s requeue warning, rounded up to "
    f"{TIME_STEP_S // 60} min; --mem: the largest peak RSS x{MEM_MARGIN:g}, rounded up to {MEM_STEP_MIB} MiB; "
    f"-c: the busiest pair's CPU seconds per wall second, rounded up beyond {CORE_NOISE:g} of a core; "
    "--gres: the GPUs the pairs used; packed: the fewest pairs a task that last "
    f"{TASK_MINUTES} min (the slowest start-up, then the slowest pair past its start-up for each), and its --time as "
    "above"
)


def slurm_memory(n_bytes: int) -> str:
    """Bytes as --mem: whole gigabytes as NG, else NM (Slurm's units are binary and take no fractions)."""
    mib = math.ceil(n_bytes / MIB)
    return f"{mib // 1024}G" if mib % 1024 == 0 else f"{mib}M"


def request(max_wall_s: float, max_rss_bytes: int, max_cores: float, cpu_count: int, gpus: int) -> SlurmRequest:
    """The request of the module's MARGIN over the measured peaks."""
    time_s = time_limit_seconds(max_wall_s)
    step = MEM_STEP_MIB * MIB
    mem = max(1, math.ceil(max_rss_bytes * MEM_MARGIN / step)) * step
    # Never more CPUs than the pairs had, nor a core more for clock noise.
    cpus = max(1, math.ceil(min(max_cores, cpu_count) - CORE_NOISE))
    time, memory, gres = clock(time_s), slurm_memory(mem), f"gpu:{gpus}" if gpus else "none"
    options = f"--time={time} --mem={memory} -c {cpus} --gres={gres}"
    return SlurmRequest(time=time, mem=memory, cpus=cpus, gres=gres, options=options)


def effective_cores(resources: Resources) -> float:
    """CPU seconds per wall second: how many cores the pair kept busy on average."""
    return resources.cpu_seconds / resources.wall_seconds if resources.wall_seconds > 0 else 0.0


def model_sizing(results: Sequence[PairResult], run: Sequence[PairResult], pairs_per_model: int) -> ModelSizing:
    """The peaks over one model's results, the request that fits them, and the packed task of at least TASK_MINUTES
    (at most `pairs_per_model` pairs; the start-up from all of the `run`'s results) with its request (None when
    none was measured)."""
    measured = [(r, r.resources) for r in results if r.resources is not None]
    used = [u for _, u in measured]
    cost = pair_cost(results, run)
    if cost is None:
        return ModelSizing(
            n_measured=0, n_unmeasured=len(results), max_wall_seconds=None, slowest_fold=None,
            max_startup_seconds=None, max_peak_rss_bytes=None, max_effective_cores=None, cpu_count=None,
            gpu_count=0, max_gpu_memory_bytes=None, request=None, pairs_per_task=None, packed_request=None,
        )  # fmt: skip
    slowest, _ = max(measured, key=lambda m: m[1].wall_seconds)
    wall = max(u.wall_seconds for u in used)
    rss = max(u.peak_rss_bytes for u in used)
    cores = max(effective_cores(u) for u in used)
    cpu_count = max(u.cpu_count for u in used)
    gpus = max((u.gpu.count for u in used if u.gpu is not None), default=0)
    gpu_memory = [u.gpu.peak_memory_bytes for u in used if u.gpu is not None and u.gpu.peak_memory_bytes is not None]
    packed = pairs_per_task(cost, TASK_MINUTES * 60, most=pairs_per_model)
    return ModelSizing(
        n_measured=len(used),
        n_unmeasured=len(results) - len(used),
        max_wall_seconds=wall,
        slowest_fold=slowest.fold,
        max_startup_seconds=max(u.startup_seconds for u in used),
        max_peak_rss_bytes=rss,
        max_effective_cores=cores,
        cpu_count=cpu_count,
        gpu_count=gpus,
        max_gpu_memory_bytes=max(gpu_memory) if gpu_memory else None,
        request=request(wall, rss, cores, cpu_count, gpus),
        pairs_per_task=packed,
        packed_request=request(cost.task_seconds(packed), rss, cores, cpu_count, gpus),
    )


def sizing(by_model: Mapping[str, Sequence[PairResult]], pairs_per_model: int) -> Sizing:
    """The sizing of every model with at least one result; a run has `pairs_per_model` pairs of each."""
    run = [result for results in by_model.values() for result in results]
    return Sizing(
        margin=MARGIN,
        models={model: model_sizing(rs, run, pairs_per_model) for model, rs in by_model.items() if rs},
    )


def _size(n_bytes: int) -> str:
    return f"{n_bytes / GIB:.2f} GiB" if n_bytes >= GIB else f"{n_bytes / MIB:.0f} MiB"


def _count(n: int | None, what: str) -> str:
    return f"{n} {what}{'s' * (n != 1)}"


def lines(found: Sizing, quote: str = "") -> list[str]:
    """Two lines per model: the measured peaks, and the request that fits them (between `quote`s), or why none."""
    out = []
    for model, s in found.models.items():
        n = s.n_measured + s.n_unmeasured
        unmeasured = f"; {s.n_unmeasured} without resources{BEFORE}: not counted" if s.n_unmeasured else ""
        if s.request is None or s.max_wall_seconds is None or s.max_peak_rss_bytes is None:
            out.append(f"{model}: none of its {n} pairs records the resources it used{BEFORE}: no request suggested")
            continue
        gpu = "no GPU" if not s.gpu_count else _count(s.gpu_count, "GPU")
        if s.max_gpu_memory_bytes is not None:
            gpu += f", GPU memory peak {_size(s.max_gpu_memory_bytes)}"
        out.append(
            f"{model}: {s.n_measured} of {n} pairs measured{unmeasured}: slowest {s.max_wall_seconds:.1f} s "
            f"(fold {s.slowest_fold}, start-up up to {s.max_startup_seconds:.1f} s), peak RSS "
            f"{_size(s.max_peak_rss_bytes)}, CPU up to {s.max_effective_cores:.2f} of {_count(s.cpu_count, 'core')}, "
            f"{gpu}"
        )
        out.append(f"{model}: suggested request {quote}{s.request.options}{quote}")
        if s.packed_request is not None:
            out.append(
                f"{model}: packed, {_count(s.pairs_per_task, 'pair')} a task ({quote}submit --pack "
                f"{s.pairs_per_task}{quote}): request {quote}{s.packed_request.options}{quote}"
            )
    return out
