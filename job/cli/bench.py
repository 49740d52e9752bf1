"""`bench`: the tutorial's training code against ours on one pair, and both against the machine's limit:
alternating fresh processes, several repeats, optionally beside busy loops."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rich.table import Table

from job.cli.options import EPOCHS, FOLD, LIMIT, add_data_args, number
from job.console import console as Console
from job.errors import UsageError
from job.pair import models
from job.perf.bench import bench
from job.perf.report import FIGURES, VARIANTS
from job.perf.spec import Spec
from job.perf.startup import PHASES
from job.protocol import Protocol, check_fold

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

the machine's limit (fractions are per repeat, each against the reference measured in the same repeat):
  bare          the same model, batches, loss and SGD in a bare compiled loop: a whole epoch per call on
                float32 tensors in memory, no gather, no callbacks, no metrics (job/perf/bare.py)
  GEMM floor    the time of a training step's GEMMs, each timed in its own shape on this CPU with the
                job's threads, best of 5 trials, in TensorFlow and in numpy, the faster one counting: per
                layer the forward pass (Dense 2*in*out FLOPs per sample, Conv2D 2*k*k*cin*cout*H*W), the
                weight gradient and the input gradient (as much again each; none for the first layer): no
                loop can train faster without doing less arithmetic
  x GEMM floor  samples/s over the floor's samples/s (1.0 = every cycle spent in the layers' GEMMs);
                x TF floor: the same against TensorFlow's GEMMs alone
  x bare loop   samples/s over the bare loop's
  start-up      the real task, `mnist-cv run` on the pair (one epoch, at most 2,000 images), from process
                start to its first training step (the first compiled call's other steps taken off at ours'
                steady step time), beside `python -c "import tensorflow"` from start to imported, in the same
                repeat; ours' worker's phases (the same path without the command line) say where it goes

--load N runs N busy loops (`while True: pass`, one core's worth of work each) beside every measured
run: started before it, killed after it (and each ends itself after an hour in any case).

accuracy guard: no ratio is printed (exit status 1) unless the median held-out accuracies a1, a2 agree:
  |a1 - a2| <= 3 * sqrt(2 p (1 - p) / n_val) + spread
where p = (a1 + a2) / 2, 3 * sqrt(...) is three standard errors of the difference of two binomial
accuracies on the n_val held-out images, and spread is the widest range of accuracies either variant
showed across its repeats. A speed-up can never hide a change in learning.
"""


MAX_LOAD = 64
MAX_REPEATS = 1000  # each repeat trains both variants: a thousand is days of measuring


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
    p.add_argument("--fold", type=FOLD, default=0, help="held-out fold, 0-4 (default 0)")
    p.add_argument("--epochs", type=EPOCHS, default=3, help="epochs per run (default 3; 2+ to see the steady state)")
    p.add_argument("--limit", type=LIMIT, help="use only the first N training images (default: all 60,000)")
    p.add_argument(
        "--repeats",
        type=number(1, MAX_REPEATS),
        default=3,
        help=f"runs of each variant (default 3; {MAX_REPEATS} at most)",
    )
    p.add_argument(
        "--load",
        type=number(0, MAX_LOAD),
        default=0,
        metavar="N",
        help=f"busy loops running beside every measured run (default 0, at most {MAX_LOAD})",
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON document")
    add_data_args(p)
    p.set_defaults(handler=run)


def spec_from_args(args: argparse.Namespace) -> Spec:

    if args.repeats < 1:
        raise UsageError(f"--repeats must be at least 1, got {args.repeats}")
    if not 0 <= args.load <= MAX_LOAD:
        raise UsageError(f"--load must be 0-{MAX_LOAD} busy loops, got {args.load}")
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

    spec = spec_from_args(args)
    result = bench(spec, args.repeats, args.load, progress=lambda line: print(line, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)
    return 0 if result["ratios"] is not None else 1


def print_report(result: dict[str, Any]) -> None:

    console = Console()
    console.print(_runs_table(result))
    console.print(_summary_table(result))
    console.print(_floor_table(result))
    console.print(_startup_table(result))
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
        f"{machine['device']}, {machine['threads']} threads, TF {machine['tensorflow']}, "
        f"{result['load']} busy loop{'s' * (result['load'] != 1)} beside"
    )


def _runs_table(result: dict[str, Any]) -> Any:
    """One column per run, in the order they ran (figures as rows, so that a few repeats fit 80 columns)."""

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

    table = Table(title=f"median of {result['repeats']} repeats; steady state = epochs {result['steady_epochs']}")
    for column in ("figure", *VARIANTS, "ours/baseline"):
        table.add_column(column, justify="right")
    ratios, summary = result["ratios"], result["summary"]
    for key, label, higher_is_better in FIGURES:
        if ratios is None:
            ratio = "[red]refused[/]"
        else:
            better = ratios[key] > 1 if higher_is_better else ratios[key] < 1
            ratio = f"[{'green' if better else 'yellow'}]{ratios[key]:.2f}x[/]"
        table.add_row(label, *(_fmt(summary[v][key]) for v in VARIANTS), ratio)
    table.add_row("accuracy", *(f"{summary[v]['accuracy']:.4f}" for v in VARIANTS), "")
    fractions = result["fractions"]
    for key, label in (("of_floor", "x GEMM floor"), ("of_tf_floor", "x TF floor"), ("of_bare", "x bare loop")):
        table.add_row(label, *(f"{fractions[v][key]:.3f}" for v in VARIANTS), "")
    return table


def _floor_table(result: dict[str, Any]) -> Any:
    """The floor's arithmetic: each layer's GEMM and the rate this CPU multiplies it at."""

    floor = result["floor"]
    table = Table(
        title=f"GEMM floor, {floor['threads']} thread{'s' * (floor['threads'] != 1)}: "
        f"{floor['training_flops_per_sample'] / 1e6:,.2f} MFLOP per training sample",
        caption=f"floor {floor['floor_samples_per_s']:,.0f} samples/s ({floor['epoch_s']:.3f} s/epoch) "
        f"at {floor['gemm_gflops']['best']:.1f} GFLOP/s "
        f"(TensorFlow alone {floor['tf_floor_samples_per_s']:,.0f} at {floor['gemm_gflops']['tensorflow']:.1f}); "
        f"a {floor['peak_size']}^3 GEMM: {floor['peak_gflops']['tensorflow']:.1f} GFLOP/s "
        f"(numpy {floor['peak_gflops']['numpy']:.1f})",
    )
    for column in ("layer", "GEMM", "m x k x n", "MFLOP", "TF GFLOP/s", "numpy GFLOP/s"):
        table.add_column(column, justify="right")
    for gemm in floor["gemms"]:
        table.add_row(
            gemm["layer"],
            gemm["role"],
            f"{gemm['m']} x {gemm['k']} x {gemm['n']}",
            f"{gemm['flops'] / 1e6:.2f}",
            f"{gemm['tensorflow'] / 1e9:.1f}",
            f"{gemm['numpy'] / 1e9:.1f}",
        )
    return table


def _startup_table(result: dict[str, Any]) -> Any:
    """Ours' seconds from process start to the first training step, by phase, beside a bare TensorFlow import."""

    startup = result["startup"]
    anatomy = startup.get("data_anatomy")
    caption = (
        "without the cache, data.load's work by hand: "
        + ", ".join(f"{key[:-2]} {value:.2f}s" for key, value in anatomy.items())
        if anatomy
        else None
    )
    table = Table(title="start-up, median seconds", caption=caption)
    for column, justify in (("phase", "left"), ("what", "left"), ("s", "right")):
        table.add_column(column, justify=justify)
    if startup["ratio"] is None:
        table.add_row("-", "not measured (no start stamp)", "")
        return table
    for phase, what in PHASES:
        table.add_row(phase, what, f"{startup['phases'][phase]:.2f}")
    table.add_row("ours", "bench worker: start to first training step", f"{startup['ours_s']:.2f}")
    table.add_row("task", "mnist-cv run: start to first training step", f"{startup['task_s']:.2f}")
    table.add_row("bare", "python -c 'import tensorflow'", f"{startup['bare_import_s']:.2f}")
    table.add_row("ratio", "task / bare, median of repeats (target <= 1.5)", f"{startup['ratio']:.2f}x")
    return table


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3f}"
