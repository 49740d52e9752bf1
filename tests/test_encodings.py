"""Encodings: what a command prints degrades to what the terminal's encoding can hold (the rest escaped), the files
it writes are UTF-8, and a name that is not UTF-8 (a folder's stray byte) is shown escaped as '\\xff' and never
stops a command. Real processes under real encodings: $PYTHONIOENCODING, the C locale, and the ISO-8859 locales
where the machine has them (`locale -a`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT
from support.mnist import MINI

QUICK = ["--custom-data", "--epochs", "1", "--limit", "100"]
COMMITTED = ROOT / "tests" / "data" / "run-folder" / "default"
STRAY = os.fsdecode(b"\xff")  # a byte that is no UTF-8: os.fsdecode makes it the lone surrogate '\udcff'


def _locale_missing(name: str) -> bool:
    found = subprocess.run(["locale", "-a"], capture_output=True, text=True).stdout.lower().replace("-", "")
    return name.lower().replace("-", "") not in found.split()


def _locale(name: str) -> object:
    # Skipped only where the machine has no such locale: `locale-gen` makes it (Debian's `locales` package).
    return pytest.param(
        {"LC_ALL": name, "PYTHONUTF8": "0"},
        id=f"LC_ALL={name}",
        marks=pytest.mark.skipif(_locale_missing(name), reason=f"no locale {name} here (locale -a)"),
    )


ENCODINGS = [
    pytest.param({"PYTHONIOENCODING": "ascii"}, id="PYTHONIOENCODING=ascii"),
    pytest.param({"PYTHONIOENCODING": "latin-1"}, id="PYTHONIOENCODING=latin-1"),
    pytest.param({"LC_ALL": "C", "PYTHONUTF8": "0"}, id="LC_ALL=C"),  # UTF-8 mode off: ASCII, as Python 3.6 was
    _locale("tr_TR.ISO-8859-9"),  # (en_US.ISO-8859-1 is latin-1's encoding, above)
]


def encoding_of(env: dict[str, str]) -> str:
    """The encoding a fresh interpreter gives stdout under `env`."""
    return cli_bytes(env, "-c", "import sys; print(sys.stdout.encoding)").stdout.decode().strip()


def stray_shown(env: dict[str, str]) -> str:
    """How the byte 0xff of a name reads under `env`: a Latin locale's file names are Latin ('ÿ'), a UTF-8 or
    ASCII one's hold no such byte, shown escaped."""
    names = cli_bytes(env, "-c", "import sys; print(sys.getfilesystemencoding())").stdout.decode().strip()
    try:
        return b"\xff".decode(names)
    except UnicodeDecodeError:
        return "\\xff"


def cli_bytes(env: dict[str, str], *args: str | bytes, cwd: Path = ROOT) -> subprocess.CompletedProcess[bytes]:
    """`python ARGS` with `env` over a clean environment (no inherited encoding settings), as bytes."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "PYTHONIOENCODING", "PYTHONUTF8"))}
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        timeout=300,
        cwd=cwd,
        env={**base, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", "COLUMNS": "120", **env},
    )


def job(env: dict[str, str], *args: str | bytes) -> subprocess.CompletedProcess[bytes]:
    return cli_bytes(env, "-m", "job", *args)


def our_lines(stderr: bytes) -> list[str]:
    """stderr's lines from the command itself (TensorFlow's native start-up lines are not ours)."""
    return [line for line in stderr.decode("utf-8", "replace").splitlines() if line.startswith("mnist-cv")]


@pytest.fixture(scope="module")
def two_pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run with two real pairs (mlp folds 0 and 1 of the committed run folder) and the summary a first collect
    wrote."""
    results = tmp_path_factory.mktemp("two-pairs")
    (results / "default" / "mlp").mkdir(parents=True)
    for fold in ("0", "1"):
        shutil.copy(COMMITTED / "mlp" / f"fold-{fold}.json", results / "default" / "mlp")
    done = job({}, "collect", "--results", str(results), "--allow-partial")
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return results


@pytest.fixture
def run_copy(two_pairs: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(two_pairs, tmp_path / "results"))


def check_summary(results: Path) -> dict:
    """summary.json and summary.md as a reader takes them: UTF-8, and the JSON valid with both pairs."""
    folder = results / "default"
    summary = json.loads((folder / "summary.json").read_bytes().decode("utf-8"))
    (folder / "summary.md").read_bytes().decode("utf-8")
    assert summary["models"]["mlp"]["n"] == 2
    return summary


def add_stray_result(results: Path) -> Path:
    """RUN/\\xff/fold-0.json: a copy of a real result in a folder whose name is not UTF-8."""
    stray = results / "default" / STRAY
    stray.mkdir()
    shutil.copy(results / "default" / "mlp" / "fold-0.json", stray / "fold-0.json")
    return stray


@pytest.mark.slow
@pytest.mark.parametrize("env", ENCODINGS)
def test_collect_under_any_encoding_writes_its_summary_and_prints_what_the_terminal_holds(
    env: dict[str, str], run_copy: Path
) -> None:
    add_stray_result(run_copy)
    old = (run_copy / "default" / "summary.json").read_bytes()
    done = job(env, "collect", "--results", str(run_copy), "--allow-partial")
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    encoding, shown = encoding_of(env), stray_shown(env)
    done.stdout.decode(encoding)  # strictly: nothing the terminal cannot show
    assert "wrote summary.json" in done.stdout.decode(encoding)
    assert done.stderr.decode(encoding).splitlines() == [
        f"skipped {run_copy}/default/{shown}/fold-0.json: holds mlp/fold-0, not the pair its path names"
    ]
    summary = check_summary(run_copy)
    assert (run_copy / "default" / "summary.json").read_bytes() != old  # replaced, by this summary
    assert [s["file"] for s in summary["skipped"]] == [f"{shown}/fold-0.json"]
    assert f"{shown}/fold-0.json" in (run_copy / "default" / "summary.md").read_text(encoding="utf-8")


@pytest.mark.slow
@pytest.mark.parametrize("stray", ["result", "empty folder"])
def test_a_folder_whose_name_is_not_utf8_never_stops_collect(stray: str, run_copy: Path) -> None:
    if stray == "result":
        add_stray_result(run_copy)
    else:
        (run_copy / "default" / STRAY).mkdir()
    done = job({}, "collect", "--results", str(run_copy), "--allow-partial", "--json")
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    printed = json.loads(done.stdout.decode("utf-8"))
    assert printed == check_summary(run_copy)  # what is printed is what is written


@pytest.mark.slow
@pytest.mark.parametrize("env", ENCODINGS[:1])
def test_a_training_from_a_data_folder_whose_name_is_not_utf8_shows_it_escaped(
    env: dict[str, str], tmp_path: Path
) -> None:
    data = tmp_path / f"mnist{STRAY}"
    shutil.copytree(MINI, data)
    done = job(env, "run", "--model", "mlp", "--fold", "0", "--results", str(tmp_path), "--data-dir", str(data), *QUICK)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert f"data custom from {tmp_path}/mnist\\xff," in done.stdout.decode(encoding_of(env))
    assert (tmp_path / "default" / "mlp" / "fold-0.json").is_file()


@pytest.mark.parametrize("command", ["run", "final", "status", "pairs", "collect", "submit"])
@pytest.mark.parametrize("env", [{"PYTHONIOENCODING": "ascii"}], ids=["ascii"])
def test_a_results_folder_whose_name_is_not_utf8_is_one_line_exit_2(
    command: str, env: dict[str, str], tmp_path: Path
) -> None:
    """TensorFlow cannot write its event files there, nor a result record its path: refused before anything runs."""
    results = os.fsencode(tmp_path) + b"/results\xff"
    data = ["--data-dir", str(MINI), *QUICK]  # real data: a training would get as far as TensorFlow
    args = {
        "run": ["--model", "mlp", "--fold", "0", *data],
        "final": ["--model", "mlp", *data],
        "submit": ["--dry-run"],
    }
    done = job(env, command, *args.get(command, []), "--results", results)
    assert done.returncode == 2, done.stderr.decode("utf-8", "replace")[-2000:]
    assert done.stderr.decode("ascii").splitlines() == [
        f"mnist-cv {command}: error: argument --results: not a UTF-8 path: {tmp_path}/results\\xff (see --help)"
    ]
    assert not os.path.exists(results)


def test_a_results_folder_from_the_environment_whose_name_is_not_utf8_is_one_line_exit_2(tmp_path: Path) -> None:
    env = {"MNIST_CV_RESULTS": f"{tmp_path}/results{STRAY}"}
    done = subprocess.run(
        [sys.executable, "-m", "job", "run", "--model", "mlp", "--fold", "0"],
        capture_output=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **{k: os.fsencode(v) for k, v in env.items()}},
    )
    assert done.returncode == 2
    assert done.stderr.decode("ascii").splitlines() == [
        f"mnist-cv run: error: argument --results: not a UTF-8 path: {tmp_path}/results\\xff (see --help)"
    ]


@pytest.mark.parametrize("env", [{}, *ENCODINGS[:1]])
def test_a_file_name_that_is_not_utf8_is_escaped_in_an_error(env: dict[str, str], tmp_path: Path) -> None:
    missing = os.fsencode(tmp_path) + b"/model\xff.keras"
    done = job(env, "predict", "--model-file", missing, "digit.png")
    assert done.returncode == 1
    lines = our_lines(done.stderr)
    assert len(lines) == 1 and f"{tmp_path}/model\\xff.keras" in lines[0], done.stderr.decode()[-2000:]
    assert "Traceback" not in done.stderr.decode("utf-8", "replace")
