"""job.pair.data and `fetch-data` on the real MNIST in shared/data/mnist (edited only as copies in tmp_path)."""

from __future__ import annotations

import gzip
import http.server
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from support import ROOT

from job.files import FileError
from job.pair import data
from job.pair.data import MNIST_FILES, MNIST_SHA256, DataError

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
LABELS_HEADER = 8  # magic + count
IMAGES_HEADER = 16  # magic + count + rows + cols


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test may read the user's Keras cache or download from the internet by accident."""
    for var in ("MNIST_CV_DATA", "MNIST_CV_MIRROR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    monkeypatch.setenv("MNIST_CV_CACHE", str(tmp_path / "default-cache"))


@pytest.fixture
def gz_copy(mnist_full: Path, tmp_path: Path) -> Path:
    """A writable copy of the four .gz files (copyfile: the shared files' read-only mode is not copied)."""
    folder = tmp_path / "gz"
    folder.mkdir()
    for name in MNIST_FILES:
        shutil.copyfile(mnist_full / f"{name}.gz", folder / f"{name}.gz")
    return folder


def rewrite(path: Path, edit: Callable[[bytearray], bytes | bytearray]) -> None:
    """Apply ``edit`` to a .gz file's uncompressed content."""
    content = bytearray(gzip.decompress(path.read_bytes()))
    path.write_bytes(gzip.compress(bytes(edit(content)), compresslevel=1))


def set_byte(offset: int, value: int) -> Callable[[bytearray], bytearray]:
    def edit(content: bytearray) -> bytearray:
        content[offset] = value
        return content

    return edit


# ---- loading the real data


def assert_is_mnist(ds: data.Dataset) -> None:
    assert ds.name == "mnist"
    assert ds.x_train.shape == (60000, 28, 28) and ds.x_test.shape == (10000, 28, 28)
    assert ds.y_train.shape == (60000,) and ds.y_test.shape == (10000,)
    assert {a.dtype for a in (ds.x_train, ds.y_train, ds.x_test, ds.y_test)} == {np.dtype(np.uint8)}
    assert ds.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert np.bincount(ds.y_train).tolist() == TRAIN_COUNTS
    assert np.bincount(ds.y_test).tolist() == TEST_COUNTS
    assert {name: ds.sha256[name] for name in MNIST_FILES} == MNIST_SHA256


def test_loads_the_gz_folder(mnist_full: Path) -> None:
    ds = data.load(mnist_full)
    assert_is_mnist(ds)
    assert ds.source == str(mnist_full)
    assert ds.sha256 == MNIST_SHA256
    assert ds.x_train.mean() / 255 == pytest.approx(0.1307, abs=1e-4)
    assert not ds.x_train.flags.writeable  # a shared dataset cannot be changed by accident


def test_loads_a_plain_folder(mnist_full: Path, tmp_path: Path) -> None:
    for name in MNIST_FILES:
        (tmp_path / name).write_bytes(gzip.decompress((mnist_full / f"{name}.gz").read_bytes()))
    assert_is_mnist(data.load(tmp_path))


def test_loads_a_folder_mixing_gz_and_plain(gz_copy: Path) -> None:
    gz = gz_copy / f"{data.TEST_LABELS}.gz"
    (gz_copy / data.TEST_LABELS).write_bytes(gzip.decompress(gz.read_bytes()))
    gz.unlink()
    assert_is_mnist(data.load(gz_copy))


@pytest.fixture(scope="module")
def npz_file(mnist_full: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    ds = data.load(mnist_full)
    path = tmp_path_factory.mktemp("npz") / "mnist.npz"
    np.savez(path, x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test, y_test=ds.y_test)
    return path


def test_loads_an_npz_file_or_its_folder(npz_file: Path) -> None:
    for source in (npz_file, npz_file.parent):
        ds = data.load(source)
        assert_is_mnist(ds)  # the arrays hash as the IDX files they came from
        assert ds.source == str(npz_file)
        assert set(ds.sha256) == {*MNIST_FILES, "mnist.npz"}


def test_refuses_an_altered_npz(npz_file: Path, tmp_path: Path) -> None:
    with np.load(npz_file) as npz:
        arrays = dict(npz)
    arrays["y_test"][0] = (arrays["y_test"][0] + 1) % 10
    np.savez(tmp_path / "mnist.npz", **arrays)
    with pytest.raises(DataError, match=r"mnist\.npz\[y_test\]: sha256 mismatch"):
        data.load(tmp_path / "mnist.npz")
    assert data.load(tmp_path / "mnist.npz", custom=True).name == "custom"


def test_refuses_a_corrupt_or_incomplete_npz(npz_file: Path, tmp_path: Path) -> None:
    (tmp_path / "mnist.npz").write_bytes(npz_file.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"mnist\.npz: not a readable \.npz file"):
        data.load(tmp_path / "mnist.npz")
    np.savez(tmp_path / "partial.npz", x_train=np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(DataError, match=r"partial\.npz: no y_train, x_test, y_test array"):
        data.load(tmp_path / "partial.npz", custom=True)


def test_takes_the_folder_from_the_environment(mnist_full: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MNIST_CV_DATA", str(mnist_full))
    assert data.load().source == str(mnist_full)


def test_uses_the_keras_cache(npz_file: Path, tmp_path: Path) -> None:
    cached = tmp_path / "keras-home" / "datasets" / "mnist.npz"
    cached.parent.mkdir(parents=True)
    shutil.copyfile(npz_file, cached)
    assert data.load().source == str(cached)


# ---- damaged or foreign files


def test_a_missing_file_is_named(gz_copy: Path) -> None:
    (gz_copy / f"{data.TEST_LABELS}.gz").unlink()
    with pytest.raises(DataError, match=rf"{data.TEST_LABELS}\.gz: missing"):
        data.load(gz_copy)


def test_a_missing_folder_or_an_empty_one_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or folder"):
        data.load(tmp_path / "nowhere")
    with pytest.raises(DataError, match="no MNIST files there"):
        data.load(tmp_path)


def test_a_truncated_gz_is_named(gz_copy: Path) -> None:
    path = gz_copy / f"{data.TEST_IMAGES}.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=rf"{data.TEST_IMAGES}\.gz: truncated gzip file"):
        data.load(gz_copy)


def test_a_corrupt_gz_is_named(gz_copy: Path) -> None:
    path = gz_copy / f"{data.TRAIN_LABELS}.gz"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=rf"{data.TRAIN_LABELS}\.gz: corrupt gzip file"):
        data.load(gz_copy)


def test_an_altered_byte_is_a_hash_mismatch(gz_copy: Path) -> None:
    rewrite(gz_copy / f"{data.TEST_IMAGES}.gz", set_byte(IMAGES_HEADER + 400, 77))
    with pytest.raises(DataError) as caught:
        data.load(gz_copy)
    message = str(caught.value)
    assert f"{gz_copy / data.TEST_IMAGES}.gz: sha256 mismatch" in message
    assert "expected 0fa7898d5092..." in message and "--custom-data" in message
    assert "\n" not in message


def test_custom_data_loads_a_modified_copy(gz_copy: Path) -> None:
    rng = np.random.default_rng(0)
    permuted = rng.permutation(10).astype(np.uint8)
    rewrite(
        gz_copy / f"{data.TRAIN_LABELS}.gz",
        lambda c: c[:LABELS_HEADER] + permuted[np.frombuffer(c, np.uint8, offset=LABELS_HEADER)].tobytes(),
    )
    rewrite(gz_copy / f"{data.TEST_IMAGES}.gz", set_byte(IMAGES_HEADER, 255))
    with pytest.raises(DataError, match="not the original MNIST"):
        data.load(gz_copy)

    ds = data.load(gz_copy, custom=True)
    assert ds.name == "custom"
    assert ds.y_train[:3].tolist() == permuted[[5, 0, 4]].tolist()
    assert ds.x_test[0, 0, 0] == 255
    changed = {name for name in MNIST_FILES if ds.sha256[name] != MNIST_SHA256[name]}
    assert changed == {data.TRAIN_LABELS, data.TEST_IMAGES}


def test_custom_mode_still_names_the_original_mnist(mnist_full: Path) -> None:
    assert data.load(mnist_full, custom=True).name == "mnist"


def relabel_count(count: int) -> Callable[[bytearray], bytearray]:
    """Drop the labels after ``count`` and make the header agree, so only the cross-file check fails."""

    def edit(content: bytearray) -> bytearray:
        return content[:4] + count.to_bytes(4, "big") + content[LABELS_HEADER : LABELS_HEADER + count]

    return edit


def halve_count_double_rows(content: bytearray) -> bytearray:
    """5000 images of 56x28: the same length, so only the shape check can catch it."""
    return content[:4] + (5000).to_bytes(4, "big") + (56).to_bytes(4, "big") + content[12:]


@pytest.mark.parametrize(
    ("name", "edit", "message"),
    [
        (data.TEST_LABELS, set_byte(3, 0x03), r"bad IDX magic number 0x00000803 \(expected 0x00000801\)"),
        (data.TEST_LABELS, set_byte(LABELS_HEADER + 5, 10), "label 10 at index 5, labels must be 0-9"),
        (data.TEST_LABELS, relabel_count(9999), "9999 labels for 10000 images"),
        (data.TEST_IMAGES, lambda c: c + b"\0", "more than the 7,840,016 bytes its header says - padded"),
        (data.TEST_IMAGES, lambda c: c[:100], "100 bytes but its header says 7,840,016 - truncated"),
        (data.TEST_IMAGES, halve_count_double_rows, r"shape \(5000, 56, 28\), expected \(N, 28, 28\)"),
    ],
    ids=["bad-magic", "label-10", "count-mismatch", "padded", "short", "not-28x28"],
)
def test_custom_mode_validates_the_structure(
    gz_copy: Path, name: str, edit: Callable[[bytearray], bytearray], message: str
) -> None:
    rewrite(gz_copy / f"{name}.gz", edit)
    with pytest.raises(DataError, match=message) as caught:
        data.load(gz_copy, custom=True)
    assert f"{name}.gz" in str(caught.value)


# ---- downloads from a local mirror


class CountingServer(http.server.ThreadingHTTPServer):
    requests: list[str]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    server: CountingServer

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def mirror(gz_copy: Path) -> Iterator[tuple[str, CountingServer, Path]]:
    """(URL, server, served folder): an HTTP mirror on 127.0.0.1 serving a copy of the .gz files."""
    server = CountingServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(gz_copy)))
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", server, gz_copy
    server.shutdown()
    server.server_close()
    thread.join()


def test_fetch_downloads_verifies_and_skips_valid_files(
    mirror: tuple[str, CountingServer, Path], tmp_path: Path
) -> None:
    url, server, _ = mirror
    cache = tmp_path / "cache"
    assert data.fetch(cache, mirror=url) == cache
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{name}.gz" for name in MNIST_FILES)
    assert len(server.requests) == 4
    assert data.fetch(cache, mirror=url) == cache
    assert len(server.requests) == 4  # nothing downloaded again
    assert_is_mnist(data.load(cache))


def test_fetch_replaces_a_broken_cached_file(mirror: tuple[str, CountingServer, Path], tmp_path: Path) -> None:
    url, server, _ = mirror
    cache = tmp_path / "cache"
    data.fetch(cache, mirror=url)
    (cache / f"{data.TEST_IMAGES}.gz").write_bytes(b"\x1f\x8b broken")
    data.fetch(cache, mirror=url)
    assert server.requests[4:] == [f"/{data.TEST_IMAGES}.gz"]
    assert_is_mnist(data.load(cache))


def test_load_downloads_into_the_cache_once(
    mirror: tuple[str, CountingServer, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, server, _ = mirror
    monkeypatch.setenv("MNIST_CV_MIRROR", url)
    ds = data.load()
    assert_is_mnist(ds)
    assert ds.source == str(tmp_path / "default-cache")
    assert data.load(cache_dir=tmp_path / "default-cache").source == ds.source
    assert len(server.requests) == 4


def test_a_corrupt_download_leaves_nothing_behind(mirror: tuple[str, CountingServer, Path], tmp_path: Path) -> None:
    url, _, served = mirror
    rewrite(served / f"{data.TRAIN_LABELS}.gz", set_byte(LABELS_HEADER, 9))
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as caught:
        data.fetch(cache, mirror=url)
    message = str(caught.value)
    assert f"{cache / data.TRAIN_LABELS}.gz: sha256 mismatch" in message
    assert f"downloaded from {url}{data.TRAIN_LABELS}.gz; nothing was saved" in message
    assert sorted(p.name for p in cache.iterdir()) == [f"{data.TRAIN_IMAGES}.gz"]  # no temp, no bad file


def test_a_missing_download_names_the_url(mirror: tuple[str, CountingServer, Path], tmp_path: Path) -> None:
    url, _, served = mirror
    (served / f"{data.TEST_LABELS}.gz").unlink()
    with pytest.raises(DataError, match=rf"{data.TEST_LABELS}\.gz: download failed \(HTTP 404"):
        data.fetch(tmp_path / "cache", mirror=url)


def test_no_network_says_how_to_avoid_the_download(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    with pytest.raises(DataError, match=rf"^{url}{data.TRAIN_IMAGES}\.gz: download failed .*MNIST_CV_DATA"):
        data.load(cache_dir=tmp_path / "cache", mirror=url)


def fetch_data_cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "job", "fetch-data", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)


def test_fetch_data_command(mirror: tuple[str, CountingServer, Path], tmp_path: Path) -> None:
    url, _, served = mirror
    done = fetch_data_cli("--to", str(tmp_path / "out"), "--mirror", url)
    assert done.returncode == 0, done.stderr
    assert str(tmp_path / "out") in done.stdout and MNIST_SHA256[data.TRAIN_IMAGES] in done.stdout
    assert_is_mnist(data.load(tmp_path / "out"))

    (served / f"{data.TEST_LABELS}.gz").unlink()
    failed = fetch_data_cli("--to", str(tmp_path / "elsewhere"), "--mirror", url)
    assert failed.returncode == 1
    assert failed.stderr.count("\n") == 1 and "HTTP 404" in failed.stderr


# ---- what a file declares is what reading it costs

BOMB_ZEROS = 1 << 30  # a gzip of ~1 MB that inflates to 1 GiB


def gzip_bomb(path: Path, header: bytes, zeros: int = BOMB_ZEROS) -> Path:
    """A .gz holding `header` then `zeros` zero bytes (never 1 GiB in memory). A full flush makes each chunk's deflate
    blocks independent of what came before, so one chunk is compressed once and its blocks repeated; the gzip
    container (RFC 1952) is written around the raw deflate stream by hand."""
    chunk = bytes(16 << 20)
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)  # wbits -15: raw deflate, no container
    first = packer.compress(header) + packer.flush(zlib.Z_FULL_FLUSH)
    blocks = packer.compress(chunk) + packer.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(header)
    with open(path, "wb") as out:
        out.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + first)  # magic, deflate, no flags/time, unknown OS
        for _ in range(zeros // len(chunk)):
            out.write(blocks)
            crc = zlib.crc32(chunk, crc)
        out.write(packer.flush())  # the final, empty block
        out.write(struct.pack("<II", crc, (len(header) + zeros) & 0xFFFFFFFF))
    return path


def idx_header(magic: int, *shape: int) -> bytes:
    return b"".join(v.to_bytes(4, "big") for v in (magic, *shape))


# `load FOLDER` (custom data allowed) or `fetch FOLDER MIRROR` in a fresh interpreter: the one-line error, then
# the peak memory in MB.
# The peak RSS the load adds above the imports: what an import costs depends on the environment, not on the input.
PEAK = """
import resource, sys
from job.pair import data
imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
what, folder, *mirror = sys.argv[1:]
try:
    data.load(folder, custom=True) if what == "load" else data.fetch(folder, mirror=mirror[0])
    print("loaded")
except data.DataError as error:
    print(error)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - imported) // 1024)
"""


def load_in_a_subprocess(function: str, *args: str) -> tuple[str, int]:
    done = subprocess.run([sys.executable, "-c", PEAK, function, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    message, peak_mb = done.stdout.strip().splitlines()[-2:]
    return message, int(peak_mb)


@pytest.mark.slow
def test_a_gzip_that_inflates_to_a_gigabyte_is_refused_without_inflating_it(gz_copy: Path) -> None:
    labels = gz_copy / f"{data.TRAIN_LABELS}.gz"
    gzip_bomb(labels, gzip.decompress(labels.read_bytes()))  # the real labels, then 1 GiB more
    message, peak_mb = load_in_a_subprocess("load", str(gz_copy))
    assert message == f"{labels}: more than the 60,008 bytes its header says - padded"
    assert peak_mb < 400, peak_mb  # the real MNIST is 55 MB; the padding alone is 1,024 MB
    print(f"a 1 GiB gzip bomb in the data folder: refused at a peak of {peak_mb} MB")


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        (
            (2**32 - 1, 28, 28),
            "its header declares shape (4294967295, 28, 28) (3,367,254,359,296 bytes), over the limit",
        ),
        ((1_400_000, 28, 28), "(1,097,600,016 bytes), over the limit of 1,073,741,824"),
        ((60_000, 2**16, 2**16), r"shape (60000, 65536, 65536), expected (N, 28, 28)"),
        ((100, 28, 28), "16 bytes but its header says 78,416 - truncated"),
    ],
)
def test_a_header_declaring_a_huge_shape_is_refused_before_allocation(
    gz_copy: Path, shape: tuple[int, ...], message: str
) -> None:
    path = gz_copy / f"{data.TRAIN_IMAGES}.gz"
    path.write_bytes(gzip.compress(idx_header(0x803, *shape)))
    got, peak_mb = load_in_a_subprocess("load", str(gz_copy))
    assert got.startswith(f"{path}: ") and message in got, got
    assert peak_mb < 100, peak_mb


@pytest.mark.slow
def test_a_mirror_serving_a_gzip_bomb_saves_nothing(mirror: tuple[str, CountingServer, Path], tmp_path: Path) -> None:
    url, _, served = mirror
    labels = served / f"{data.TEST_LABELS}.gz"
    gzip_bomb(labels, gzip.decompress(labels.read_bytes()))
    cache = tmp_path / "cache"
    message, peak_mb = load_in_a_subprocess("fetch", str(cache), url)
    assert message.startswith(f"{cache / data.TEST_LABELS}.gz: more than the 10,008 bytes its header says - padded")
    assert message.endswith(f"(downloaded from {url}{data.TEST_LABELS}.gz; nothing was saved)")
    assert f"{data.TEST_LABELS}.gz" not in {p.name for p in cache.iterdir()}
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temp file left
    assert peak_mb < 500, peak_mb


def test_a_plain_npy_file_or_a_fifo_as_the_data_is_one_line(tmp_path: Path) -> None:
    np.save(tmp_path / "x_train.npy", np.zeros((100, 28, 28), np.uint8))
    with pytest.raises(DataError, match=r"x_train\.npy: not a \.npz file \(the data is a folder of IDX files"):
        data.load(tmp_path / "x_train.npy")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(FileError, match="fifo: not a regular file"):
        data.load(tmp_path / "fifo")


@pytest.mark.parametrize(("n_train", "n_test"), [(0, 10), (3, 10), (49, 10), (50, 0)])
def test_a_custom_dataset_too_small_for_the_protocol_is_refused(
    gz_copy: Path, dataset_arrays: dict[str, np.ndarray], n_train: int, n_test: int
) -> None:
    counts = {
        data.TRAIN_IMAGES: n_train,
        data.TRAIN_LABELS: n_train,
        data.TEST_IMAGES: n_test,
        data.TEST_LABELS: n_test,
    }
    for name, count in counts.items():
        array = dataset_arrays[name][:count]
        magic = 0x803 if array.ndim == 3 else 0x801
        (gz_copy / f"{name}.gz").write_bytes(gzip.compress(idx_header(magic, *array.shape) + array.tobytes()))
    with pytest.raises(DataError) as caught:
        data.load(gz_copy, custom=True)
    message = str(caught.value)
    if n_train < 50:
        assert f"{data.TRAIN_IMAGES}.gz: {n_train} training images; cross-validation needs at least 50" in message
    else:
        assert f"{data.TEST_IMAGES}.gz: no test images" in message


@pytest.fixture(scope="module")
def dataset_arrays(mnist_full: Path) -> dict[str, np.ndarray]:
    ds = data.load(mnist_full)
    return {
        data.TRAIN_IMAGES: ds.x_train,
        data.TRAIN_LABELS: ds.y_train,
        data.TEST_IMAGES: ds.x_test,
        data.TEST_LABELS: ds.y_test,
    }


def test_a_custom_dataset_of_fifty_images_loads(gz_copy: Path, dataset_arrays: dict[str, np.ndarray]) -> None:
    for name, array in dataset_arrays.items():
        array = array[:50]
        magic = 0x803 if array.ndim == 3 else 0x801
        (gz_copy / f"{name}.gz").write_bytes(gzip.compress(idx_header(magic, *array.shape) + array.tobytes()))
    assert len(data.load(gz_copy, custom=True).x_train) == 50
