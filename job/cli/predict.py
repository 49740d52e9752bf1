"""`predict`: the digit a saved model sees in each image, .npy array or IDX file, with its top probabilities."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table
from rich.text import Text

from job.cli.options import number
from job.console import PROG, one_line
from job.console import console as Console
from job.errors import JobError, UsageError
from job.pair import predict
from job.pair.models import N_CLASSES
from job.pair.predict import Inputs

MAX_ROWS = 1_000_000_000  # rows of a table on a terminal: far more than a person reads


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "predict",
        help="predict the digits in images, .npy arrays or IDX files with a saved model",
        description="Print the digit a model saved by `final` predicts for each input, with its top "
        "probabilities. An input that cannot be used is reported on one line and the others are still "
        "predicted; the exit status is then 1.",
    )
    p.add_argument(
        "images",
        nargs="+",
        type=Path,
        metavar="IMAGE",
        help="a PNG/JPEG of any size, dark-on-light or light-on-dark (cropped and centred as MNIST digits are); "
        "a .npy array of shape (28, 28), (N, 28, 28) or (N, 28, 28, 1), uint8 0-255 or float 0-1; "
        "or an IDX images file, .gz or plain",
    )
    p.add_argument(
        "--model-file", type=Path, required=True, help="a model saved by `final` (RESULTS/RUN/final/MODEL.keras)"
    )
    p.add_argument(
        "--top",
        type=number(1, N_CLASSES),
        default=3,
        help=f"how many of the most probable digits to show (1-{N_CLASSES}, default 3)",
    )
    p.add_argument(
        "--labels", type=Path, help="IDX labels file (.gz or plain) of the single batch IMAGE: adds the accuracy"
    )
    p.add_argument("--json", action="store_true", help="print one JSON document with every prediction")
    p.add_argument(
        "--rows",
        type=number(1, MAX_ROWS),
        default=100,
        help="most rows the table shows (default 100; --json has all)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.labels is not None and len(args.images) != 1:
        raise UsageError("--labels goes with exactly one IMAGE (an IDX file or a .npy batch)")

    model = predict.load_model(args.model_file)
    labels = None if args.labels is None else predict.read_labels(args.labels)
    inputs, errors = predict.read_inputs(args.images)
    if labels is not None and inputs.names and len(labels) != len(inputs.names):
        raise JobError(f"{args.labels}: {len(labels)} labels for {len(inputs.names)} images")
    rows, accuracy = _predictions(model, inputs, args.top, labels, errors)
    for error in errors:
        print(f"{PROG} predict: error: {one_line(error)}", file=sys.stderr)
    if args.json:
        report = {"model_file": str(args.model_file), "predictions": rows, "accuracy": accuracy, "errors": errors}
        print(json.dumps(report))
    else:
        _print_table(rows, accuracy, args.rows)
    return 1 if errors else 0


def _predictions(
    model: Any, inputs: Inputs, k: int, labels: np.ndarray | None, errors: list[str]
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """One row per input (its digit, top k probabilities and, given labels, its label) and the accuracy.

    An input the model gives non-finite probabilities for gets a line in `errors` instead of a row.
    """

    if not inputs.names:
        return [], None
    probs = predict.probabilities(model, inputs.pixels)
    finite = np.isfinite(probs).all(axis=1)
    errors += [f"{name}: the model's probabilities are not finite numbers" for name in np.array(inputs.names)[~finite]]
    tops = predict.top_k(probs, k)
    rows = [
        {"input": name, "digit": top[0][0], "top": [{"digit": d, "probability": p} for d, p in top]}
        for name, top, ok in zip(inputs.names, tops, finite, strict=True)
        if ok
    ]
    if labels is None or not rows:
        return rows, None
    for row, label in zip(rows, labels[finite], strict=True):
        row["label"] = int(label)
    correct = sum(row["digit"] == row["label"] for row in rows)
    return rows, {"accuracy": correct / len(rows), "correct": correct, "total": len(rows)}


def _print_table(rows: list[dict[str, Any]], accuracy: dict[str, Any] | None, max_rows: int) -> None:

    labelled = accuracy is not None
    table = Table(caption=f"{len(rows) - max_rows} more rows: --json lists all" if len(rows) > max_rows else None)
    table.add_column("input", overflow="fold")  # never cut off a batch input's [index]
    for column in ("digit", "top probabilities", *(("true",) if labelled else ())):
        table.add_column(column)
    for row in rows[:max_rows]:
        top = "  ".join(f"{t['digit']} {t['probability'] * 100:.1f}%" for t in row["top"])
        cells = [Text(row["input"]), str(row["digit"]), top]  # Text: a file name's [brackets] or :emoji: stay text
        if labelled:
            cells.append(Text(str(row["label"]), style="green" if row["label"] == row["digit"] else "red"))
        table.add_row(*cells)
    console = Console()
    if rows:
        console.print(table)
    if accuracy is not None:
        console.print(f"accuracy {accuracy['accuracy'] * 100:.3f}% ({accuracy['correct']} of {accuracy['total']})")
