"""The tutorial's published numbers, to draw this run's folds against.

Source: the tutorial's own run (Jason Brownlee's "How to Develop a CNN for MNIST Handwritten Digit Classification",
as reproduced in pengfeinie/handwritten-digit-classification; TensorFlow 2.6), whose printed fold accuracies are
copied in the project's design notes ("Expected numbers") and README. The band is where a full run of this project
must land (README, "Expected numbers"): far outside it means a bug, not bad luck. Both hold for the full protocol only
(10 epochs, all 60,000 training images, 5 folds).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Published:
    folds: tuple[float, ...]  # held-out accuracy in %, fold by fold as the tutorial printed them
    band: tuple[float, float]  # where a full run must land, in %


SOURCE = "the tutorial's published run (TF 2.6)"
EPOCHS = 10
N_FOLDS = 5
PUBLISHED = {
    "mlp": Published(folds=(97.408, 97.308, 97.450, 97.858, 97.417), band=(97.2, 97.8)),
    "cnn": Published(folds=(98.908, 98.992, 99.125, 99.267, 99.067), band=(98.9, 99.3)),
}
