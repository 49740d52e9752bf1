"""`fetch-data`: download and verify MNIST once (on a login node), so compute nodes need no network."""

from __future__ import annotations

import argparse
from pathlib import Path

from job import settings
from job.pair import data


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "fetch-data",
        help="download the four MNIST .gz files into a folder and verify them",
        description="Download the four MNIST IDX .gz files into --to and check the SHA-256 of their "
        "contents; valid files already there are kept. Point jobs at the folder with --data-dir or "
        f"${settings.DATA.name}.",
    )
    p.add_argument("--to", type=Path, required=True, help="folder to put the files in (created if missing)")
    p.add_argument(
        "--mirror",
        help=f"base URL holding the .gz files (default: ${settings.MIRROR.name}, else TensorFlow's MNIST mirror)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:

    folder = data.fetch(args.to, mirror=args.mirror)
    print(f"MNIST is in {folder.resolve()} (sha256 of the uncompressed files, verified):")
    for name in data.MNIST_FILES:
        print(f"  {name + '.gz':28} {data.MNIST_SHA256[name]}")
    print(f"Use it with --data-dir {folder.resolve()} or {settings.DATA.name}={folder.resolve()}")
    return 0
