"""Every file the job reads goes through the one bounded reader (job/files.py): a FIFO, a link to /dev/zero or a
file far larger than what it should hold is refused in one line, never waited on or read whole.

The first test enumerates every call in job/ that opens or reads a file; a new one fails it until it goes through
job/files.py or is listed below with the reason it is safe. The others put FIFOs and /dev/zero where the job reads,
with real processes, and check each refuses in one line in seconds."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import cli

from job.files import FileError, read_bounded, read_tail, sha256_file
from job.results import verification
from job.results.contract import ResultError

JOB = Path(__file__).resolve().parent.parent / "job"
MINI = Path(__file__).resolve().parent / "data" / "mnist-mini"
RUN_FOLDER = Path(__file__).resolve().parent / "data" / "run-folder"

# Calls that open or read a file by name (the call as written, e.g. `gzip.open`, `path.read_text`).
READERS = re.compile(
    r"((^|\.)open|\.read_text|\.read_bytes|(^|\.)(np|numpy|json|pickle)\.load|urlopen|keras\.models\.load_model"
    r"|\.load_weights|(^|\.)ZipFile|h5py\.File)$"
)
# (module, function, call): why it is safe without job/files.py.
SAFE = {
    ("job.files", "open_regular", "os.open"): "the bounded reader itself",
    ("job.results.lease", "_process", "Path(f'/proc/{pid}/stat').read_text"): "/proc: the kernel's, never a FIFO",
    ("job.results.lease", "_boot_id", "Path('/proc/sys/kernel/random/boot_id').read_text"): "/proc: the kernel's",
    ("job.pair.usage", "seconds_since_start", "open"): "/proc/self/stat: the kernel's",
    ("job.pair.runtime", "_cpuinfo_field", "open"): "/proc/cpuinfo: the kernel's",
    ("job.results.contract", "schema", "resources.files('job.results').joinpath(f'{name}.schema.json').read_text"): (
        "the package's own schema files"
    ),
    ("job.pair.data", "_load_npz", "zipfile.ZipFile"): "an archive opened by open_regular",
    ("job.pair.data", "_load_npz", "npz.open"): "a member of that archive, read only as far as its header declares",
    ("job.pair.data", "_http_chunks", "urllib.request.urlopen"): (
        "a download, cut at MAX_DOWNLOAD_BYTES; a file:// mirror goes through open_regular"
    ),
    ("job.pair.predict", "_check_archive", "zipfile.ZipFile"): "an archive opened by open_regular",
    ("job.pair.predict", "load_model", "keras.models.load_model"): "after open_regular and the archive's sizes",
    ("job.pair.predict", "_read_image", "Image.open"): "after the input reader's open_regular; its pixels are capped",
    ("job.pair.checkpoint", "load", "model.load_weights"): "after the bounded hash, capped at the model's size",
    ("job.pair.checkpoint", "save_weights", "h5py.File"): "closes a file this process was writing",
    ("job.pair.ensemble", "_probabilities", "model.load_weights"): (
        "after store.check_pair's bounded hash, capped at the model's size; the loaded weights' digest is checked"
    ),
    ("job.results.predictions", "_arrays", "zipfile.ZipFile"): "bytes read by read_bounded, sized by the result",
    ("job.results.predictions", "_arrays", "np.load"): "the same bytes, its members checked stored, not compressed",
}


def calls() -> set[tuple[str, str, str]]:
    found = set()
    for path in sorted(JOB.rglob("*.py")):
        module = ".".join(path.relative_to(JOB.parent).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Call):
                    name = ast.unparse(node.func)
                    if READERS.search(name) and not _writes(node):
                        found.add((module, function.name, name))
    return found


def _writes(call: ast.Call) -> bool:
    """open(..., "w"), os.open(..., O_WRONLY...): a writer, not a reader."""
    texts = [ast.unparse(arg) for arg in [*call.args[1:], *(k.value for k in call.keywords)]]
    mode = [t for t in texts if t.startswith(("'", '"'))]
    return any(set("wa+") & set(t) for t in mode) or any("O_WRONLY" in t or "O_RDWR" in t for t in texts)


def test_every_reader_of_a_file_goes_through_the_bounded_reader_or_says_why_it_is_safe() -> None:
    found = calls()
    # Nested functions count under the one that holds them: each reader is named once, by its closest function.
    unexplained = sorted(c for c in found if c not in SAFE)
    assert unexplained == [], "read these through job/files.py (or list why they are safe): " + repr(unexplained)
    assert sorted(set(SAFE) - found) == [], "listed readers that no longer exist"


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("read", [read_bounded, read_tail, sha256_file])
def test_the_reader_refuses_a_fifo_a_device_and_a_folder_at_once(read, fifo: Path, tmp_path: Path) -> None:
    zero = tmp_path / "zero"
    zero.symlink_to("/dev/zero")
    for path, kind in ((fifo, "a FIFO"), (zero, "a character device"), (tmp_path, "a folder")):
        with pytest.raises(FileError, match=f"not a regular file \\({kind}\\)"):
            read(path, 1 << 20)


def test_a_file_larger_than_its_cap_is_refused_without_reading_it(tmp_path: Path) -> None:
    huge = tmp_path / "huge"
    with open(huge, "wb") as f:
        f.truncate(1 << 40)  # sparse: a terabyte to read, nothing on disk
    for read in (read_bounded, sha256_file):
        with pytest.raises(FileError, match="over 1,024 bytes, more than a lease holds"):
            read(huge, 1024, "a lease holds")
    assert read_tail(huge, 16) == b"\0" * 16


def test_a_verification_record_is_read_bounded(fifo: Path, tmp_path: Path) -> None:
    zero = tmp_path / "zero"
    zero.symlink_to("/dev/zero")
    huge = tmp_path / "huge.verify.json"
    with open(huge, "wb") as f:
        f.truncate(1 << 40)
    for path, message in ((fifo, "a FIFO"), (zero, "a character device"), (huge, "more than a verification record")):
        with pytest.raises(ResultError, match=message):
            verification.read(path)


def _run_copy(tmp_path: Path) -> Path:
    results = tmp_path / "results"
    shutil.copytree(RUN_FOLDER, results)
    return results


@pytest.mark.parametrize(
    "where",
    [
        "run.json",
        "submissions.jsonl",
        "mlp/repeat-1/fold-2.ckpt/state.json",
        "logs/7002_2_0_log.err",
        "mlp/fold-0.verify.json",
    ],
)
def test_status_and_pairs_finish_with_a_fifo_or_dev_zero_where_they_read(tmp_path: Path, where: str) -> None:
    results = _run_copy(tmp_path)
    for swap in (os.mkfifo, lambda p: p.symlink_to("/dev/zero")):
        target = results / "default" / where
        target.unlink(missing_ok=True)
        swap(target)
        # `status`: pairs --missing and submit read the run through the same status() (job/results/status.py).
        common = ("--results", str(results), "--epochs", "2", "--limit", "1000", "--repeats", "2")
        done = cli("status", *common, timeout=60, env={"PATH": os.path.dirname(sys.executable)})
        # Answered at once: the table, or (the run's own record unreadable) one line saying which file is not one.
        assert done.returncode == 0 or len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "Traceback" not in done.stderr and "internal error" not in done.stderr
        target.unlink()


def test_a_fifo_as_the_data_caches_stamps_or_a_file_mirror_is_refused_in_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(MINI, data)
    cache = data / ".mnist-cv-cache"
    cache.mkdir(exist_ok=True)
    (cache / "stamps.json").unlink(missing_ok=True)
    os.mkfifo(cache / "stamps.json")
    run = ("run", "--model", "mlp", "--fold", "0", "--epochs", "1", "--limit", "500", "--custom-data")
    done = cli(*run, "--data-dir", str(data), "--results", str(tmp_path / "r"), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]  # the stamps are a cache: unreadable, the sources are read

    mirror = tmp_path / "mirror"  # fetch-data reads the training images first: from a FIFO
    mirror.mkdir()
    os.mkfifo(mirror / "train-images-idx3-ubyte.gz")
    fetched = cli("fetch-data", "--to", str(tmp_path / "fetched"), "--mirror", mirror.as_uri(), timeout=60)
    assert fetched.returncode == 1
    assert fetched.stderr.strip().endswith("train-images-idx3-ubyte.gz: not a regular file (a FIFO)"), fetched.stderr


def test_a_fifo_as_the_image_or_the_model_file_is_refused_in_one_line(fifo: Path, tmp_path: Path) -> None:
    argv = subprocess.run(
        [sys.executable, "-m", "job.launch.argv", "--image", str(fifo), "run", "--task-id", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert argv.returncode == 1 and "not a regular file (a FIFO)" in argv.stderr, argv.stderr
    image = tmp_path / "digit.png"
    shutil.copy(Path(__file__).resolve().parent.parent / "docs" / "learning-curves-cnn.png", image)
    predicted = cli("predict", str(image), "--model-file", str(fifo), timeout=60)
    assert predicted.returncode == 1
    assert predicted.stderr.strip().endswith("fifo: not a regular file (a FIFO)"), predicted.stderr
