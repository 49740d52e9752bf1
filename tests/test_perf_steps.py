"""Steps per compiled call: each model's own (the same training whatever the number: tests/test_steps.py)."""

from __future__ import annotations

from job.pair import models


def test_each_model_runs_its_own_steps_per_compiled_call() -> None:
    own = {name: models.steps_per_call(name) for name in ("mlp", "cnn", "cnn-small")}
    assert own == {"mlp": 500, "cnn": 20, "cnn-small": 200}
    assert models.build("cnn", steps_per_execution=None).steps_per_execution == 20
    assert models.build("cnn").steps_per_execution == 1  # Keras's default, as the tutorial compiles it
