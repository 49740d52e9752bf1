"""The registry builds the tutorial's models exactly: layers, parameter counts, optimiser, loss."""

from __future__ import annotations

import pytest

from job.errors import UsageError
from job.pair import models


@pytest.mark.parametrize(
    ("name", "params", "layers"),
    [
        ("mlp", 101_770, ["Flatten", "Dense", "Dense"]),
        (
            "cnn",
            10_259_274,
            ["Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dense", "Dense"],
        ),
        ("cnn-small", 542_230, ["Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dense"]),
    ],
)
def test_models_are_the_tutorials(name: str, params: int, layers: list[str]) -> None:
    model = models.build(name)
    assert model.count_params() == params
    assert [type(layer).__name__ for layer in model.layers] == layers
    assert model.input_shape == (None, 28, 28, 1) and model.output_shape == (None, 10)
    assert model.layers[-1].activation.__name__ == "softmax"
    assert model.loss == "sparse_categorical_crossentropy"


def test_optimisers_are_the_tutorials() -> None:
    for name, lr, momentum in (("mlp", 0.1, 0.0), ("cnn", 0.1, 0.0), ("cnn-small", 0.01, 0.9)):
        optimizer = models.build(name).optimizer
        assert type(optimizer).__name__ == "SGD"
        assert float(optimizer.learning_rate) == pytest.approx(lr)
        assert optimizer.momentum == pytest.approx(momentum)


def test_the_cnn_uses_same_padding_and_3x3_kernels() -> None:
    convs = [layer for layer in models.build("cnn").layers if type(layer).__name__ == "Conv2D"]
    assert [(c.filters, c.kernel_size, c.padding) for c in convs] == [(32, (3, 3), "same"), (64, (3, 3), "same")]


def test_unknown_model_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown model 'resnet'"):
        models.check_name("resnet")
