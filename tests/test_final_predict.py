"""`final` and `predict` on real MNIST: a small final model is trained (stopped by a signal, then resumed) in a
subprocess, and new processes reload it to predict real test digits written out as PNG, JPEG, .npy and IDX files.

"In memory" below means the saved model loaded with Keras and fed the original 28x28 test images as arrays. That
happens in a helper process: this one never imports TensorFlow (tests/test_protocol.py checks the CLI does not).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
from support import cli
from support.tensorboard_logs import assert_runs_hold_the_history, config_hparams, read

from job.cli import main
from job.pair import data, predict

pytestmark = pytest.mark.slow  # a final model is trained, stopped, resumed: most tests need it

# An MLP on 3,000 images, about 90% test accuracy. An epoch is one compiled call of well under a second: 30 of them
# leave a loaded machine time to deliver the SIGTERM sent after epoch 2 before the training could end by itself.
LIMIT, EPOCHS = 3000, 30


def error_lines(stderr: str) -> list[str]:
    """Our one-line errors, without TensorFlow's start-up chatter."""
    return [line for line in stderr.splitlines() if line.startswith("mnist-cv ")]


class Trained(NamedTuple):
    results: Path
    final_args: list[str]
    stopped: subprocess.CompletedProcess[str]
    epochs_before_stop: int
    resumed: subprocess.CompletedProcess[str]
    skipped: subprocess.CompletedProcess[str]
    model_file: Path
    result: dict[str, Any]


@pytest.fixture(scope="module")
def dataset(mnist_full: Path) -> data.Dataset:
    return data.load(mnist_full)


@pytest.fixture(scope="module")
def trained(mnist_full: Path, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A final MLP: stopped by SIGTERM in its third epoch at the latest (as scancel or a preemption would), rerun to
    the end, then run once more (and skipped)."""
    results = tmp_path_factory.mktemp("results")
    final_args = ["final", "--model", "mlp", "--limit", str(LIMIT), "--epochs", str(EPOCHS), "--run", "t"]
    final_args += ["--results", str(results), "--data-dir", str(mnist_full)]
    first = subprocess.Popen(
        [sys.executable, "-m", "job", *final_args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lines = []
    for line in first.stdout:
        lines.append(line)
        if f"epoch 2/{EPOCHS}" in line:  # epoch 1's checkpoint is on disk (epoch 2's may not be yet)
            first.send_signal(signal.SIGTERM)
            break
    out, err = first.communicate(timeout=180)
    stopped = subprocess.CompletedProcess(first.args, first.returncode, "".join(lines) + out, err)
    state_file = results / "t" / "final" / "mlp.ckpt" / "state.json"
    epochs_before_stop = json.loads(state_file.read_text())["epochs_done"] if state_file.exists() else 0
    resumed = cli(*final_args)
    skipped = cli(*final_args)
    final_dir = results / "t" / "final"
    if not (final_dir / "mlp.json").exists():
        pytest.fail(f"the final run did not finish: {resumed.stderr[-2000:]}")
    result = json.loads((final_dir / "mlp.json").read_text())
    print(f"final mlp on {LIMIT} training images: test accuracy {result['score']['accuracy']:.4f} on 10,000 images")
    return Trained(results, final_args, stopped, epochs_before_stop, resumed, skipped, final_dir / "mlp.keras", result)


# Run with the saved model, the test images (.npy) and two output paths.
REFERENCE = """
import sys
import numpy as np
from job.pair import runtime
runtime.import_tensorflow()
import keras
model_file, images, probs_out, foreign_out = sys.argv[1:]
model = keras.models.load_model(model_file, compile=False)
x = np.load(images)[..., np.newaxis].astype(np.float32) / 255
np.save(probs_out, model.predict(x, batch_size=1000, verbose=0))
keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)]).save(foreign_out)  # a Keras model, not ours
"""


class Reference(NamedTuple):
    probs: np.ndarray  # (10000, 10): in-memory probabilities of the saved model on the original test images
    foreign_model: Path


@pytest.fixture(scope="module")
def reference(trained: Trained, dataset: data.Dataset, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    folder = tmp_path_factory.mktemp("reference")
    np.save(folder / "x_test.npy", dataset.x_test)
    args = [str(trained.model_file), str(folder / "x_test.npy"), str(folder / "probs.npy"), str(folder / "other.keras")]
    done = subprocess.run([sys.executable, "-c", REFERENCE, *args], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return Reference(np.load(folder / "probs.npy"), folder / "other.keras")


def test_final_stops_on_a_signal_and_resumes_from_its_checkpoint(trained: Trained) -> None:
    assert trained.stopped.returncode == 3, trained.stopped.stderr[-2000:]
    assert "stopped by a signal" in trained.stopped.stderr
    assert 1 <= trained.epochs_before_stop < EPOCHS
    assert trained.resumed.returncode == 0, trained.resumed.stderr[-2000:]
    assert f"resuming from the checkpoint after epoch {trained.epochs_before_stop}" in trained.resumed.stdout
    assert trained.result["resume"] == {"count": 1, "from_epochs": [trained.epochs_before_stop]}
    assert trained.skipped.returncode == 0 and "already done" in trained.skipped.stdout
    # the checkpoint is gone and no temp file is left beside the model, its result and its per-epoch logs
    assert sorted(p.name for p in trained.model_file.parent.iterdir()) == ["mlp", "mlp.csv", "mlp.json", "mlp.keras"]
    # Its curves are on the test images and say so: test_*, never val_*, in the CSV and the progress lines.
    header, *rows = (trained.model_file.parent / "mlp.csv").read_text().splitlines()
    assert header == "epoch,loss,accuracy,test_loss,test_accuracy,epoch_seconds" and len(rows) == EPOCHS
    assert [float(row.split(",")[4]) for row in rows] == trained.result["history"]["val_accuracy"]
    assert f"epoch {EPOCHS}/{EPOCHS}" in trained.resumed.stdout and "test_acc " in trained.resumed.stdout
    assert "val_" not in trained.resumed.stdout
    assert trained.result["resources"]["wall_seconds"] >= trained.result["timings"]["fit_seconds"]


def test_its_tensorboard_logs_are_a_train_and_a_test_run_each_epoch_once_and_its_config(trained: Trained) -> None:
    """As Keras's TensorBoard callback lays them out, its held-out run named for the test images it was measured on;
    the stopped and resumed training's epochs each once, at step = the epoch's index."""
    view, result = read(trained.results / "t"), trained.result
    runs = {
        "final/mlp/train": {"epoch_loss": "loss", "epoch_accuracy": "accuracy", "epoch_seconds": "epoch_seconds"},
        "final/mlp/test": {"epoch_loss": "val_loss", "epoch_accuracy": "val_accuracy"},
    }
    assert_runs_hold_the_history(view["scalars"], runs, result)
    assert len(result["history"]["loss"]) == EPOCHS
    assert view["sessions"]["final/mlp"]["hparams"] == {"model": "mlp", **config_hparams(result)}
    assert view["sessions"]["final/mlp"]["metrics"]["test/epoch_accuracy"] == pytest.approx(
        result["score"]["accuracy"], rel=1e-6
    )


def test_final_result_is_what_the_saved_model_does_on_the_test_set(
    trained: Trained, dataset: data.Dataset, reference: Reference
) -> None:
    result = trained.result
    assert result["model"] == "mlp" and result["config"]["limit"] == LIMIT and result["config"]["epochs"] == EPOCHS
    assert result["data"]["name"] == "mnist" and result["data"]["sha256"] == dataset.sha256
    assert (result["data"]["n_train"], result["data"]["n_test"]) == (LIMIT, 10_000)  # --limit: all test images
    assert all(len(values) == EPOCHS for values in result["history"].values())
    assert {"python", "packages", "hostname", "device_used", "git", "slurm", "container"} <= result[
        "environment"
    ].keys()
    assert result["model_file"]["sha256"] == hashlib.sha256(trained.model_file.read_bytes()).hexdigest()

    predicted, labels = reference.probs.argmax(axis=1), dataset.y_test
    test = result["test"]
    wrong = np.flatnonzero(predicted != labels)
    assert test["n_images"] == 10_000 and test["n_correct"] == 10_000 - len(wrong)
    assert result["score"]["accuracy"] == pytest.approx(test["n_correct"] / 10_000, abs=1e-6)
    assert 0.85 < result["score"]["accuracy"] < 1
    confusion = np.zeros((10, 10), int)
    np.add.at(confusion, (labels, predicted), 1)
    assert test["confusion_matrix"] == confusion.tolist()
    assert test["per_class_accuracy"] == pytest.approx(confusion.diagonal() / confusion.sum(axis=1))
    assert [m["index"] for m in test["misclassified"]] == wrong.tolist()
    assert [m["predicted"] for m in test["misclassified"]] == predicted[wrong].tolist()
    assert [m["label"] for m in test["misclassified"]] == labels[wrong].tolist()


def test_predict_in_a_new_process_matches_in_memory(
    trained: Trained, dataset: data.Dataset, reference: Reference, tmp_path: Path
) -> None:
    from PIL import Image

    x, probs = dataset.x_test, reference.probs
    # Digits the model is sure of: resizing may move a borderline digit across a boundary, not a clear one.
    sure = [int(i) for i in np.flatnonzero((probs.max(axis=1) > 0.98) & (probs.argmax(axis=1) == dataset.y_test))]
    expected: list[tuple[str, int]] = []  # (input as predict names it, index of the test image it shows)
    resampled = {"paper-100.png", "colour-60.jpg", "off-centre.png"}  # the same digit, not the same pixels

    def png(name: str, image: Image.Image, index: int) -> None:
        image.save(tmp_path / name)
        expected.append((name, index))

    for i in range(5):
        png(f"test-{i}.png", Image.fromarray(x[i]), i)  # 28x28 light-on-dark, as MNIST
    png("inverted.png", Image.fromarray(255 - x[5]), 5)  # 28x28 dark ink on white paper
    a, b, c = sure[:3]
    png("paper-100.png", Image.fromarray(255 - x[a]).resize((100, 100), Image.Resampling.BICUBIC), a)
    png("colour-60.jpg", Image.fromarray(255 - x[b]).resize((60, 60)).convert("RGB"), b)
    off_centre = Image.new("L", (200, 120), 220)  # grey paper, the digit near a corner: cropped and centred
    off_centre.paste(Image.fromarray(255 - x[c]).resize((84, 84)), (110, 4))
    png("off-centre.png", off_centre, c)
    np.save(tmp_path / "one.npy", x[6])  # (28, 28) uint8
    expected.append(("one.npy", 6))
    np.save(tmp_path / "batch.npy", x[7:10, :, :, np.newaxis] / 255.0)  # (3, 28, 28, 1) float 0-1
    expected += [(f"batch.npy[{k}]", 7 + k) for k in range(3)]
    # 300 dark-on-white digits enlarged to 100x100 and normalised back: most must keep their prediction.
    enlarged = [Image.fromarray(255 - im).resize((100, 100), Image.Resampling.BICUBIC) for im in x[:300]]
    np.save(tmp_path / "normalised.npy", np.stack([predict.to_mnist(np.asarray(im)) for im in enlarged]))
    bad = {
        "notes.txt": "not an image, .npy array or IDX file",
        "wrong-shape.npy": "shape (2, 32, 32)",
        "too-bright.npy": "float64 values must be uint8 0-255 or float 0-1",
        "blank.png": "no digit found",
        "missing.png": "cannot read (No such file or directory)",
    }
    (tmp_path / "notes.txt").write_text("not a digit")
    np.save(tmp_path / "wrong-shape.npy", np.zeros((2, 32, 32), np.uint8))
    np.save(tmp_path / "too-bright.npy", x[:2] * 1.0)
    Image.new("L", (40, 40), 255).save(tmp_path / "blank.png")
    inputs = [*dict.fromkeys(name.split("[")[0] for name, _ in expected), "normalised.npy", *bad]

    done = cli("predict", "--model-file", str(trained.model_file), "--json", "--top", "10", *inputs, cwd=tmp_path)

    assert done.returncode == 1  # some inputs were bad; the others were still predicted
    errors = error_lines(done.stderr)
    assert len(errors) == len(bad)
    for line, (name, message) in zip(errors, bad.items(), strict=True):
        assert line.startswith(f"mnist-cv predict: error: {name}: ") and message in line, line
    report = json.loads(done.stdout)
    assert report["errors"] == [line.removeprefix("mnist-cv predict: error: ") for line in errors]
    rows, normalised = report["predictions"][: len(expected)], report["predictions"][len(expected) :]
    assert [row["input"] for row in rows] == [name for name, _ in expected]
    for row, (name, index) in zip(rows, expected, strict=True):
        assert row["digit"] == probs[index].argmax(), name
        if name not in resampled:
            got = np.zeros(10)
            for top in row["top"]:
                got[top["digit"]] = top["probability"]
            np.testing.assert_allclose(got, probs[index], atol=1e-5, err_msg=name)
    assert [row["input"] for row in normalised] == [f"normalised.npy[{i}]" for i in range(300)]
    agree = np.mean([row["digit"] == probs[i].argmax() for i, row in enumerate(normalised)])
    assert agree >= 0.95
    print(f"enlarged, dark-on-white and normalised back: {agree:.1%} of 300 test digits keep their prediction")


def test_predict_idx_batch_reports_accuracy_against_labels(
    trained: Trained, dataset: data.Dataset, reference: Reference, tmp_path: Path
) -> None:
    n = 500
    images, labels = tmp_path / "images-idx3-ubyte", tmp_path / "labels-idx1-ubyte.gz"
    images.write_bytes(b"".join(v.to_bytes(4, "big") for v in (0x803, n, 28, 28)) + dataset.x_test[:n].tobytes())
    labels.write_bytes(gzip.compress(b"".join(v.to_bytes(4, "big") for v in (0x801, n)) + dataset.y_test[:n].tobytes()))
    done = cli("predict", "--model-file", str(trained.model_file), str(images), "--labels", str(labels), "--rows", "5")
    assert done.returncode == 0, done.stderr[-2000:]
    correct = int((reference.probs[:n].argmax(axis=1) == dataset.y_test[:n]).sum())
    assert f"accuracy {correct / n * 100:.3f}% ({correct} of {n})" in done.stdout
    assert f"{n - 5} more rows" in done.stdout
    print(f"predict on {n} IDX test images: {correct} correct")


def test_to_mnist_takes_a_28x28_image_as_mnist_and_fixes_its_polarity(dataset: data.Dataset) -> None:
    x = dataset.x_test[0]
    assert np.array_equal(predict.to_mnist(x), x / np.float32(255))
    assert np.array_equal(predict.to_mnist(255 - x), x / np.float32(255))


# `predict` with each model file after the first argument (a digit), in one process: most need TensorFlow to refuse.
PREDICT_EACH = (
    "import sys; from job.cli import main; "
    "print([main(['predict', '--model-file', model, sys.argv[1]]) for model in sys.argv[2:]])"
)


def test_a_bad_model_file_is_one_line(reference: Reference, tmp_path: Path) -> None:
    digit = tmp_path / "digit.npy"
    np.save(digit, np.zeros((28, 28), np.uint8))
    (tmp_path / "notes.txt").write_text("not a model")
    (tmp_path / "torn.keras").write_bytes(b"PK\x03\x04 and then nothing")
    cases = {
        tmp_path / "absent.keras": "cannot read (No such file or directory)",
        tmp_path / "torn.keras": "not a Keras model file (truncated or not a .keras zip archive)",
        tmp_path / "notes.txt": "not a Keras model file (",
        reference.foreign_model: "not an MNIST digit model (input shape (None, 8), output shape (None, 3)",
    }
    done = subprocess.run(
        [sys.executable, "-c", PREDICT_EACH, str(digit), *map(str, cases)], capture_output=True, text=True, timeout=180
    )
    assert done.stdout.strip().splitlines()[-1] == str([1] * len(cases)), done.stderr[-2000:]
    errors = error_lines(done.stderr)
    assert len(errors) == len(cases), errors
    for line, (path, message) in zip(errors, cases.items(), strict=True):
        assert line.startswith(f"mnist-cv predict: error: {path}: {message}"), line


def test_usage_and_config_errors(trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = str(trained.model_file)
    for argv, status, message in [
        (["predict", "--model-file", model, "--top", "0", "x.png"], 2, "argument --top: must be 1 to 10, got 0"),
        (["predict", "--model-file", model, "--labels", "l.gz", "a.png", "b.png"], 2, "exactly one IMAGE"),
        (["final", "--model", "resnet", "--results", str(tmp_path)], 2, "unknown model 'resnet'"),
        # the same run with another config is refused, not overwritten (the last --epochs wins)
        ([*trained.final_args, "--epochs", str(EPOCHS + 1)], 2, f"you gave --epochs {EPOCHS + 1}"),
    ]:
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code
        assert code == status, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
