"""What a task asks of Slurm, read from the `#SBATCH` lines of slurm/array.sh (a pair) and slurm/final.sh (the final
model): those lines are the one source, and `submit` takes its defaults from here. Standard library only."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from job.errors import JobError

SLURM_DIR = Path(__file__).resolve().parents[2] / "slurm"  # beside job/ in the checkout
PAIRS_SCRIPT = SLURM_DIR / "array.sh"
FINAL_SCRIPT = SLURM_DIR / "final.sh"


@dataclass(frozen=True)
class Resources:
    job_name: str
    time_min: int
    gpus: int
    cpus: int
    mem_gb: float
    requeue: bool


def sbatch_options(script: Path) -> dict[str, str]:
    """`#SBATCH --key=value` lines as {key: value} (a bare flag maps to ''), in the order Slurm reads them: up to
    the first command."""
    options: dict[str, str] = {}
    try:
        lines = script.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise JobError(f"cannot read the batch script {script} (submit runs from a checkout): {error}") from None
    for line in lines:
        if line.startswith("#SBATCH "):
            key, _, value = line.removeprefix("#SBATCH ").strip().removeprefix("--").partition("=")
            options[key] = value
        elif line.strip() and not line.startswith("#"):
            break
    return options


def minutes(text: str) -> int:
    """Slurm's --time (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) in whole minutes, rounded up."""
    days, dash, clock = text.partition("-")
    if not dash:
        days, clock = "0", text
    fields = [int(part) for part in clock.split(":")]
    if dash:  # D-HH[:MM[:SS]]
        hours, mins, secs = (fields + [0, 0])[:3]
    elif len(fields) == 3:  # HH:MM:SS
        hours, mins, secs = fields
    else:  # MM[:SS]
        hours, (mins, secs) = 0, (fields + [0])[:2]
    return int(days) * 24 * 60 + hours * 60 + mins + (1 if secs else 0)


def gigabytes(text: str) -> float:
    """Slurm's --mem (16G, 16000M, 16000: megabytes by default) in GB."""
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)B?", text.upper()).groups()
    return float(number) * {"K": 2**-20, "M": 2**-10, "": 2**-10, "G": 1, "T": 2**10}[unit]


def resources(script: Path) -> Resources:
    """The script's own request (sbatch options given at submission override it there, as here the CLI's)."""
    options = sbatch_options(script)
    gres = dict(part.split(":", 1) for part in options.get("gres", "").split(",") if ":" in part)
    try:
        return Resources(
            job_name=options["job-name"],
            time_min=minutes(options["time"]),
            gpus=int(gres.get("gpu", "0").rsplit(":", 1)[-1]),
            cpus=int(options["cpus-per-task"]),
            mem_gb=gigabytes(options["mem"]),
            requeue="requeue" in options,
        )
    except (KeyError, ValueError, AttributeError) as error:
        raise JobError(f"{script}: an #SBATCH line is missing or not understood ({error})") from None


def pairs() -> Resources:
    return resources(PAIRS_SCRIPT)


def final() -> Resources:
    return resources(FINAL_SCRIPT)
