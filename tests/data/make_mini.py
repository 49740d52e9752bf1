"""Cut tests/data/mnist-mini/ from the verified full MNIST: its first 6,000 training and first 1,000 test images.

    python tests/data/make_mini.py FOLDER_WITH_FULL_MNIST [--to tests/data/mnist-mini]

The full files are loaded through job.pair.data, so they must match MNIST_SHA256 before anything is cut. The
subset is written as the four IDX files (headers give the new counts), gzipped with mtime 0 and no file name so
the same zlib writes the same bytes, plus SHA256SUMS: the hashes of the uncompressed files, which
tests/test_mini_data.py checks. Run with PYTHONPATH set to the checkout.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
from pathlib import Path

import numpy as np

from job.pair import data

N_TRAIN, N_TEST = 6_000, 1_000  # enough for the tests' --limit 3000 and for a 5-fold run of the whole subset
HERE = Path(__file__).resolve().parent
MINI = HERE / "mnist-mini"
SUMS = "SHA256SUMS"
_MAGIC = {3: 0x00000803, 1: 0x00000801}  # IDX: unsigned bytes, 3 (images) or 1 (labels) dimensions


def idx_bytes(array: np.ndarray) -> bytes:
    """An uint8 array as an IDX file: magic number, one big-endian uint32 per dimension, then the data."""
    header = b"".join(int(v).to_bytes(4, "big") for v in (_MAGIC[array.ndim], *array.shape))
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def subset(full: data.Dataset) -> dict[str, bytes]:
    """The uncompressed IDX content of each file of the subset, keyed by the MNIST file names."""
    arrays = {
        data.TRAIN_IMAGES: full.x_train[:N_TRAIN],
        data.TRAIN_LABELS: full.y_train[:N_TRAIN],
        data.TEST_IMAGES: full.x_test[:N_TEST],
        data.TEST_LABELS: full.y_test[:N_TEST],
    }
    return {name: idx_bytes(array) for name, array in arrays.items()}


def sha256sums(contents: dict[str, bytes]) -> str:
    """`sha256sum` format, over the uncompressed files (gzip wrappers may differ, their contents may not)."""
    return "".join(f"{hashlib.sha256(content).hexdigest()}  {name}\n" for name, content in contents.items())


def write(contents: dict[str, bytes], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in contents.items():
        (folder / f"{name}.gz").write_bytes(gzip.compress(content, compresslevel=9, mtime=0))
    (folder / SUMS).write_text(sha256sums(contents))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("full", type=Path, help="folder holding the four full MNIST files (verified before use)")
    parser.add_argument("--to", type=Path, default=MINI, help=f"where to write the subset (default: {MINI})")
    args = parser.parse_args()
    try:
        full = data.load(args.full)  # not custom: anything but the published MNIST is refused here
    except data.DataError as exc:
        parser.exit(1, f"make_mini: error: {exc}\n")
    write(subset(full), args.to)
    print(f"{N_TRAIN:,} training and {N_TEST:,} test images of {full.source} -> {args.to}")


if __name__ == "__main__":
    main()
