"""The README's "Exit codes and errors", one test per promise, each running the real CLI on real MNIST subsets.

Every failure is one line on stderr (TensorFlow's start-up chatter aside), never a traceback:
  exit 2  a usage error
  exit 1  a runtime failure: data missing or corrupt, output folder not writable, a corrupt result, a GPU allocated
          but not visible, the device out of memory, a full disk (the last checkpoint intact, a rerun resumes)
  exit 3  a stop signal interrupted training (the checkpoint is kept; a rerun resumes)
  exit 130 interrupted with Ctrl-C
  exit 1  anything nobody anticipated: one line saying it is a bug, its traceback in a file (or with --debug)
and nothing already written is damaged. Filesystem faults use real tmpfs mounts (root only; skipped otherwise).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import pytest
from support import cli

from job.pair.data import MNIST_FILES, TEST_IMAGES

# Each promise is shown by the real CLI training real models: minutes in all, so the fast tier leaves them out.
pytestmark = pytest.mark.slow

LIMIT, EPOCHS = "2000", "3"
COMMITTED = Path(__file__).resolve().parent / "data" / "run-folder" / "default"
NOISE = ("I0000", "W0000", "E0000", "WARNING: All log messages", "To enable the following instructions")


def our_lines(stderr: str) -> list[str]:
    """stderr without TensorFlow's start-up chatter: what the job itself said."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(NOISE)]


def assert_one_line(done: subprocess.CompletedProcess[str], status: int, command: str, message: str) -> str:
    lines = our_lines(done.stderr)
    assert done.returncode == status, done.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(f"mnist-cv {command}: "), lines
    assert message in lines[0], lines[0]
    return lines[0]


def train_args(results: Path, mnist: Path, *more: str, fold: str = "0") -> list[str]:
    return [
        "run",
        "--model",
        "mlp",
        "--fold",
        fold,
        "--limit",
        LIMIT,
        "--epochs",
        EPOCHS,
        "--results",
        str(results),
        "--data-dir",
        str(mnist),
        "--custom-data",  # the shipped subset (or the full set, which --custom-data accepts too)
        *more,
    ]


def result_of(results: Path, fold: int = 0) -> dict:
    return json.loads((results / "default" / "mlp" / f"fold-{fold}.json").read_text())


def checkpoint_of(results: Path, fold: int = 0) -> Path:
    return results / "default" / "mlp" / f"fold-{fold}.ckpt"


# An epoch of 1,600 images is one compiled call of 30-100 ms, and its checkpoint and logs as much again: 40 epochs
# leave a loaded machine (CI's two workers) seconds to deliver the signal before the training could end by itself.
STOP_EPOCHS = "40"


def stop_in_epoch_2(args: list[str], sig: signal.Signals) -> subprocess.CompletedProcess[str]:
    """Run the CLI for STOP_EPOCHS epochs and send `sig` once epoch 2 has started (epoch 1's checkpoint is on disk)."""
    args = [*args, "--epochs", STOP_EPOCHS]
    child = subprocess.Popen(
        [sys.executable, "-m", "job", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As from a terminal: a shell without job control starts background commands (a CI script's, say) with
        # SIGINT ignored, Python then leaves it ignored, and Ctrl-C could never reach the job.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines = []
    for line in child.stdout:
        lines.append(line)
        if "epoch 2/" in line:
            child.send_signal(sig)
            break
    out, err = child.communicate(timeout=300)
    return subprocess.CompletedProcess(child.args, child.returncode, "".join(lines) + out, err)


@contextmanager
def tmpfs(where: Path, size: str, *options: str) -> Iterator[Path]:
    """A real, small filesystem mounted at `where` for the test's duration."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


# ---- exit 2: usage errors


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "resnet", "--fold", "0"], "unknown model 'resnet'"),
        (["--model", "mlp", "--fold", "5"], "argument --fold: must be 0 to 4, got 5"),
        (["--task-id", "10", "--repeats", "1"], "task id 10 is outside 0-9"),
        (["--task-id", "1", "--model", "mlp", "--fold", "0"], "give either --task-id or --model/--fold, not both"),
        ([], "no pair given"),
        (["--model", "mlp", "--fold", "0", "--seed", "-1"], "argument --seed: must be 0 to 4294967295, got -1"),
        (["--model", "mlp", "--fold", "x"], "--fold: not a whole number: 'x'"),
        (["--model", "mlp", "--fold", "\u0663"], "--fold: not a whole number: '\u0663'"),
        (["--model", "mlp", "--fold", "0", "--repeat", "\u0663"], "--repeat: not a whole number: '\u0663'"),
        (["--model", "mlp", "--fold", "0", "--epochs", "\u0663"], "--epochs: not a whole number: '\u0663'"),
        (["--model", "mlp", "--fold", "0", "--limit", "1_000"], "--limit: not a whole number: '1_000'"),
    ],
    ids=[
        "unknown-model",
        "fold-5",
        "task-10",
        "task-and-model",
        "no-pair",
        "negative-seed",
        "not-a-number",
        "arabic-indic-fold",
        "arabic-indic-repeat",
        "arabic-indic-epochs",
        "underscored-limit",  # int() reads the last two as 3 and 1000
    ],
)
def test_a_usage_error_exits_2_with_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    done = cli("run", *args, "--results", str(tmp_path), env={"SLURM_ARRAY_TASK_ID": ""}, timeout=60)
    assert_one_line(done, 2, "run", message)
    assert not any(tmp_path.iterdir())  # nothing written


# ---- exit 1: runtime failures


def test_missing_or_corrupt_data_exits_1_with_one_line(mnist_full: Path, tmp_path: Path) -> None:
    done = cli(*train_args(tmp_path / "results", tmp_path / "nowhere"))
    assert_one_line(done, 1, "run", f"{tmp_path / 'nowhere'}: no such file or folder")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for name in MNIST_FILES:
        shutil.copyfile(mnist_full / f"{name}.gz", corrupt / f"{name}.gz")
    images = corrupt / f"{TEST_IMAGES}.gz"
    images.write_bytes(images.read_bytes()[:5000])
    done = cli(*train_args(tmp_path / "results", corrupt))
    assert_one_line(done, 1, "run", f"{images}: truncated gzip file")


def test_an_output_folder_that_cannot_be_written_exits_1_with_one_line(mnist_mini: Path, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "1m", "ro") as results:
        done = cli(*train_args(results, mnist_mini))
    assert_one_line(done, 1, "run", "Read-only file system")


def test_a_corrupt_result_exits_1_with_one_line_naming_it(mnist_mini: Path, tmp_path: Path) -> None:
    folder = tmp_path / "default" / "mlp"
    folder.mkdir(parents=True)
    (folder / "fold-0.json").write_text('{"schema_version": 1, "model": "ml')  # torn
    done = cli("collect", "--results", str(tmp_path), "--allow-partial", timeout=120)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert any(str(folder / "fold-0.json") in line for line in our_lines(done.stderr)), done.stderr


def test_a_gpu_allocated_but_not_visible_exits_1_with_one_line(mnist_mini: Path, tmp_path: Path) -> None:
    done = cli(*train_args(tmp_path, mnist_mini), env={"SLURM_GPUS_ON_NODE": "1", "MNIST_CV_ALLOW_CPU": ""})
    assert_one_line(done, 1, "run", "GPU")


# A real model too big for the device: its first weight matrix (784 x 2**28 floats, 842 GB) cannot be allocated,
# and TensorFlow raises the ResourceExhaustedError a GPU out of memory raises.
TOO_BIG = """
import sys
from job.pair import models

@models.register("too-big")
def _too_big():
    from keras import Input, Sequential, layers, optimizers
    dense = [layers.Flatten(), layers.Dense(2**28), layers.Dense(models.N_CLASSES, activation="softmax")]
    return Sequential([Input(models.INPUT_SHAPE), *dense]), optimizers.SGD()

from job.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_out_of_memory_on_the_device_exits_1_with_one_line(mnist_full: Path, tmp_path: Path) -> None:
    args = [
        "run",
        "--model",
        "too-big",
        "--fold",
        "0",
        "--limit",
        LIMIT,
        "--results",
        str(tmp_path),
        "--data-dir",
        str(mnist_full),
    ]
    done = subprocess.run([sys.executable, "-c", TOO_BIG, *args], capture_output=True, text=True, timeout=300)
    line = assert_one_line(done, 1, "run", "error: out of memory (OOM when allocating tensor with shape[784,268435456]")
    assert line.endswith("a smaller --batch-size needs less")


def test_a_full_disk_exits_1_with_one_line_keeps_the_checkpoint_and_a_rerun_resumes(
    mnist_mini: Path, tmp_path: Path
) -> None:
    """mlp checkpoints are 426 KB: on 1,000 KB the first fits and the second (written beside it) does not. On the
    same disk, a result already written (another run's, of the committed run folder) must come out untouched."""
    with tmpfs(tmp_path / "disk", "3m") as results:
        (results / "other" / "mlp").mkdir(parents=True)
        shutil.copy(COMMITTED / "mlp" / "fold-1.json", results / "other" / "mlp")
        other = (results / "other" / "mlp" / "fold-1.json").read_bytes()
        subprocess.run(["mount", "-o", "remount,size=1000k", str(results)], check=True)

        full = cli(*train_args(results, mnist_mini))
        line = assert_one_line(full, 1, "run", f"{checkpoint_of(results)}: no room for the checkpoint of epoch 2")
        assert line.endswith("the checkpoint after epoch 1 is intact: free space and rerun to resume")
        state = json.loads((checkpoint_of(results) / "state.json").read_text())
        assert state["epochs_done"] == 1
        assert sorted(p.name for p in checkpoint_of(results).iterdir()) == ["epoch-1.weights.h5", "state.json"]
        assert (results / "other" / "mlp" / "fold-1.json").read_bytes() == other

        subprocess.run(["mount", "-o", "remount,size=3m", str(results)], check=True)
        rerun = cli(*train_args(results, mnist_mini))
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        assert "resuming from the checkpoint after epoch 1" in rerun.stdout
        assert result_of(results)["resume"] == {"count": 1, "from_epochs": [1]}


@pytest.mark.parametrize("inodes", [15, 16], ids=["weights-write-fails", "state-write-fails"])
def test_a_checkpoint_write_that_fails_anyway_is_one_line_and_keeps_the_last_checkpoint(
    inodes: int, mnist_mini: Path, tmp_path: Path
) -> None:
    """Room in bytes but not in files (tmpfs nr_inodes): the free-space check passes and the write itself fails.

    15 inodes: the folders, the run's run.json, the pair's lease, its per-epoch CSV, TensorBoard folder with its
    train and validation folders and their three event files, epoch 1's weights and state.json; epoch 2's temp
    weights file finds none. 16: it gets the last one, and state.json's temp file finds none.
    """
    with tmpfs(tmp_path / "disk", "3m", f"nr_inodes={inodes}") as results:
        failed = cli(*train_args(results, mnist_mini))
        line = assert_one_line(failed, 1, "run", "cannot save the checkpoint of epoch 2 (No space left on device)")
        assert line.endswith("the checkpoint after epoch 1 is intact: rerun to resume")
        assert sorted(p.name for p in checkpoint_of(results).iterdir()) == ["epoch-1.weights.h5", "state.json"]
        subprocess.run(["mount", "-o", f"remount,nr_inodes={inodes + 4}", str(results)], check=True)
        rerun = cli(*train_args(results, mnist_mini))
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        assert result_of(results)["resume"] == {"count": 1, "from_epochs": [1]}


def test_a_per_epoch_log_that_cannot_be_written_is_one_line_and_a_rerun_trains(
    mnist_mini: Path, tmp_path: Path
) -> None:
    """7 inodes: the folders, the run's run.json, the pair's lease, its CSV and TensorBoard folder; the first event
    file (the hparams session's) finds none."""
    with tmpfs(tmp_path / "disk", "3m", "nr_inodes=7") as results:
        failed = cli(*train_args(results, mnist_mini))
        assert_one_line(failed, 1, "run", "cannot write the per-epoch logs fold-0.csv and fold-0/")
        subprocess.run(["mount", "-o", "remount,nr_inodes=17", str(results)], check=True)
        assert cli(*train_args(results, mnist_mini)).returncode == 0


# Fill the disk, then save a real model's weights where they do not fit: HDF5 fails in the middle of its write.
WRITE_FAILS = """
import sys
from pathlib import Path
from job.pair import checkpoint, models, runtime
runtime.import_tensorflow()
model = models.build("mlp")
model.optimizer.build(model.trainable_variables)
folder = Path(sys.argv[1])
(folder / "filler").write_bytes(bytes(int(sys.argv[2])))
try:
    checkpoint.save_weights(model, folder / "epoch-1.weights.h5")
except OSError as error:
    print("failed:", error.errno)
"""


def test_a_checkpoint_write_that_fails_midway_ends_cleanly(tmp_path: Path) -> None:
    """The free-space check comes first; should the disk fill up during the write anyway, HDF5 must not crash."""
    with tmpfs(tmp_path / "disk", "600k") as disk:
        done = subprocess.run(
            [sys.executable, "-c", WRITE_FAILS, str(disk), str(300_000)], capture_output=True, text=True, timeout=180
        )
    assert done.returncode == 0, done.stderr[-3000:]  # before the fix: 139, a segmentation fault
    assert done.stdout.strip().splitlines()[-1] == "failed: 28"
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr


# ---- exit 3 and 130: stopped


class StoppedThenResumed(NamedTuple):
    results: Path
    stopped: subprocess.CompletedProcess[str]
    epochs_done: int  # by the checkpoint the stop left
    written: bool  # whether the stop left a result
    rerun: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def stopped_then_resumed(mnist_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> StoppedThenResumed:
    """A pair stopped by SIGTERM in epoch 2, then rerun to its end; test_a_failed_rerun_... reruns it once more."""
    results = tmp_path_factory.mktemp("stopped")
    stopped = stop_in_epoch_2(train_args(results, mnist_mini), signal.SIGTERM)
    state = checkpoint_of(results) / "state.json"
    epochs_done = json.loads(state.read_text())["epochs_done"] if state.exists() else 0
    written = (results / "default" / "mlp" / "fold-0.json").exists()
    rerun = cli(*train_args(results, mnist_mini, "--epochs", STOP_EPOCHS))
    return StoppedThenResumed(results, stopped, epochs_done, written, rerun)


def test_a_stop_signal_exits_3_keeps_the_checkpoint_and_a_rerun_resumes(
    stopped_then_resumed: StoppedThenResumed,
) -> None:
    results, stopped, epochs_done, written, rerun = stopped_then_resumed
    assert_one_line_after_the_signal_notice(stopped, 3, "stopped by a signal")
    assert epochs_done >= 1 and not written
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert result_of(results)["resume"]["count"] == 1


def assert_one_line_after_the_signal_notice(done: subprocess.CompletedProcess[str], status: int, message: str) -> None:
    lines = [line for line in our_lines(done.stderr) if not line.startswith("received SIG")]
    assert done.returncode == status, done.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("mnist-cv run: ") and message in lines[0], lines


def test_ctrl_c_exits_130_with_one_line_and_keeps_the_checkpoint(mnist_mini: Path, tmp_path: Path) -> None:
    stopped = stop_in_epoch_2(train_args(tmp_path, mnist_mini), signal.SIGINT)
    assert_one_line(stopped, 130, "run", "interrupted")
    assert (checkpoint_of(tmp_path) / "state.json").exists()


# ---- nothing already written is damaged


def test_a_failed_rerun_leaves_the_result_already_written_byte_identical(
    stopped_then_resumed: StoppedThenResumed, mnist_mini: Path, tmp_path: Path
) -> None:
    assert stopped_then_resumed.rerun.returncode == 0, stopped_then_resumed.rerun.stderr[-2000:]
    shutil.copytree(stopped_then_resumed.results, tmp_path, dirs_exist_ok=True)  # a result written by a whole run
    written = (tmp_path / "default" / "mlp" / "fold-0.json").read_bytes()
    stopped = stop_in_epoch_2(train_args(tmp_path, mnist_mini, "--force"), signal.SIGTERM)
    assert stopped.returncode == 3, stopped.stderr[-2000:]
    assert (tmp_path / "default" / "mlp" / "fold-0.json").read_bytes() == written
    assert not [p for p in (tmp_path / "default" / "mlp").iterdir() if p.name.startswith(".")]  # no temp files


# ---- a hand-edited checkpoint is set aside like a corrupt one


# Each edit is made to its own mlp pair's checkpoint (task id = fold = its index): one process trains the pairs and
# keeps their checkpoints, one process reruns them all, each pair through the same restore as alone.
EDITS = {
    "epochs-as-text": (lambda s: {**s, "epochs_done": str(s["epochs_done"])}, "epochs_done '3' is not a whole number"),
    "short-history": (
        lambda s: {**s, "history": {**s["history"], "loss": s["history"]["loss"][:1]}},
        "loss does not hold 3",
    ),
    "epochs-changed": (lambda s: {**s, "epochs_done": 2}, "weights 'epoch-3.weights.h5' is not epoch-2.weights.h5"),
    "history-not-a-dict": (lambda s: {**s, "history": []}, "history does not hold loss"),
}
EDITED_TASKS = f"0-{len(EDITS) - 1}"


def packed_args(results: Path, mnist: Path, *more: str) -> list[str]:
    """train_args's config for the pairs of EDITED_TASKS, trained one after another in one process."""
    args = train_args(results, mnist, *more)
    return ["run", "--task-ids", EDITED_TASKS, *args[args.index("--limit") :]]


@pytest.fixture(scope="module")
def edited_reruns(mnist_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict], str]:
    """The pairs of EDITED_TASKS trained with --keep-checkpoint, each checkpoint edited as its EDITS case says and its
    result removed (not --force: that sets any checkpoint aside unread), then rerun: the results folder, the first
    results by fold, and the rerun's output (stdout, then stderr)."""
    results = tmp_path_factory.mktemp("edited-checkpoints")
    kept = cli(*packed_args(results, mnist_mini, "--keep-checkpoint"))
    assert kept.returncode == 0, kept.stderr[-3000:]
    first = [result_of(results, fold) for fold in range(len(EDITS))]
    for fold, (edit, _) in enumerate(EDITS.values()):
        state_file = checkpoint_of(results, fold) / "state.json"
        state_file.write_text(json.dumps(edit(json.loads(state_file.read_text()))))
        (results / "default" / "mlp" / f"fold-{fold}.json").unlink()
    rerun = cli(*packed_args(results, mnist_mini))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    return results, first, rerun.stdout + rerun.stderr


@pytest.mark.parametrize("case", list(EDITS))
def test_a_hand_edited_checkpoint_is_set_aside_and_the_pair_starts_over(
    case: str, edited_reruns: tuple[Path, list[dict], str]
) -> None:
    results, first, output = edited_reruns
    fold, (_, reason) = list(EDITS).index(case), EDITS[case]
    state_file = checkpoint_of(results, fold) / "state.json"
    notices = [line for line in output.splitlines() if "checkpoint unusable" in line]
    assert len(notices) == len(EDITS), notices  # one for each pair, none twice
    notice = [line for line in notices if f"{state_file}:" in line]
    assert len(notice) == 1 and f"{state_file}: not as a save writes it ({reason}" in notice[0], notice
    again = result_of(results, fold)
    assert again["resume"] == {"count": 0, "from_epochs": []}
    assert again["history"] == first[fold]["history"] and again["score"] == first[fold]["score"]


# ---- anything else: one line that says it is a bug


# A model whose definition Keras rejects: a bug in the code, not a fault of the data or the machine.
BROKEN = """
import sys
from job.pair import models

@models.register("broken")
def _broken():
    from keras import Input, Sequential, layers, optimizers
    return Sequential([Input(models.INPUT_SHAPE), layers.Flatten(), layers.Dense(-1)]), optimizers.SGD()

from job.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("debug", [False, True], ids=["traceback-in-a-file", "debug"])
def test_an_unanticipated_error_is_one_line_that_says_it_is_a_bug(
    debug: bool, mnist_full: Path, tmp_path: Path
) -> None:
    args = [
        *(["--debug"] if debug else []),
        "run",
        "--model",
        "broken",
        "--fold",
        "0",
        "--limit",
        LIMIT,
        "--results",
        str(tmp_path / "results"),
        "--data-dir",
        str(mnist_full),
    ]
    done = subprocess.run(
        [sys.executable, "-c", BROKEN, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert done.returncode == 1
    lines = our_lines(done.stderr)
    bug = [line for line in lines if line.startswith("mnist-cv run: internal error (a bug): ValueError: ")]
    assert len(bug) == 1, lines
    if debug:
        assert bug[0].endswith("; traceback above")
        assert "Traceback (most recent call last)" in done.stderr
    else:
        assert lines == bug
        saved = re.search(r"; traceback in (\S+)$", bug[0])
        assert saved and Path(saved[1]).parent == tmp_path, bug[0]
        text = Path(saved[1]).read_text()
        assert text.startswith("mnist-cv run --model broken") and "Traceback (most recent call last)" in text
        assert "ValueError" in text.splitlines()[-1]


def test_a_task_id_from_the_environment_that_is_not_ascii_digits_is_a_usage_error(tmp_path: Path) -> None:
    """$SLURM_ARRAY_TASK_ID with a digit str.isdigit() accepts but int() refuses."""
    done = cli("run", "--results", str(tmp_path), env={"SLURM_ARRAY_TASK_ID": "²"}, timeout=60)
    assert done.returncode == 2
    assert len(our_lines(done.stderr)) == 1 and "'²' is not a task id" in done.stderr, done.stderr


def test_a_task_id_argument_that_is_not_ascii_digits_is_a_usage_error(tmp_path: Path) -> None:
    """int() reads '٣' (Arabic-Indic three) as 3: the pair would silently be task 3."""
    done = cli("run", "--task-id", "٣", "--results", str(tmp_path), timeout=60)
    assert done.returncode == 2
    assert len(our_lines(done.stderr)) == 1 and "'٣' is not a task id" in done.stderr, done.stderr
