"""The `mnist-cv` / `python -m job` command line: one subcommand per module in this package.

Each command module imports only the standard library at its top, so `--help` and argument errors never
load TensorFlow. Failures become one line on stderr: exit 2 for usage errors, 1 for runtime failures.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NoReturn

from job.errors import JobError

PROG = "mnist-cv"
COMMANDS = ("run", "pairs", "status", "fetch_data", "collect", "submit", "final", "predict", "bench")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is a single line (the usage block is one `--help` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description="5-fold cross-validation of the Keras MNIST tutorial's MLP and CNN, one (model, fold) pair a job.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    for name in COMMANDS:
        importlib.import_module(f"job.cli.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except BrokenPipeError:  # `mnist-cv pairs | head`: the reader left early, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the flush at exit stays quiet
        return 0
    except JobError as error:
        print(f"{PROG} {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code
    except OSError as error:  # a full disk, a lost mount, a permission: one line, not a traceback
        print(f"{PROG} {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
