"""Steps per compiled call: each model's own, and the same training whatever the number."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import script_json

from job.pair import models


def test_each_model_runs_its_own_steps_per_compiled_call() -> None:
    own = {name: models.steps_per_call(name) for name in ("mlp", "cnn", "cnn-small")}
    assert own == {"mlp": 500, "cnn": 20, "cnn-small": 200}
    assert models.build("cnn", steps_per_execution=None).steps_per_execution == 20
    assert models.build("cnn").steps_per_execution == 1  # Keras's default, as the tutorial compiles it


# Trains one pair twice in one process, at 50 steps per call (the former constant) and at the model's own.
_TWICE = """
import dataclasses, json, sys, tempfile
from pathlib import Path
from job.pair import data, models, runtime, train
from job.pair.checkpoint import Checkpoint
from job.pair.protocol import Pair, Protocol

model, folder = sys.argv[1:]
runtime.configure(deterministic=True, precision="float32", allow_cpu=True, max_threads=models.max_threads(model))
dataset = data.load(folder, custom=True)
protocol = Protocol().with_overrides(epochs=2, limit=3000)
out = {}
for steps in (50, None):
    train.STEPS_PER_CALL = steps
    with tempfile.TemporaryDirectory() as tmp:
        outcome, _ = train.fit_pair(Pair(model, 0), protocol, dataset, Checkpoint(Path(tmp)), callbacks=[], log=print)
    out[str(steps)] = {"history": dataclasses.asdict(outcome.history), "score": dataclasses.asdict(outcome.score)}
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp", "cnn-small"])
def test_the_same_numbers_at_any_steps_per_call(model: str, mnist_mini: Path) -> None:
    runs = script_json(_TWICE, model, str(mnist_mini))
    assert runs["50"] == runs["None"]  # bit for bit: history and score
    assert len(runs["50"]["history"]["loss"]) == 2
