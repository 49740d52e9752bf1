"""rich's Console for every command's output, and one_line() for every message. Both write through sys.stdout and
sys.stderr as job.output makes them: a reader gone early or a closed stream drops the output and never ends the
command, and text the terminal's encoding cannot hold is escaped."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from job.output import escape_char

PROG = "mnist-cv"  # the command's name in every message


def console(**options: Any) -> Console:
    return Console(**options)  # on sys.stdout, looked up at each write: job.output's once main() ran


def one_line(text: str) -> str:
    """`text` on one line: line breaks and other control characters, from file names or library errors, escaped
    (a name's byte that is not UTF-8 as '\\xff')."""
    return "".join(c if c.isprintable() else _escaped(c) for c in text)


def _escaped(c: str) -> str:
    return escape_char(c) if 0xDC80 <= ord(c) <= 0xDCFF else repr(c)[1:-1]
