"""Options shared by several subcommands, defined once so every command spells them the same way."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from job.pair.protocol import Protocol

if TYPE_CHECKING:
    from job.pair.session import Inputs


def add_results_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results",
        type=Path,
        default=Path(os.environ.get("MNIST_CV_RESULTS", "results")),
        help="results folder (default: $MNIST_CV_RESULTS or ./results)",
    )
    parser.add_argument(
        "--run",
        default=os.environ.get("MNIST_CV_RUN", "default"),
        help="run name: results go to RESULTS/RUN/ (default: $MNIST_CV_RUN or 'default')",
    )


def add_protocol_args(parser: argparse.ArgumentParser) -> None:
    """Overrides of the tutorial protocol; each one changes the config id, so results never mix."""
    group = parser.add_argument_group("protocol overrides (debugging; each changes the config id)")
    group.add_argument("--epochs", type=int, help=f"epochs per pair (default {Protocol.epochs})")
    group.add_argument("--batch-size", type=int, help=f"training batch size (default {Protocol.batch_size})")
    group.add_argument("--seed", type=int, help=f"seed for weights and shuffling (default {Protocol.seed})")
    group.add_argument("--limit", type=int, help="use only the first N training images (default: all 60,000)")
    group.add_argument(
        "--mixed-precision",
        action="store_true",
        help="train in mixed_float16 (GPU speed-up; changes numbers)",
    )
    group.add_argument("--xla", action="store_true", help="compile with XLA (changes rounding; not deterministic)")


def protocol_from_args(args: argparse.Namespace) -> Protocol:
    return Protocol().with_overrides(
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        limit=args.limit,
        precision="mixed_float16" if args.mixed_precision else None,
        jit=True if args.xla else None,
    )


def add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="folder with the four MNIST IDX files (.gz or plain) or a Keras mnist.npz "
        "(default: $MNIST_CV_DATA, then ~/.keras/datasets/mnist.npz, then a download)",
    )
    parser.add_argument(
        "--custom-data",
        action="store_true",
        help="accept an MNIST-like IDX dataset that is not the original MNIST (structure is still validated)",
    )


def inputs_from_args(args: argparse.Namespace) -> Inputs:
    """The typed part of add_data_args and add_device_args that a training takes."""
    from job.pair.session import Inputs

    return Inputs(data_dir=args.data_dir, custom_data=args.custom_data, allow_cpu=args.allow_cpu)


def add_device_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-cpu",
        action="store_true",
        default=os.environ.get("MNIST_CV_ALLOW_CPU") == "1",
        help="run on the CPU even when a GPU was allocated but is not visible (default: $MNIST_CV_ALLOW_CPU=1)",
    )
