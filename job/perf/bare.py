"""The bare loop: the same model, batches, loss and optimizer as ours, with nothing around the arithmetic.

The fold's images sit in memory as one float32 tensor; one call of a compiled function runs a whole epoch,
each step slicing the next batch of the epoch's shuffled copy and doing the forward pass, the gradients and
the SGD update. (A Python call per step, each step its own tf.function call, ran at 0.7x the throughput of
Keras's fit at 50 steps per call on the mlp: a loop that pays TensorFlow's per-call cost at every step is no
reference.) No per-batch gather, no callbacks, no metrics, no checkpoints: what is left is TensorFlow's per-step
cost plus the arithmetic, the most a Python training loop could hope for on this machine.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from job import folds
from job.pair import models, runtime
from job.pair.train import EVAL_BATCH_SIZE, epoch_order, model_seed


def train(spec: Any, dataset: Any, clock: Any) -> dict[str, Any]:
    """Train `spec`'s pair, timed by `clock` (a job.perf.bench.EpochClock); its held-out accuracy and sizes."""
    import keras

    tf = runtime.import_tensorflow()
    protocol = spec.protocol()
    info = runtime.configure_training(protocol, spec.model, allow_cpu=True)
    images, labels = dataset.x_train[: protocol.limit], dataset.y_train[: protocol.limit]
    train_ix, val_ix = folds.split(len(images), spec.fold, protocol)
    x = tf.constant(images[..., np.newaxis].astype(np.float32) / 255.0)
    y = tf.constant(labels.astype(np.int32))
    keras.utils.set_random_seed(model_seed(protocol, spec.fold))  # the weights ours starts from
    model = models.build(spec.model)
    optimizer, loss_of = model.optimizer, keras.losses.SparseCategoricalCrossentropy()
    optimizer.build(model.trainable_variables)

    def step(batch_x: Any, batch_y: Any) -> None:
        with tf.GradientTape() as tape:
            loss = loss_of(batch_y, model(batch_x, training=True))
        weights = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights, strict=True))

    @tf.function
    def train_epoch(epoch_x: Any, epoch_y: Any) -> None:
        """Every step of the epoch in one compiled call: no Python between steps."""
        batch = protocol.batch_size
        for start in tf.range(0, tf.shape(epoch_x, out_type=tf.int64)[0], batch):
            step(epoch_x[start : start + batch], epoch_y[start : start + batch])

    @tf.function
    def correct(batch_x: Any, batch_y: Any) -> Any:
        predicted = tf.argmax(model(batch_x, training=False), axis=-1, output_type=tf.int32)
        return tf.reduce_sum(tf.cast(predicted == batch_y, tf.int32))

    val_x, val_y = tf.gather(x, val_ix), tf.gather(y, val_ix)
    clock.train_begins(model)
    accuracy = float("nan")
    for epoch in range(protocol.epochs):
        clock.epoch_begins()
        # The same batches, in the same order, as ours feeds.
        order = epoch_order(train_ix, protocol.seed, spec.fold, epoch)
        train_epoch(tf.gather(x, order), tf.gather(y, order))
        model.trainable_variables[0].numpy()  # waits for the last update
        clock.validation_begins()
        hits = sum(
            int(correct(val_x[start : start + EVAL_BATCH_SIZE], val_y[start : start + EVAL_BATCH_SIZE]))
            for start in range(0, len(val_ix), EVAL_BATCH_SIZE)
        )
        accuracy = hits / len(val_ix)
        clock.epoch_ends()
    return {
        "accuracy": accuracy,
        "n_train": len(train_ix),
        "n_val": len(val_ix),
        "device": info["device_used"],
        "threads": info["threads"]["intra_op"],
    }
