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
from collections.abc import Callable, Iterator
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
from job.mnist import TEST_IMAGES
from job.protocol import Pair
from job.results import store, verification
from job.results.contract import Skipped, Summary
from job.results.layout import RunLayout
from job.results.status import array_spec


@dataclass(frozen=True)
class Request:
    results_dir: Path
    run: str
    config_id: str | None = None  # the config to summarise when the run holds several
    fmt: str = "png"
    data_dir: Path | None = None  # where the final models' test images are, for the misclassified grids
    allow_partial: bool = False
    json: bool = False  # print the summary as JSON on stdout, and nothing else there
    repeats: int | None = None  # the repeats to expect; None: as many as the files show (the highest repeat + 1)
    # (sha256, images) of the test images in a data source, for the misclassified grids: the data loader, handed
    # in by the command (collect reads results only); None draws no grid.
    test_images: Callable[[Path], tuple[str, Any]] | None = None


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

    # A first summary says whether it is complete; the published one also names its figures and notes.
    found = summary.summarise(
        chosen, layout=layout, unusable=unusable, skipped=skipped, finals=finals, final_notes={}, figures=(),
        repeats=repeats, ensembles=shown,
    )  # fmt: skip
    publish = found.complete or request.allow_partial
    figures: list[Figure] = []
    stale: list[Path] = []
    if publish:
        figures, stale, notes = _plan_figures(layout, chosen, finals, found, request)
        found = summary.summarise(
            chosen, layout=layout, unusable=unusable, skipped=skipped, finals=finals, final_notes=notes,
            figures=[path.name for path, _ in figures], repeats=repeats, ensembles=shown,
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
) -> tuple[list[Figure], list[Path], dict[str, list[str]]]:
    """The figures to draw, the old figures to remove (a grid that cannot be drawn now), and notes per final model."""

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
    load = cache(request.test_images) if request.test_images else None  # one run's finals share their data
    for model, final in finals.items():
        figures.append((layout.confusion(model, fmt), lambda m=model, r=final.result: plots.confusion_matrix(m, r)))
        grid = layout.misclassified(model, fmt)
        try:
            images = _test_images(final, request.data_dir, load)
        except JobError as error:
            stale.append(grid)  # an older grid may be of another model or data than this summary's
            notes[model] = [f"no {grid.name}: {' '.join(str(error).split())}"]
            continue
        mistakes = final.result.test.misclassified
        figures.append((grid, lambda m=model, x=mistakes, i=images: plots.misclassified(m, x, i)))
    return figures, stale, notes


def _test_images(final: FinalRecord, data_dir: Path | None, load: Callable[[Path], tuple[str, Any]] | None) -> Any:
    """The test images a final model was scored on, or a JobError saying why they are not at hand."""
    result = final.result
    if not result.test.misclassified:
        raise JobError("every test digit was classified right")
    if load is None:
        raise JobError("no data loader was given to read the test images")
    source = Path(data_dir or result.data.source)
    found, images = load(source)
    recorded = result.data.sha256.get(TEST_IMAGES)
    if found != recorded:
        raise JobError(
            f"the test images in {source} are not those the model was scored on "
            f"(sha256 {found[:12]}..., recorded {str(recorded)[:12]}...)"
        )
    return images


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
