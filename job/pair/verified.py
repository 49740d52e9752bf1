"""The verified-data cache: each gzipped data file is gunzipped and hashed once; later loads read a plain copy.

It lives beside the data (FOLDER/.mnist-cv-cache/) when that folder is writable, else in a per-user folder
($XDG_CACHE_HOME, default ~/.cache, then mnist-cv/verified/<hash of the folder's real path>/), and holds:
- stamps.json: per source file, its identity when it was read (real path, device, inode, size, mtime_ns, ctime_ns)
  and the SHA-256 of its uncompressed content;
- NAME.npy: that content as a uint8 array.
The copy is used only while the source's identity equals its stamp, and it is parsed, checked and hashed again
at every load like any data: a changed source is read again; a damaged, truncated or foreign copy is rebuilt,
never trusted. Every file is written atomically (a temp file renamed into place), so tasks building the cache
at the same time never see a torn one; at worst both build it. A cache that cannot be written is skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from job import atomic
from job.errors import JobError

CACHE_DIRNAME = ".mnist-cv-cache"
STAMPS = "stamps.json"
VERSION = 1
# File timestamps tick coarsely (a jiffy, or worse on network file systems): a file changed again within the same
# tick as its stamp would keep its timestamps. A file is stamped only once it has not changed for this long.
SETTLE_NS = 1_000_000_000


@dataclass(frozen=True)
class IdxFile:
    """One parsed IDX file (or npz array) and the hash of its IDX bytes."""

    where: str  # path (or "path[key]") for error messages
    array: np.ndarray
    sha256: str


Reader = Callable[[Path], IdxFile]


def cache_folder(data_folder: Path) -> Path:
    """Where the cache of `data_folder` lives: inside it when writable, else in the per-user cache."""
    if _writable(data_folder / CACHE_DIRNAME) or (
        not (data_folder / CACHE_DIRNAME).exists() and _writable(data_folder)
    ):
        return data_folder / CACHE_DIRNAME
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = hashlib.sha256(str(data_folder.resolve()).encode()).hexdigest()[:16]
    return user / "mnist-cv" / "verified" / key


def _writable(folder: Path) -> bool:
    """Writable by us, and not made read-only on purpose: root may write anywhere, but a folder without any write
    permission bit (a shared data set, say) is left alone."""
    try:
        return folder.is_dir() and os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)
    except OSError:
        return False


def identity(path: Path) -> dict[str, Any] | None:
    """What tells a file's content has not changed since it was hashed, short of hashing it; None if unreadable.

    Writing a file changes its mtime and ctime, replacing it changes its inode; ctime cannot be set back.
    """
    try:
        st = path.stat()
    except OSError:
        return None
    return {
        "path": str(path.resolve()),
        "dev": st.st_dev,
        "inode": st.st_ino,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
    }


class Cache:
    """The stamps and copies of one data folder's files (see the module docstring)."""

    def __init__(self, data_folder: Path) -> None:
        self.folder = cache_folder(data_folder)
        self.stamps = self._read_stamps()
        self._changed = False

    def read(self, source: Path, name: str, read_source: Reader, read_copy: Reader) -> IdxFile:
        """`source` (data file NAME) through the cache: the checked copy while the source is unchanged, else the
        source itself, read by `read_source` and then cached (gzipped sources only: a plain one is its own copy)."""
        if source.suffix != ".gz":
            return read_source(source)
        before = identity(source)
        stamp = self.stamps.get(name)
        if before is not None and isinstance(stamp, dict) and stamp.get("identity") == before:
            copy = self._read_copy(name, read_copy)
            if copy is not None and copy.sha256 == stamp.get("sha256"):
                return type(copy)(str(source), copy.array, copy.sha256)
        part = read_source(source)
        after = identity(source)
        # Stamped only if the file did not change while it was read and has settled (see SETTLE_NS).
        if after is not None and after == before and time.time_ns() - after["ctime_ns"] >= SETTLE_NS:
            self._save(name, after, part)
        return part

    def commit(self) -> None:
        """Write the stamps of the copies saved since the cache was opened (atomically; skipped if not writable)."""
        if not self._changed:
            return
        # A cache that cannot be written is no error: the next load reads the sources again.
        with contextlib.suppress(OSError, JobError):
            atomic.write_json(self.folder / STAMPS, {"version": VERSION, "files": self.stamps})
        self._changed = False

    def _read_stamps(self) -> dict[str, Any]:
        try:
            content = json.loads((self.folder / STAMPS).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(content, dict) or content.get("version") != VERSION:
            return {}
        files = content.get("files")
        return files if isinstance(files, dict) else {}

    def _read_copy(self, name: str, read_copy: Reader) -> IdxFile | None:
        try:
            return read_copy(self.folder / f"{name}.npy")
        except JobError:  # missing, truncated, damaged: rebuilt from the source
            return None

    def _save(self, name: str, source_identity: dict[str, Any], part: IdxFile) -> None:
        try:
            with atomic.replacing(self.folder / f"{name}.npy") as tmp, open(tmp, "wb") as out:
                np.save(out, part.array, allow_pickle=False)
        except OSError:
            return
        self.stamps[name] = {"identity": source_identity, "sha256": part.sha256}
        self._changed = True
