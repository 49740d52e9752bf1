"""The `mnist-cv` / `python -m job` command line: one subcommand per module in this package.

Each command module imports only the standard library at its top, so `--help` and argument errors never
load TensorFlow. Every failure ends as one line on stderr and an exit status:
2 usage error, 1 runtime failure (GPU out of memory included), 3 stopped by a signal (from JobError.exit_code),
130 interrupted with Ctrl-C. An exception nobody anticipated is a bug: one line saying so, exit 1, and its
traceback in a file in the temp folder ($TMPDIR, else /tmp) that the line names; `--debug` prints it instead.

Output is never the job: stdout and stderr are made safe first (job/output.py), so a reader gone early
(`| head -1`), a closed stream (`>&-`) or a terminal that cannot encode a character drops or escapes the output
and the command still ends with its own status: a training with its result written, a listing with 0.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
import traceback
from importlib import metadata
from typing import Any, NoReturn

from job import output, provenance
from job.console import PROG, one_line
from job.errors import JobError

COMMANDS = (
    "run",
    "pairs",
    "status",
    "fetch_data",
    "collect",
    "submit",
    "final",
    "ensemble",
    "predict",
    "bench",
    "doctor",
    "verify",
)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is a single line (the usage block is one `--help` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see --help)\n")


class VersionAction(argparse.Action):
    """`--version`: the package's version and the commit of the code that runs (what a result would record); asked
    of git only when given, not at every start."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> NoReturn:
        try:
            version = metadata.version("mnist-cv")
        except metadata.PackageNotFoundError:  # run from a checkout or snapshot that was never installed
            version = "(not installed)"
        git = provenance.git()
        commit = "unknown commit" if git is None else git["commit"] + (" with uncommitted changes" * git["dirty"])
        print(f"{PROG} {version}, {commit}", flush=True)  # on stdout, for a script to read
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description="5-fold cross-validation of the Keras MNIST tutorial's MLP and CNN, one (model, fold) pair a job.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="print the traceback of an internal error (a bug) instead of saving it"
    )
    parser.add_argument("--version", action=VersionAction, help="print the version and the commit of this code, exit")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    for name in COMMANDS:
        importlib.import_module(f"job.cli.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    output.install()
    argv = sys.argv[1:] if argv is None else argv
    prefix, debug = PROG, "--debug" in argv[:1]  # known before parsing, so a failure while parsing is reported alike
    try:
        args = build_parser().parse_args(argv)
        prefix = f"{PROG} {args.command}"
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # the one place every failure becomes one line
        message, status = _describe(error)
        if message is None:
            line = f"internal error (a bug): {type(error).__name__}: {error}; {_save_traceback(error, argv, debug)}"
        else:
            line = f"error: {message}"
        print(f"{prefix}: {one_line(line)}", file=sys.stderr)
        return status


def _describe(error: Exception) -> tuple[str | None, int]:
    """The one-line message and exit status of a failure we know; (None, 1) for one nobody anticipated."""
    if isinstance(error, JobError):
        return str(error), error.exit_code
    if _is_out_of_memory(error):
        text = " ".join(str(error).split()) or type(error).__name__
        start = text.find("OOM when allocating")  # TensorFlow's message starts with the internal op's name
        return f"out of memory ({text[max(start, 0) :].split(' [Op:')[0]}); a smaller --batch-size needs less", 1
    if isinstance(error, OSError):  # a full disk, a lost mount, a permission
        return str(error), 1
    return None, 1


def _is_out_of_memory(error: Exception) -> bool:
    """A host allocation failure, or TensorFlow's (a GPU's memory is full) - without importing TensorFlow."""
    if isinstance(error, MemoryError):
        return True
    tf = sys.modules.get("tensorflow")  # an error of TensorFlow's can only come from a process that loaded it
    errors = getattr(tf, "errors", None)
    return errors is not None and isinstance(error, errors.ResourceExhaustedError)


def _save_traceback(error: Exception, argv: list[str], debug: bool) -> str:
    """Where the traceback went: stderr with --debug, else a file in the temp folder."""
    text = "".join(traceback.format_exception(error))
    if debug:
        sys.stderr.write(text)
        return "traceback above"
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    try:
        fd, path = tempfile.mkstemp(prefix=f"{PROG}-{stamp}-", suffix=".traceback.txt")
        with os.fdopen(fd, "w", encoding="utf-8", errors=output.ESCAPE) as f:  # a path's undecodable byte too
            f.write(f"{PROG} {' '.join(argv)}\n{text}")
    except OSError as failed:
        return f"its traceback could not be saved ({failed.strerror or failed}): rerun with --debug to see it"
    return f"traceback in {path}"


if __name__ == "__main__":
    sys.exit(main())
