"""Predictions of a saved model on new inputs: digit images, .npy arrays and IDX files, all made MNIST-like.

MNIST digits are light on dark, their bounding box scaled to fit 20x20 keeping the aspect ratio, then placed
in a 28x28 field with their centre of mass at its centre. A photo or drawing of any size is brought to that
form here; a 28x28 image is taken to be in it already (only its polarity is fixed), so MNIST digits written
out as PNG come back pixel for pixel. Arrays and IDX files hold MNIST pixels and are used as they are.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from job.errors import JobError
from job.files import open_regular
from job.pair import data, models, runtime
from job.results.store import MAX_MODEL_BYTES

SIDE = 28
BOX = 20  # MNIST's size-normalised digits fit a 20x20 box...
CENTRE = 14.0  # ...and their centre of mass is at pixel (14, 14) of the 28x28 field (measured on the training set)
INK = 0.2  # a pixel above this fraction of the strongest ink is in the bounding box (faint halos and noise are not)
MIN_CONTRAST = 32  # grey levels between the background and the ink; less is a blank or flat image
PREDICT_BATCH = 1000
# Inputs are checked against these before they are decoded or read: the size a header declares is what a read costs.
MAX_INPUT_BYTES = 128 << 20  # the data of one .npy or IDX input: 170,000 images as uint8, 21,000 as float64
MAX_PIXELS = 25_000_000  # one image (5,000 x 5,000): a 13,000-pixel square PNG would take gigabytes to decode
JPEG_DRAFT_SIDE = 1024  # a large JPEG is decoded at 1/2 to 1/8 scale, no smaller than this: a digit needs 20 px


@dataclass
class Inputs:
    """Everything that could be read: one name and one (28, 28) float image in [0, 1] per digit."""

    names: list[str]
    pixels: np.ndarray  # (N, 28, 28) float32


def _check_archive(f: BinaryIO, path: Path) -> None:
    """A .keras zip archive whose members declare no more than a model of ours inflates to: Keras reads the whole
    config into memory, so a small archive declaring gigabytes is refused before anything is inflated (zipfile
    never inflates a member beyond the size it declares)."""
    try:
        with zipfile.ZipFile(f) as archive:
            declared = sum(member.file_size for member in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):  # Keras would call a torn archive "not found"
        raise JobError(f"{path}: not a Keras model file (truncated or not a .keras zip archive)") from None
    if declared > MAX_MODEL_BYTES:
        raise JobError(f"{path}: its archive declares {declared:,} bytes, over the {MAX_MODEL_BYTES:,} a model holds")


def load_model(path: Path) -> Any:
    """The Keras model in `path`, checked to be one of ours: (28, 28, 1) images in, 10 class probabilities out."""
    path = Path(path)
    with open_regular(path) as f:  # a FIFO, a device or a folder is said to be one, not "no such file"
        if path.suffix == ".keras" or zipfile.is_zipfile(f):  # not a legacy HDF5 model
            _check_archive(f, path)

    runtime.import_tensorflow()  # quiet TensorFlow's start-up logs
    import keras

    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as error:  # Keras raises ValueError, OSError, zipfile and h5py errors for a foreign file
        reason = str(error).strip().split(". ")[0].splitlines()[0] if str(error).strip() else type(error).__name__
        raise JobError(f"{path}: not a Keras model file ({reason})") from None
    # A subclassed model has no input_shape; one with several inputs or outputs has lists of shapes.
    shapes = (getattr(model, "input_shape", None), getattr(model, "output_shape", None))
    if shapes != ((None, *models.INPUT_SHAPE), (None, models.N_CLASSES)):
        raise JobError(
            f"{path}: not an MNIST digit model (input shape {shapes[0]}, output shape {shapes[1]}; "
            f"expected (None, 28, 28, 1) and (None, 10))"
        )
    if not all(np.isfinite(weights).all() for weights in model.get_weights()):
        raise JobError(f"{path}: its weights hold NaN or infinite values (a training that diverged?)")
    return model


def probabilities(model: Any, pixels: np.ndarray) -> np.ndarray:
    """(N, 10) class probabilities of (N, 28, 28) images scaled to [0, 1]."""
    return model.predict(pixels.astype(np.float32)[..., np.newaxis], batch_size=PREDICT_BATCH, verbose=0)


def read_inputs(paths: list[Path]) -> tuple[Inputs, list[str]]:
    """All digits the paths hold, in order, and a one-line error for each path that could not be used."""
    names: list[str] = []
    arrays: list[np.ndarray] = []
    errors: list[str] = []
    for path in map(Path, paths):
        try:
            pixels = read_input(path)
        except JobError as error:
            errors.append(str(error))
            continue
        names += [str(path)] if len(pixels) == 1 else [f"{path}[{i}]" for i in range(len(pixels))]
        arrays.append(pixels)
    pixels = np.concatenate(arrays) if arrays else np.empty((0, SIDE, SIDE), np.float32)
    return Inputs(names, pixels), errors


def read_input(path: Path) -> np.ndarray:
    """The (N, 28, 28) float32 images in one file, told apart by content, not by name."""
    with open_regular(path) as f:  # a FIFO or /dev/zero is refused here, not read forever
        head = f.read(6)
        if head.startswith(b"\x93NUMPY"):
            f.seek(0)
            return _read_npy(f, path)
    # gzip, or the whole signature of an IDX images file (TGA and ICO files start with two zero bytes too)
    if head[:2] == b"\x1f\x8b" or head[:4] == data.IMAGES_MAGIC.to_bytes(4, "big"):
        return data.read_idx(path, data.TEST_IMAGES, MAX_INPUT_BYTES).array.astype(np.float32) / 255
    gray = _read_image(path)
    try:
        return to_mnist(gray)[np.newaxis]
    except JobError as error:  # to_mnist does not know the file's name
        raise JobError(f"{path}: {error}") from None


def read_labels(path: Path) -> np.ndarray:
    """The labels of an IDX labels file (.gz or plain), checked to be 0-9."""
    return data.read_idx(Path(path), data.TEST_LABELS, MAX_INPUT_BYTES).array


def _read_npy(f: BinaryIO, path: Path) -> np.ndarray:
    try:
        array = data.read_npy(f, str(path), MAX_INPUT_BYTES)
    except OSError as error:
        raise JobError(f"{path}: cannot read ({error.strerror or error})") from None
    if array.shape[-1:] == (1,) and array.ndim == 4:
        array = array[..., 0]
    if array.shape == (SIDE, SIDE):
        array = array[np.newaxis]
    if array.ndim != 3 or array.shape[1:] != (SIDE, SIDE):
        raise JobError(f"{path}: shape {array.shape}, expected (28, 28), (N, 28, 28) or (N, 28, 28, 1)")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255
    if np.issubdtype(array.dtype, np.floating) and np.all((array >= 0) & (array <= 1)):  # NaN fails both
        return array.astype(np.float32)
    raise JobError(f"{path}: {array.dtype} values must be uint8 0-255 or float 0-1")


def _read_image(path: Path) -> np.ndarray:
    """A greyscale 0-255 array of a PNG, JPEG or any image Pillow reads, transparency shown on white."""

    try:
        with Image.open(path) as opened:  # reads the header only: the size is known before any pixel is decoded
            opened.draft("L", (JPEG_DRAFT_SIDE, JPEG_DRAFT_SIDE))  # JPEG only; other formats ignore it
            if opened.width * opened.height > MAX_PIXELS:
                raise JobError(f"{path}: {opened.width} x {opened.height} pixels, over the limit of {MAX_PIXELS:,}")
            if opened.mode.startswith("I;16") or opened.mode in ("I", "F"):  # convert("L") would clip at 255
                return _scaled(np.asarray(opened, np.float64), opened.mode, path)
            image = ImageOps.exif_transpose(opened)  # phone photos are stored sideways with an EXIF rotation
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                image = image.convert("RGBA")
                image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image)
            return np.asarray(image.convert("L"))
    except UnidentifiedImageError:
        raise JobError(f"{path}: not an image, .npy array or IDX file") from None
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise JobError(f"{path}: unreadable image ({error})") from None


def _scaled(values: np.ndarray, mode: str, path: Path) -> np.ndarray:
    """A greyscale of more than 8 bits as 0-255, by the range its mode holds: 16-bit 0-65535; 32-bit integers 0-255,
    0-65535 or their whole (signed) range, the smallest that holds them; floats 0-1, 0-255 or up to their largest."""
    if not np.isfinite(values).all() or values.min() < 0:
        raise JobError(f"{path}: a {mode} image with negative or non-finite pixel values")
    top = values.max()
    if mode.startswith("I;16"):
        full = 65535.0
    elif mode == "I":
        full = next(limit for limit in (255.0, 65535.0, 2147483647.0) if top <= limit)
    else:
        full = 1.0 if top <= 1 else 255.0 if top <= 255 else top
    return (values * (255.0 / full)).astype(np.float32)


def to_mnist(gray: np.ndarray) -> np.ndarray:
    """A (28, 28) float32 digit in [0, 1], light on dark, from a greyscale image of any size and polarity."""

    pixels = gray.astype(np.float32)
    if _background(pixels) > 127:  # a light border: dark ink on paper, the reverse of MNIST
        pixels = 255 - pixels
    ink = np.clip(pixels - _background(pixels), 0, None)  # a grey paper's level is not ink
    if ink.max() < MIN_CONTRAST:
        raise JobError("no digit found (a blank or flat image)")
    if pixels.shape == (SIDE, SIDE):
        return pixels / 255
    ink /= ink.max()
    rows, cols = np.nonzero(ink > INK)
    ink = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    scale = BOX / max(ink.shape)
    height, width = (max(1, round(n * scale)) for n in ink.shape)
    digit = Image.fromarray(ink, "F").resize((width, height), Image.Resampling.LANCZOS)
    digit = np.clip(np.asarray(digit), 0, 1)  # Lanczos overshoots a little at sharp edges
    mass = digit.sum()
    centre_row = digit.sum(axis=1) @ np.arange(height) / mass
    centre_col = digit.sum(axis=0) @ np.arange(width) / mass
    top = int(np.clip(round(CENTRE - centre_row), 0, SIDE - height))
    left = int(np.clip(round(CENTRE - centre_col), 0, SIDE - width))
    field = np.zeros((SIDE, SIDE), np.float32)
    field[top : top + height, left : left + width] = digit
    return field


def _background(pixels: np.ndarray) -> float:
    """The typical grey level of the image's outermost rows and columns."""
    return float(np.median(np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])))


def top_k(probs: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
    """For each row, the k most probable digits and their probabilities, most probable first."""
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(int(d), float(row[d])) for d in digits] for row, digits in zip(probs, order, strict=True)]
