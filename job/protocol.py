"""The cross-validation protocol: one frozen dataclass, its config id, and the task-id <-> (model, fold, repeat) map.

Imports nothing heavy: the CLI validates arguments and lists pairs without loading TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, NamedTuple

from job.errors import UsageError

# The two models the tutorial compares; task ids 0-4 are mlp folds 0-4, 5-9 are cnn folds 0-4 (repeat 0), and each
# further repeat r takes the next ten: task = r * 10 + model index * 5 + fold.
DEFAULT_MODELS: tuple[str, ...] = ("mlp", "cnn")
# numpy's legacy seeding (np.random.seed, which keras.utils.set_random_seed calls) and scikit-learn's
# random_state take 0 to 2**32 - 1; SeedSequence refuses negative numbers.
MAX_SEED = 2**32 - 1
# Repeats of the cross-validation one run may hold: 100,000 tasks, beyond any Slurm array (MaxArraySize is at most
# 4,000,001, 1001 by default); it keeps every repeat's weight stream below the final model's (job/pair/train.py).
MAX_REPEATS = 10_000
MIN_IMAGES_PER_FOLD = 10  # fewer makes a fold's score a handful of coin flips
# Upper bounds, so that a typo is refused at once rather than deep in TensorFlow or after days: 100,000 epochs
# is years of training; a billion 28x28 images (784 GB of pixels) is beyond any node's memory.
MAX_EPOCHS = 100_000
MAX_IMAGES = 1_000_000_000
# ASCII digits only: str.isdigit() accepts '²' (which int() rejects) and int() turns '٣' into 3 silently.
_TASK_ID = re.compile(r"[0-9]{1,9}")
# The option that sets each field, as job/cli/options.py spells it, and the value a switch sets; n_folds and
# split_seed are the tutorial's, set by no option.
OPTIONS: dict[str, tuple[str, Any]] = {
    "epochs": ("--epochs", None),
    "batch_size": ("--batch-size", None),
    "seed": ("--seed", None),
    "limit": ("--limit", None),
    "precision": ("--mixed-precision", "mixed_float16"),
    "jit": ("--xla", True),
}


@dataclass(frozen=True)
class Protocol:
    """Everything that decides what a pair learns. Its hash is the config id that keeps results apart."""

    epochs: int = 10
    batch_size: int = 32
    n_folds: int = 5
    split_seed: int = 1  # KFold(5, shuffle=True, random_state=1), as the tutorial
    seed: int = 1  # weight initialisation and per-epoch shuffling
    limit: int | None = None  # use only the first N training images (debugging)
    precision: str = "float32"  # "mixed_float16" changes the numbers, so it is part of the config
    jit: bool = False  # XLA compilation changes rounding, so it is part of the config

    def __post_init__(self) -> None:
        for name, most in (("epochs", MAX_EPOCHS), ("batch_size", MAX_IMAGES)):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
            if getattr(self, name) > most:
                raise UsageError(f"--{name.replace('_', '-')} must be at most {most}, got {getattr(self, name)}")
        for name, label in (("seed", "--seed"), ("split_seed", "split_seed")):
            if not 0 <= getattr(self, name) <= MAX_SEED:
                raise UsageError(f"{label} must be 0 to {MAX_SEED}, got {getattr(self, name)}")
        if self.n_folds < 2:
            raise UsageError(f"n_folds must be at least 2, got {self.n_folds}")
        if self.limit is not None and not self.min_images <= self.limit <= MAX_IMAGES:
            raise UsageError(f"--limit must be {self.min_images} to {MAX_IMAGES} images, got {self.limit}")
        if self.precision not in ("float32", "mixed_float16"):
            raise UsageError(f"unknown precision {self.precision!r} (float32 or mixed_float16)")

    @property
    def min_images(self) -> int:
        """The fewest training images cross-validation accepts."""
        return MIN_IMAGES_PER_FOLD * self.n_folds

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Protocol:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def with_overrides(self, **overrides: Any) -> Protocol:
        """A copy with the given fields changed; None means 'keep the default'."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @property
    def config_id(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def overrides(self) -> dict[str, Any]:
        """Its fields that differ from the tutorial's protocol (the defaults)."""
        default = Protocol()
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != getattr(default, f.name)
        }

    def as_options(self) -> list[str]:
        """The options that give its overrides, as `run` takes them: ['--epochs', '1', '--limit', '2000']."""
        return _option_words({name: value for name, value in self.overrides().items() if name in OPTIONS})

    def describe(self) -> str:
        """Its overrides in words, as a user gives them: '--epochs 1 --limit 2000', or 'the defaults'."""
        return in_words(self.overrides())


def in_words(values: dict[str, Any]) -> str:
    """Protocol fields as the options that give them ('--epochs 10'); a field no option sets as 'split_seed 2';
    'the defaults' for none."""
    return " ".join(_option_words(values)) or "the defaults"


def _option_words(values: dict[str, Any]) -> list[str]:
    words: list[str] = []
    for name, value in values.items():
        flag, switch = OPTIONS.get(name, (name, None))
        words += [flag] if switch is not None and value == switch else [flag, str(value)]
    return words


# The highest task id a run can have: ten pairs per repeat.
MAX_TASK_ID = len(DEFAULT_MODELS) * Protocol.n_folds * MAX_REPEATS - 1


class Pair(NamedTuple):
    """One training of the cross-validation: a model on one fold of one repeat (repeat 0 is the tutorial's split).

    A repeat is part of a pair's identity, not of its config: all repeats of a run share one config id.
    """

    model: str
    fold: int
    repeat: int = 0

    def __str__(self) -> str:
        where = f"repeat-{self.repeat}/" if self.repeat else ""
        return f"{self.model}/{where}fold-{self.fold}"

    def stream(self, n_folds: int) -> int:
        """The random stream of its weights and shuffling (job/pair/train.py): repeat 0's is the fold, as before
        repeats existed, so its numbers stay those of the plain run; repeat r's is n_folds * r + fold.

        No two pairs share one: repeat r's streams fill n_folds * r .. n_folds * r + n_folds - 1, an interval of its
        own (repeat 0's being 0 .. n_folds - 1); and all stay below the final model's 1,000,000 (job/pair/final.py)
        for up to 100 folds, MAX_REPEATS bounding r.
        """
        return n_folds * self.repeat + self.fold


def all_pairs(n_folds: int = Protocol.n_folds, repeats: int = 1) -> list[Pair]:
    """The pairs in task-id order: per repeat, all folds of the first model, then of the second."""
    return [
        Pair(model, fold, repeat) for repeat in range(repeats) for model in DEFAULT_MODELS for fold in range(n_folds)
    ]


def parse_task_id(text: str, source: str = "task id") -> int:
    """A task id as Slurm writes it (ASCII digits, surrounding blanks allowed); anything else is a usage error.

    `source` names where the text came from in the error, e.g. "$SLURM_ARRAY_TASK_ID".
    """
    stripped = text.strip(" \t\n")
    if not _TASK_ID.fullmatch(stripped):
        raise UsageError(f"{source} {text!r} is not a task id (the digits 0-9 only)")
    return int(stripped)


def pair_for_task(task_id: int, n_folds: int = Protocol.n_folds, repeats: int | None = 1) -> Pair:
    """The pair of an array task id. `repeats` bounds the ids (0 to 10 * repeats - 1); None: the id says its repeat."""
    per_repeat = len(DEFAULT_MODELS) * n_folds
    limit = MAX_REPEATS if repeats is None else repeats
    if not 0 <= task_id < per_repeat * limit:
        raise UsageError(f"task id {task_id} is outside 0-{per_repeat * limit - 1}")
    repeat, index = divmod(task_id, per_repeat)
    model, fold = divmod(index, n_folds)
    return Pair(DEFAULT_MODELS[model], fold, repeat)


def n_tasks(repeats: int, n_folds: int = Protocol.n_folds) -> int:
    """The task ids of a run of `repeats` repeats: 0 to this minus one."""
    return len(DEFAULT_MODELS) * n_folds * repeats


def packed_task_ids(index: int, per_task: int, repeats: int, n_folds: int = Protocol.n_folds) -> tuple[int, ...]:
    """The task ids array index `index` trains when each array task trains `per_task` pairs: per_task * index and the
    next per_task - 1, capped at the run's last task id (that of `repeats` repeats); () for an index past it."""
    first = per_task * index
    return tuple(range(first, min(first + per_task, n_tasks(repeats, n_folds))))


def task_for_pair(pair: Pair, n_folds: int = Protocol.n_folds) -> int | None:
    """The array index of a default pair; None for models outside the default ones."""
    if pair.model not in DEFAULT_MODELS or not 0 <= pair.fold < n_folds:
        return None
    return (pair.repeat * len(DEFAULT_MODELS) + DEFAULT_MODELS.index(pair.model)) * n_folds + pair.fold


def check_fold(fold: int, n_folds: int = Protocol.n_folds) -> int:
    if not 0 <= fold < n_folds:
        raise UsageError(f"fold {fold} is outside 0-{n_folds - 1}")
    return fold


def check_repeats(repeats: int, protocol: Protocol) -> int:
    """A number of repeats (--repeats R) this protocol can split: 1 to MAX_REPEATS, split_seed + R - 1 a seed."""
    if repeats < 1:
        raise UsageError(f"--repeats must be at least 1, got {repeats}")
    check_repeat(repeats - 1, protocol)
    return repeats


def check_repeat(repeat: int, protocol: Protocol) -> int:
    """A repeat of this protocol: its split's random_state split_seed + repeat must be a seed numpy takes."""
    if not 0 <= repeat < MAX_REPEATS:
        raise UsageError(f"repeat {repeat} is outside 0-{MAX_REPEATS - 1}")
    if protocol.split_seed + repeat > MAX_SEED:
        raise UsageError(
            f"repeat {repeat} needs the split seed {protocol.split_seed} + {repeat}, beyond {MAX_SEED}: "
            f"at most {MAX_SEED - protocol.split_seed + 1} repeats with this split seed"
        )
    return repeat
