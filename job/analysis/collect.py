"""collect: read a run's valid results, build its summary once, and publish summary.json, summary.md and the
figures as one unit.

One unit: everything is computed and the summary validated (schema, finite numbers) before any file is touched;
every figure is then drawn to a temp file beside its target, and the bytes of summary.md and summary.json made
(UTF-8, a name's byte that is not UTF-8 escaped as '\\xff': nothing left that could fail to encode). Only when
all are drawn is the old summary.json removed, the figures renamed into place, and summary.md and summary.json
written, summary.json last. A failure before that leaves the old outputs as they were; a failure during the
renames leaves no summary.json. So a summary.json on disk always sits beside its own figures.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from job import atomic, output
from job.analysis import figures as timing_and_reference
from job.analysis import plots, report, summary
from job.analysis.summary import EnsembleRecord, FinalRecord
from job.console import console as rich_console
from job.errors import JobError
from job.mnist import TEST_IMAGES, TRAIN_IMAGES
from job.protocol import Pair
from job.results import predictions, store, verification
from job.results.contract import FinalData, PairData, Skipped, Summary
from job.results.layout import RunLayout
from job.results.predictions import HeldOut
from job.results.status import array_spec

# A data loader: the SHA-256 of each file of a data source, and its images, each by file name (job.pair.data.images).
Images = Callable[[Path], tuple[Mapping[str, str], Mapping[str, Any]]]


@dataclass(frozen=True)
class Request:
    results_dir: Path
    run: str
    config_id: str | None = None  # the config to summarise when the run holds several
    fmt: str = "png"
    data_dir: Path | None = None  # where the training and test images are, for the misclassified grids
    allow_partial: bool = False
    json: bool = False  # print the summary as JSON on stdout, and nothing else there
    repeats: int | None = None  # the repeats to expect; None: as many as the files show (the highest repeat + 1)
    # The data loader for the misclassified grids, handed in by the command (collect reads results only); None draws
    # no grid.
    images: Images | None = None


# A figure to draw: its path, and how to draw it (called only when the summary is published).
Figure = tuple[Path, Callable[[], Any]]


def collect(request: Request) -> Summary:
    """The run's summary, once published (JobError when it is not: pairs missing without allow_partial)."""
    layout = RunLayout(request.results_dir, request.run)
    if not layout.folder.is_dir():
        raise JobError(f"no run folder {layout.folder}")
    scan = store.scan(layout)
    finals, bad_finals = _read_finals(layout)
    ensembles, bad_ensembles = _read_ensembles(layout)
    problems = {**scan.problems, **bad_finals, **bad_ensembles}
    for reason in problems.values():
        print(f"skipped {' '.join(reason.split())}", file=sys.stderr)  # one line, whatever the message holds
    if not scan.records:
        raise JobError(f"no usable result in {layout.folder}")

    chosen = summary.select(scan.records, request.config_id)
    others = [r for r in scan.records if r.result.config_id != chosen[0].result.config_id]
    skipped = [Skipped(layout.relative(path), reason.removeprefix(f"{path}: ")) for path, reason in problems.items()]
    skipped += [Skipped(summary.file_name(r.path), f"config {r.result.config_id}") for r in others]
    unusable = _unusable(layout, problems, {r.path: r.result.config_id for r in others})
    repeats = request.repeats or _repeats_found(chosen, unusable)
    beyond = [r for r in chosen if r.result.repeat >= repeats]
    skipped += [
        Skipped(summary.file_name(r.path), f"repeat {r.result.repeat}, beyond --repeats {repeats}") for r in beyond
    ]
    chosen = [r for r in chosen if r.result.repeat < repeats]
    if not chosen:
        raise JobError(f"no usable result of repeats 0-{repeats - 1} in {layout.folder}")
    shown, others_ensembles = _ensembles_shown(ensembles, chosen[0].result.config_id, repeats)
    skipped += [Skipped(summary.file_name(e.path), f"config {e.result.config_id}") for e in others_ensembles]
    held_out, bad_predictions = _read_predictions(chosen)
    for reason in bad_predictions.values():
        print(f"skipped {' '.join(reason.split())}", file=sys.stderr)
    skipped += [Skipped(layout.relative(path), _without_path(reason, path)) for path, reason in bad_predictions.items()]

    # A first summary says whether it is complete; the published one also names its figures and notes.
    found = summary.summarise(
        chosen, layout=layout, unusable=unusable, skipped=skipped, finals=finals, final_notes={}, figures=(),
        predictions=held_out, cv_notes={}, repeats=repeats, ensembles=shown,
    )  # fmt: skip
    publish = found.complete or request.allow_partial
    figures: list[Figure] = []
    stale: list[Path] = []
    if publish:
        figures, stale, notes, cv_notes = _plan_figures(layout, chosen, finals, found, request)
        found = summary.summarise(
            chosen, layout=layout, unusable=unusable, skipped=skipped, finals=finals, final_notes=notes,
            figures=[path.name for path, _ in figures], predictions=held_out, cv_notes=cv_notes, repeats=repeats,
            ensembles=shown,
        )  # fmt: skip
    text = _checked_json(found)

    console = rich_console()
    verified = verification.summary_line(layout, [Pair(r.result.model, r.result.fold, r.result.repeat) for r in chosen])
    if request.json:
        print(text)
    else:
        report.print_report(found, console)
        console.print(verified, markup=False, highlight=False, soft_wrap=True)
    if not publish:
        missing = found.missing
        names = ", ".join(str(Pair(m.model, m.fold, m.repeat)) for m in missing)
        raise JobError(
            f"{len(missing)} of {found.n_expected} pairs missing ({names}; task ids "
            f"{array_spec([m.task_id for m in missing if m.task_id is not None])}): run them, or pass --allow-partial"
        )
    store.ensure_writable(layout.folder)
    _publish(layout, figures, stale, request.fmt, found, text, verified)
    if not request.json:
        written = ", ".join([layout.summary_json.name, layout.summary_md.name, *found.figures])
        console.print(f"wrote {written} in {layout.folder}", markup=False, highlight=False, soft_wrap=True)
    return found


def _repeats_found(records: list[store.Record], unusable: dict[Pair, str]) -> int:
    """The repeats a run's files show: up to the highest repeat with a valid result, or the next one if a damaged
    file or a checkpoint is there. A name alone never makes more: a stray RUN/MODEL/repeat-999999999/ would have
    collect expect ten billion pairs."""
    highest = max(r.result.repeat for r in records)
    started = [pair.repeat for pair in unusable if pair.repeat == highest + 1]
    return 1 + max([highest, *started])


def _checked_json(found: Summary) -> str:
    """summary.json's text, once the summary passes its own schema: what is printed is what a reader accepts."""
    data = output.escape_names(found.to_json())  # a stray folder's name that is not UTF-8, say
    Summary.from_json(data, "the summary")
    try:
        return json.dumps(data, indent=1, allow_nan=False)
    except ValueError as error:
        raise JobError(f"the summary holds a number JSON cannot: {error}") from None


def _read_finals(layout: RunLayout) -> tuple[dict[str, FinalRecord], dict[Path, str]]:
    """The valid final results in RUN/final/ by model, and the others with why."""

    finals, problems = {}, {}
    for path in layout.final_results():
        try:
            finals[layout.final_model_of(path)] = FinalRecord(path, store.check_final(path, layout))
        except JobError as error:
            problems[path] = str(error)
    return finals, problems


def _read_ensembles(layout: RunLayout) -> tuple[list[EnsembleRecord], dict[Path, str]]:
    """The valid fold ensembles in RUN/ensemble/ (a stale one, whose folds were retrained since, is not), and the
    others with why."""
    ensembles, problems = [], {}
    for path in layout.ensemble_results():
        try:
            ensembles.append(EnsembleRecord(path, store.check_ensemble(path, layout)))
        except JobError as error:
            problems[path] = str(error)
    return ensembles, problems


def _ensembles_shown(
    ensembles: list[EnsembleRecord], config_id: str, repeats: int
) -> tuple[dict[str, EnsembleRecord], list[EnsembleRecord]]:
    """Per model, the ensemble of the lowest repeat of the summary's config (the tutorial's split when there); and
    the ensembles of other configs."""
    shown: dict[str, EnsembleRecord] = {}
    for record in sorted(ensembles, key=lambda e: e.result.repeat):
        if record.result.config_id == config_id and record.result.repeat < repeats:
            shown.setdefault(record.result.model, record)
    return shown, [e for e in ensembles if e.result.config_id != config_id]


def _read_predictions(records: list[store.Record]) -> tuple[dict[Path, HeldOut], dict[Path, str]]:
    """The checked held-out predictions of the records by result path, and the predictions files that failed their
    check with why (their results still count; a result of an earlier version has none and is in neither)."""
    found, problems = {}, {}
    for record in records:
        try:
            held_out = predictions.load(record.path, record.result)
        except JobError as error:
            problems[record.path.parent / record.result.predictions.file] = str(error)  # a file it names
            continue
        if held_out is not None:
            found[record.path] = held_out
    return found, problems


def _without_path(reason: str, path: Path) -> str:
    """A problem's message as the summary lists it: beside its file's name, without the path it starts with."""
    return reason.removeprefix(str(path)).lstrip(": ")


def _unusable(layout: RunLayout, problems: dict[Path, str], others: dict[Path, str]) -> dict[Pair, str]:
    """Why a pair has no usable result: a damaged file, a result of another config (path -> its config id), or
    training in progress."""
    reasons = [(path, "unusable") for path in problems]
    reasons += [(path, f"config {config_id}") for path, config_id in others.items()]
    # Last, so it wins: a checkpoint is what is happening now, which says more than an old file does.
    reasons += [(path, "in progress") for path in layout.pair_checkpoints()]
    return {pair: reason for path, reason in reasons if (pair := layout.pair_of(path)) is not None}


def _plan_figures(
    layout: RunLayout,
    chosen: list[store.Record],
    finals: dict[str, FinalRecord],
    found: Summary,
    request: Request,
) -> tuple[list[Figure], list[Path], dict[str, list[str]], dict[str, list[str]]]:
    """The figures to draw, the old figures to remove (one that cannot be drawn now), and notes per final model and
    per out-of-fold report."""

    fmt = request.fmt
    figures: list[Figure] = []
    for model, stats in found.models.items():
        if stats.n:
            # The results the model's numbers are of: a partial repeat is in no curve, as in no mean.
            results = [r.result for r in chosen if r.result.model == model and r.result.repeat in stats.repeats_used]
            draw = lambda m=model, rs=results: plots.learning_curves(m, rs, found.config_id)  # noqa: E731
            figures.append((layout.learning_curves(model, fmt), draw))
    accuracies = {model: [f.accuracy for f in stats.folds] for model, stats in found.models.items()}
    repeats = {model: [f.repeat for f in stats.folds] for model, stats in found.models.items()}
    used = {model: list(stats.repeats_used) for model, stats in found.models.items()}
    figures.append((layout.boxplot(fmt), lambda: plots.boxplot(accuracies, repeats, used)))
    figures += timing_and_reference.plan(layout, list(found.models), [r.result for r in chosen], fmt)

    stale: list[Path] = []
    notes: dict[str, list[str]] = {}
    load = cache(request.images) if request.images else None  # one run's results share their data
    for model, final in finals.items():
        figures.append((layout.confusion(model, fmt), lambda m=model, r=final.result: plots.confusion_matrix(m, r)))
        grid = layout.misclassified(model, fmt)
        try:
            if not final.result.test.misclassified:
                raise JobError("every test digit was classified right")
            images = _images(final.result.data, TEST_IMAGES, request.data_dir, load)
        except JobError as error:
            stale.append(grid)  # an older grid may be of another model or data than this summary's
            notes[model] = [f"no {grid.name}: {' '.join(str(error).split())}"]
            continue
        mistakes = final.result.test.misclassified
        figures.append((grid, lambda m=model, x=mistakes, i=images: plots.misclassified(m, x, i)))
    cv_figures, cv_stale, cv_notes = _plan_cv_figures(layout, chosen, found, request, load)
    return figures + cv_figures, stale + cv_stale, notes, cv_notes


def _plan_cv_figures(
    layout: RunLayout, chosen: list[store.Record], found: Summary, request: Request, load: Images | None
) -> tuple[list[Figure], list[Path], dict[str, list[str]]]:
    """The figures of each model's out-of-fold report, the old ones of a report not drawn now, and notes."""
    figures: list[Figure] = []
    stale: list[Path] = []
    notes: dict[str, list[str]] = {}
    for model, stats in found.models.items():
        paths = layout.cv_figures(model, request.fmt)
        report = stats.cross_validation
        pooled = report.pooled if report is not None else None
        if pooled is None:
            stale += paths.all()  # an older report's figures would outlive the predictions they were drawn from
            continue
        draw = lambda m=model, p=pooled: plots.cv_confusion_matrix(m, p, found.config_id)  # noqa: E731
        figures.append((paths.confusion, draw))
        figures.append((paths.reliability, lambda m=model, p=pooled: plots.reliability(m, p.calibration)))
        try:
            if not pooled.mistakes:
                raise JobError("every held-out digit was classified right")
            first = next(r.result for r in chosen if r.result.model == model)  # the run's results share their data
            images = _images(first.data, TRAIN_IMAGES, request.data_dir, load)
        except JobError as error:
            stale.append(paths.misclassified)
            notes[model] = [f"no {paths.misclassified.name}: {' '.join(str(error).split())}"]
            continue
        figures.append((paths.misclassified, lambda m=model, p=pooled, i=images: plots.fold_mistakes(m, p, i)))
    return figures, stale, notes


# The images of each file, and what a result used them for, as the note of a grid not drawn says.
_IMAGES = {TRAIN_IMAGES: "training images", TEST_IMAGES: "test images"}
_USED = {TRAIN_IMAGES: "the folds were cut from", TEST_IMAGES: "the model was scored on"}


def _images(recorded: PairData | FinalData, name: str, data_dir: Path | None, load: Images | None) -> Any:
    """The images of the file `name` of the data a result records (its source and hashes), or a JobError saying why
    they are not at hand."""
    if load is None:
        raise JobError("no data loader was given to read the images")
    source = Path(data_dir or recorded.source)
    hashes, images = load(source)
    found, expected = hashes.get(name), recorded.sha256.get(name)
    if found != expected:
        raise JobError(
            f"the {_IMAGES[name]} in {source} are not those {_USED[name]} "
            f"(sha256 {str(found)[:12]}..., recorded {str(expected)[:12]}...)"
        )
    return images[name]


def _publish(
    layout: RunLayout, figures: list[Figure], stale: list[Path], fmt: str, found: Summary, text: str, verified: str
) -> None:
    """Write the outputs as one unit (see the module's docstring); `verified`: which pairs `verify` reran, a line
    of summary.md's own (a verification is no part of the summary: it changes with no result)."""
    # Both texts in hand before anything is removed; a name's byte that is not UTF-8 is written escaped.
    markdown = output.utf8(f"{report.markdown(found)}\n{verified}\n")
    summary_json = output.utf8(text + "\n")
    with ExitStack() as renames:  # each figure's temp file is renamed over its target when the stack closes
        for path, draw in _staged(figures, renames):
            draw().savefig(path, format=fmt)
        layout.summary_json.unlink(missing_ok=True)
    for path in stale:
        path.unlink(missing_ok=True)
    atomic.write_bytes(layout.summary_md, markdown)
    atomic.write_bytes(layout.summary_json, summary_json)


def _staged(figures: list[Figure], renames: ExitStack) -> Iterator[tuple[Path, Callable[[], Any]]]:
    for path, draw in figures:
        yield renames.enter_context(atomic.replacing(path)), draw
