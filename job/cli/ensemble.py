"""`ensemble`: average each model's fold models of one repeat on the test images (the fold ensemble) and score it."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from job.cli.options import REPEAT, add_data_args, add_device_args, add_results_args, inputs_from_args
from job.errors import JobError
from job.pair import models
from job.pair.ensemble import run_ensembles
from job.protocol import DEFAULT_MODELS
from job.results import manifest, store
from job.results.layout import RunLayout


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "ensemble",
        help="average each model's fold models on the test images (the fold ensemble) and score it",
        description="For each model whose folds of a repeat are all done with kept weights (`run --keep-model`), "
        "rebuild the fold models around the weights their results name, average their softmax probabilities on "
        "the 10,000 test images and score the average: accuracy, loss, per-class accuracy, confusion matrix, and "
        "each fold model's own test accuracy beside it. Writes RESULTS/RUN/ensemble/MODEL.json "
        "(ensemble/repeat-R/MODEL.json for a repeat R >= 1), naming the fold results it used; one of the same fold "
        "results is skipped. A model whose folds are not all there with kept weights is said in one line, with "
        "the command that trains them. One process makes an ensemble at a time (ensemble/MODEL.lease). Exits 0 when "
        "one was made or found done, else 1 when one could not be made, else 75 when another process is making "
        "them.",
    )
    p.add_argument("--model", help="only this model (default: every model with results in the run)")
    p.add_argument("--repeat", type=REPEAT, default=0, help="the repeat whose folds to average (default 0)")
    add_results_args(p)
    add_data_args(p)
    p.add_argument("--force", action="store_true", help="make the ensemble again even if one of these folds exists")
    add_device_args(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    layout = RunLayout(args.results, args.run)
    found = manifest.find(layout)  # the run's config: the only one whose folds are averaged
    if found.manifest is None:
        why = "results of several configs and no run.json" if found.source is manifest.Source.MIXED else "no result"
        raise JobError(f"{layout.folder}: {why}: no fold models to average")
    if args.model is not None:
        names = [models.check_name(args.model)]
    else:
        present = {record.result.model for record in store.scan(layout).records}
        names = [name for name in [*DEFAULT_MODELS, *sorted(present - set(DEFAULT_MODELS))] if name in present]
        if not names:
            raise JobError(f"{layout.folder}: no valid pair result: no fold models to average")
    outcome = run_ensembles(layout, found.manifest.protocol, names, args.repeat, inputs_from_args(args), args.force)
    for line in [*outcome.refused, *outcome.held]:
        print(line, file=sys.stderr, flush=True)
    for line in outcome.done:
        print(line, flush=True)
    return outcome.exit_code
