"""Right-sizing: what each model's pairs really used (the `resources` their results record) and the Slurm request that
fits it with a stated margin. The limit must also leave room for the requeue warning (WARNING_S): a limit shorter than
the pair plus the warning would requeue it every time.

Pure: typed results in, typed sizing and lines of text out; reads no file, imports no TensorFlow. A pair whose result
records no resources (a version 1 file) is counted as unmeasured and said so, never guessed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from job.results.contract import ModelSizing, PairResult, Resources, Sizing, SlurmRequest
from job.results.projection import WARNING_S, clock

TIME_MARGIN = 1.5
TIME_STEP_S = 5 * 60
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
    "--gres: the GPUs the pairs used"
)


def slurm_memory(n_bytes: int) -> str:
    """Bytes as --mem: whole gigabytes as NG, else NM (Slurm's units are binary and take no fractions)."""
    mib = math.ceil(n_bytes / MIB)
    return f"{mib // 1024}G" if mib % 1024 == 0 else f"{mib}M"


def request(max_wall_s: float, max_rss_bytes: int, max_cores: float, cpu_count: int, gpus: int) -> SlurmRequest:
    """The request of the module's MARGIN over the measured peaks."""
    time_s = math.ceil((max_wall_s * TIME_MARGIN + WARNING_S) / TIME_STEP_S) * TIME_STEP_S
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


def model_sizing(results: Sequence[PairResult]) -> ModelSizing:
    """The peaks over one model's results, and the request that fits them (None when none was measured)."""
    measured = [(r, r.resources) for r in results if r.resources is not None]
    used = [u for _, u in measured]
    if not used:
        return ModelSizing(
            n_measured=0, n_unmeasured=len(results), max_wall_seconds=None, slowest_fold=None,
            max_startup_seconds=None, max_peak_rss_bytes=None, max_effective_cores=None, cpu_count=None,
            gpu_count=0, max_gpu_memory_bytes=None, request=None,
        )  # fmt: skip
    slowest, _ = max(measured, key=lambda m: m[1].wall_seconds)
    wall = max(u.wall_seconds for u in used)
    rss = max(u.peak_rss_bytes for u in used)
    cores = max(effective_cores(u) for u in used)
    cpu_count = max(u.cpu_count for u in used)
    gpus = max((u.gpu.count for u in used if u.gpu is not None), default=0)
    gpu_memory = [u.gpu.peak_memory_bytes for u in used if u.gpu is not None and u.gpu.peak_memory_bytes is not None]
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
    )


def sizing(by_model: Mapping[str, Sequence[PairResult]]) -> Sizing:
    """The sizing of every model with at least one result."""
    return Sizing(margin=MARGIN, models={model: model_sizing(rs) for model, rs in by_model.items() if rs})


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
    return out
