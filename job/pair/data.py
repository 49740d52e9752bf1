"""MNIST: find it, download it if need be, and check every byte before a model sees it.

A dataset is read from (in this order) the ``data_dir`` argument, the data folder setting (job/settings.py), the
Keras cache ``$KERAS_HOME/datasets/mnist.npz``, or a download of the four IDX ``.gz`` files into a local cache.
Whatever the source, each file's uncompressed content is hashed at every load and its IDX structure validated;
the original MNIST must match the published hashes unless ``custom=True``. A folder's gzipped files are gunzipped
once: later loads read a checked copy while the file is unchanged (job.pair.verified).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from job import atomic
from job.errors import JobError
from job.files import FileError, open_regular, sha256_file
from job.mnist import MNIST_FILES, MNIST_SHA256, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS
from job.pair import verified
from job.pair.verified import IdxFile
from job.protocol import MIN_IMAGES_PER_FOLD, Protocol
from job.settings import DATA, settings

# TensorFlow's mirror of the four IDX .gz files (Keras's own base URL only serves mnist.npz).
DEFAULT_MIRROR = "https://storage.googleapis.com/cvdf-datasets/mnist/"
DOWNLOAD_TIMEOUT_S = 60

# The most bytes one IDX file or npz array may declare. MNIST's largest file is 47 MB: this admits a custom
# dataset twenty times its size while refusing a header, or a gzip, that would have a process allocate gigabytes.
MAX_IDX_BYTES = 1 << 30
MNIST_MAX_BYTES = 16 + 60_000 * 28 * 28  # the training images, the largest of the four MNIST files
MAX_DOWNLOAD_BYTES = 64 << 20  # the four MNIST .gz files are 9.9 MB at most; a mirror sending more is wrong

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
_IMAGE_SIDE = 28
_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = b"PK\x03\x04"
_NPZ_KEYS = {"x_train": TRAIN_IMAGES, "y_train": TRAIN_LABELS, "x_test": TEST_IMAGES, "y_test": TEST_LABELS}
NO_DATA_HINT = f"set {DATA.name} or pass --data-dir to a folder holding the MNIST files"
_CUSTOM_HINT = "not the original MNIST; pass --custom-data to load a different IDX dataset"


class DataError(JobError):
    """The data is missing, unreadable, malformed or not what it claims to be (one line naming the file)."""


@dataclass(frozen=True)
class Dataset:
    """Raw MNIST-shaped data. Arrays are uint8 and read-only: scaling belongs to the training pipeline."""

    name: str  # "mnist" when every hash matches MNIST_SHA256, else "custom"
    source: str  # the folder or file it was read from
    x_train: np.ndarray  # (N, 28, 28)
    y_train: np.ndarray  # (N,), values 0-9
    x_test: np.ndarray
    y_test: np.ndarray
    # SHA-256 of each IDX file's uncompressed content, keyed by the MNIST_FILES names. An npz's arrays are
    # hashed as the IDX bytes they stand for (header + data), so the same data gives the same hashes
    # whatever its packaging; the npz file's own hash is added under its file name.
    sha256: dict[str, str]

    def provenance(self) -> dict[str, Any]:
        """What a result records of the data it was trained on."""
        return {"name": self.name, "source": self.source, "sha256": self.sha256}


def load(
    data_dir: str | os.PathLike | None = None,
    *,
    custom: bool = False,
    mirror: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Dataset:
    """Load MNIST from the first source that exists (see the module docstring), verified.

    With ``custom=True`` a dataset that is not the original MNIST is accepted (name "custom") as long
    as its structure is valid; the original MNIST is still named "mnist".
    """
    local = local_source(data_dir)
    if local is None:
        folder = Path(cache_dir or _default_cache_dir()).expanduser()
        cache = verified.Cache(folder) if folder.is_dir() else None  # nothing to cache before a first download
        parts = {name: _ensure(folder, name, _mirror(mirror), cache) for name in MNIST_FILES}
        if cache is not None:
            cache.commit()
        return _dataset(parts, str(folder), custom=custom)
    if local.is_dir():
        return _load_folder(local, custom=custom)
    if local.exists():
        return _load_npz(local, custom=custom)
    raise DataError(f"{local}: no such file or folder - {NO_DATA_HINT}")


def images(source: str | os.PathLike) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """(sha256 by file name, images by file name) of the training and test images in `source`, whatever the data:
    the hashes a result recorded decide whether they are the ones it was trained or scored on (collect's grids of
    misclassified digits)."""
    dataset = load(source, custom=True)
    return dataset.sha256, {TRAIN_IMAGES: dataset.x_train, TEST_IMAGES: dataset.x_test}


def fetch(to: str | os.PathLike, *, mirror: str | None = None) -> Path:
    """Download the four MNIST .gz files into ``to`` (verified, atomic); valid files there are kept."""
    folder = Path(to).expanduser()
    for name in MNIST_FILES:
        _ensure(folder, name, _mirror(mirror))
    return folder


# ---- where the data comes from


def local_source(data_dir: str | os.PathLike | None) -> Path | None:
    """The argument, else the data folder setting, else the Keras cache if it exists; None means download."""
    chosen = data_dir or settings().data
    if chosen:
        return Path(chosen).expanduser()
    keras_npz = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "datasets" / "mnist.npz"
    return keras_npz if keras_npz.is_file() else None


def _default_cache_dir() -> Path:
    return settings().cache


def _mirror(mirror: str | None) -> str:
    return mirror or settings().mirror or DEFAULT_MIRROR


# ---- IDX files


def _load_folder(folder: Path, *, custom: bool) -> Dataset:
    """A folder with the four IDX files, each gzipped or plain, or holding a Keras mnist.npz."""
    found = {name: _idx_path(folder, name) for name in MNIST_FILES}
    if not any(found.values()):
        if (folder / "mnist.npz").is_file():
            return _load_npz(folder / "mnist.npz", custom=custom)
        raise DataError(f"{folder}: no MNIST files there (the four IDX files, .gz or plain, or mnist.npz)")
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise DataError(
            f"{folder / missing[0]}.gz: missing (neither {missing[0]}.gz nor {missing[0]} is there) - "
            f"the folder needs all of {', '.join(MNIST_FILES)} (.gz or plain) or a mnist.npz"
        )
    parts = _read_through_cache(folder, {n: p for n, p in found.items() if p is not None}, custom=custom)
    return _dataset(parts, str(folder), custom=custom)


def _read_through_cache(folder: Path, paths: dict[str, Path], *, custom: bool) -> dict[str, IdxFile]:
    """Each file parsed, checked and hashed, gunzipped only if the cache holds no copy of it as it is now (and, for
    MNIST, none that is not MNIST's)."""
    cache = verified.Cache(folder)
    parts = {
        name: _read_cached(cache, path, name, MAX_IDX_BYTES, None if custom else MNIST_SHA256[name])
        for name, path in paths.items()
    }
    cache.commit()
    return parts


def _read_cached(cache: verified.Cache, path: Path, name: str, max_bytes: int, expected: str | None) -> IdxFile:
    return cache.read(
        path,
        name,
        read_source=lambda p: read_idx(p, name, max_bytes),
        read_copy=lambda p: _read_npy_part(p, name, max_bytes),
        expected=expected,
    )


def _idx_path(folder: Path, name: str) -> Path | None:
    """The published .gz form first, else the gunzipped file."""
    for path in (folder / f"{name}.gz", folder / name):
        if path.is_file():
            return path
    return None


def read_idx(path: Path, name: str, max_bytes: int = MAX_IDX_BYTES) -> IdxFile:
    """One IDX file (gzipped or plain) parsed and structure-checked; `name` (one of MNIST_FILES) says which kind.

    The header is checked before the data is read, and no more than it declares (at most `max_bytes`) is ever
    read or decompressed: a gzip that inflates to gigabytes costs what its header declares, not gigabytes.
    """
    with open_regular(path) as f:
        gzipped = f.read(2) == _GZIP_MAGIC
        f.seek(0)
        try:
            if gzipped:
                with gzip.GzipFile(fileobj=f) as stream:
                    return _read_idx_stream(stream, name, str(path), max_bytes)
            return _read_idx_stream(f, name, str(path), max_bytes)
        except EOFError:
            raise DataError(f"{path}: truncated gzip file (ends before the end of its stream)") from None
        except (gzip.BadGzipFile, zlib.error) as exc:
            raise DataError(f"{path}: corrupt gzip file ({exc})") from None
        except OSError as exc:
            raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _read_idx_stream(stream: BinaryIO, name: str, where: str, max_bytes: int) -> IdxFile:
    """Check the IDX header, then read exactly the data it declares; a read-only uint8 array."""
    images = _is_images(name)
    ndim = 3 if images else 1
    header_len = 4 + 4 * ndim
    header = stream.read(header_len)
    if len(header) < header_len:
        raise DataError(f"{where}: {len(header)} bytes, too short for an IDX header")
    magic = int.from_bytes(header[:4], "big")
    expected_magic = IMAGES_MAGIC if images else LABELS_MAGIC
    if magic != expected_magic:
        raise DataError(f"{where}: bad IDX magic number 0x{magic:08x} (expected 0x{expected_magic:08x})")
    shape = tuple(int.from_bytes(header[i : i + 4], "big") for i in range(4, header_len, 4))
    if images and shape[1:] != (_IMAGE_SIDE, _IMAGE_SIDE):
        raise DataError(f"{where}: shape {shape}, expected (N, {_IMAGE_SIDE}, {_IMAGE_SIDE})")
    expected_len = header_len + math.prod(shape)
    if expected_len > max_bytes:
        raise DataError(
            f"{where}: its header declares shape {shape} ({expected_len:,} bytes), over the limit of {max_bytes:,}"
        )
    body = stream.read(expected_len - header_len)
    if len(body) < expected_len - header_len:
        raise DataError(f"{where}: {header_len + len(body):,} bytes but its header says {expected_len:,} - truncated")
    if stream.read(1):  # one byte more is enough to know, however much more there is
        raise DataError(f"{where}: more than the {expected_len:,} bytes its header says - padded")
    array = np.frombuffer(body, np.uint8).reshape(shape)
    _check_array(array, name, where)
    digest = hashlib.sha256(header)
    digest.update(body)
    return IdxFile(where, array, digest.hexdigest())


def _is_images(name: str) -> bool:
    return name in (TRAIN_IMAGES, TEST_IMAGES)


def _check_array(array: np.ndarray, name: str, where: str) -> None:
    """What IDX and npz data must both satisfy beyond their headers."""
    if array.dtype != np.uint8:
        raise DataError(f"{where}: dtype {array.dtype}, expected uint8")
    images = _is_images(name)
    if images and (array.ndim != 3 or array.shape[1:] != (_IMAGE_SIDE, _IMAGE_SIDE)):
        raise DataError(f"{where}: shape {array.shape}, expected (N, {_IMAGE_SIDE}, {_IMAGE_SIDE})")
    if not images and array.ndim != 1:
        raise DataError(f"{where}: shape {array.shape}, expected (N,)")
    if not images and array.size and array.max() > 9:
        bad = int(np.argmax(array > 9))
        raise DataError(f"{where}: label {array[bad]} at index {bad}, labels must be 0-9")


# ---- Keras mnist.npz


def _load_npz(path: Path, *, custom: bool) -> Dataset:
    with open_regular(path) as f:
        if f.read(4) != _ZIP_MAGIC:  # a .npy, say, given where the data goes
            raise DataError(f"{path}: not a .npz file (the data is a folder of IDX files or a Keras mnist.npz)")
        try:
            with zipfile.ZipFile(f) as npz:
                members = set(npz.namelist())
                missing = [key for key in _NPZ_KEYS if f"{key}.npy" not in members]
                arrays = {}
                for key in _NPZ_KEYS.keys() - missing:
                    with npz.open(f"{key}.npy") as member:  # inflated only as far as its .npy header declares
                        arrays[key] = read_npy(member, f"{path}[{key}]", MAX_IDX_BYTES)
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    if missing:
        raise DataError(f"{path}: no {', '.join(missing)} array (a mnist.npz holds {', '.join(_NPZ_KEYS)})")
    parts = {name: _npz_part(arrays[key], name, f"{path}[{key}]") for key, name in _NPZ_KEYS.items()}
    return _dataset(
        parts,
        str(path),
        custom=custom,
        extra={path.name: sha256_file(path, len(_NPZ_KEYS) * MAX_IDX_BYTES, "four arrays hold")},
    )


def read_npy(f: BinaryIO, where: str, max_bytes: int) -> np.ndarray:
    """The array in a .npy stream, its header checked before any data is read: numbers only, at most
    `max_bytes` of them, and exactly as many bytes as the header declares."""
    try:
        version = np.lib.format.read_magic(f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read_header:
            raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")
        shape, fortran_order, dtype = read_header[version](f)
    except ValueError as exc:
        raise DataError(f"{where}: not a readable .npy array ({exc})") from None
    if dtype.hasobject or dtype.fields is not None:
        raise DataError(f"{where}: dtype {dtype} is not numbers")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > max_bytes:
        raise DataError(
            f"{where}: its header declares shape {shape} of {dtype} ({nbytes:,} bytes), over the limit of {max_bytes:,}"
        )
    content = f.read(nbytes)
    if len(content) < nbytes or f.read(1):
        holds = "fewer" if len(content) < nbytes else "more"
        raise DataError(f"{where}: its header declares {nbytes:,} bytes of data, the file holds {holds}")
    return np.frombuffer(content, dtype).reshape(shape, order="F" if fortran_order else "C")


def _read_npy_part(path: Path, name: str, max_bytes: int) -> IdxFile:
    """A .npy file read and checked as the IDX file it stands for (the verified cache's copies)."""
    with open_regular(path) as f:
        return _npz_part(read_npy(f, str(path), max_bytes), name, str(path))


def _npz_part(array: np.ndarray, name: str, where: str) -> IdxFile:
    """Hash an array as the IDX file it stands for, so npz and IDX copies of MNIST verify alike."""
    _check_array(array, name, where)
    array = np.ascontiguousarray(array)
    array.setflags(write=False)
    magic = IMAGES_MAGIC if _is_images(name) else LABELS_MAGIC
    header = b"".join(int(v).to_bytes(4, "big") for v in (magic, *array.shape))
    digest = hashlib.sha256(header)
    digest.update(array.data)
    return IdxFile(where, array, digest.hexdigest())


# ---- the dataset as a whole


def _dataset(parts: dict[str, IdxFile], source: str, *, custom: bool, extra: dict[str, str] | None = None) -> Dataset:
    for images, labels in ((TRAIN_IMAGES, TRAIN_LABELS), (TEST_IMAGES, TEST_LABELS)):
        n_images, n_labels = len(parts[images].array), len(parts[labels].array)
        if n_images != n_labels:
            raise DataError(f"{parts[labels].where}: {n_labels} labels for {n_images} images")
    n_train, minimum = len(parts[TRAIN_IMAGES].array), Protocol().min_images
    if n_train < minimum:
        raise DataError(
            f"{parts[TRAIN_IMAGES].where}: {n_train} training images; cross-validation needs at least {minimum} "
            f"({MIN_IMAGES_PER_FOLD} per fold)"
        )
    if not len(parts[TEST_IMAGES].array):
        raise DataError(f"{parts[TEST_IMAGES].where}: no test images (the final model is scored on them)")
    mismatch = next((name for name in MNIST_FILES if parts[name].sha256 != MNIST_SHA256[name]), None)
    if mismatch is not None and not custom:
        raise DataError(f"{parts[mismatch].where}: {_mismatch(parts[mismatch].sha256, mismatch)} - {_CUSTOM_HINT}")
    return Dataset(
        name="mnist" if mismatch is None else "custom",
        source=source,
        x_train=parts[TRAIN_IMAGES].array,
        y_train=parts[TRAIN_LABELS].array,
        x_test=parts[TEST_IMAGES].array,
        y_test=parts[TEST_LABELS].array,
        sha256={name: part.sha256 for name, part in parts.items()} | (extra or {}),
    )


def _mismatch(got: str, name: str) -> str:
    return f"sha256 mismatch (got {got[:12]}..., expected {MNIST_SHA256[name][:12]}...)"


# ---- download


def _ensure(folder: Path, name: str, mirror: str, cache: verified.Cache | None = None) -> IdxFile:
    """The verified NAME.gz in ``folder``, downloaded unless a valid copy is already there (read through `cache`)."""
    dest = folder / f"{name}.gz"
    if dest.is_file():
        try:
            part = (
                read_idx(dest, name, MNIST_MAX_BYTES)
                if cache is None
                else _read_cached(cache, dest, name, MNIST_MAX_BYTES, MNIST_SHA256[name])
            )
            return _verified(part, name)
        except (DataError, FileError):
            pass  # a broken or foreign copy: replace it with a fresh download
    return _download(f"{mirror.rstrip('/')}/{name}.gz", dest, name)


def _verified(part: IdxFile, name: str) -> IdxFile:
    if part.sha256 != MNIST_SHA256[name]:
        raise DataError(f"{part.where}: {_mismatch(part.sha256, name)}")
    return part


def _download(url: str, dest: Path, name: str) -> IdxFile:
    """Stream to a temp file beside ``dest``, verify it, then rename it into place.

    The rename is atomic, so concurrent array tasks downloading the same file never see a partial one;
    a download that fails verification is removed.
    """
    try:
        with atomic.replacing(dest) as tmp:
            with open(tmp, "wb") as out:
                for chunk in _http_chunks(url):
                    out.write(chunk)
            try:
                part = _verified(read_idx(tmp, name, MNIST_MAX_BYTES), name)
            except DataError as exc:
                where = str(exc).replace(str(tmp), str(dest), 1)
                raise DataError(f"{where} (downloaded from {url}; nothing was saved)") from None
    except OSError as exc:
        raise DataError(f"{dest}: cannot save the download ({exc.strerror or exc})") from None
    return IdxFile(str(dest), part.array, part.sha256)


def _http_chunks(url: str) -> Iterator[bytes]:
    """The body of ``url`` in chunks, at most MAX_DOWNLOAD_BYTES of it; network failures as one DataError."""
    received = 0
    try:
        # A file:// mirror goes through the bounded reader: urllib would wait forever on a FIFO there.
        parsed = urllib.parse.urlparse(url)
        local = parsed.scheme == "file"
        source = open_regular(Path(urllib.request.url2pathname(parsed.path))) if local else None
        with source or urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            while chunk := response.read(1 << 20):
                received += len(chunk)
                if received > MAX_DOWNLOAD_BYTES:
                    raise DataError(
                        f"{url}: more than {MAX_DOWNLOAD_BYTES:,} bytes, not an MNIST file - {NO_DATA_HINT}"
                    )
                yield chunk
    except urllib.error.HTTPError as exc:
        raise DataError(f"{url}: download failed (HTTP {exc.code} {exc.reason}) - {NO_DATA_HINT}") from None
    except urllib.error.URLError as exc:
        raise DataError(f"{url}: download failed ({exc.reason}) - {NO_DATA_HINT}") from None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise DataError(f"{url}: download failed ({exc!r}) - {NO_DATA_HINT}") from None
