"""The arithmetic a model needs: each layer as the matrix multiply it is, and the FLOPs of a training sample.

A Dense layer on a batch of B is a (B x in) @ (in x out) GEMM, 2*in*out FLOPs per sample; a Conv2D with a
k x k kernel is, as im2col, a (B*H*W x k*k*cin) @ (k*k*cin x cout) GEMM, 2*k*k*cin*cout*H*W FLOPs per sample
(H x W its output). Training costs about 3x the forward pass: the backward pass multiplies by the weights'
transpose (the input gradient) and by the input's (the weight gradient), each as much work as the forward.
Layers without weights (pooling, flattening, activations) only move or compare numbers and are not counted;
a layer with weights of a kind not known here is refused rather than silently counted as free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# Forward + backward (input and weight gradients) in multiples of the forward pass.
TRAINING_FACTOR = 3


@dataclass(frozen=True)
class Gemm:
    """One layer's forward pass as a matrix multiply (m x k) @ (k x n) on a batch."""

    layer: str
    m: int
    k: int
    n: int

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.n


def gemms(model: Any, batch: int) -> list[Gemm]:
    """The forward GEMM of every layer that has weights, for a batch of `batch` samples."""
    found = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Dense":
            inputs, outputs = layer.kernel.shape
            rows = math.prod(layer.input.shape[1:-1])  # 1 for a flat input; one row per position otherwise
            found.append(Gemm(layer.name, batch * rows, int(inputs), int(outputs)))
        elif kind == "Conv2D":
            kh, kw, cin, cout = layer.kernel.shape  # cin per group: a grouped conv does 1/groups of the work
            shape = layer.output.shape
            height, width = shape[2:4] if layer.data_format == "channels_first" else shape[1:3]
            found.append(Gemm(layer.name, batch * height * width, int(kh * kw * cin), int(cout)))
        elif layer.weights:
            raise ValueError(f"cannot count the FLOPs of layer {layer.name!r} ({kind}): only Dense and Conv2D")
    return found


def forward_flops_per_sample(model: Any) -> int:
    return sum(g.flops for g in gemms(model, batch=1))


def training_flops_per_sample(model: Any) -> int:
    return TRAINING_FACTOR * forward_flops_per_sample(model)
