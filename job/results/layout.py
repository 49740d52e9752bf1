"""The one place that knows the paths under RESULTS/RUN/, and the inverse: which pair a path names.

RESULTS/RUN/
  run.json               the run's manifest: its protocol (config id) and repeats, from its first writer
  MODEL/fold-K.json      a pair's result          MODEL/fold-K.ckpt/    its checkpoint while training
  MODEL/repeat-R/fold-K.json (.ckpt/, .lease)     the same of repeat R >= 1 (repeat 0 lives in MODEL/ itself)
  final/MODEL.json       a final model's result   final/MODEL.keras     the model it names
  final/MODEL.ckpt/      its checkpoint           logs/                 the Slurm tasks' logs
  ensemble/MODEL.json    the fold ensemble of repeat 0 (`mnist-cv ensemble`); ensemble/repeat-R/MODEL.json of R
  ensemble/MODEL.lease   who makes the ensemble now
  MODEL/fold-K.lease     who trains the pair now  submissions.jsonl     the arrays submitted for this run
  MODEL/fold-K.csv       its per-epoch log        MODEL/fold-K/         its TensorBoard logs: train/, validation/
  final/MODEL.csv        a final model's          final/MODEL/          its TensorBoard logs: train/, test/
  MODEL/fold-K.verify.json  the verdict of `verify`: its rerun, bit for bit against the result
  .verify/               `verify`'s scratch folders while it reruns pairs, removed after
  code/COMMIT/           the code snapshot the submitted tasks run
  summary.json, summary.md, and the figures collect draws (FIGURE-NAME.FORMAT)
  mlflow.db, mlartifacts/  what `collect --mlflow` logs, unless MLFLOW_TRACKING_URI names another store
  .mlflow-export.lock    held by the one `collect --mlflow` at a time
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from job.errors import UsageError
from job.protocol import Pair

FINAL = "final"
ENSEMBLE = "ensemble"
LOGS = "logs"
CODE = "code"
VERIFY_SCRATCH = ".verify"
MANIFEST = "run.json"
SUBMISSIONS = "submissions.jsonl"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"
MLFLOW_LOCK = ".mlflow-export.lock"
_PAIR_FILE = re.compile(r"fold-(\d+)\.(json|ckpt)")
_REPEAT_FOLDER = re.compile(r"repeat-([1-9][0-9]*)")  # repeat 0 has none: its files are where they always were
# Names that would be special or hidden in the run folder; a model or run can never be called this.
RESERVED_NAMES = {".", "..", FINAL, ENSEMBLE, LOGS, CODE, MLFLOW_ARTIFACTS}
NAME_MAX = 255  # bytes in one path component on ext4, XFS, Lustre, NFS: a longer run is "File name too long" later


def check_name(name: str, what: str = "run name") -> str:
    """A plain name: one path component, printable, not hidden. A UsageError otherwise (never a path)."""
    if (
        not name
        or name in RESERVED_NAMES
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


def short_name(path: Path) -> str:
    """A file of a run as collect names it without its layout: MODEL/fold-K.json, MODEL/repeat-R/fold-K.json,
    final/MODEL.json or ensemble/[repeat-R/]MODEL.json (the folders under the run that say what it is)."""
    path = Path(path)
    depth = 3 if _REPEAT_FOLDER.fullmatch(path.parent.name) else 2
    return "/".join(path.parts[-depth:])


@dataclass(frozen=True)
class JobPaths:
    """Every file one training writes (a pair's or a final model's), as one value: the training is handed this."""

    result: Path  # the result JSON
    checkpoint: Path  # the folder of the per-epoch checkpoint, while training
    lease: Path  # who trains it now
    csv: Path  # the per-epoch log, one row per epoch done
    # Its TensorBoard logs, as keras.callbacks.TensorBoard lays out a log_dir (train/ and a held-out run below it):
    # named like the result without a suffix, so `tensorboard --logdir RESULTS/RUN` lists mlp/fold-0/train.
    tensorboard: Path
    model_file: Path | None = None  # the trained model: a final model's, or a pair's weights when kept
    predictions: Path | None = None  # the predictions on the held-out images (a pair's only)
    verification: Path | None = None  # `verify`'s record of its rerun of the result (a pair's only)

    @classmethod
    def beside(
        cls,
        result: Path,
        model_file: Path | None = None,
        predictions: Path | None = None,
        verification: Path | None = None,
    ) -> JobPaths:
        """The paths beside a result: the same name with another suffix, or none (its TensorBoard folder)."""
        return cls(
            result=result,
            checkpoint=result.with_suffix(".ckpt"),
            lease=result.with_suffix(".lease"),
            csv=result.with_suffix(".csv"),
            tensorboard=result.with_suffix(""),
            model_file=model_file,
            predictions=predictions,
            verification=verification,
        )


@dataclass(frozen=True)
class CrossValidationFigures:
    """The figures of a model's out-of-fold report, beside the summary."""

    confusion: Path  # the pooled confusion matrix
    reliability: Path  # the reliability diagram of the max probability
    misclassified: Path  # the most confident mistakes, as the training digits they were made on

    def all(self) -> tuple[Path, ...]:
        return (self.confusion, self.reliability, self.misclassified)


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

    @property
    def manifest(self) -> Path:
        """The run's protocol and repeats (job/results/manifest.py)."""
        return self.folder / MANIFEST

    # --- pairs
    def pair_folder(self, pair: Pair) -> Path:
        """MODEL/ for repeat 0 (the layout of a run without repeats), MODEL/repeat-R/ for the others."""
        folder = self.folder / check_name(pair.model, "model name")
        return folder / f"repeat-{pair.repeat}" if pair.repeat else folder

    def pair_paths(self, pair: Pair) -> JobPaths:
        """MODEL/[repeat-R/]fold-K.json, and its .ckpt/, .lease, .csv, TensorBoard folder fold-K/, .predictions.npz,
        .verify.json and (when kept) the trained weights, .weights.h5, beside it."""
        result = self.pair_folder(pair) / f"fold-{pair.fold}.json"
        return JobPaths.beside(
            result,
            model_file=result.with_suffix(".weights.h5"),
            predictions=result.with_suffix(".predictions.npz"),
            verification=result.with_suffix(".verify.json"),
        )

    def pair_results(self) -> list[Path]:
        """Every file that looks like a pair's result, whatever it holds."""
        return self._pair_files("json")

    def pair_checkpoints(self) -> list[Path]:
        return [p for p in self._pair_files("ckpt") if p.is_dir()]

    def _pair_files(self, suffix: str) -> list[Path]:
        found = [*self.folder.glob(f"*/fold-*.{suffix}"), *self.folder.glob(f"*/repeat-*/fold-*.{suffix}")]
        return sorted(p for p in found if self.pair_of(p) is not None)

    def pair_of(self, path: Path) -> Pair | None:
        """The (model, fold, repeat) a RUN/MODEL/[repeat-R/]fold-K.json or .ckpt path names; None for any other."""
        path = Path(path)
        match = _PAIR_FILE.fullmatch(path.name)
        if not match:
            return None
        model, repeat = path.parent, 0
        if model.parent != self.folder:
            if not (repeat_match := _REPEAT_FOLDER.fullmatch(model.name)) or model.parent.parent != self.folder:
                return None
            model, repeat = model.parent, int(repeat_match[1])
        if model.name in RESERVED_NAMES:
            return None
        return Pair(model.name, int(match[1]), repeat)

    # --- final models
    @property
    def final_folder(self) -> Path:
        return self.folder / FINAL

    def final_paths(self, model: str) -> JobPaths:
        """final/MODEL.json, its .ckpt/, .lease, .csv, TensorBoard folder MODEL/ and the model file, MODEL.keras."""
        result = self.final_folder / f"{check_name(model, 'model name')}.json"
        return JobPaths.beside(result, model_file=result.with_suffix(".keras"))

    def final_results(self) -> list[Path]:
        """The final results present (temp files of a write in progress start with a dot and are left out)."""
        return sorted(p for p in self.final_folder.glob("*.json") if not p.name.startswith("."))

    def final_model_of(self, path: Path) -> str:
        """The model a final/MODEL.json names."""
        return Path(path).stem

    # --- fold ensembles
    def ensemble_paths(self, model: str, repeat: int = 0) -> JobPaths:
        """ensemble/MODEL.json for repeat 0, ensemble/repeat-R/MODEL.json for the others: the fold ensemble's result,
        which names the fold results it averaged (it writes nothing else)."""
        folder = self.folder / ENSEMBLE
        folder = folder / f"repeat-{repeat}" if repeat else folder
        return JobPaths.beside(folder / f"{check_name(model, 'model name')}.json")

    def ensemble_results(self) -> list[Path]:
        """The fold ensembles' results present, of every repeat (a write's temp file starts with a dot)."""
        folder = self.folder / ENSEMBLE
        found = [*folder.glob("*.json"), *folder.glob("repeat-*/*.json")]
        return sorted(p for p in found if self.ensemble_of(p) is not None)

    def ensemble_of(self, path: Path) -> tuple[str, int] | None:
        """The (model, repeat) an ensemble/[repeat-R/]MODEL.json path names; None for any other path."""
        path = Path(path)
        folder, repeat = path.parent, 0
        if (repeat_match := _REPEAT_FOLDER.fullmatch(folder.name)) is not None:
            folder, repeat = folder.parent, int(repeat_match[1])
        if folder != self.folder / ENSEMBLE or path.suffix != ".json" or path.name.startswith("."):
            return None
        return path.stem, repeat

    # --- the launchers' records
    @property
    def logs(self) -> Path:
        return self.folder / LOGS

    @property
    def submissions(self) -> Path:
        return self.folder / SUBMISSIONS

    @property
    def verify_scratch(self) -> Path:
        """Where `verify` reruns pairs, one folder each, removed after: hidden, and deeper than any pair's path."""
        return self.folder / VERIFY_SCRATCH

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

    def cv_figures(self, model: str, fmt: str) -> CrossValidationFigures:
        """The figures of a model's out-of-fold report."""
        return CrossValidationFigures(
            confusion=self.folder / f"cv-confusion-{model}.{fmt}",
            reliability=self.folder / f"reliability-{model}.{fmt}",
            misclassified=self.folder / f"cv-misclassified-{model}.{fmt}",
        )

    # --- collect --mlflow's store, when no MLFLOW_TRACKING_URI names another
    @property
    def mlflow_db(self) -> Path:
        return self.folder / MLFLOW_DB

    @property
    def mlflow_lock(self) -> Path:
        """Held by the one export at a time of this run (collect --mlflow)."""
        return self.folder / MLFLOW_LOCK

    @property
    def mlflow_artifacts(self) -> Path:
        return self.folder / MLFLOW_ARTIFACTS

    def relative(self, path: Path) -> str:
        """A path as collect names it: relative to the run folder (MODEL/fold-K.json, MODEL/repeat-R/fold-K.json)."""
        return str(Path(path).relative_to(self.folder))
