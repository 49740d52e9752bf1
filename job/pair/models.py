"""Model registry: name -> function returning a compiled Keras model.

Adding a model is one decorated function. Keras is imported inside the builders so that the CLI can list
and validate model names without loading TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from job.errors import UsageError

INPUT_SHAPE = (28, 28, 1)
N_CLASSES = 10

_BUILDERS: dict[str, Callable[[], Any]] = {}
_MAX_THREADS: dict[str, int] = {}
_STEPS_PER_CALL: dict[str, int] = {}
DEFAULT_STEPS_PER_CALL = 50


def register(
    name: str, *, steps_per_call: int = DEFAULT_STEPS_PER_CALL, max_threads: int | None = None
) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    """Add a builder under `name`; `max_threads` caps TensorFlow's intra-op threads for models too small to use more.

    `steps_per_call`: training steps per compiled call, as many as keep one call well under 2 s on a loaded CPU
    (a stop signal is honoured at the end of a call, inside Slurm's KillWait). The same updates in any case: it
    changes only how often Python and the callbacks run between steps.
    """

    def add(builder: Callable[[], Any]) -> Callable[[], Any]:
        _BUILDERS[name] = builder
        _STEPS_PER_CALL[name] = steps_per_call
        if max_threads is not None:
            _MAX_THREADS[name] = max_threads
        return builder

    return add


def max_threads(name: str) -> int | None:
    return _MAX_THREADS.get(name)


def names() -> list[str]:
    return list(_BUILDERS)


def check_name(name: str) -> str:
    if name not in _BUILDERS:
        raise UsageError(f"unknown model {name!r} (choose from {', '.join(_BUILDERS)})")
    return name


def steps_per_call(name: str) -> int:
    return _STEPS_PER_CALL[check_name(name)]


def build(name: str, *, steps_per_execution: int | None = 1, jit: bool = False) -> Any:
    """A freshly initialised, compiled model. Seed Keras before calling for reproducible weights.

    `steps_per_execution` None means the model's own `steps_per_call`; 1 is Keras's default (the tutorial's).

    Labels are sparse (integer class ids) with sparse categorical cross-entropy: the same loss and
    gradients as the tutorial's one-hot categorical cross-entropy, without a (N, 10) float matrix per fold.
    """
    model, optimizer = _BUILDERS[check_name(name)]()
    model.compile(
        optimizer=optimizer,
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=steps_per_call(name) if steps_per_execution is None else steps_per_execution,
        jit_compile=jit,
    )
    return model


# One thread: a 128-unit layer on a batch of 32 gains nothing from a second core; the threads' hand-offs cost more
# (job/pair/steps.py, 4 epochs of fold 0 alternating on a 2-core CPU: 100,000-119,000 samples/s at one thread,
# 84,000-93,000 at two). 500 steps: 0.15-0.6 s a call at 25,000-110,000 samples/s.
@register("mlp", steps_per_call=500, max_threads=1)
def _mlp() -> tuple[Any, Any]:
    """The tutorial's fully connected net: 101,770 parameters."""
    from keras import Input, Sequential, layers, optimizers

    model = Sequential(
        [
            Input(INPUT_SHAPE),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dense(N_CLASSES, activation="softmax", dtype="float32"),
        ],
        name="mlp",
    )
    return model, optimizers.SGD(learning_rate=0.1)


# 20 steps: 45-70 ms a step here (0.9-1.4 s a call); 50 took 2.3-3.5 s. Per-call costs are nothing beside a step.
@register("cnn", steps_per_call=20)
def _cnn() -> tuple[Any, Any]:
    """The tutorial's CNN as its code builds it (the reference): 10,259,274 parameters."""
    from keras import Input, Sequential, layers, optimizers

    model = Sequential(
        [
            Input(INPUT_SHAPE),
            layers.Conv2D(32, (3, 3), padding="same", activation="relu"),
            layers.MaxPooling2D((2, 2), strides=(2, 2)),
            layers.Conv2D(64, (3, 3), padding="same", activation="relu"),
            layers.MaxPooling2D((2, 2), strides=(2, 2)),
            layers.Flatten(),
            layers.Dense(3136, activation="relu"),
            layers.Dense(128, activation="relu"),
            layers.Dense(N_CLASSES, activation="softmax", dtype="float32"),
        ],
        name="cnn",
    )
    return model, optimizers.SGD(learning_rate=0.1)


@register("cnn-small", steps_per_call=200)  # a few ms a step
def _cnn_small() -> tuple[Any, Any]:
    """The CNN the tutorial's prose describes: one 32-filter conv, Dense(100), He init, SGD(0.01, momentum 0.9)."""
    from keras import Input, Sequential, layers, optimizers

    model = Sequential(
        [
            Input(INPUT_SHAPE),
            layers.Conv2D(32, (3, 3), activation="relu", kernel_initializer="he_uniform"),
            layers.MaxPooling2D((2, 2)),
            layers.Flatten(),
            layers.Dense(100, activation="relu", kernel_initializer="he_uniform"),
            layers.Dense(N_CLASSES, activation="softmax", dtype="float32"),
        ],
        name="cnn-small",
    )
    return model, optimizers.SGD(learning_rate=0.01, momentum=0.9)
