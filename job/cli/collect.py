"""`collect`: merge a run's pair results into a table, summary.json, summary.md, learning curves and a box plot,
and show each final model's test score beside them with its confusion matrix and misclassified test digits."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from job.cli.options import add_results_args
from job.errors import JobError
from job.pair.protocol import Pair
from job.settings import settings

if TYPE_CHECKING:
    import numpy as np

    from job.pair.data import Dataset

FORMATS = ("png", "pdf", "svg")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "collect",
        help="summarise a run: table, summary.json/.md, learning curves, box plot, final models' test scores",
        description="Read every pair result in RESULTS/RUN and write summary.json, summary.md, "
        "learning-curves-MODEL.FMT and boxplot.FMT beside them. For each final model in RESULTS/RUN/final/ "
        "its test score is shown beside the cross-validation estimate, and confusion-MODEL.FMT and "
        "misclassified-MODEL.FMT are drawn. Exits 1 while pairs are missing, unless --allow-partial. "
        "Safe to rerun at any time, also while pairs are still running.",
    )
    add_results_args(p)
    p.add_argument(
        "--data-dir",
        type=Path,
        default=settings().data,
        help="MNIST folder or mnist.npz holding the test images, for the grids of misclassified digits "
        "(default: $MNIST_CV_DATA, else the source the final result records; never downloads)",
    )
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="summarise what exists when pairs are missing or unusable (exit 0; n says how many folds)",
    )
    p.add_argument(
        "--config", type=config_id, metavar="ID", help="use only the results of this config id (a run holding several)"
    )
    p.add_argument("--format", choices=FORMATS, default="png", help="figure format (default: png)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout, and nothing else there")
    p.set_defaults(handler=run)


def config_id(text: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{12}", text):
        raise argparse.ArgumentTypeError(f"not a config id (12 hex digits): {text!r}")
    return text


def run(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console

    from job.analysis import report
    from job.results import atomic
    from job.results import store as results
    from job.results.status import array_spec

    folder = results.run_dir(args.results, args.run)
    if not folder.is_dir():
        raise JobError(f"no run folder {folder}")
    chosen, finals, found = _summarise(args, folder)
    publish = found["complete"] or args.allow_partial
    if publish:
        results.ensure_writable(folder)
        found["figures"] = _write_figures(folder, chosen, found, args.format)
        found["figures"] += _write_final_figures(folder, finals, found, args.format, args.data_dir)
    else:
        found["figures"] = []

    console = Console()
    if args.json:
        print(json.dumps(found, indent=1))
    else:
        report.print_report(found, console)
    if not publish:
        missing = found["missing"]
        names = ", ".join(f"{m['model']}/fold-{m['fold']}" for m in missing)
        raise JobError(
            f"{len(missing)} of {found['n_expected']} pairs missing ({names}; task ids "
            f"{array_spec([m['task_id'] for m in missing])}): run them, or pass --allow-partial"
        )
    atomic.write_bytes(folder / "summary.md", report.markdown(found).encode())
    # Last, so a summary.json on disk means its figures are there too.
    atomic.write_json(folder / "summary.json", found)
    if not args.json:
        written = ", ".join(["summary.json", "summary.md", *found["figures"]])
        console.print(f"wrote {written} in {folder}", markup=False, highlight=False, soft_wrap=True)
    return 0


def _summarise(
    args: argparse.Namespace, folder: Path
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]], dict[str, Any]]:
    """The results chosen for the summary, the final results by model, and the summary.

    Each unusable file, a pair's or a final model's, is reported in one line on stderr.
    """
    import sys

    from job.analysis import summary
    from job.results import store as results

    scan = results.scan(args.results, args.run)
    usable, misplaced = _at_own_paths(scan.results)
    finals, bad_finals = _read_finals(folder)
    problems = {**scan.problems, **misplaced, **bad_finals}
    for reason in problems.values():
        print(f"skipped {' '.join(reason.split())}", file=sys.stderr)  # one line, whatever the message holds
    if not usable:
        raise JobError(f"no usable result in {folder}")

    chosen = summary.select(usable, args.config)
    others = [r for r in usable if r["config_id"] != chosen[0]["config_id"]]
    skipped = [
        {"file": str(path.relative_to(folder)), "reason": reason.removeprefix(f"{path}: ")}
        for path, reason in problems.items()
    ]
    skipped += [{"file": summary.file_name(r), "reason": f"config {r['config_id']}"} for r in others]
    unusable = _unusable(folder, problems, others)
    found = summary.summarise(chosen, run=str(folder), unusable=unusable, skipped=skipped, finals=finals)
    return chosen, finals, found


def _read_finals(folder: Path) -> tuple[dict[str, dict[str, Any]], dict[Path, str]]:
    """The usable final results in RUN/final/ by model (each with its `_path`), and the others with why."""
    from job.pair.final import read_result  # imports no TensorFlow: Keras is loaded only to train or predict

    finals, problems = {}, {}
    for path in sorted((folder / "final").glob("*.json")):
        if path.name.startswith("."):
            continue  # a temp file of a write in progress
        try:
            finals[path.stem] = {**read_result(path), "_path": str(path)}
        except JobError as error:
            problems[path] = str(error)
    return finals, problems


def _at_own_paths(found: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[Path, str]]:
    """The results whose file is MODEL/fold-K.json of their own pair; the others (a copied file) as problems."""
    usable, misplaced = [], {}
    for result in found:
        path = Path(result["_path"])
        if (path.parent.name, path.name) == (result["model"], f"fold-{result['fold']}.json"):
            usable.append(result)
        else:
            misplaced[path] = f"{path}: holds {result['model']}/fold-{result['fold']}, not the pair its path names"
    return usable, misplaced


def _pair_of(path: Path) -> Pair | None:
    """The (model, fold) a MODEL/fold-K.json or MODEL/fold-K.ckpt path stands for; None for other names."""
    match = re.fullmatch(r"fold-(\d+)\.(json|ckpt)", path.name)
    return Pair(path.parent.name, int(match[1])) if match else None


def _unusable(folder: Path, problems: dict[Path, str], others: list[dict[str, Any]]) -> dict[Pair, str]:
    """Why a pair has no usable result: a damaged file, a result of another config, or training in progress."""
    reasons = [(path, "unusable") for path in problems]
    reasons += [(Path(r["_path"]), f"config {r['config_id']}") for r in others]
    # Last, so it wins: a checkpoint is what is happening now, which says more than an old file does.
    reasons += [(path, "in progress") for path in folder.glob("*/fold-*.ckpt") if path.is_dir()]
    return {pair: reason for path, reason in reasons if (pair := _pair_of(path)) is not None}


def _write_figures(folder: Path, chosen: list[dict[str, Any]], found: dict[str, Any], fmt: str) -> list[str]:
    from job.analysis import plots

    written = []
    for model, stats in found["models"].items():
        if stats["n"]:
            fig = plots.learning_curves(model, [r for r in chosen if r["model"] == model], found["config_id"])
            written.append(_save(fig, folder / f"learning-curves-{model}.{fmt}", fmt))
    accuracies = {model: [f["accuracy"] for f in stats["folds"]] for model, stats in found["models"].items()}
    written.append(_save(plots.boxplot(accuracies), folder / f"boxplot.{fmt}", fmt))
    return written


def _write_final_figures(
    folder: Path, finals: dict[str, dict[str, Any]], found: dict[str, Any], fmt: str, data_dir: Path | None
) -> list[str]:
    """Each final model's confusion matrix and misclassified grid; a grid that cannot be drawn gets a note instead."""
    from functools import cache

    from job.analysis import plots
    from job.pair import data

    # custom=True: whatever the data, the test-image hash recorded in the final result decides. Cached: final
    # models of one run share their data, which is read once.
    load = cache(lambda source: data.load(source, custom=True))
    written = []
    for model, result in finals.items():
        written.append(_save(plots.confusion_matrix(model, result), folder / f"confusion-{model}.{fmt}", fmt))
        grid = folder / f"misclassified-{model}.{fmt}"
        try:
            images = _test_images(result, data_dir, load)
        except JobError as error:
            grid.unlink(missing_ok=True)  # an older grid may be of another model or data than this summary's
            found["models"][model]["final"]["notes"].append(f"no {grid.name}: {' '.join(str(error).split())}")
            continue
        written.append(_save(plots.misclassified(model, result["test"]["misclassified"], images), grid, fmt))
    return written


def _test_images(result: dict[str, Any], data_dir: Path | None, load: Callable[[Path], Dataset]) -> np.ndarray:
    """The test images a final model was scored on, or a JobError saying why they are not at hand."""
    from job.pair.data import TEST_IMAGES

    if not result["test"]["misclassified"]:
        raise JobError("every test digit was classified right")
    source = Path(data_dir or result["data"]["source"])
    dataset = load(source)
    recorded, found = result["data"]["sha256"].get(TEST_IMAGES), dataset.sha256[TEST_IMAGES]
    if found != recorded:
        raise JobError(
            f"the test images in {source} are not those the model was scored on "
            f"(sha256 {found[:12]}..., recorded {str(recorded)[:12]}...)"
        )
    return dataset.x_test


def _save(fig: Any, path: Path, fmt: str) -> str:
    from job.results import atomic

    with atomic.replacing(path) as tmp:
        fig.savefig(tmp, format=fmt)
    return path.name
