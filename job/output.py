"""Standard output and error that can neither stop a command nor fail it, whatever reads them and however they encode.

install() replaces sys.stdout and sys.stderr once, at the start of every command (job/cli main()); every writer
(print, rich's consoles, progress bars, signal handlers, TensorFlow's Python logging) goes through them:
- a stream whose reader left (`| head -1`), whose descriptor was closed (`>&-`) or whose terminal hung up is
  pointed at /dev/null the first time a write fails, and the write counts as done: the output is dropped and the
  command goes on to its own exit status (a training to its result, a listing to its end);
- a descriptor 0, 1 or 2 closed at start is opened on /dev/null, so that no file the command opens (a result, a
  checkpoint) takes its number and receives what is written to "stdout" or "stderr";
- text the stream's encoding (the locale's, or $PYTHONIOENCODING) cannot hold is written escaped: '\\u2713', and a
  file name's byte that is not UTF-8 (os.fsdecode makes it a lone surrogate) as '\\xff'. Files are written as UTF-8
  with the same escaping (utf8(), escape_names() for JSON).
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import io
import locale
import os
import sys
from typing import Any

ESCAPE = "mnist-cv-escape"  # the codecs error handler registered below
# A stream is gone, not failing: its reader left (EPIPE, ECONNRESET for a socket), its descriptor was closed
# (EBADF), its terminal hung up (EIO, ENXIO).
GONE = frozenset({errno.EPIPE, errno.ECONNRESET, errno.EBADF, errno.EIO, errno.ENXIO})


def escape_char(c: str) -> str:
    """One character as ASCII: a surrogate of os.fsdecode as the byte it stands for ('\\xff'), else Python's escape."""
    code = ord(c)
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    return c.encode("ascii", "backslashreplace").decode("ascii")


def _escape(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeEncodeError):
        raise error
    return "".join(escape_char(c) for c in error.object[error.start : error.end]), error.end


codecs.register_error(ESCAPE, _escape)


def utf8(text: str) -> bytes:
    """`text` as a file holds it: UTF-8, any name's undecodable byte escaped (never a UnicodeEncodeError)."""
    return text.encode("utf-8", ESCAPE)


def escape_names(value: Any) -> Any:
    """A JSON value with every name's undecodable byte (a lone surrogate of os.fsdecode) as the text '\\xff': JSON
    that any strict reader takes, as the terminal and summary.md show it."""
    if isinstance(value, str):
        return "".join(escape_char(c) if 0xDC80 <= ord(c) <= 0xDCFF else c for c in value)
    if isinstance(value, dict):
        return {escape_names(k): escape_names(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [escape_names(v) for v in value]
    return value


def _to_null(fd: int) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    if null == fd:  # fd was closed and was the lowest free number
        os.set_inheritable(fd, True)  # as a standard descriptor is: children get it
        return
    os.dup2(null, fd)
    os.close(null)


class _Descriptor(io.RawIOBase):
    """Writes to a descriptor; once the descriptor is gone (GONE), to /dev/null on the same number."""

    def __init__(self, fd: int, name: str) -> None:
        super().__init__()
        self._fd, self.name = fd, name

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return os.isatty(self._fd)

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            try:
                done += os.write(self._fd, view[done:])
            except OSError as error:
                if error.errno not in GONE:
                    raise  # a full disk under `> log` is the user's to hear of
                _to_null(self._fd)
                return len(view)
        return done

    def close(self) -> None:
        super().close()  # the descriptor stays open: it is the process's, not this object's


def _stream(fd: int, name: str, old: Any, buffered: bool) -> io.TextIOWrapper:
    encoding = getattr(old, "encoding", None) or locale.getpreferredencoding(False) or "utf-8"
    # What was written before comes first; None (closed at start) or gone already, nothing of it can arrive.
    with contextlib.suppress(AttributeError, OSError, ValueError):
        old.flush()
    raw = _Descriptor(fd, name)
    if not buffered:  # stderr: each write at once (a signal handler's line cannot be caught in a buffer's lock)
        return io.TextIOWrapper(raw, encoding=encoding, errors=ESCAPE, line_buffering=True, write_through=True)
    return io.TextIOWrapper(io.BufferedWriter(raw), encoding=encoding, errors=ESCAPE, line_buffering=raw.isatty())


def install() -> None:
    """Make sys.stdout and sys.stderr safe (see the module's docstring), before any output. A stream someone else
    already replaced (pytest's capture, a program calling main()) is theirs and kept as it is."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            _to_null(fd)
    if sys.stdout is None or sys.stdout is sys.__stdout__:
        sys.stdout = _stream(1, "stdout", sys.stdout, buffered=True)
    if sys.stderr is None or sys.stderr is sys.__stderr__:
        sys.stderr = _stream(2, "stderr", sys.stderr, buffered=False)
