"""`doctor`: check the node before trusting it with a run (interactively, or as a one-task job)."""

from __future__ import annotations

import argparse
from typing import Any

from job.cli.options import add_data_args, number
from job.console import one_line
from job.pair import doctor, models

MAX_STEPS = 10_000  # a check of seconds, not a training


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "doctor",
        help="check this node: versions, the GPUs Slurm gave against what TensorFlow sees, the data, a few steps",
        description="One line per check, each ok, warn, fail or skip: Python and package versions; the Slurm job "
        "and the GPUs it allocated; the Apptainer image and its digest; TensorFlow's build (CUDA, cuDNN); the GPUs "
        "TensorFlow sees against those allocated; the threads; the CPU's instruction-set extensions and oneDNN's cap "
        "on them (ONEDNN_MAX_CPU_ISA), which change the last digits; the data, found and verified (never "
        "downloaded); and a few training steps of the job's own compiled loop on the device, run twice from one seed "
        "and compared bit for bit, with where the data and weights live and the time per step. Where no GPU is "
        "allocated or visible the GPU check says so and is skipped. Exit status: 0 when no check failed, 1 when one "
        "did. On a GPU node: srun --gres=gpu:1 mnist-cv doctor (or sbatch --wrap 'mnist-cv doctor').",
    )
    add_data_args(p)
    p.add_argument("--model", default="mlp", help=f"the model whose steps to run ({', '.join(models.names())})")
    p.add_argument(
        "--steps", type=number(1, MAX_STEPS), default=50, help="training steps per run (default 50, batch 32)"
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    request = doctor.Request(args.data_dir, args.custom_data, models.check_name(args.model), args.steps)
    checks = []
    for check in doctor.run(request):
        checks.append(check)
        print(f"{check.name:<9}{check.verdict.value:<6}{one_line(check.detail)}", flush=True)  # paths, variables
    failed = [c.name for c in checks if c.verdict == doctor.Verdict.FAIL]
    print(f"{len(checks)} checks: " + (f"failed: {', '.join(failed)}" if failed else "none failed"), flush=True)
    return doctor.exit_code(checks)
