"""FLOP counts of the registry's models against a count done by hand from the tutorial's layer sizes."""

from __future__ import annotations

import pytest

from job.pair import models
from job.perf.flops import (
    FORWARD,
    INPUT_GRADIENT,
    WEIGHT_GRADIENT,
    Gemm,
    forward_flops_per_sample,
    gemms,
    training_flops_per_sample,
    training_gemms,
)

# mlp: 28*28 = 784 inputs -> Dense(128) -> Dense(10).
MLP_FORWARD = 2 * 784 * 128 + 2 * 128 * 10  # 203,264
# cnn: 3x3 'same' convs keep 28x28, then 14x14 after the first pooling; 7*7*64 = 3136 after the second.
CNN_FORWARD = (
    2 * 3 * 3 * 1 * 32 * 28 * 28  # conv 1: 451,584
    + 2 * 3 * 3 * 32 * 64 * 14 * 14  # conv 2: 7,225,344
    + 2 * 3136 * 3136  # dense 3136: 19,668,992
    + 2 * 3136 * 128  # dense 128: 802,816
    + 2 * 128 * 10  # softmax layer: 2,560
)


def test_mlp_counts_as_by_hand() -> None:
    model = models.build("mlp")
    assert forward_flops_per_sample(model) == MLP_FORWARD == 203_264
    # Training: 3x the forward pass, less the first layer's input gradient (nothing needs the data's gradient).
    assert training_flops_per_sample(model) == 3 * MLP_FORWARD - 2 * 784 * 128 == 409_088
    assert [(g.m, g.k, g.n) for g in gemms(model, batch=32)] == [(32, 784, 128), (32, 128, 10)]


def test_cnn_counts_as_by_hand() -> None:
    model = models.build("cnn")
    assert forward_flops_per_sample(model) == CNN_FORWARD == 28_151_296
    assert training_flops_per_sample(model) == 3 * CNN_FORWARD - 2 * 3 * 3 * 1 * 32 * 28 * 28 == 84_002_304
    # A convolution is an im2col GEMM: one row per output pixel, one column per kernel weight of an input pixel.
    assert [(g.m, g.k, g.n) for g in gemms(model, batch=32)] == [
        (32 * 28 * 28, 9, 32),
        (32 * 14 * 14, 9 * 32, 64),
        (32, 3136, 3136),
        (32, 3136, 128),
        (32, 128, 10),
    ]


def test_a_training_step_multiplies_each_layer_three_times_in_its_real_shapes() -> None:
    model = models.build("mlp")
    hidden, output = (layer.name for layer in model.layers if layer.weights)
    steps = [(g.layer, g.role, g.m, g.k, g.n) for g in training_gemms(model, batch=32)]
    assert steps == [
        (hidden, FORWARD, 32, 784, 128),  # x @ W
        (hidden, WEIGHT_GRADIENT, 784, 32, 128),  # x^T @ dy; no input gradient: the input is the data
        (output, FORWARD, 32, 128, 10),
        (output, WEIGHT_GRADIENT, 128, 32, 10),
        (output, INPUT_GRADIENT, 32, 10, 128),  # dy @ W^T
    ]


def test_a_valid_convolution_counts_its_smaller_output() -> None:
    # cnn-small: 3x3 'valid' conv -> 26x26x32, pooled to 13x13x32 = 5408 -> Dense(100) -> Dense(10).
    expected = 2 * 9 * 32 * 26 * 26 + 2 * 5408 * 100 + 2 * 100 * 10
    assert forward_flops_per_sample(models.build("cnn-small")) == expected


def test_a_layer_with_weights_of_an_unknown_kind_is_refused() -> None:
    import keras

    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.BatchNormalization(), keras.layers.Flatten()])
    with pytest.raises(ValueError, match="BatchNormalization"):
        gemms(model, batch=32)


def test_a_gemm_counts_a_multiply_and_an_add_per_term() -> None:
    assert Gemm("x", m=2, k=3, n=4).flops == 48
