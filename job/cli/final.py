"""`final`: train the chosen model on all training images, score it on the 10,000 test images, and save it."""

from __future__ import annotations

import argparse
from typing import Any

from job.cli.options import (
    RUN_CONFIG_HELP,
    add_data_args,
    add_device_args,
    add_protocol_args,
    add_results_args,
    inputs_from_args,
    run_config,
)
from job.pair import models
from job.pair.job import Options, run_final
from job.results.layout import RunLayout


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "final",
        help="train the final model on all training images and score it on the test images",
        description="Train MODEL on all 60,000 training images with the cross-validation protocol, score it on "
        "the 10,000 test images, and write RESULTS/RUN/final/MODEL.keras and MODEL.json (test accuracy and loss, "
        "per-class accuracy, confusion matrix, misclassified test digits, provenance). Checkpointed every epoch: "
        "a rerun after a stop resumes. Done with the same config is skipped. With --limit N it trains on the "
        f"first N training images and is still scored on all 10,000 test images. {RUN_CONFIG_HELP}",
    )
    p.add_argument("--model", required=True, help="model name (mlp, cnn, or an extra one like cnn-small)")
    add_results_args(p)
    add_data_args(p)
    add_protocol_args(p)
    p.add_argument("--force", action="store_true", help="retrain even if the final model exists")
    p.add_argument("--keep-checkpoint", action="store_true", help="keep the per-epoch checkpoint after success")
    add_device_args(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    layout, model = RunLayout(args.results, args.run), models.check_name(args.model)
    config = run_config(args, layout)  # the run's repeats: a final model grows none
    options = Options(args.force, args.keep_checkpoint, repeats=config.repeats)
    print(run_final(layout, config.protocol, model, inputs_from_args(args), options), flush=True)
    return 0
