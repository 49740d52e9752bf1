"""MNIST as published: its four files, the SHA-256 of each one's content, and how many images each holds.

What a result's data claims are checked against; the loader (job/pair/data.py) checks the files themselves.
"""

from __future__ import annotations

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
MNIST_FILES: tuple[str, ...] = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

# SHA-256 of the uncompressed files; gzip wrappers differ between mirrors, their contents do not.
MNIST_SHA256: dict[str, str] = {
    TRAIN_IMAGES: "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    TRAIN_LABELS: "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    TEST_IMAGES: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    TEST_LABELS: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

# Images (and labels) in each file of the published MNIST.
MNIST_COUNTS: dict[str, int] = {TRAIN_IMAGES: 60_000, TRAIN_LABELS: 60_000, TEST_IMAGES: 10_000, TEST_LABELS: 10_000}
