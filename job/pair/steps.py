"""Keras's own train and test steps, many per compiled call, on batches gathered from images held in memory.

Why not `model.fit`: the MLP's step is a fraction of a millisecond of arithmetic, and fit's machinery around it
(a tf.data pipeline mapping every batch on other threads, an Optional and a tf.cond around every step of its
while loop) cost about as much again (`mnist-cv bench`, the "x bare loop" row). Here one compiled call runs a run
of steps, each gathering its batch from the images by index and scaling it in the same graph, then calling
the model's own `train_step` (or `test_step`): the same loss, gradients, optimizer update and metrics as fit,
in the same order, so the numbers are fit's to the bit (tests/test_steps.py). Keras callbacks get the calls
fit would make, in fit's order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from job.pair import runtime

# TensorFlow has no GPU kernel that gathers uint8: it would gather on the host, silently, copying the images back
# from the GPU. float16 holds every pixel value 0-255 exactly, so the scaled batches are the same to the bit.
GPU_IMAGES_DTYPE = "float16"
# Not int32: TensorFlow keeps int32 tensors of a GPU in host memory, and would copy the labels to the GPU at every
# gather. Keras casts them for the loss and the accuracy, so the numbers are the same.
LABELS_DTYPE = "int64"


class CompiledSteps:
    """One model's steps over one image set: `train` runs an epoch's batches, `evaluate` scores a set of images.

    The uint8 images are held once, for every fold, as they are (on a GPU as float16: GPU_IMAGES_DTYPE); the
    tutorial keeps float32 copies, four times the bytes. Labels are sparse class ids. `steps_per_call` bounds a
    call's duration, hence how soon a stop signal is honoured (job.pair.train.steps_per_call).
    """

    def __init__(self, model: Any, images: np.ndarray, labels: np.ndarray, *, steps_per_call: int) -> None:
        tf = runtime.import_tensorflow()
        self._tf = tf
        self.model = model
        self.steps_per_call = steps_per_call
        # Resident on the device that trains (47 MB for all of MNIST as uint8, twice that on a GPU): no copy per step
        # or per call.
        gpus = tf.config.list_logical_devices("GPU")
        device, held_as = (gpus[0].name, GPU_IMAGES_DTYPE) if gpus else ("/CPU:0", "uint8")
        with tf.device(device):
            self._images = tf.identity(tf.cast(tf.constant(images, dtype=tf.uint8), held_as))
            self._labels = tf.identity(tf.constant(labels, dtype=LABELS_DTYPE))
        # A variable, not a constant: TensorFlow's graph optimizer rewrites x / 255 as x * (1 / 255), which differs
        # in the last bit for most pixel values, and the numbers would then depend on where the division runs.
        self._max_pixel = tf.Variable(255.0, trainable=False)
        self._traced: dict[str, dict[int, Any]] = {"train": {}, "test": {}}  # per kind, its call of each width
        self._calls_of = {kind: self._compile(kind) for kind in self._traced}
        self._built = False

    def _batch(self, index: Any) -> tuple[Any, Any]:
        tf = self._tf
        pixels = tf.cast(tf.gather(self._images, index), tf.float32) / self._max_pixel
        return pixels[..., tf.newaxis], tf.gather(self._labels, index)

    def _compile(self, kind: str) -> Callable[[np.ndarray], dict[str, float]]:
        """A call running the model's `kind` step on each row of a (steps, batch) index matrix; the metrics after
        the last step."""
        tf, model = self._tf, self.model
        step = model.train_step if kind == "train" else model.test_step
        # Keras compiles its step on its own too (with XLA when asked); called in the loop, it is inlined.
        one_step = tf.function(step, reduce_retracing=True, jit_compile=bool(model.jit_compile))
        traced = self._traced[kind]

        def run(batches: np.ndarray) -> dict[str, float]:
            width = batches.shape[1]
            if width not in traced:
                # One trace per batch width (an epoch's last batch may be short), its width fixed in the graph: a
                # known batch size lets TensorFlow pick faster kernels than a dynamic one (`mnist-cv bench`).
                @tf.function(input_signature=[tf.TensorSpec([None, width], tf.int64)])
                def steps(index: Any) -> Any:
                    for row in tf.range(tf.shape(index)[0]):
                        one_step(self._batch(index[row]))
                    return model.get_metrics_result()

                traced[width] = steps
            return _floats(traced[width](tf.constant(batches, tf.int64)))

        return run

    def resident_on(self) -> set[str]:
        """The devices holding the images and the labels."""
        return {self._images.device, self._labels.device}

    def op_types(self, kind: str) -> set[str]:
        """Every op type in the compiled `kind` ("train" or "test") calls traced so far, nested functions included."""
        found: set[str] = set()
        for call in self._traced[kind].values():
            graph = call.get_concrete_function().graph.as_graph_def()
            found.update(node.op for node in graph.node)
            found.update(node.op for function in graph.library.function for node in function.node_def)
        return found

    def _build(self, index: np.ndarray) -> None:
        """Create the optimizer's and the metrics' variables outside the compiled calls, as fit does first."""
        if self._built:
            return
        if not self.model.optimizer.built:  # a restored checkpoint built it already
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.test_step(self._batch(index[:1]))  # builds the loss and metrics; their state is reset below
        self.model.reset_metrics()
        self._built = True

    def train(self, index: np.ndarray, batch_size: int, callbacks: Any) -> dict[str, float]:
        """One epoch over images[index] in this order; its metrics (loss, accuracy: means over its steps).

        `callbacks` (a keras.callbacks.CallbackList) get fit's batch hooks around every call; a callback that
        sets `model.stop_training` ends the epoch after the current call, and the metrics are then those of the
        steps run.
        """
        self._build(index)
        self.model.reset_metrics()
        self.model.stop_training = False
        logs: dict[str, float] = {}
        for first, batches in call_plan(index, batch_size, self.steps_per_call):
            callbacks.on_train_batch_begin(first)
            logs = self._calls_of["train"](batches)
            callbacks.on_train_batch_end(first + len(batches) - 1, logs)
            if self.model.stop_training:
                break
        return logs

    def evaluate(self, index: np.ndarray, batch_size: int, callbacks: Any) -> dict[str, float]:
        """Loss and metrics over images[index], as `model.evaluate` computes them (fit's test hooks around it)."""
        self._build(index)
        self.model.reset_metrics()
        callbacks.on_test_begin()
        logs: dict[str, float] = {}
        for first, batches in call_plan(index, batch_size, self.steps_per_call):
            callbacks.on_test_batch_begin(first)
            logs = self._calls_of["test"](batches)
            callbacks.on_test_batch_end(first + len(batches) - 1, logs)
        callbacks.on_test_end(logs)
        return logs


def call_plan(index: np.ndarray, batch_size: int, steps_per_call: int) -> list[tuple[int, np.ndarray]]:
    """(first step, (steps, batch) index matrix) of each call: `steps_per_call` full batches each, in order, then
    the short last batch, if any, alone."""
    full = len(index) // batch_size * batch_size
    batches = index[:full].reshape(-1, batch_size)
    calls = [(first, batches[first : first + steps_per_call]) for first in range(0, len(batches), steps_per_call)]
    if full < len(index):
        calls.append((len(batches), index[full:].reshape(1, -1)))
    return calls


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    """The metric tensors as Python floats: this also waits for the call's last step."""
    return {name: float(value) for name, value in metrics.items()}
