"""One number parser for every numeric option of every command (job/cli/options.py's Number): ASCII digits only,
finite, bounded on both sides, refused at parse time with exit 2 and one line naming the option.

The options are not listed here by hand: they are read from the real parser, so an option added later with
type=int, or with a parser of its own, fails the first test until it goes through Number."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import ROOT
from support.mnist import MINI

from job.cli import build_parser
from job.cli.options import Number, Ranges

# Names that read as a count or a quantity: such an option is numeric whatever its type says.
NUMERIC_NAME = re.compile(r"epoch|size|seed|limit|fold|repeat|task_id|time|gpus|cpus|mem|parallelism|top|rows|load")
# What each command needs besides the option under test, so that only that option can be wrong.
REQUIRED = {"final": ["--model", "mlp"], "predict": ["--model-file", "m.keras", "x.png"], "fetch-data": ["--to", "d"]}


def commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(subparsers.choices)


def options(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.Action]]:
    """(command, option) for every option of every command, the global ones as command ''."""
    for action in parser._actions:
        if action.option_strings:
            yield "", action
    for name, command in commands(parser).items():
        for action in command._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                yield name, action


def shared(action: argparse.Action) -> bool:
    return isinstance(action.type, Number | Ranges)


def looks_numeric(action: argparse.Action) -> bool:
    """A number by its type (int, float, or a parser that reads '3' as one), its default or its name."""
    if action.type in (int, float):
        return True
    if callable(action.type):
        try:
            value = action.type("3")
        except Exception:  # a parser that refuses '3' reads no numbers
            value = None
        values = value if isinstance(value, set | list | tuple) else [value]
        if values and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            return True
    default = action.default
    if isinstance(default, int | float) and not isinstance(default, bool):
        return True
    return bool(NUMERIC_NAME.search(action.dest)) and action.nargs != 0


def unshared(parser: argparse.ArgumentParser) -> list[str]:
    return [f"{name} {a.option_strings[0]}" for name, a in options(parser) if looks_numeric(a) and not shared(a)]


def test_every_numeric_option_of_every_command_uses_the_shared_parser() -> None:
    parser = build_parser()
    assert unshared(parser) == []
    numeric = [(name, a.option_strings[0]) for name, a in options(parser) if shared(a)]
    assert len(numeric) >= 30, numeric  # the walk reaches the commands' options at all


@pytest.mark.parametrize(
    "kind",
    [int, float, lambda text: int(text), lambda text: {int(text)}, None],
    ids=["int", "float", "own-int-parser", "own-set-parser", "named-like-a-number"],
)
def test_the_walk_refuses_a_new_numeric_option_that_skips_the_shared_parser(kind: object) -> None:
    parser = build_parser()
    flag = "--widgets" if kind is not None else "--max-epochs"
    commands(parser)["run"].add_argument(flag, type=kind)
    assert unshared(parser) == [f"run {flag}"]


def bad_values(number: Number | Ranges) -> list[str]:
    """What a user may type that must never become a number: other scripts' digits, Python's own number syntax,
    blanks, signs, and values past either bound."""
    if isinstance(number, Ranges):
        high = number.number.high
        return ["\u0663", "1_0", " 3", "+3", "3.0", "", str(high + 1), f"0-{high + 1}", f"0-{10**30}", "2-1"]
    low, high = number.low, number.high
    common = ["\u0663", "\uff13", "1_0", " 3", "3 ", "+3", "", "0x3", "abc", "2**3"]
    if number.kind is int:
        return [*common, "3.0", "3e0", str(low - 1), str(high + 1), str(10**30), str(2**63), *long(high)]
    return [*common, "nan", "inf", "-inf", "infinity", "1e999", "-1", str(low / 2), str(high * 2), "1e30", *long(high)]


def long(high: float) -> list[str]:
    """Past int()'s 4,300 digits, once as leading zeros before a value past the bound; and a long word. Each is quoted
    short in the message."""
    return ["9" * 5000, "0" * 5000 + str(int(high) + 1), "x" * 5000]


PARSER = build_parser()  # parsing leaves it as it was: one for every case below
CASES = [
    pytest.param(name, action.option_strings[0], value, id=f"{name} {action.option_strings[0]} {value[:12]!r}")
    for name, action in options(PARSER)
    if shared(action)
    for value in bad_values(action.type)
]


def parse(capsys: pytest.CaptureFixture[str], command: str, *args: str) -> tuple[object, str]:
    """(the parsed namespace or SystemExit's code, stderr) of the real parser on `command ARGS`."""
    capsys.readouterr()
    try:
        parsed: object = PARSER.parse_args([command, *REQUIRED.get(command, []), *args])
    except SystemExit as exit_:
        parsed = exit_.code
    return parsed, capsys.readouterr().err


@pytest.mark.parametrize(("command", "flag", "value"), CASES)
def test_a_bad_number_is_refused_with_one_line_naming_its_option(
    command: str, flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = parse(capsys, command, f"{flag}={value}")
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"mnist-cv {command}: error: argument {flag}: "), err
    assert len(err) < 300, err  # a 5,000-character value is not echoed back


@pytest.mark.parametrize(
    ("command", "flag", "number"),
    [
        pytest.param(name, a.option_strings[0], a.type, id=f"{name} {a.option_strings[0]}")
        for name, a in options(PARSER)
        if isinstance(a.type, Number)
    ],
)
def test_both_bounds_of_a_number_are_taken_as_given(
    command: str, flag: str, number: Number, capsys: pytest.CaptureFixture[str]
) -> None:
    for bound in (number.low, number.high):
        text = str(int(bound)) if float(bound).is_integer() else repr(bound)
        parsed, err = parse(capsys, command, flag, text)
        assert isinstance(parsed, argparse.Namespace), err
        assert getattr(parsed, flag.removeprefix("--").replace("-", "_")) == bound


@pytest.mark.parametrize("text", ["16", "1.5", "0.5", ".5", "2e3", "0.0009765625"])
def test_memory_takes_plain_decimals(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    parsed, err = parse(capsys, "submit", "--mem-gb", text)
    assert isinstance(parsed, argparse.Namespace) and parsed.mem_gb == float(text), err


@pytest.mark.parametrize(("text", "sbatch"), [("0.0009765625", "1MB"), ("0.001", "1MB"), ("1.5", "1536MB")])
def test_the_least_memory_taken_is_one_sbatch_can_ask_for(
    text: str, sbatch: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """submitit writes --mem-gb as whole megabytes: below 1 MB it would be --mem=0MB, all of a node's memory."""
    from submitit.slurm.slurm import _convert_mem

    parsed, err = parse(capsys, "submit", "--mem-gb", text)
    assert isinstance(parsed, argparse.Namespace), err
    assert _convert_mem(parsed.mem_gb) == sbatch
    code, err = parse(capsys, "submit", "--mem-gb", "0.0009")
    assert code == 2 and "1 MB at least" in err, err


# Through the command itself, in one fresh interpreter for all: each case's exit status and stderr, and whether
# TensorFlow was loaded by the end.
REFUSE = """
import io, json, sys
from job.cli import main
found = []
for argv in json.loads(sys.argv[1]):
    sys.stderr = io.StringIO()
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    found.append((code, sys.stderr.getvalue()))
print(json.dumps({"found": found, "tensorflow": "tensorflow" in sys.modules}))
"""
THROUGH_MAIN = [
    ("run", "--task-id", "\u0663"),
    ("final", "--batch-size", str(2**63)),
    ("submit", "--mem-gb", "0.0001"),
    ("predict", "--top", "1_0"),
    ("bench", "--load", " 3"),
    ("status", "--repeats", "+3"),
    ("pairs", "--seed", str(2**32)),
    ("collect", "--repeats", "3.0"),
]


@pytest.fixture(scope="module")
def through_main() -> dict:
    argvs = [[command, *REQUIRED.get(command, []), flag, value] for command, flag, value in THROUGH_MAIN]
    done = subprocess.run(
        [sys.executable, "-c", REFUSE, json.dumps(argvs)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_no_bad_number_loads_tensorflow(through_main: dict) -> None:
    assert through_main["tensorflow"] is False


@pytest.mark.parametrize("case", range(len(THROUGH_MAIN)), ids=[" ".join(case) for case in THROUGH_MAIN])
def test_a_bad_number_ends_the_command_with_one_line(case: int, through_main: dict) -> None:
    command, flag, _ = THROUGH_MAIN[case]
    code, err = through_main["found"][case]
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"mnist-cv {command}: error: "), err
    assert f"argument {flag}: " in err


def test_a_batch_larger_than_the_training_images_is_refused_with_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "job", "run", "--model", "mlp", "--fold", "0", "--results", str(tmp_path)]
        + ["--data-dir", str(MINI), "--custom-data", "--limit", "1000", "--batch-size", "1001"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 2
    ours = [line for line in done.stderr.splitlines() if line.startswith("mnist-cv")]
    assert ours == ["mnist-cv run: error: --batch-size 1001 is beyond the 1000 training images"], done.stderr
    assert not any(tmp_path.rglob("*.json"))
