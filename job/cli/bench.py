"""`bench`: the tutorial's training code against ours on one pair, alternating fresh processes, several repeats."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from job.cli.options import add_data_args
from job.errors import UsageError
from job.pair.protocol import Protocol, check_fold

if TYPE_CHECKING:
    from job.perf.bench import Spec

EPILOG = """\
figures (ours/baseline ratios are per repeat, the two runs of a repeat back to back in ABBA order, then the
median over repeats):
  samples/s     training images per second in the steady state, epochs 2..N (with --epochs 1: epoch 1)
  s/epoch       training seconds per epoch, same epochs; validation and checkpointing excluded
  CPU s/epoch   CPU seconds (all threads) of the same: far steadier than wall time on a shared machine
  1st epoch s   training seconds of epoch 1, graph tracing included
  val s/epoch   seconds of the per-epoch validation pass (the tutorial validates at batch 32)
  wall s        from the data in memory to the final held-out score: preparation, training, validation,
                checkpoints
  RSS MB        the worker's peak resident memory (ru_maxrss)
  RSS-imp MB    the same minus its value once TensorFlow and Keras were imported (~0.7 GB, mostly shared
                library pages, equal in both variants): what the pair's data and training cost
  load 1 min    the machine's load average as the run started (other work there skews the timings)

accuracy guard: no ratio is printed (exit status 1) unless the median held-out accuracies a1, a2 agree:
  |a1 - a2| <= 3 * sqrt(2 p (1 - p) / n_val) + spread
where p = (a1 + a2) / 2, 3 * sqrt(...) is three standard errors of the difference of two binomial
accuracies on the n_val held-out images, and spread is the widest range of accuracies either variant
showed across its repeats. A speed-up can never hide a change in learning.
"""


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bench",
        help="time the tutorial's training code against ours on one pair",
        description="Train one (model, fold) pair with the tutorial's code (float32 arrays, one-hot labels, "
        "plain fit) and with ours (job.pair.train), each run in a fresh process, alternating, and compare "
        "throughput, time per epoch, held-out accuracy and peak memory.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="mlp", help="model name (default mlp)")
    p.add_argument("--fold", type=int, default=0, help="held-out fold, 0-4 (default 0)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (default 3; 2+ to see the steady state)")
    p.add_argument("--limit", type=int, help="use only the first N training images (default: all 60,000)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each variant (default 3)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON document")
    add_data_args(p)
    p.set_defaults(handler=run)


def spec_from_args(args: argparse.Namespace) -> Spec:
    from job.pair import models
    from job.perf.bench import Spec

    if args.repeats < 1:
        raise UsageError(f"--repeats must be at least 1, got {args.repeats}")
    protocol = Protocol().with_overrides(epochs=args.epochs, limit=args.limit)  # validates both
    return Spec(
        model=models.check_name(args.model),
        fold=check_fold(args.fold, protocol.n_folds),
        epochs=protocol.epochs,
        limit=protocol.limit,
        data_dir=str(args.data_dir) if args.data_dir else None,
        custom_data=args.custom_data,
    )


def run(args: argparse.Namespace) -> int:
    from job.perf.bench import bench

    spec = spec_from_args(args)
    result = bench(spec, args.repeats, progress=lambda line: print(line, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)
    return 0 if result["ratios"] is not None else 1


def print_report(result: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console()
    console.print(_runs_table(result))
    console.print(_summary_table(result))
    check = result["accuracy_check"]
    verdict = "agree" if check["agree"] else "[red]DIFFER: ratios refused[/]"
    console.print(
        f"held-out accuracy {check['baseline']:.4f} vs {check['ours']:.4f}: difference {check['difference']:.4f}, "
        f"noise allows {check['tolerance']:.4f} -> {verdict}; "
        f"same initial weights: {'yes' if result['same_initial_weights'] else 'no'}"
    )


def _title(result: dict[str, Any]) -> str:
    spec, machine = result["spec"], result["machine"]
    images = spec["limit"] or "all"
    return (
        f"{spec['model']}/fold-{spec['fold']}, {spec['epochs']} epochs, {images} images, "
        f"{machine['device']}, {machine['threads']} threads, TF {machine['tensorflow']}"
    )


def _runs_table(result: dict[str, Any]) -> Any:
    """One column per run, in the order they ran (figures as rows, so that a few repeats fit 80 columns)."""
    from rich.table import Table

    from job.perf.bench import FIGURES

    runs = result["runs"]
    table = Table(title=_title(result))
    table.add_column("run")
    for run in runs:
        table.add_column(f"{run['variant'][:4]} {run['repeat'] + 1}", justify="right")
    for key, label, _ in FIGURES:
        table.add_row(label, *(_fmt(run[key]) for run in runs))
    table.add_row("accuracy", *(f"{run['accuracy']:.4f}" for run in runs))
    table.add_row("load 1 min", *(f"{run['load_1min']:.1f}" for run in runs))
    return table


def _summary_table(result: dict[str, Any]) -> Any:
    from rich.table import Table

    from job.perf.bench import FIGURES

    table = Table(title=f"median of {result['repeats']} repeats; steady state = epochs {result['steady_epochs']}")
    for column in ("figure", "baseline", "ours", "ours/baseline"):
        table.add_column(column, justify="right")
    ratios, summary = result["ratios"], result["summary"]
    for key, label, higher_is_better in FIGURES:
        if ratios is None:
            ratio = "[red]refused[/]"
        else:
            better = ratios[key] > 1 if higher_is_better else ratios[key] < 1
            ratio = f"[{'green' if better else 'yellow'}]{ratios[key]:.2f}x[/]"
        table.add_row(label, _fmt(summary["baseline"][key]), _fmt(summary["ours"][key]), ratio)
    return table


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3f}"
