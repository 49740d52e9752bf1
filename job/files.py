"""Reading files: the one bounded reader of regular files, and their SHA-256.

Every file the job reads back (results, leases, checkpoints, records, data, models) is opened here: a FIFO would
wait for a writer forever, a device such as /dev/zero never ends, and a file far larger than what it should hold
would be read whole. So a file is opened without blocking, must be a regular file, and is read only as far as the
caller's cap for what it holds.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from job.errors import JobError

HASH_CHUNK_BYTES = 1 << 20  # models reach 120 MB: read and hashed a MiB at a time


class FileError(JobError):
    """A file that cannot be read as what it should be: missing, not a regular file, or larger than it may be."""


def open_regular(path: Path) -> BinaryIO:
    """`path` opened for reading; a FIFO, a device (/dev/zero never ends) or a folder is refused in one line."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # without O_NONBLOCK, opening a FIFO waits for a writer
    except OSError as exc:
        raise FileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    kind = os.fstat(fd).st_mode
    if not stat.S_ISREG(kind):
        os.close(fd)
        raise FileError(f"{path}: not a regular file ({_kind(kind)})")
    return os.fdopen(fd, "rb")


def read_bounded(path: Path, max_bytes: int, holds: str = "it holds") -> bytes:
    """The whole content of the regular file `path`, refused without reading when it is over `max_bytes`.

    `holds` names what the file should be, for the message ("more than a result holds")."""
    return b"".join(_chunks(path, max_bytes, holds))


def sha256_file(path: Path, max_bytes: int, holds: str = "it holds") -> str:
    """The hex SHA-256 of a regular file's content, refused without reading when it is over `max_bytes`."""
    digest = hashlib.sha256()
    for chunk in _chunks(path, max_bytes, holds):
        digest.update(chunk)
    return digest.hexdigest()


def _chunks(path: Path, max_bytes: int, holds: str) -> Iterator[bytes]:
    """The file's content a MiB at a time: its declared size is checked before any read, and what it grows to
    while read is cut at the cap all the same."""
    too_large = FileError(f"{path}: over {max_bytes:,} bytes, more than {holds}")
    read = 0
    with open_regular(Path(path)) as f:
        if os.fstat(f.fileno()).st_size > max_bytes:
            raise too_large
        while chunk := f.read(HASH_CHUNK_BYTES):
            read += len(chunk)
            if read > max_bytes:
                raise too_large
            yield chunk


def read_tail(path: Path, max_bytes: int) -> bytes:
    """The last `max_bytes` of a regular file (a log's end): a FIFO or device is refused, not waited on."""
    with open_regular(Path(path)) as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - max_bytes))
        return f.read(max_bytes)


_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a file")
