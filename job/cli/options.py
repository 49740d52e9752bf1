"""Options shared by several subcommands, declared once as data: each `Option` both adds itself to a parser and
turns a parsed value back into the arguments that give it (how `submit` forwards them to `job run`/`job final`),
so every command spells them the same way."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from job import settings
from job.pair.session import Inputs
from job.protocol import Protocol, check_repeats

# ASCII digits only: int() also reads '٣' as 3, '1_0' as 10 and ' 3' as 3, none of which a user meant as given.
_WHOLE = re.compile(r"-?[0-9]+")


def whole_number(text: str) -> int:
    """An int option's value; the range is checked where the value is used (Protocol), so a sign is kept."""
    if not _WHOLE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}")
    return int(text)


def at_least(minimum: int) -> Callable[[str], int]:
    """A whole-number option that must be `minimum` or more (a Slurm time, a count), refused at parse time."""

    def parse(text: str) -> int:
        value = whole_number(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


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
        type=Path,
        default=lambda: settings.settings().results,
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
    Option("--epochs", f"epochs per pair (default {Protocol.epochs})", type=whole_number),
    Option("--batch-size", f"training batch size (default {Protocol.batch_size})", type=whole_number),
    Option("--seed", f"seed for weights and shuffling (default {Protocol.seed})", type=whole_number),
    Option("--limit", "use only the first N training images (default: all 60,000)", type=whole_number),
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
        parser.add_argument_group("protocol overrides (debugging; each changes the config id)"), PROTOCOL_OPTIONS
    )


def add_data_args(parser: argparse.ArgumentParser) -> None:
    add_options(parser, DATA_OPTIONS)


def add_device_args(parser: argparse.ArgumentParser) -> None:
    add_options(parser, DEVICE_OPTIONS)


def add_repeats_arg(parser: argparse.ArgumentParser | Any, default: int | None = 1, help: str | None = None) -> None:
    """--repeats R: the cross-validation R times over, each repeat on its own shuffle of the images."""
    parser.add_argument(
        "--repeats",
        type=repeats_arg,
        default=default,
        metavar="R",
        help=help
        or "repeats of the cross-validation, each on its own shuffle (KFold's random_state split seed + r): "
        "task ids 0 to 10R-1, repeat r being ids 10r to 10r+9 (default 1: the tutorial's one split)",
    )


def repeats_arg(text: str) -> int:
    """A whole number of repeats, 1 or more (the protocol bounds it further: see repeats_from_args)."""
    if not _WHOLE.fullmatch(text) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a number of repeats (1 or more): {text!r}")
    return int(text)


def repeats_from_args(args: argparse.Namespace, protocol: Protocol) -> int:
    """--repeats, checked against the protocol (every repeat's split seed must be a seed); 1 when not given."""
    return check_repeats(1 if args.repeats is None else args.repeats, protocol)


def protocol_from_args(args: argparse.Namespace) -> Protocol:
    return Protocol().with_overrides(
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        limit=args.limit,
        precision="mixed_float16" if args.mixed_precision else None,
        jit=True if args.xla else None,
    )


def inputs_from_args(args: argparse.Namespace) -> Inputs:
    """The typed part of the data and device options that a training takes."""
    return Inputs(data_dir=args.data_dir, custom_data=args.custom_data, allow_cpu=args.allow_cpu)
