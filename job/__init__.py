"""mnist-cv: one (model, fold) pair of the Keras MNIST tutorial's 5-fold cross-validation per job."""

__version__ = "0.1.0"
