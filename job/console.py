"""rich's Console for every command's output, so that a reader gone early (`mnist-cv status | head`) ends the
command quietly with 0, as main() promises; rich's own handling ends the process with a silent exit 1."""

from __future__ import annotations

from typing import Any

from rich.console import Console

PROG = "mnist-cv"  # the command's name in every message


class PipeConsole(Console):
    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError  # main() ends quietly with 0


def console(**options: Any) -> Console:
    return PipeConsole(**options)


def one_line(text: str) -> str:
    """`text` on one line: line breaks and other control characters, from file names or library errors, escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
