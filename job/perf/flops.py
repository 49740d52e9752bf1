"""The arithmetic a model needs: each layer as the matrix multiplies it is, and the FLOPs of a training sample.

A Dense layer on a batch of B is a (B x in) @ (in x out) GEMM, 2*in*out FLOPs per sample; a Conv2D with a
k x k kernel is, as im2col, a (B*H*W x k*k*cin) @ (k*k*cin x cout) GEMM, 2*k*k*cin*cout*H*W FLOPs per sample
(H x W its output). Training adds, per layer, the weight gradient (input transposed times output gradient)
and the input gradient (output gradient times weights transposed), each as much work as the forward pass:
3x the forward FLOPs, less the first layer's input gradient, which nothing needs (its input is the data).
Layers without weights (pooling, flattening, activations) only move or compare numbers and are not counted;
a layer with weights of a kind not known here is refused rather than silently counted as free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# What each GEMM of a training step computes.
FORWARD, WEIGHT_GRADIENT, INPUT_GRADIENT = "forward", "weights", "inputs"


@dataclass(frozen=True)
class Gemm:
    """One matrix multiply (m x k) @ (k x n) on a batch: `role` of layer `layer`."""

    layer: str
    m: int
    k: int
    n: int
    role: str = FORWARD

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


def training_gemms(model: Any, batch: int) -> list[Gemm]:
    """Every GEMM of one training step, with the shape it really has: forward (m x k)(k x n), weight gradient
    (k x m)(m x n), input gradient (m x n)(n x k), the last left out for the first layer."""
    steps = []
    for i, g in enumerate(gemms(model, batch)):
        steps += [g, Gemm(g.layer, g.k, g.m, g.n, WEIGHT_GRADIENT)]
        if i > 0:
            steps.append(Gemm(g.layer, g.m, g.n, g.k, INPUT_GRADIENT))
    return steps


def forward_flops_per_sample(model: Any) -> int:
    return sum(g.flops for g in gemms(model, batch=1))


def training_flops_per_sample(model: Any) -> int:
    return sum(g.flops for g in training_gemms(model, batch=1))
