"""TensorFlow's set-up for a training (job/pair/runtime.py), each case in a fresh interpreter: it is process-wide."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
from support import script_json

from job.pair import runtime

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


def _cpuinfo_flags() -> set[str]:
    """The first processor's flags, read here rather than through job/pair/runtime.py: the oracle it is checked by."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            return set(value.split())
    return set()


@pytest.mark.parametrize(
    ("variables", "cap"),
    [({}, None), ({"ONEDNN_MAX_CPU_ISA": "AVX"}, "AVX"), ({"DNNL_MAX_CPU_ISA": "SSE41"}, "SSE41")],
    ids=["no-cap", "onednn-cap", "older-name"],
)
def test_the_cpu_instruction_set_and_onednns_cap_are_recorded(
    variables: dict[str, str], cap: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # oneDNN picks its kernels by them, and other kernels sum in another order (docs/performance.md).
    for name in runtime.ISA_CAP_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    isa = runtime.cpu_isa()
    assert isa["onednn_max_cpu_isa"] == cap
    assert set(isa["extensions"]) == _cpuinfo_flags() & set(runtime.ISA_EXTENSIONS)
    if platform.machine() == "x86_64":
        assert "sse4_1" in isa["extensions"]  # every x86-64 CPU TensorFlow's wheel runs on has it
