"""Inputs that must not crash the CLI: each class tried with several inputs, generated
where that fits. `predict` runs in a subprocess on a small final MLP trained on real MNIST (the committed run
folder's, tests/data/run-folder/); this process never imports TensorFlow.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support import ROOT, cli

from job.console import one_line
from job.errors import JobError, UsageError
from job.pair import data, predict
from job.protocol import MAX_SEED, Protocol, parse_task_id

PREFIX = "mnist-cv predict: error: "


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("mnist-cv")]


@pytest.fixture(scope="module")
def dataset(mnist_full: Path) -> data.Dataset:
    return data.load(mnist_full)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A final MLP saved by the real `final` command: the committed run folder's (tests/data/run-folder/), copied."""
    final = Path(
        shutil.copytree(
            ROOT / "tests" / "data" / "run-folder" / "default" / "final", tmp_path_factory.mktemp("t") / "final"
        )
    )
    return final / "mlp.keras"


def predict_json(
    model: Path, *inputs: Path | str, timeout: float = 120
) -> tuple[subprocess.CompletedProcess, Any, int]:
    """`predict --json` in a child of a fresh interpreter: the run, its report, and the child's peak memory in MB."""
    runner = (
        "import resource, subprocess, sys; done = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "sys.stderr.write(done.stderr); print(done.stdout, end=''); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024); sys.exit(done.returncode)"
    )
    args = [sys.executable, "-c", runner, sys.executable, "-m", "job", "predict", "--json", "--model-file", str(model)]
    done = subprocess.run([*args, *map(str, inputs)], capture_output=True, text=True, timeout=timeout)
    *report, peak = done.stdout.strip().splitlines()
    return done, json.loads(report[-1]) if report else None, int(peak)


# ---- class 5: what an input declares is what reading it costs


@pytest.mark.slow
def test_inputs_too_big_to_read_are_refused_one_line_each_and_the_others_predicted(
    model_file: Path, dataset: data.Dataset, tmp_path: Path
) -> None:
    from PIL import Image

    np.save(tmp_path / "digit.npy", dataset.x_test[0])
    with open(tmp_path / "huge.npy", "wb") as f:  # a header claiming 860 GB, then 784 bytes
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": (2**30, 28, 28)})
        f.write(dataset.x_test[1].tobytes())
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # an IDX .gz of 10 images, inflating to 1 GiB
    with open(tmp_path / "bomb-idx3-ubyte.gz", "wb") as out:
        out.write(packer.compress(b"".join(v.to_bytes(4, "big") for v in (0x803, 10, 28, 28))))
        out.write(packer.compress(dataset.x_test[:10].tobytes()))
        for _ in range(64):
            out.write(packer.compress(bytes(16 << 20)))
        out.write(packer.flush())
    big = Image.new("L", (13_000, 13_000), 255)  # 169 megapixels of white paper with a digit on it
    big.paste(Image.fromarray(255 - dataset.x_test[2]).resize((2000, 2000)), (5000, 5000))
    big.save(tmp_path / "big.png")
    del big
    os.mkfifo(tmp_path / "fifo")
    inputs = ["digit.npy", "huge.npy", "bomb-idx3-ubyte.gz", "big.png", "/dev/zero", "fifo", "digit.npy"]

    done, report, peak_mb = predict_json(model_file, *(tmp_path / name for name in inputs))

    assert done.returncode == 1
    assert [row["input"] for row in report["predictions"]] == [str(tmp_path / "digit.npy")] * 2
    expected = [
        f"{tmp_path / 'huge.npy'}: its header declares shape (1073741824, 28, 28) of uint8 (841,813,590,016 bytes)",
        f"{tmp_path / 'bomb-idx3-ubyte.gz'}: more than the 7,856 bytes its header says - padded",
        f"{tmp_path / 'big.png'}: 13000 x 13000 pixels, over the limit of 25,000,000",
        "/dev/zero: not a regular file",
        f"{tmp_path / 'fifo'}: not a regular file",
    ]
    errors = error_lines(done.stderr)
    assert len(errors) == len(expected), done.stderr[-3000:]
    for line, start in zip(errors, expected, strict=True):
        assert line.startswith(PREFIX + start), line
    assert peak_mb < 1500, peak_mb  # TensorFlow and the model take about 600 MB
    print(f"predict refused 5 oversized inputs at a peak of {peak_mb} MB")


# ---- class 6: input that used to reach a traceback


@given(st.text(max_size=12))
@example("²")
@example("٣")
@example(" 7\n")
@example("-1")
@example("+3")
@example("0x1")
@example("1_0")
def test_a_task_id_is_ascii_digits_and_nothing_else(text: str) -> None:
    stripped = text.strip(" \t\n")
    if stripped and len(stripped) <= 9 and all(c in "0123456789" for c in stripped):
        assert parse_task_id(text) == int(stripped)
    else:
        with pytest.raises(UsageError, match=r"is not a task id \(the digits 0-9 only\)"):
            parse_task_id(text, "$SLURM_ARRAY_TASK_ID")


@given(st.integers(min_value=-(2**70), max_value=2**70))
@example(-1)
@example(MAX_SEED)
@example(MAX_SEED + 1)
def test_a_seed_is_one_numpy_and_keras_accept(seed: int) -> None:
    if 0 <= seed <= MAX_SEED:
        assert Protocol(seed=seed).seed == seed
        np.random.seed(seed)  # what keras.utils.set_random_seed calls
        np.random.default_rng([seed, 0, 0])
    else:
        with pytest.raises(UsageError, match=rf"--seed must be 0 to {MAX_SEED}, got {seed}"):
            Protocol(seed=seed)


@pytest.mark.parametrize("command", ["run", "final", "submit"])
@pytest.mark.parametrize("seed", ["-1", str(2**32), str(-(2**40))])
def test_a_seed_out_of_range_is_a_usage_error_in_every_command(command: str, seed: str, tmp_path: Path) -> None:
    args = {"run": ["--model", "mlp", "--fold", "0"], "final": ["--model", "mlp"], "submit": ["--executor", "local"]}[
        command
    ]
    done = cli(command, *args, "--seed", seed, "--results", str(tmp_path), timeout=60)
    assert done.returncode == 2, done.stderr[-2000:]
    assert (
        done.stderr == f"mnist-cv {command}: error: argument --seed: must be 0 to {MAX_SEED}, got {seed} (see --help)\n"
    )


def test_a_plain_npy_as_the_data_folder_is_one_line(tmp_path: Path) -> None:
    np.save(tmp_path / "mnist.npy", np.zeros((60, 28, 28), np.uint8))
    done = cli(
        "run",
        "--model",
        "mlp",
        "--fold",
        "0",
        "--data-dir",
        str(tmp_path / "mnist.npy"),
        "--results",
        str(tmp_path),
        timeout=120,
    )
    assert done.returncode == 1
    assert error_lines(done.stderr) == [
        f"mnist-cv run: error: {tmp_path / 'mnist.npy'}: not a .npz file (the data is a folder of IDX files or a "
        "Keras mnist.npz)"
    ]
    assert "Traceback" not in done.stderr


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    side=st.sampled_from([(28, 28), (28, 40), (100, 100), (7, 300)]),
    level=st.integers(0, 255),
    noise=st.integers(0, 31),
    seed=st.integers(0, 2**16),
)
def test_a_blank_or_flat_image_of_any_size_has_no_digit(
    side: tuple[int, int], level: int, noise: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    gray = np.clip(level + rng.integers(-noise // 2, noise // 2 + 1, side), 0, 255).astype(np.uint8)
    assert np.ptp(gray) < predict.MIN_CONTRAST
    with pytest.raises(JobError, match=r"no digit found \(a blank or flat image\)"):
        predict.to_mnist(gray)


def test_a_blank_28x28_png_has_no_digit_and_a_real_digit_is_unchanged(dataset: data.Dataset, tmp_path: Path) -> None:
    from PIL import Image

    for level in (0, 255, 128):
        Image.new("L", (28, 28), level).save(tmp_path / f"blank-{level}.png")
        with pytest.raises(JobError, match=rf"blank-{level}\.png: no digit found"):
            predict.read_input(tmp_path / f"blank-{level}.png")
    for i in range(20):  # real test digits still come back pixel for pixel
        assert np.array_equal(predict.to_mnist(dataset.x_test[i]), dataset.x_test[i] / np.float32(255))


def test_a_16_bit_png_is_scaled_not_clipped(dataset: data.Dataset, tmp_path: Path) -> None:
    from PIL import Image

    for i in range(10):
        digit = dataset.x_test[i]
        Image.fromarray(digit.astype(np.uint16) * 257).save(tmp_path / "deep.png")  # 0-65535, saved as I;16
        Image.fromarray(digit).save(tmp_path / "plain.png")
        deep, plain = predict.read_input(tmp_path / "deep.png"), predict.read_input(tmp_path / "plain.png")
        np.testing.assert_allclose(deep, plain, atol=1e-6)
        large = Image.fromarray(255 - digit).resize((90, 90), Image.Resampling.BICUBIC)
        Image.fromarray(np.asarray(large).astype(np.uint16) * 257).save(tmp_path / "deep-large.png")
        large.save(tmp_path / "plain-large.png")
        np.testing.assert_allclose(
            predict.read_input(tmp_path / "deep-large.png"), predict.read_input(tmp_path / "plain-large.png"), atol=1e-5
        )


@pytest.mark.parametrize(
    ("name", "mode", "to_mode"),
    [
        ("int32.tif", "I", lambda d: d.astype(np.int32) * 257),  # 32-bit greyscale holding 16-bit values
        ("int32-full.tif", "I", lambda d: d.astype(np.int64) * 8421504),  # the whole (signed) 32-bit range
        ("int32-8bit.tif", "I", lambda d: d.astype(np.int32)),  # 8-bit values stored in 32 bits
        ("float01.tif", "F", lambda d: d.astype(np.float32) / 255),  # floats 0-1
        ("float255.tif", "F", lambda d: d.astype(np.float32)),  # floats 0-255
    ],
)
def test_a_deep_greyscale_image_is_scaled_by_its_real_range(
    dataset: data.Dataset, tmp_path: Path, name: str, mode: str, to_mode: Any
) -> None:
    # Clipped at 255 by convert("L"), a 32-bit TIFF was predicted wrong and floats 0-1 were "no digit found".
    from PIL import Image

    for i in range(5):
        digit = dataset.x_test[i]
        Image.fromarray(to_mode(digit).astype(np.int32 if mode == "I" else np.float32), mode).save(tmp_path / name)
        Image.fromarray(digit).save(tmp_path / "plain.png")
        np.testing.assert_allclose(
            predict.read_input(tmp_path / name), predict.read_input(tmp_path / "plain.png"), atol=1e-5
        )


@pytest.mark.parametrize("fmt", ["TGA", "ICO"])
def test_an_image_starting_with_two_zero_bytes_is_read_as_an_image_not_as_idx(
    dataset: data.Dataset, tmp_path: Path, fmt: str
) -> None:
    from PIL import Image

    path = tmp_path / f"digit.{fmt.lower()}"
    sizes = {"sizes": [(28, 28)]} if fmt == "ICO" else {}  # an icon is saved at 16 and 24 pixels otherwise
    Image.fromarray(dataset.x_test[0]).convert("RGB").save(path, format=fmt, **sizes)
    assert path.read_bytes()[:2] == b"\0\0"
    np.testing.assert_allclose(predict.read_input(path), dataset.x_test[:1] / np.float32(255), atol=1e-6)


# Saves two copies of the model: one with a NaN weight, one whose finite weights overflow to NaN probabilities.
BROKEN_MODELS = """
import sys
import numpy as np
from job.pair import runtime
runtime.import_tensorflow()
import keras
model = keras.models.load_model(sys.argv[1], compile=False)
weights = model.get_weights()
weights[0][0, 0] = np.nan
model.set_weights(weights)
model.save(sys.argv[2])
weights[0][0, 0] = 0
weights[1][:] = 0  # no hidden bias: an all-zero image has all-zero hidden units, hence finite logits
weights[-2][:] = 3e38  # the last kernel: any digit's logits overflow to inf, and softmax turns them into NaN
model.set_weights(weights)
model.save(sys.argv[3])
"""


@pytest.mark.slow
def test_a_model_with_nan_weights_is_refused_and_nan_probabilities_are_reported(
    model_file: Path, dataset: data.Dataset, tmp_path: Path
) -> None:
    nan_model, overflowing = tmp_path / "nan.keras", tmp_path / "overflow.keras"
    made = subprocess.run(
        [sys.executable, "-c", BROKEN_MODELS, str(model_file), str(nan_model), str(overflowing)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    np.save(tmp_path / "digits.npy", dataset.x_test[:3])
    np.save(tmp_path / "blank.npy", np.zeros((28, 28), np.uint8))

    refused = cli("predict", "--model-file", str(nan_model), str(tmp_path / "digits.npy"))
    assert refused.returncode == 1
    assert error_lines(refused.stderr) == [
        f"{PREFIX}{nan_model}: its weights hold NaN or infinite values (a training that diverged?)"
    ]
    assert "nan" not in refused.stdout.lower()

    done, report, _ = predict_json(overflowing, tmp_path / "digits.npy", tmp_path / "blank.npy")
    assert done.returncode == 1
    errors = error_lines(done.stderr)
    assert errors == [
        f"{PREFIX}{tmp_path / 'digits.npy'}[{i}]: the model's probabilities are not finite numbers" for i in range(3)
    ]
    assert [row["input"] for row in report["predictions"]] == [str(tmp_path / "blank.npy")]  # all zeros: finite
    assert all(np.isfinite(top["probability"]) for row in report["predictions"] for top in row["top"])


NAMES = ["[bold]seven.npy", "[red]x[green].npy", "a[link=x]b.npy", ":smile: [blink].npy", "back\\[x].npy", "[ok].npy"]


def test_names_with_markup_are_printed_as_text(model_file: Path, dataset: data.Dataset, tmp_path: Path) -> None:
    for name in NAMES:
        np.save(tmp_path / name, dataset.x_test[0])
    missing = "[red]gone.png"
    done = cli("predict", "--model-file", str(model_file), *NAMES, missing, cwd=tmp_path, env={"COLUMNS": "200"})
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    for name in NAMES:
        assert f"│ {name}" in done.stdout, done.stdout
    assert error_lines(done.stderr) == [f"{PREFIX}{missing}: cannot read (No such file or directory)"]


@given(st.text())
def test_one_line_keeps_any_text_on_one_printable_line(text: str) -> None:
    line = one_line(text)
    assert line.isprintable()
    assert len(line.splitlines()) <= 1
    if text.isprintable():
        assert line == text
