"""How a summary reads, for the terminal (rich) and for summary.md (markdown): a table with a row per model, and,
when final models exist, a second table with their test scores beside the cross-validation estimate; a line per
fold ensemble, beside its final model.

Both renderings come from the same rows, so the terminal and the file never disagree.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from job.analysis import sizing
from job.results.contract import ClassAccuracy, Comparison, MissingPair, ModelStats, OutOfFold, Summary
from job.results.predictions import N_CLASSES

HEADERS = ("model", "n", "mean ± std %", "95% CI %", "min %", "max %", "fit s (mean)", "missing / failed")
FINAL_HEADERS = ("model", "CV mean ± std %", "final test %", "test loss", "misclassified", "trained on", "config")
FINAL_TITLE = "Final models: scored on the test images, beside the cross-validation estimate"
ENSEMBLE_TITLE = "Fold ensembles: the fold models' averaged probabilities on the test images"
SIZING_TITLE = "Right-sizing: what the pairs used, and a Slurm request that fits"
PER_CLASS_TITLE = "Out-of-fold accuracy per digit: the folds' held-out predictions pooled"
NONE = "-"
CI_DEFINITION = (
    "95% CI: t interval of the mean over the folds of the complete repeats (df n-1) with Nadeau-Bengio's corrected "
    "variance (1/n + n_test/n_train) s^2, and over the repeat means (uncorrected) when two or more are complete"
)


def _percent(fraction: float | None) -> str:
    return NONE if fraction is None else f"{100 * fraction:.3f}"


def _estimate(stats: ModelStats) -> str:
    return NONE if stats.n == 0 else f"{_percent(stats.mean)} ± {_percent(stats.std)}"


def _intervals(stats: ModelStats) -> str:
    """The 95% intervals of the mean, low-high; named by what they are over when there are two."""
    named = len(stats.ci95) > 1
    cells = [f"{_percent(i.low)}-{_percent(i.high)}{f' {i.over}' if named else ''}" for i in stats.ci95]
    return "; ".join(cells) or NONE


def rows(summary: Summary) -> list[tuple[str, ...]]:
    """One row of cells per model, in the order of HEADERS."""
    table = []
    for model, stats in summary.models.items():
        gaps = [m for m in summary.missing if m.model == model]
        table.append(
            (
                model,
                f"{stats.n}",
                _estimate(stats),
                _intervals(stats),
                _percent(stats.min),
                _percent(stats.max),
                NONE if stats.mean_fit_seconds is None else f"{stats.mean_fit_seconds:.1f}",
                ", ".join(f"{_where(m)} ({m.reason})" for m in gaps) or "none",
            )
        )
    return table


def _where(missing: MissingPair) -> str:
    return f"repeat {missing.repeat} fold {missing.fold}" if missing.repeat else f"fold {missing.fold}"


def title(summary: Summary) -> str:
    config = summary.config
    repeated = f"{summary.repeats} x " if summary.repeats > 1 else ""
    epochs = f"{config.epochs} epoch{'s' * (config.epochs != 1)}"
    images = f", the first {config.limit:,} images" if config.limit is not None else ""
    return (
        f"{Path(summary.run).name}: {repeated}{config.n_folds}-fold cross-validation, {epochs}{images}, "
        f"config {summary.config_id}, data {summary.data.name}"
    )


def tutorial_lines(summary: Summary) -> list[str]:
    """The tutorial's own summary line per model, `Accuracy: mean=98.677 std=0.107, n=5`."""
    return [
        f"{model}: Accuracy: mean={_percent(stats.mean)} std={_percent(stats.std)}, n={stats.n}"
        for model, stats in summary.models.items()
        if stats.n
    ]


def comparison_line(c: Comparison) -> str:
    pair = f"{c.candidate} - {c.baseline}"
    repeats = sorted(set(c.repeats))
    if c.mean_difference is None:
        line = f"{pair}: no fold has both models"
    elif repeats != [0]:
        line = (
            f"{pair}: {100 * c.mean_difference:+.3f} points of accuracy, mean over {c.k} paired folds of "
            f"repeats {', '.join(map(str, repeats))}"
        )
    else:
        line = f"{pair}: {100 * c.mean_difference:+.3f} points of accuracy, mean over {c.k} paired folds"
    if c.t is not None:
        p_value = "n/a" if c.p_value is None else f"{c.p_value:.3g}"
        line += f"; {c.test}: t={c.t:.3f}, df={c.df}, p={p_value}"
    if c.notes:
        line += f" ({'; '.join(c.notes)})"
    return line


def final_rows(summary: Summary) -> list[tuple[str, ...]]:
    """One row of cells per model with a final result, in the order of FINAL_HEADERS."""
    table = []
    for model, stats in summary.models.items():
        final = stats.final
        if final is None:
            continue
        same = "same as CV" if final.same_config else f"not CV's {summary.config_id}"
        table.append(
            (
                model,
                _estimate(stats),
                _percent(final.accuracy),
                f"{final.loss:.4f}",
                f"{final.n_misclassified} of {final.n_test}",
                f"{final.n_train} images",
                f"{final.config_id} ({same})",
            )
        )
    return table


def ensemble_lines(summary: Summary) -> list[str]:
    """Per model with a fold ensemble: its test accuracy, its folds' alone, and the final model's beside it."""
    lines = []
    for model, stats in summary.models.items():
        ensemble = stats.ensemble
        if ensemble is None:
            continue
        repeat = f" of repeat {ensemble.repeat}" if ensemble.repeat else ""
        alone = f"{_percent(min(ensemble.fold_accuracies))}-{_percent(max(ensemble.fold_accuracies))}%"
        final = "no final model" if stats.final is None else f"final model {_percent(stats.final.accuracy)}%"
        lines.append(
            f"{model}: fold ensemble {_percent(ensemble.accuracy)}% on the test set ({ensemble.n_folds} folds{repeat}, "
            f"{ensemble.n_misclassified} of {ensemble.n_test} misclassified, loss {ensemble.loss:.4f}; the folds alone "
            f"{alone}), {final}"
        )
    return lines


def repeat_lines(summary: Summary) -> list[str]:
    """Per model, of a repeated run: which repeats the numbers are of, the spread of the repeat means, and each
    repeat's mean, a partial repeat said to be partial (it is in no number above)."""
    lines = []
    for model, stats in summary.models.items():
        if not stats.n:
            continue
        used = ", ".join(map(str, stats.repeats_used))
        spread = NONE if stats.std_of_repeat_means is None else _percent(stats.std_of_repeat_means)
        means = "; ".join(
            f"repeat {r.repeat} {_percent(r.mean)}"
            + ("" if r.complete else f" (partial: {r.n} of {r.n + len(r.missing_folds)} folds, left out)")
            for r in stats.repeats
        )
        complete = any(r.complete for r in stats.repeats)
        of = f"complete repeats {used}" if complete else f"no repeat complete: every result of repeats {used}"
        lines.append(f"{model}: n={stats.n} ({of}); std of the repeat means {spread}; means: {means}")
    return lines


def footer(summary: Summary) -> list[str]:
    """The lines under the table: what std means, the tutorial's lines, the repeats, the comparisons, and what is
    missing."""
    lines = [f"std: {summary.std_definition}", CI_DEFINITION, *tutorial_lines(summary)]
    if summary.repeats > 1:
        lines.append(
            f"repeats: {summary.repeats}, each its own shuffle of the images (KFold random_state split seed + r)"
        )
        lines += repeat_lines(summary)
    if summary.repeated_comparison is None:
        lines.append(comparison_line(summary.comparison))
    else:
        lines.append(f"on the tutorial's split (repeat 0): {comparison_line(summary.comparison)}")
        lines.append(f"over the complete repeats: {comparison_line(summary.repeated_comparison)}")
    if not summary.complete:
        counted = "what exists" if summary.repeats == 1 else "of the complete repeats (else of what exists)"
        lines.append(f"{len(summary.missing)} of {summary.n_expected} pairs missing: n above is {counted}")
    return lines


def out_of_fold_lines(summary: Summary) -> list[str]:
    """Per model, the headline of its out-of-fold report (the folds' held-out predictions pooled), or what it lacks."""
    lines = []
    for model, stats in summary.models.items():
        report = stats.cross_validation
        if report is None:
            continue
        if (pooled := report.pooled) is not None:
            lines.append(f"{model} out-of-fold: {_pooled_headline(pooled, report.n_results)}")
        lines += list(report.notes)
    return lines


def _pooled_headline(pooled: OutOfFold, n_folds: int) -> str:
    accuracy = (
        f"{_percent(pooled.n_correct / pooled.n_images)}% of {pooled.n_images:,} held-out images ({n_folds} folds)"
    )
    confused = "no digit taken for another"
    if (pair := pooled.most_confused) is not None:
        a, b = pair.digits
        confused = f"most confused {a} and {b} ({a} as {b}: {pair.a_as_b}, {b} as {a}: {pair.b_as_a})"
    worst = ""
    if pooled.worst_class is not None:
        digit = pooled.per_class[pooled.worst_class]
        worst = (
            f"; worst class {digit.digit}: {_percent(digit.accuracy)}% (over folds {_percent(digit.mean)} ± "
            f"{_percent(digit.std)}, {_percent(digit.min)}-{_percent(digit.max)})"
        )
    calibration = pooled.calibration
    return f"{accuracy}; {confused}{worst}; ECE {calibration.ece:.4f} ({calibration.binning})"


def per_class_rows(summary: Summary) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """The headers and a row per digit of the models' out-of-fold accuracy (no row without a pooled report):
    pooled, then mean ± std and min-max over the folds."""
    pooled = {m: r.pooled for m, s in summary.models.items() if (r := s.cross_validation) and r.pooled}
    headers = ("digit", *(f"{model} %: pooled (folds: mean ± std, min-max)" for model in pooled))
    cells = [(str(d), *(_class_cell(p.per_class[d]) for p in pooled.values())) for d in range(N_CLASSES)]
    return headers, cells if pooled else []


def _class_cell(c: ClassAccuracy) -> str:
    return f"{_percent(c.accuracy)} ({_percent(c.mean)} ± {_percent(c.std)}, {_percent(c.min)}-{_percent(c.max)})"


def final_notes(summary: Summary) -> list[str]:
    """What to know about the final models: another config than CV's, a figure that could not be drawn."""
    return [
        f"{model} final: {note}"
        for model, stats in summary.models.items()
        if stats.final is not None
        for note in stats.final.notes
    ]


def _rich_table(title: str, headers: tuple[str, ...], cells: list[tuple[str, ...]]) -> Table:
    table = Table(title=title)
    *numbers, last = headers
    table.add_column(numbers[0], no_wrap=True)
    for header in numbers[1:]:
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column(last)  # the one column that wraps when the terminal is narrow
    for row in cells:
        # Text, not str: a cell is data, never rich markup (a reason may hold brackets).
        table.add_row(*(Text(cell) for cell in row))
    return table


def _markdown_table(headers: tuple[str, ...], cells: list[tuple[str, ...]]) -> list[str]:
    header, *body = ["| " + " | ".join(row) + " |" for row in [headers, *cells]]
    return [header, "|" + "---|" * len(headers), *body]


def print_report(summary: Summary, console: Console) -> None:
    console.print(_rich_table(title(summary), HEADERS, rows(summary)))
    _print_lines([*footer(summary), *out_of_fold_lines(summary)], console)
    finals = final_rows(summary)
    if finals:
        console.print(_rich_table(FINAL_TITLE, FINAL_HEADERS, finals))
        _print_lines(final_notes(summary), console)
    if ensembles := ensemble_lines(summary):
        _print_lines([f"{ENSEMBLE_TITLE}:", *ensembles], console)
    if summary.sizing.models:
        _print_lines([f"{SIZING_TITLE} ({summary.sizing.margin}):", *sizing.lines(summary.sizing)], console)


def _print_lines(lines: list[str], console: Console) -> None:
    for line in lines:
        # soft_wrap: a long line is left for the terminal to wrap, not broken into lines by rich.
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def markdown(summary: Summary) -> str:
    """summary.md: the title, the same tables and footer, and the figures (images beside the file)."""
    lines = [f"# {title(summary)}", "", *_markdown_table(HEADERS, rows(summary))]
    lines += ["", *(f"- {line}" for line in footer(summary))]
    lines += [f"- {line}" for line in out_of_fold_lines(summary)]
    lines += [f"- skipped {s.file}: {s.reason}" for s in summary.skipped]
    headers, per_class = per_class_rows(summary)
    if per_class:
        lines += ["", f"## {PER_CLASS_TITLE}", "", *_markdown_table(headers, per_class)]
    finals = final_rows(summary)
    if finals:
        lines += ["", f"## {FINAL_TITLE}", "", *_markdown_table(FINAL_HEADERS, finals)]
        if notes := final_notes(summary):
            lines += ["", *(f"- {line}" for line in notes)]
    if ensembles := ensemble_lines(summary):
        lines += ["", f"## {ENSEMBLE_TITLE}", "", *(f"- {line}" for line in ensembles)]
    if summary.sizing.models:
        lines += ["", f"## {SIZING_TITLE}", "", f"Margin: {summary.sizing.margin}.", ""]
        lines += [f"- {line}" for line in sizing.lines(summary.sizing, quote="`")]
    lines.append("")
    # PDFs do not render inline, so they are linked; PNG and SVG are shown.
    lines += [f"{'' if name.endswith('.pdf') else '!'}[{name}]({name})" for name in summary.figures]
    return "\n".join(lines) + "\n"
