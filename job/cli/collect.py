"""`collect`: merge a run's pair results (of every repeat) into a table, summary.json, summary.md, learning curves
and a box plot, and show each final model's test score beside them with its confusion matrix and misclassified test
digits."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from job import settings
from job.analysis.mlflow_export import export
from job.cli.options import add_repeats_arg, add_results_args
from job.pair import data
from job.results import manifest
from job.results.layout import RunLayout

FORMATS = ("png", "pdf", "svg")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "collect",
        help="summarise a run: table, summary.json/.md, learning curves, box plot, final models' test scores",
        description="Read every pair result in RESULTS/RUN and write summary.json, summary.md, "
        "learning-curves-MODEL.FMT and boxplot.FMT beside them. For each final model in RESULTS/RUN/final/ "
        "its test score is shown beside the cross-validation estimate, and confusion-MODEL.FMT and "
        "misclassified-MODEL.FMT are drawn. From the pairs' held-out predictions, each model's out-of-fold report: "
        "cv-confusion-MODEL.FMT, reliability-MODEL.FMT and cv-misclassified-MODEL.FMT. "
        "Exits 1 while pairs are missing, unless --allow-partial. "
        "Safe to rerun at any time, also while pairs are still running.",
    )
    add_results_args(p)
    p.add_argument(
        "--data-dir",
        type=Path,
        default=settings.settings().data,
        help="MNIST folder or mnist.npz holding the training and test images, for the grids of misclassified digits "
        f"(default: ${settings.DATA.name}, else the source the results record; never downloads)",
    )
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="summarise what exists when pairs are missing or unusable (exit 0; n says how many folds)",
    )
    p.add_argument(
        "--config",
        type=config_id,
        metavar="ID",
        help="use only the results of this config id (default: the run's, from its manifest RESULTS/RUN/run.json; "
        "a run folder of an earlier version holding several needs it)",
    )
    add_repeats_arg(
        p,
        "the run's repeats R: expect repeats 0 to R-1 (missing ones are missing) and leave out results beyond "
        "them (default: the run's, from its manifest; without one, as many as the files show, up to the highest "
        "repeat found)",
    )
    p.add_argument("--format", choices=FORMATS, default="png", help="figure format (default: png)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout, and nothing else there")
    p.add_argument(
        "--mlflow",
        action="store_true",
        help="then log the run into MLflow: a run per model holding the summary's numbers and files, its pair "
        "results nested under it, each once: $MLFLOW_TRACKING_URI, else RUN/mlflow.db "
        "(needs MLflow: pip install 'mlflow>=3.7', or in the checkout pip install -e '.[mlflow]')",
    )
    p.set_defaults(handler=run)


def config_id(text: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{12}", text):
        raise argparse.ArgumentTypeError(f"not a config id (12 hex digits): {text!r}")
    return text


def run(args: argparse.Namespace) -> int:
    from job.analysis.collect import Request, collect  # deferred: matplotlib

    # Without a manifest (a run folder of an earlier version), collect works both out from the files.
    recorded = manifest.read(RunLayout(args.results, args.run))
    request = Request(
        args.results,
        args.run,
        args.config or (recorded.protocol.config_id if recorded else None),
        args.format,
        args.data_dir,
        args.allow_partial,
        args.json,
        args.repeats or (recorded.repeats if recorded else None),
        images=data.images,
    )
    published = collect(request)
    if args.mlflow:
        exported = export(RunLayout(args.results, args.run), published)
        print(exported.line(), file=sys.stderr if args.json else sys.stdout)
    return 0
