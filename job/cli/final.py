"""`final`: train the chosen model on all training images, score it on the 10,000 test images, and save it."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from job.cli.options import (
    add_data_args,
    add_device_args,
    add_protocol_args,
    add_results_args,
    protocol_from_args,
)
from job.pair.protocol import Protocol

if TYPE_CHECKING:
    from job.pair.final import FinalPaths


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "final",
        help="train the final model on all training images and score it on the test images",
        description="Train MODEL on all 60,000 training images with the cross-validation protocol, score it on "
        "the 10,000 test images, and write RESULTS/RUN/final/MODEL.keras and MODEL.json (test accuracy and loss, "
        "per-class accuracy, confusion matrix, misclassified test digits, provenance). Checkpointed every epoch: "
        "a rerun after a stop resumes. Done with the same config is skipped. With --limit N it trains on the "
        "first N training images and is still scored on all 10,000 test images.",
    )
    p.add_argument("--model", required=True, help="model name (mlp, cnn, or an extra one like cnn-small)")
    add_results_args(p)
    add_data_args(p)
    add_protocol_args(p)
    p.add_argument("--force", action="store_true", help="retrain even if the final model exists")
    add_device_args(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from job.pair import final, models
    from job.results import store as results

    protocol = protocol_from_args(args)
    model_name = models.check_name(args.model)
    where = final.paths(args.results, args.run, model_name)
    if not args.force and results.completed(where.result, protocol.config_id, read=final.read_result):
        print(f"{model_name}/final: already done with config {protocol.config_id} ({where.result}); --force to retrain")
        return 0
    results.ensure_writable(where.result.parent)
    return train_and_write(args, protocol, model_name, where)


def train_and_write(args: argparse.Namespace, protocol: Protocol, model_name: str, where: FinalPaths) -> int:
    from job.pair import final, session
    from job.pair.checkpoint import Checkpoint
    from job.results import atomic
    from job.results import store as results

    label = f"{model_name}/final"
    checkpoint = Checkpoint(where.checkpoint)
    with session.training(args, protocol, model_name, label) as trained:
        model, outcome = final.train(model_name, protocol, trained.dataset, checkpoint, **trained.fit_options)
    model_file = {"name": where.model_file.name, "sha256": final.save_model(model, where.model_file)}
    result = {
        "schema_version": results.SCHEMA_VERSION,
        "model": model_name,
        **trained.stamp(protocol, {"model_file": model_file, **outcome}),
    }
    atomic.write_json(where.result, result)  # last: a result on disk always names a complete model file
    checkpoint.remove()
    score, test = result["score"], result["test"]
    print(
        f"{label}: test accuracy {score['accuracy'] * 100:.3f}% (loss {score['loss']:.4f}), "
        f"{test['n_images'] - test['n_correct']} of {test['n_images']} test images misclassified, "
        f"in {result['timings']['fit_seconds']:.1f}s -> {where.model_file}",
        flush=True,
    )
    return 0
