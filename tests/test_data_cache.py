"""The verified-data cache (job.pair.verified) on real files: copies of the shipped subset and of the full MNIST.

Each test checks what a load returns against a load of the same files without any cache, and what it left on disk.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from support import ROOT

from job.pair import data, verified
from job.pair.data import MNIST_FILES, TRAIN_IMAGES, TRAIN_LABELS, DataError


@pytest.fixture(autouse=True)
def isolated_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The per-user cache in tmp; files count as settled at once (one test checks the settling rule itself)."""
    user = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(user))
    monkeypatch.setattr(verified, "SETTLE_NS", 0)
    return user


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the files gunzipped and hashed from their source (data.read_idx, still doing its work)."""
    calls: list[str] = []
    real = data.read_idx

    def counting(path: Path, name: str, max_bytes: int = data.MAX_IDX_BYTES) -> data.IdxFile:
        calls.append(name)
        return real(path, name, max_bytes)

    monkeypatch.setattr(data, "read_idx", counting)
    return calls


def copy_folder(source: Path, to: Path) -> Path:
    to.mkdir()
    for name in MNIST_FILES:
        shutil.copyfile(source / f"{name}.gz", to / f"{name}.gz")
    return to


@pytest.fixture
def mini(mnist_mini: Path, tmp_path: Path) -> Path:
    return copy_folder(mnist_mini, tmp_path / "mini")


def assert_same(a: data.Dataset, b: data.Dataset) -> None:
    assert (a.name, a.source, a.sha256) == (b.name, b.source, b.sha256)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        x, y = getattr(a, field), getattr(b, field)
        assert x.dtype == y.dtype == np.uint8 and np.array_equal(x, y) and not x.flags.writeable


def cache_of(folder: Path) -> Path:
    return folder / verified.CACHE_DIRNAME


def test_the_second_load_reads_the_checked_copies(mini: Path, reads: list[str]) -> None:
    first = data.load(mini, custom=True)
    assert sorted(reads) == sorted(MNIST_FILES)
    stamps = json.loads((cache_of(mini) / verified.STAMPS).read_text())["files"]
    assert {name: stamps[name]["sha256"] for name in MNIST_FILES} == first.sha256
    reads.clear()
    second = data.load(mini, custom=True)
    assert reads == []  # nothing gunzipped
    assert_same(first, second)


def test_the_full_mnist_from_the_cache_is_the_published_one(mnist_full: Path, tmp_path: Path) -> None:
    folder = copy_folder(mnist_full, tmp_path / "full")
    first = data.load(folder)
    second = data.load(folder)
    assert second.sha256 == data.MNIST_SHA256
    assert_same(first, second)


def test_a_read_only_folder_is_cached_per_user_and_left_untouched(
    mini: Path, isolated_cache: Path, reads: list[str]
) -> None:
    mini.chmod(0o555)
    try:
        first = data.load(mini, custom=True)
        reads.clear()
        second = data.load(mini, custom=True)
    finally:
        mini.chmod(0o755)
    assert reads == []
    assert_same(first, second)
    assert sorted(p.name for p in mini.iterdir()) == sorted(f"{name}.gz" for name in MNIST_FILES)
    (user_cache,) = (isolated_cache / "mnist-cv" / "verified").iterdir()
    assert (user_cache / verified.STAMPS).is_file()


def test_a_file_rewritten_in_place_with_its_old_mtime_is_read_again(mini: Path, reads: list[str]) -> None:
    data.load(mini, custom=True)
    labels = mini / f"{TRAIN_LABELS}.gz"
    stat = labels.stat()
    time.sleep(0.05)  # SETTLE_NS is 0 here: leave the coarse timestamp clock a tick to move on
    with open(labels, "r+b") as f:  # the gzip header's MTIME field: same size, same inode, same content
        f.seek(4)
        f.write(b"\x01\x02\x03\x04")
    os.utime(labels, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the old mtime back: the ctime still tells
    assert (labels.stat().st_size, labels.stat().st_ino, labels.stat().st_mtime_ns) == (
        stat.st_size,
        stat.st_ino,
        stat.st_mtime_ns,
    )
    reads.clear()
    data.load(mini, custom=True)
    assert reads == [TRAIN_LABELS]


def test_a_changed_file_gives_its_new_content_and_a_new_copy(mini: Path, reads: list[str]) -> None:
    data.load(mini, custom=True)
    labels = mini / f"{TRAIN_LABELS}.gz"
    content = bytearray(gzip.decompress(labels.read_bytes()))
    content[8] = (content[8] + 1) % 10  # the first label
    labels.write_bytes(gzip.compress(bytes(content)))
    reads.clear()
    assert data.load(mini, custom=True).y_train[0] == content[8]
    assert reads == [TRAIN_LABELS]
    reads.clear()
    assert data.load(mini, custom=True).y_train[0] == content[8]  # and the copy followed the change
    assert reads == []


def test_an_altered_copy_of_mnist_is_refused_after_caching(mnist_full: Path, tmp_path: Path) -> None:
    folder = copy_folder(mnist_full, tmp_path / "full")
    data.load(folder)
    images = folder / f"{TRAIN_IMAGES}.gz"
    content = bytearray(gzip.decompress(images.read_bytes()))
    content[1000] ^= 0xFF
    images.write_bytes(gzip.compress(bytes(content), compresslevel=1))
    with pytest.raises(DataError, match=f"{TRAIN_IMAGES}.gz: sha256 mismatch"):
        data.load(folder)


def test_a_replaced_file_is_read_again(mini: Path, reads: list[str]) -> None:
    data.load(mini, custom=True)
    labels = mini / f"{TRAIN_LABELS}.gz"
    shutil.copyfile(labels, mini / "new.gz")
    os.replace(mini / "new.gz", labels)  # the same bytes, another inode
    reads.clear()
    data.load(mini, custom=True)
    assert reads == [TRAIN_LABELS]


def damage_copies(cache: Path) -> None:
    """Four ways a copy can be wrong: a flipped pixel, cut short, not a .npy, gone."""
    images = cache / f"{TRAIN_IMAGES}.npy"
    raw = bytearray(images.read_bytes())
    raw[-1] ^= 0x01
    images.write_bytes(raw)
    labels = cache / f"{TRAIN_LABELS}.npy"
    labels.write_bytes(labels.read_bytes()[:-10])
    (cache / f"{data.TEST_IMAGES}.npy").write_bytes(b"garbage")
    (cache / f"{data.TEST_LABELS}.npy").unlink()


def test_damaged_copies_are_detected_and_rebuilt(mini: Path, reads: list[str]) -> None:
    first = data.load(mini, custom=True)
    damage_copies(cache_of(mini))
    reads.clear()
    second = data.load(mini, custom=True)
    assert sorted(reads) == sorted(MNIST_FILES)
    assert_same(first, second)
    reads.clear()
    assert_same(first, data.load(mini, custom=True))  # rebuilt
    assert reads == []


def test_a_copy_far_larger_than_its_header_says_is_rebuilt(mini: Path, reads: list[str]) -> None:
    first = data.load(mini, custom=True)
    images = cache_of(mini) / f"{TRAIN_IMAGES}.npy"
    with open(images, "ab") as copy:
        copy.write(bytes(10 << 20))  # 10 MB past the shape its .npy header declares
    reads.clear()
    assert_same(first, data.load(mini, custom=True))
    assert reads == [TRAIN_IMAGES]  # its source read again; the other copies still trusted


def test_a_copy_swapped_for_other_valid_data_is_not_trusted(mini: Path, reads: list[str]) -> None:
    first = data.load(mini, custom=True)
    cache = cache_of(mini)
    np.save(cache / f"{TRAIN_LABELS}.npy", (first.y_train + 1) % 10)  # well-formed labels, not these
    reads.clear()
    assert_same(first, data.load(mini, custom=True))
    assert reads == [TRAIN_LABELS]


def test_a_copy_of_mnist_edited_with_its_stamp_is_rebuilt_from_the_intact_source(
    mnist_full: Path, tmp_path: Path
) -> None:
    # Labels and stamp edited together pass the stamp's own check: the published hash is what exposes them, and
    # then the source, not the copy, decides (it used to blame the intact .gz and send the user to --custom-data).
    folder = copy_folder(mnist_full, tmp_path / "full")
    first = data.load(folder)
    cache = cache_of(folder)
    tampered = (first.y_train + 1) % 10
    np.save(cache / f"{TRAIN_LABELS}.npy", tampered)
    stamps = json.loads((cache / verified.STAMPS).read_text())
    stamps["files"][TRAIN_LABELS]["sha256"] = data._npz_part(tampered, TRAIN_LABELS, "edited").sha256
    (cache / verified.STAMPS).write_text(json.dumps(stamps))
    assert_same(first, data.load(folder))
    assert np.array_equal(np.load(cache / f"{TRAIN_LABELS}.npy"), first.y_train)  # the copy is rebuilt


@pytest.mark.parametrize("stamps", [b"{not json", b'{"version": 1, "files": []}', b'{"version": 99, "files": {}}'])
def test_unreadable_stamps_mean_reading_the_sources(mini: Path, reads: list[str], stamps: bytes) -> None:
    first = data.load(mini, custom=True)
    (cache_of(mini) / verified.STAMPS).write_bytes(stamps)
    reads.clear()
    assert_same(first, data.load(mini, custom=True))
    assert sorted(reads) == sorted(MNIST_FILES)


def test_a_file_that_changed_a_moment_ago_is_not_stamped(
    mini: Path, reads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Timestamps are coarse: a file written again within the same tick would look unchanged; so no stamp yet."""
    monkeypatch.setattr(verified, "SETTLE_NS", 3_600 * 10**9)
    data.load(mini, custom=True)
    assert not (cache_of(mini) / verified.STAMPS).exists()
    reads.clear()
    data.load(mini, custom=True)
    assert sorted(reads) == sorted(MNIST_FILES)


def test_an_unwritable_cache_is_skipped(mini: Path, reads: list[str], isolated_cache: Path) -> None:
    mini.chmod(0o555)
    isolated_cache.mkdir()
    isolated_cache.chmod(0o555)
    try:
        first = data.load(mini, custom=True)
        second = data.load(mini, custom=True)
    finally:
        mini.chmod(0o755)
        isolated_cache.chmod(0o755)
    if os.geteuid() != 0:  # root writes there anyway, through its mode bits (but never into the data folder)
        assert sorted(reads) == sorted(MNIST_FILES) * 2
    assert_same(first, second)
    assert not cache_of(mini).exists()


def test_tasks_building_the_cache_at_once_never_tear_it(mini: Path, tmp_path: Path) -> None:
    """Four processes load the same uncached folder at the same moment; all get the data, the cache ends whole."""
    time.sleep(1.1)  # the subprocesses apply the real SETTLE_NS (1 s): let the copies settle
    code = (
        "import sys; from job.pair import data; d = data.load(sys.argv[1], custom=True); print(d.sha256[sys.argv[2]])"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(tmp_path / "xdg-cache")}
    processes = [
        subprocess.Popen([sys.executable, "-c", code, str(mini), TRAIN_IMAGES], env=env, stdout=subprocess.PIPE)
        for _ in range(4)
    ]
    outputs = {p.communicate(timeout=120)[0].decode().strip() for p in processes}
    assert all(p.returncode == 0 for p in processes)
    expected = data.load(mini, custom=True)
    assert outputs == {expected.sha256[TRAIN_IMAGES]}
    stamps = json.loads((cache_of(mini) / verified.STAMPS).read_text())["files"]
    assert {name: stamps[name]["sha256"] for name in MNIST_FILES} == expected.sha256
    assert not [p for p in cache_of(mini).iterdir() if ".tmp" in p.name]  # no temp file left behind
