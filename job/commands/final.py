"""`final`: train the chosen model on all training images, score it on the 10,000 test images, and save it."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from job.commands.common import add_data_args, add_protocol_args, add_results_args, protocol_from_args
from job.commands.run import StopFlag
from job.protocol import Protocol

if TYPE_CHECKING:
    from job.final import FinalPaths


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
    p.add_argument(
        "--allow-cpu",
        action="store_true",
        default=os.environ.get("MNIST_CV_ALLOW_CPU") == "1",
        help="run on the CPU even when a GPU was allocated but is not visible (default: $MNIST_CV_ALLOW_CPU=1)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from job import final, models, results

    protocol = protocol_from_args(args)
    model_name = models.check_name(args.model)
    where = final.paths(args.results, args.run, model_name)
    if not args.force and final.completed(where, protocol.config_id):
        print(f"{model_name}/final: already done with config {protocol.config_id} ({where.result}); --force to retrain")
        return 0
    results.ensure_writable(where.result.parent)
    return train_and_write(args, protocol, model_name, where)


def train_and_write(args: argparse.Namespace, protocol: Protocol, model_name: str, where: FinalPaths) -> int:
    from job import data, final, provenance, results, runtime
    from job.checkpoint import Checkpoint

    dataset = data.load(args.data_dir, custom=args.custom_data)
    runtime_info = runtime.configure(
        deterministic=not protocol.jit, precision=protocol.precision, allow_cpu=args.allow_cpu
    )
    from job.progress import EpochProgress  # imports Keras: after runtime.configure

    label = f"{model_name}/final"
    stop = StopFlag()
    stop.install()
    checkpoint = Checkpoint(where.checkpoint)
    n_train = len(dataset.x_train[: protocol.limit])
    progress = EpochProgress(label, protocol.epochs, -(-n_train // protocol.batch_size), stop)
    print(
        f"{label}: config {protocol.config_id}, {n_train} training images of {dataset.name} from {dataset.source}, "
        f"device {runtime_info['device_used']}, {runtime_info['threads']['intra_op']} threads",
        flush=True,
    )
    try:
        model, outcome = final.train(
            model_name, protocol, dataset, checkpoint, callbacks=[progress], stop_requested=stop
        )
    finally:
        progress.close()
    result = {
        "schema_version": results.SCHEMA_VERSION,
        "model": model_name,
        "config": protocol.to_dict(),
        "config_id": protocol.config_id,
        "model_file": {"name": where.model_file.name, "sha256": final.save_model(model, where.model_file)},
        **outcome,
        "environment": provenance.environment(runtime_info),
    }
    results.write_json_atomic(where.result, result)  # last: a result on disk always names a complete model file
    checkpoint.remove()
    score, test = result["score"], result["test"]
    print(
        f"{label}: test accuracy {score['accuracy'] * 100:.3f}% (loss {score['loss']:.4f}), "
        f"{test['n_images'] - test['n_correct']} of {test['n_images']} test images misclassified, "
        f"in {result['timings']['fit_seconds']:.1f}s -> {where.model_file}",
        flush=True,
    )
    return 0
