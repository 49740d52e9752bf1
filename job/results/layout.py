"""The one place that knows the paths under RESULTS/RUN/, and the inverse: which pair a path names.

RESULTS/RUN/
  MODEL/fold-K.json      a pair's result          MODEL/fold-K.ckpt/    its checkpoint while training
  final/MODEL.json       a final model's result   final/MODEL.keras     the model it names
  final/MODEL.ckpt/      its checkpoint           logs/                 the Slurm tasks' logs
  MODEL/fold-K.lease     who trains the pair now  submissions.jsonl     the arrays submitted for this run
  code/COMMIT/           the code snapshot the submitted tasks run
  summary.json, summary.md, and the figures collect draws (FIGURE-NAME.FORMAT)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from job.errors import UsageError
from job.pair.protocol import Pair

FINAL = "final"
LOGS = "logs"
CODE = "code"
SUBMISSIONS = "submissions.jsonl"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
_PAIR_FILE = re.compile(r"fold-(\d+)\.(json|ckpt)")
# Names that would be special or hidden in the run folder; a model or run can never be called this.
_RESERVED = {".", "..", FINAL, LOGS, CODE}
NAME_MAX = 255  # bytes in one path component on ext4, XFS, Lustre, NFS: a longer run is "File name too long" later


def check_name(name: str, what: str = "run name") -> str:
    """A plain name: one path component, printable, not hidden. A UsageError otherwise (never a path)."""
    if (
        not name
        or name in _RESERVED
        or name.startswith(".")
        or "/" in name
        or "\\" in name
        or not name.isprintable()
        or Path(name).is_absolute()
        or len(name.encode()) > NAME_MAX
    ):
        raise UsageError(
            f"{what} must be a plain name (no '/', not empty, hidden or '..', {NAME_MAX} bytes at most): {name!r}"
        )
    return name


@dataclass(frozen=True)
class RunLayout:
    results_dir: Path
    run: str

    def __post_init__(self) -> None:
        check_name(self.run)
        object.__setattr__(self, "results_dir", Path(self.results_dir))

    @property
    def folder(self) -> Path:
        return self.results_dir / self.run

    # --- pairs
    def pair_result(self, pair: Pair) -> Path:
        return self.folder / check_name(pair.model, "model name") / f"fold-{pair.fold}.json"

    def pair_checkpoint(self, pair: Pair) -> Path:
        return self.folder / check_name(pair.model, "model name") / f"fold-{pair.fold}.ckpt"

    def pair_lease(self, pair: Pair) -> Path:
        return self.pair_result(pair).with_suffix(".lease")

    def pair_results(self) -> list[Path]:
        """Every file that looks like a pair's result, whatever it holds."""
        return sorted(p for p in self.folder.glob("*/fold-*.json") if self.pair_of(p) is not None)

    def pair_checkpoints(self) -> list[Path]:
        return sorted(p for p in self.folder.glob("*/fold-*.ckpt") if p.is_dir() and self.pair_of(p) is not None)

    def pair_of(self, path: Path) -> Pair | None:
        """The (model, fold) a RUN/MODEL/fold-K.json or .ckpt path names; None for any other path."""
        path = Path(path)
        match = _PAIR_FILE.fullmatch(path.name)
        if not match or path.parent.parent != self.folder or path.parent.name in _RESERVED:
            return None
        return Pair(path.parent.name, int(match[1]))

    # --- final models
    @property
    def final_folder(self) -> Path:
        return self.folder / FINAL

    def final_result(self, model: str) -> Path:
        return self.final_folder / f"{check_name(model, 'model name')}.json"

    def final_model(self, model: str) -> Path:
        return self.final_folder / f"{check_name(model, 'model name')}.keras"

    def final_checkpoint(self, model: str) -> Path:
        return self.final_folder / f"{check_name(model, 'model name')}.ckpt"

    def final_lease(self, model: str) -> Path:
        return self.final_folder / f"{check_name(model, 'model name')}.lease"

    def final_results(self) -> list[Path]:
        """The final results present (temp files of a write in progress start with a dot and are left out)."""
        return sorted(p for p in self.final_folder.glob("*.json") if not p.name.startswith("."))

    def final_model_of(self, path: Path) -> str:
        """The model a final/MODEL.json names."""
        return Path(path).stem

    # --- the launchers' records
    @property
    def logs(self) -> Path:
        return self.folder / LOGS

    @property
    def submissions(self) -> Path:
        return self.folder / SUBMISSIONS

    @property
    def code(self) -> Path:
        """Where the submitted code snapshots go, absolute: tasks start in them."""
        return self.folder.absolute() / CODE

    # --- collect's outputs
    @property
    def summary_json(self) -> Path:
        return self.folder / SUMMARY_JSON

    @property
    def summary_md(self) -> Path:
        return self.folder / SUMMARY_MD

    def learning_curves(self, model: str, fmt: str) -> Path:
        return self.folder / f"learning-curves-{model}.{fmt}"

    def fold_accuracy(self, model: str, fmt: str) -> Path:
        return self.folder / f"fold-accuracy-{model}.{fmt}"

    def epoch_seconds(self, model: str, fmt: str) -> Path:
        return self.folder / f"epoch-seconds-{model}.{fmt}"

    def boxplot(self, fmt: str) -> Path:
        return self.folder / f"boxplot.{fmt}"

    def confusion(self, model: str, fmt: str) -> Path:
        return self.folder / f"confusion-{model}.{fmt}"

    def misclassified(self, model: str, fmt: str) -> Path:
        return self.folder / f"misclassified-{model}.{fmt}"

    def relative(self, path: Path) -> str:
        """A path as collect names it: relative to the run folder (MODEL/fold-K.json)."""
        return str(Path(path).relative_to(self.folder))
