"""Options shared by several subcommands, declared once as data: each `Option` both adds itself to a parser and
turns a parsed value back into the arguments that give it (how `submit` forwards them to `job run`/`job final`),
so every command spells them the same way."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from job import settings
from job.console import one_line
from job.errors import UsageError
from job.pair.session import Inputs
from job.protocol import (
    MAX_EPOCHS,
    MAX_IMAGES,
    MAX_REPEATS,
    MAX_SEED,
    MAX_TASK_ID,
    OPTIONS,
    Protocol,
    check_repeats,
    in_words,
)
from job.results import manifest
from job.results.layout import RunLayout

# ASCII only, as a user types a number: int() and float() also read '٣' as 3, '1_0' as 10 and ' 3' as 3, float() 'nan'
# and 'infinity', none of which a user meant as given. A sign is read, so that '-1' is told its range.
_WHOLE = re.compile(r"-?[0-9]+")
_DECIMAL = re.compile(r"-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?")


class Number:
    """The one parser of every numeric option of every command: ASCII digits only, finite, within [low, high].

    Every option's value is bounded on both sides when it is parsed (exit 2, one line naming the option), before
    anything is loaded; checks that depend on other options (a fold of --repeats, a batch of the data) come later.
    tests/test_numbers.py walks every command's options and refuses a numeric one that does not use it.
    """

    def __init__(
        self,
        kind: type[int] | type[float],
        low: float,
        high: float,
        unit: str = "",
        note: str = "",
        syntax: str = "",  # the message for text that is no number, '{text}' in it; else "not a whole number: ..."
        words: tuple[str, ...] = (),  # words taken as they are besides the numbers ('auto')
    ):
        self.kind, self.low, self.high, self.unit, self.note, self.syntax = kind, low, high, unit, note, syntax
        self.words = words

    def __call__(self, text: str) -> Any:
        if text in self.words:
            return text
        if self.kind is int:
            if not _WHOLE.fullmatch(text):
                raise argparse.ArgumentTypeError(
                    (self.syntax or "not a whole number: {text}").format(text=_shown(text))
                )
            digits = text.lstrip("-").lstrip("0") or "0"
            if len(digits) > len(str(int(max(abs(self.low), abs(self.high))))):  # int() refuses 4,301 digits
                raise self._outside(text if len(text) <= 40 else f"a number of {len(digits)} digits")
            value: Any = -int(digits) if text.startswith("-") else int(digits)
        else:
            if not _DECIMAL.fullmatch(text):
                raise argparse.ArgumentTypeError(f"not a number: {_shown(text)}")
            value = float(text)
            if not math.isfinite(value):  # '1e999'
                raise argparse.ArgumentTypeError(f"not a finite number: {_shown(text)}")
        if not self.low <= value <= self.high:
            raise self._outside(text if len(text) <= 40 else _shown(text))
        return value

    def _outside(self, got: str) -> argparse.ArgumentTypeError:
        unit = f" {self.unit}" if self.unit else ""
        note = f" ({self.note})" if self.note else ""
        return argparse.ArgumentTypeError(f"must be {_plain(self.low)} to {_plain(self.high)}{unit}{note}, got {got}")

    def __repr__(self) -> str:
        return f"Number({self.kind.__name__}, {_plain(self.low)}, {_plain(self.high)})"


def _shown(text: str) -> str:
    """A value as a message quotes it: its repr, a long one cut (the line stays one a person reads)."""
    return repr(text) if len(text) <= 40 else f"{text[:40]!r}... ({len(text)} characters)"


def _plain(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


class Ranges:
    """Slurm's --array syntax ('0,5', '5-9', '0-2,7') as a set of numbers, each one parsed by `number`."""

    _SPEC = re.compile(r"[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*")

    def __init__(self, number: Number, what: str) -> None:
        self.number, self.what = number, what

    def __call__(self, text: str) -> set[int]:
        if not self._SPEC.fullmatch(text):
            raise argparse.ArgumentTypeError(f"not {self.what} like 0,5 or 5-9: {text!r}")
        found: set[int] = set()
        for part in text.split(","):
            first, _, last = part.partition("-")
            # Both ends bounded before the range is made: '0-99999999999' is refused, not built.
            found.update(range(self.number(first), self.number(last or first) + 1))
        if not found:
            raise argparse.ArgumentTypeError(f"not {self.what} like 0,5 or 5-9: {text!r}")
        return found


def number(low: int, high: int) -> Number:
    """A whole-number option from `low` to `high`."""
    return Number(int, low, high)


EPOCHS = number(1, MAX_EPOCHS)
BATCH_SIZE = number(1, MAX_IMAGES)  # and at most the training images, once they are loaded (job/pair/session.py)
SEED = number(0, MAX_SEED)
LIMIT = number(Protocol().min_images, MAX_IMAGES)
FOLD = number(0, Protocol.n_folds - 1)
REPEAT = number(0, MAX_REPEATS - 1)
REPEATS = number(1, MAX_REPEATS)
TASK_ID = Number(int, 0, MAX_TASK_ID, syntax="{text} is not a task id (the digits 0-9 only)")  # as the env's
TASK_IDS = Ranges(TASK_ID, "task ids")  # Slurm's --array syntax: the inverse of job.results.status.array_spec
PAIRS_PER_TASK = number(1, MAX_TASK_ID + 1)


def utf8_path(text: str) -> Path:
    """A folder that results are written to: its name must be UTF-8 (TensorFlow's event files, and the paths every
    result records, cannot name it otherwise)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"not a UTF-8 path: {one_line(text)}") from None
    return Path(text)


@dataclass(frozen=True)
class Option:
    flag: str
    help: str
    type: Callable[[str], Any] | None = None
    switch: bool = False  # a store_true flag: given or not
    default: Callable[[], Any] | None = None  # read when a parser is built (it may come from the environment)

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    def add_to(self, parser: argparse.ArgumentParser | Any) -> None:
        default = self.default() if self.default else (False if self.switch else None)
        if self.switch:
            parser.add_argument(self.flag, action="store_true", default=default, help=self.help)
        else:
            parser.add_argument(self.flag, type=self.type, default=default, help=self.help)

    def argv(self, value: Any) -> list[str]:
        """The arguments that give `value` (none for an unset option or a switch off); paths made absolute,
        since the task may start in another folder."""
        if value is None or value is False:
            return []
        if self.switch:
            return [self.flag]
        return [self.flag, str(value.absolute() if isinstance(value, Path) else value)]


RESULTS_OPTIONS = (
    Option(
        "--results",
        f"results folder (default: ${settings.RESULTS.name} or ./results)",
        type=utf8_path,
        default=lambda: str(settings.settings().results),  # a string, so that argparse checks it as given
    ),
    Option(
        "--run",
        f"run name: results go to RESULTS/RUN/ (default: ${settings.RUN.name} or 'default')",
        type=str,
        default=lambda: settings.settings().run,
    ),
)
DATA_OPTIONS = (
    Option(
        "--data-dir",
        "folder with the four MNIST IDX files (.gz or plain) or a Keras mnist.npz "
        f"(default: ${settings.DATA.name}, then ~/.keras/datasets/mnist.npz, then a download)",
        type=Path,
        default=lambda: settings.settings().data,
    ),
    Option(
        "--custom-data",
        "accept an MNIST-like IDX dataset that is not the original MNIST (structure is still validated)",
        switch=True,
    ),
)
PROTOCOL_OPTIONS = (
    Option("--epochs", f"epochs per pair (default {Protocol.epochs})", type=EPOCHS),
    Option("--batch-size", f"training batch size (default {Protocol.batch_size})", type=BATCH_SIZE),
    Option("--seed", f"seed for weights and shuffling (default {Protocol.seed}; 0 to {MAX_SEED})", type=SEED),
    Option("--limit", "use only the first N training images (default: all 60,000)", type=LIMIT),
    Option("--mixed-precision", "train in mixed_float16 (GPU speed-up; changes numbers)", switch=True),
    Option("--xla", "compile with XLA (changes rounding; not deterministic)", switch=True),
)
DEVICE_OPTIONS = (
    Option(
        "--allow-cpu",
        f"run on the CPU even when a GPU was allocated but is not visible (default: ${settings.ALLOW_CPU.name}=1)",
        switch=True,
        default=lambda: settings.settings().allow_cpu,
    ),
)
# What `submit` passes on to each task as given: the options `job run` and `job final` share with it.
FORWARDED = (*RESULTS_OPTIONS, *DATA_OPTIONS, *PROTOCOL_OPTIONS)


def add_options(parser: argparse.ArgumentParser | Any, options: Sequence[Option]) -> None:
    for option in options:
        option.add_to(parser)


def forward(args: argparse.Namespace, options: Sequence[Option] = FORWARDED) -> list[str]:
    """The arguments that give `options` the values parsed into `args` (defaults too: they may come from the
    environment, which a task need not share)."""
    return [arg for option in options for arg in option.argv(getattr(args, option.dest))]


def add_results_args(parser: argparse.ArgumentParser) -> None:
    add_options(parser, RESULTS_OPTIONS)


def add_protocol_args(parser: argparse.ArgumentParser) -> None:
    """Overrides of the tutorial protocol; each one changes the config id, so results never mix."""
    add_options(
        parser.add_argument_group(
            "protocol overrides (debugging; each changes the config id; a run keeps the config it was started with, "
            "recorded in RESULTS/RUN/run.json: later commands need only --run, and refuse an override that differs)"
        ),
        PROTOCOL_OPTIONS,
    )


def add_data_args(parser: argparse.ArgumentParser) -> None:
    add_options(parser, DATA_OPTIONS)


def add_device_args(parser: argparse.ArgumentParser) -> None:
    add_options(parser, DEVICE_OPTIONS)


def add_repeats_arg(parser: argparse.ArgumentParser | Any, help: str) -> None:
    """--repeats R: the cross-validation R times over, each repeat on its own shuffle of the images. Not given, it is
    None: the run's (its manifest's), whose meaning `help` says."""
    parser.add_argument("--repeats", type=REPEATS, metavar="R", help=help)


# What --repeats is, for the commands' help texts.
REPEATS_HELP = (
    "repeats of the cross-validation, each on its own shuffle (KFold's random_state split seed + r): task ids 0 to "
    "10R-1, repeat r being ids 10r to 10r+9"
)
# status's and pairs': a view.
SHOWN_REPEATS_HELP = (
    f"{REPEATS_HELP} (default: the run's, from its manifest; 1 for a new run). An R other than the run's shows "
    "repeats 0 to R-1 and changes nothing: a view"
)
# What status, pairs and final say of the run's config in their --help.
RUN_CONFIG_HELP = (
    "The run's config and repeats are those recorded in RESULTS/RUN/run.json by its first command (for a run folder "
    "of an earlier version, those of its results): --run alone is enough, and a protocol override that differs from "
    "the run's is refused."
)


def protocol_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The protocol fields the options given set, by field name."""
    given = {}
    for name, (flag, switch) in OPTIONS.items():
        value = getattr(args, flag.removeprefix("--").replace("-", "_"))
        if switch is not None:
            value = switch if value else None
        if value is not None:
            given[name] = value
    return given


@dataclass(frozen=True)
class RunConfig:
    """What a command works on: the run's protocol, the repeats asked about, and the run's manifest."""

    protocol: Protocol
    repeats: int  # --repeats if given, else the run's (1 for a new run, or one of several configs)
    found: manifest.Found


def run_config(args: argparse.Namespace, layout: RunLayout) -> RunConfig:
    """The protocol and repeats of the run in `layout`, from its manifest (recorded, or derived from the results of
    a run of an earlier version), with the protocol options given; reads only. A run without one (new, or holding
    several configs) takes the options over the defaults. An option that differs from the run's is a UsageError
    naming the fields; one equal to it is accepted."""
    found = manifest.find(layout)
    given = protocol_overrides(args)
    if found.manifest is None:
        protocol = Protocol().with_overrides(**given)
    else:
        protocol = found.manifest.protocol
        differ = {name: value for name, value in given.items() if getattr(protocol, name) != value}
        if differ:
            raise UsageError(
                f"run {layout.run} is {protocol.describe()}; you gave {in_words(differ)}: one run holds one config, "
                "use another --run"
            )
    asked = getattr(args, "repeats", None)
    if asked is None:
        asked = found.manifest.repeats if found.manifest else 1
    return RunConfig(protocol, check_repeats(asked, protocol), found)


def inputs_from_args(args: argparse.Namespace) -> Inputs:
    """The typed part of the data and device options that a training takes."""
    return Inputs(data_dir=args.data_dir, custom_data=args.custom_data, allow_cpu=args.allow_cpu)
