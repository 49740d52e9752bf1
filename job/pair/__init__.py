"""The one-pair path: protocol, data, folds, models, training, checkpoints; the only TensorFlow users."""
