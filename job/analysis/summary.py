"""The numbers of a run: which results belong together, per-model statistics (over repeats too), the paired model
comparisons (on the tutorial's split, and over the repeats), and the final models' test scores beside them.

Works on the (path, result) records `store.scan` returns; reads no files, draws nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from job.analysis import out_of_fold, sizing
from job.errors import JobError
from job.mnist import MNIST_FILES
from job.protocol import DEFAULT_MODELS, Pair, all_pairs, task_for_pair
from job.results.contract import (
    Comparison,
    EnsembleResult,
    EnsembleStats,
    FinalResult,
    FinalStats,
    FoldScore,
    MeanInterval,
    MissingPair,
    ModelStats,
    PairResult,
    RepeatStats,
    Skipped,
    Summary,
    SummaryData,
)
from job.results.layout import RunLayout, short_name
from job.results.predictions import HeldOut
from job.results.store import Record


class FinalRecord(NamedTuple):
    """A valid final result and the file it was read from."""

    path: Path
    result: FinalResult


class EnsembleRecord(NamedTuple):
    """A valid fold ensemble's result and the file it was read from."""

    path: Path
    result: EnsembleResult


STD_DEFINITION = "numpy population std (ddof=0), as the tutorial"
TEST_NAME = "Nadeau-Bengio corrected resampled t-test"
# The same statistic over the k x r differences of r repeats of k-fold (df k*r - 1): Bouckaert & Frank (2004).
REPEATED_TEST_NAME = "Bouckaert-Frank corrected repeated k-fold t-test"
NO_RESULT = "no result"
METRIC = "held-out accuracy (fraction of the fold's images)"


def file_name(path: Path) -> str:
    """A result's file as MODEL/fold-K.json, MODEL/repeat-R/fold-K.json or final/MODEL.json: short enough to name
    many in one line."""
    return short_name(path)


def data_fingerprint(result: PairResult) -> str:
    """A short hash of the dataset's content.

    Only the four files' content hashes count: the same MNIST read from IDX or from Keras's mnist.npz is the
    same data, though the npz adds its container's hash.
    """
    joined = ",".join(f"{name}={result.data.sha256.get(name)}" for name in MNIST_FILES)
    return hashlib.sha256(joined.encode()).hexdigest()[:12]


def _grouped(records: Sequence[Record], key: Callable[[PairResult], str]) -> dict[str, list[Record]]:
    groups: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        groups[key(record.result)].append(record)
    return dict(groups)


def _describe(groups: dict[str, list[Record]]) -> str:
    return "; ".join(f"{key}: {', '.join(file_name(r.path) for r in members)}" for key, members in groups.items())


def select(records: Sequence[Record], config_id: str | None = None) -> list[Record]:
    """The records to summarise: those of one config and one dataset, or a JobError naming the files that differ."""
    configs = _grouped(records, lambda r: r.config_id)
    if config_id is not None:
        if config_id not in configs:
            present = ", ".join(configs) or "none"
            raise JobError(f"no result of config {config_id} (configs present: {present})")
        chosen = configs[config_id]
    elif len(configs) > 1:
        raise JobError(
            f"results of {len(configs)} configs are mixed ({_describe(configs)}): choose one with --config ID"
        )
    else:
        chosen = list(records)
    datasets = _grouped(chosen, data_fingerprint)
    if len(datasets) > 1:
        # No flag overrides this: folds of different data are not one cross-validation.
        raise JobError(
            f"results of config {chosen[0].result.config_id} come from {len(datasets)} different datasets "
            f"({_describe(datasets)}): move the results of the wrong data to another run"
        )
    return chosen


def model_stats(
    records: Sequence[Record],
    missing_folds: Sequence[int] = (),
    final: FinalStats | None = None,
    repeats: int | None = None,
    ensemble: EnsembleStats | None = None,
    predictions: Mapping[Path, HeldOut] | None = None,
) -> ModelStats:
    """n, mean, std, min, max of held-out accuracy (fractions) and the per-fold scores of one model's records, and
    the out-of-fold report of their `predictions` (the checked ones, by result path).

    Over `repeats` repeats (default: as many as the records reach), the numbers are of the complete repeats, every
    fold there, so that a repeat still running never tilts them; with no complete repeat they are of every record
    (a partial run, which the summary says is one).
    """
    ordered = sorted(records, key=lambda r: (r.result.repeat, r.result.fold))
    n_repeats = repeats or max((r.result.repeat + 1 for r in ordered), default=1)
    n_folds = ordered[0].result.config.n_folds if ordered else 0  # no record: no fold to miss, no repeat complete
    per_repeat = [
        _repeat_stats(repeat, [r for r in ordered if r.result.repeat == repeat], n_folds) for repeat in range(n_repeats)
    ]
    used = [s.repeat for s in per_repeat if s.complete] or sorted({r.result.repeat for r in ordered})
    headline = [r for r in ordered if r.result.repeat in used]
    accuracy = np.array([r.result.score.accuracy for r in headline], dtype=float)
    n = len(headline)
    complete_means = [s.mean for s in per_repeat if s.complete and s.mean is not None]
    # The held-out share of the training images, for the corrected variance of the folds' mean (see _interval).
    ratio = float(np.mean([r.result.data.n_val / r.result.data.n_train for r in headline])) if n else 0.0
    intervals = [("folds", accuracy if complete_means else (), ratio), ("repeat means", complete_means, 0.0)]
    return ModelStats(
        n=n,
        mean=float(accuracy.mean()) if n else None,
        std=float(accuracy.std(ddof=0)) if n else None,
        min=float(accuracy.min()) if n else None,
        max=float(accuracy.max()) if n else None,
        mean_fit_seconds=float(np.mean([r.result.timings.fit_seconds for r in headline])) if n else None,
        folds=tuple(
            FoldScore(
                fold=r.result.fold,
                repeat=r.result.repeat,
                accuracy=r.result.score.accuracy,
                loss=r.result.score.loss,
                fit_seconds=r.result.timings.fit_seconds,
                file=file_name(r.path),
            )
            for r in ordered
        ),
        missing_folds=tuple(missing_folds),
        final=final,
        ensemble=ensemble,
        repeats=tuple(per_repeat),
        repeats_used=tuple(used),
        std_of_repeat_means=float(np.std(complete_means, ddof=0)) if len(complete_means) > 1 else None,
        ci95=tuple(_interval(over, values, share) for over, values, share in intervals if len(values) > 1),
        cross_validation=out_of_fold.report(headline, predictions or {}) if n else None,
    )


def _interval(over: str, values: Sequence[float], test_train_ratio: float) -> MeanInterval:
    """The 95% t interval of the mean of `values`: mean ± t(0.975, n-1) sqrt((1/n + test_train_ratio) s^2), s with
    ddof=1.

    Folds are not independent (their training sets overlap): Nadeau and Bengio's corrected variance, the one the
    comparison's corrected test uses, widens the naive s^2/n by the held-out share n_test/n_train (0.25 for 5-fold);
    over the folds of several repeats it is the corrected repeated k-fold interval. The means of repeats of one
    dataset are taken as they come (ratio 0): that interval is narrower than the uncertainty it stands for.
    """
    from scipy import stats  # deferred: scipy (its t quantiles)

    n = len(values)
    mean = float(np.mean(values))
    half = float(stats.t.ppf(0.975, n - 1) * math.sqrt((1 / n + test_train_ratio) * np.var(values, ddof=1)))
    return MeanInterval(over=over, n=n, low=mean - half, high=mean + half)


def _with_notes(stats: ModelStats, notes: Sequence[str]) -> ModelStats:
    report = stats.cross_validation
    if report is None or not notes:
        return stats
    return dataclasses.replace(stats, cross_validation=dataclasses.replace(report, notes=(*report.notes, *notes)))


def _repeat_stats(repeat: int, records: Sequence[Record], n_folds: int) -> RepeatStats:
    """One repeat of one model's records (those of this repeat)."""
    present = {r.result.fold for r in records}
    missing = [f for f in range(n_folds) if f not in present]
    return RepeatStats(
        repeat=repeat,
        n=len(records),
        mean=float(np.mean([r.result.score.accuracy for r in records])) if records else None,
        complete=bool(records) and not missing,
        missing_folds=tuple(missing),
    )


def compare(
    by_model: Mapping[str, Sequence[Record]],
    baseline: str,
    candidate: str,
    repeats: Collection[int] = (0,),
    test: str = TEST_NAME,
) -> Comparison:
    """Candidate minus baseline accuracy over the (repeat, fold) pairs of `repeats` both have, with the corrected
    resampled t-test.

    The folds' training sets overlap, so the plain paired t-test underestimates the variance of the mean
    difference; Nadeau & Bengio (2003) inflate its factor from 1/k to 1/k + n_test/n_train. Over r repeats of
    k-fold the k*r differences take the same correction, 1/(k*r) + n_test/n_train, with k*r - 1 degrees of
    freedom (Bouckaert & Frank 2004): the statistic below with k the number of differences.
    """

    def scored(model: str) -> dict[tuple[int, int], PairResult]:
        return {
            (r.result.repeat, r.result.fold): r.result for r in by_model.get(model, []) if r.result.repeat in repeats
        }

    base, cand = scored(baseline), scored(candidate)
    both = sorted(base.keys() & cand.keys())
    # A pair is only a pair when both models were scored on the very same held-out images.
    keys = [key for key in both if base[key].data.val_indices_sha256 == cand[key].data.val_indices_sha256]
    diffs = np.array([cand[key].score.accuracy - base[key].score.accuracy for key in keys], dtype=float)
    k = len(keys)
    notes = []
    if len(keys) < len(both):
        left_out = [f"{r}/{f}" if r else str(f) for r, f in sorted(set(both) - set(keys))]
        notes.append(f"folds {left_out} left out: the models saw different held-out images")
    ratio = t = p_value = None
    if k < 2:
        notes.append(f"{k} paired fold(s): the test needs at least 2")
    else:
        ratio = float(np.mean([r.data.n_val / r.data.n_train for key in keys for r in (base[key], cand[key])]))
        variance = float(diffs.var(ddof=1))
        if variance == 0:
            notes.append("the difference is the same on every fold: t is undefined")
        else:
            t = float(diffs.mean() / math.sqrt((1 / k + ratio) * variance))
            p_value = _two_sided_p(t, k - 1)
    return Comparison(
        baseline=baseline,
        candidate=candidate,
        test=test,
        folds=tuple(fold for _, fold in keys),
        repeats=tuple(repeat for repeat, _ in keys),
        k=k,
        differences=tuple(float(d) for d in diffs),
        mean_difference=float(diffs.mean()) if k else None,
        test_train_ratio=ratio,
        t=t,
        df=k - 1 if ratio is not None else None,
        p_value=p_value,
        notes=tuple(notes),
    )


def compare_repeats(
    by_model: Mapping[str, Sequence[Record]], models: Mapping[str, ModelStats], baseline: str, candidate: str
) -> Comparison:
    """The corrected repeated k-fold t-test over the repeats complete for both models; partial ones are left out
    and said to be."""
    stats = [models[baseline].repeats, models[candidate].repeats]
    complete = [r.repeat for r in stats[0] if r.complete and stats[1][r.repeat].complete]
    comparison = compare(by_model, baseline, candidate, set(complete), REPEATED_TEST_NAME)
    partial = [r.repeat for r in stats[0] if r.repeat not in complete]
    if partial:
        note = f"repeats {partial} left out: not complete for both models"
        comparison = dataclasses.replace(comparison, notes=(note, *comparison.notes))
    return comparison


def _two_sided_p(t: float, df: int) -> float:
    from scipy import stats  # deferred: a second to import, and only a comparison needs it

    return float(2 * stats.t.sf(abs(t), df))


def final_stats(final: FinalRecord, cv_config_id: str, notes: Sequence[str] = ()) -> FinalStats:
    """A final model's test-set numbers, and whether it was trained with the config the cross-validation scored."""
    result = final.result
    same = result.config_id == cv_config_id
    # Shown, not refused: a final model of another protocol is still a model, but not the one CV estimated.
    other = f"config {result.config_id} is not the cross-validation's {cv_config_id}: CV did not estimate it"
    return FinalStats(
        file=file_name(final.path),
        accuracy=result.score.accuracy,
        loss=result.score.loss,
        n_train=result.data.n_train,
        n_test=result.test.n_images,
        n_misclassified=result.test.n_images - result.test.n_correct,
        config_id=result.config_id,
        same_config=same,
        notes=(*([] if same else [other]), *notes),
    )


def ensemble_stats(record: EnsembleRecord) -> EnsembleStats:
    """A fold ensemble's test-set numbers, and each of its fold models' alone."""
    result = record.result
    return EnsembleStats(
        file=file_name(record.path),
        repeat=result.repeat,
        n_folds=len(result.members),
        accuracy=result.score.accuracy,
        loss=result.score.loss,
        n_test=result.test.n_images,
        n_misclassified=result.test.n_images - result.test.n_correct,
        fold_accuracies=tuple(member.score.accuracy for member in result.members),
    )


def summarise(
    records: Sequence[Record],
    *,
    layout: RunLayout,
    unusable: Mapping[Pair, str],
    skipped: Sequence[Skipped],
    finals: Mapping[str, FinalRecord],
    final_notes: Mapping[str, Sequence[str]],
    figures: Sequence[str],
    predictions: Mapping[Path, HeldOut],
    cv_notes: Mapping[str, Sequence[str]],
    repeats: int = 1,
    ensembles: Mapping[str, EnsembleRecord] | None = None,
) -> Summary:
    """The summary of the (non-empty) records `select`ed from the run `layout`, over `repeats` repeats.

    `unusable` says why a default pair has no usable result (a missing pair without an entry has none at all);
    `skipped` lists the files found but not used, with why; `finals` holds the final models' records by model and
    `final_notes` what to say of each beyond its config; `figures` the names of the figures drawn beside it;
    `ensembles` the fold ensemble to show of each model (of the records' config).
    `predictions` the pairs' checked held-out predictions by result path, and `cv_notes` what to say of a model's
    out-of-fold report beyond what they lack (a figure not drawn).
    """
    first = records[0].result
    n_folds = first.config.n_folds
    by_model = _grouped(records, lambda r: r.model)
    expected = all_pairs(n_folds, repeats)
    present = {Pair(r.result.model, r.result.fold, r.result.repeat) for r in records}
    missing = [
        MissingPair(p.model, p.fold, p.repeat, task_for_pair(p, n_folds), unusable.get(p, NO_RESULT))
        for p in expected
        if p not in present
    ]
    models = {}
    # The tutorial's two models first, even without results (as the task ids order them), then extra ones by name.
    for model in [*DEFAULT_MODELS, *sorted((by_model.keys() | finals.keys()) - set(DEFAULT_MODELS))]:
        final = final_stats(finals[model], first.config_id, final_notes.get(model, ())) if model in finals else None
        gaps = sorted({m.fold for m in missing if m.model == model})
        ensemble = ensemble_stats(ensembles[model]) if ensembles and model in ensembles else None
        models[model] = _with_notes(
            model_stats(by_model.get(model, []), gaps, final, repeats, ensemble, predictions), cv_notes.get(model, ())
        )
    return Summary.build(
        run=str(layout.folder.absolute()),  # the same wherever collect ran
        config_id=first.config_id,
        config=first.config,
        data=SummaryData(first.data.name, {k: first.data.sha256.get(k) for k in MNIST_FILES}),
        metric=METRIC,
        std_definition=STD_DEFINITION,
        complete=not missing,
        n_expected=len(expected),
        n_found=len(present & set(expected)),
        missing=tuple(missing),
        skipped=tuple(skipped),
        models=models,
        comparison=compare(by_model, *DEFAULT_MODELS),
        figures=tuple(figures),
        repeats=repeats,
        repeated_comparison=compare_repeats(by_model, models, *DEFAULT_MODELS) if repeats > 1 else None,
        sizing=sizing.sizing({m: [r.result for r in by_model.get(m, [])] for m in models}, n_folds * repeats),
    )
