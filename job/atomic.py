"""Atomic file writes: a temp file in the same folder, fsynced, then renamed over the target (or, to create a name
only if it does not exist, hard-linked to it).

Readers (collect while pairs still run, a requeued task, a second array task) see the old file or the new
one, never half of one; a kill at any instant leaves no torn file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from job.errors import JobError


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a temp path beside `path` (same suffix, for libraries that check it); rename it over `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{''.join(path.suffixes)}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        tmp.chmod(0o666 & ~_umask())  # mkstemp makes files private; results and caches are often shared
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes) -> None:
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: Path, obj: Any) -> None:
    """Write `obj` as JSON; a NaN or infinity in it is refused (JobError) and nothing is written."""
    try:
        text = json.dumps(obj, indent=1, allow_nan=False)
    except ValueError as error:
        raise JobError(f"{path}: not written, {error}") from None
    write_bytes(path, (text + "\n").encode())


def create(path: Path, data: bytes) -> bool:
    """Create `path` holding `data`, complete, unless the name exists: then False, and nothing is written.

    The temp file is hard-linked to the name: link(2) fails with EEXIST when the name exists, atomically on NFSv2+
    and Lustre (unlike O_EXCL on NFSv2), so of two processes creating one name at once exactly one wins, and no one
    sees half a file. On NFS a lost reply can report failure for a link that happened: the temp file then has two
    names (the open(2) man page's advice for lock files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as written:
            written.write(data)
            written.flush()
            os.fsync(written.fileno())
        tmp.chmod(0o666 & ~_umask())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as error:
            if os.stat(tmp).st_nlink == 2:
                return True
            raise JobError(f"cannot create {path}: {error.strerror or error}") from None
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
