"""When a pair still training should end, from its latest epoch's pace, against its Slurm time limit.

Standard library only: `status` calls it for each running pair; collect's right-sizing (job/analysis/sizing.py)
shares its clock format and the requeue warning.
"""

from __future__ import annotations

import math

# slurm/array.sh's `--signal=B:USR1@180`: a task is told to checkpoint and requeue this long before its limit
# (tests/test_sizing.py pins the number to the script).
WARNING_S = 180


def clock(seconds: float) -> str:
    """Seconds as Slurm's H:MM:SS (rounded up to the second)."""
    hours, rest = divmod(math.ceil(seconds), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def projection(
    elapsed_s: int, epochs_done: int, epochs: int, latest_epoch_s: float, limit_s: int | None
) -> tuple[int, str]:
    """A running pair's projected total seconds (its latest epoch's pace for the epochs left), and that in words."""
    total = math.ceil(elapsed_s + max(0, epochs - epochs_done) * latest_epoch_s)
    text = f"ends at about {clock(total)}"
    if limit_s is not None:
        if total > limit_s - WARNING_S:
            text += f", past its {clock(limit_s)} limit's requeue warning: expect a requeue and resume"
        else:
            text += f", within its {clock(limit_s)} limit"
    return total, text
