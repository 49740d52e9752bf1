"""TensorFlow's set-up for a training (job/pair/runtime.py), each case in a fresh interpreter: it is process-wide."""

from __future__ import annotations

import pytest
from support import script_json

_CONFIGURED = """
import json, sys
from job.pair import runtime
info = runtime.configure(deterministic=True, precision=sys.argv[1], allow_cpu=True, max_threads=1)
tf = runtime.import_tensorflow()
print(json.dumps({"tf32": tf.config.experimental.tensor_float_32_execution_enabled(), "threads": info["threads"]}))
"""


@pytest.mark.parametrize(("precision", "tf32"), [("float32", False), ("mixed_float16", True)])
def test_float32_means_float32_matmuls_on_any_gpu(precision: str, tf32: bool) -> None:
    # Ampere and later GPUs would round float32 matmuls to TensorFloat-32 by default; under mixed precision the
    # matmuls are float16 anyway, and TensorFlow's default is left alone.
    configured = script_json(_CONFIGURED, precision)
    assert configured["tf32"] is tf32
    assert configured["threads"]["intra_op"] == 1
