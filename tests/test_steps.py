"""The compiled steps (job/pair/steps.py): Keras fit's numbers to the bit, and every batch once, in order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import script_json

from job.pair import models, steps
from job.pair.steps import call_plan
from job.protocol import Protocol


@given(n=st.integers(0, 2000), batch_size=st.integers(1, 200), steps_per_call=st.integers(1, 60))
def test_the_calls_feed_every_batch_once_in_order(n: int, batch_size: int, steps_per_call: int) -> None:
    index = np.random.default_rng(n).permutation(n)
    calls = call_plan(index, batch_size, steps_per_call)
    assert np.array_equal(np.concatenate([b.ravel() for _, b in calls] or [np.empty(0, int)]), index)
    step = 0
    for first, batches in calls:
        assert first == step  # the step numbers the callbacks see run on without a gap
        assert 1 <= len(batches) <= steps_per_call
        step += len(batches)
    assert step == -(-n // batch_size)  # the last batch may be short, and is then a call of its own
    assert all(b.shape[1] == batch_size for _, b in calls[:-1])


# The path this module replaced, kept here as the reference: model.fit an epoch at a time on a tf.data pipeline that
# gathers and scales each batch, validating on the held-out images, then model.evaluate; at one step per call
# (Keras's default), against train.fit at `per_call` steps per call: the steps per call change nothing either.
_BOTH = """
import dataclasses, hashlib, json, sys, tempfile
from pathlib import Path
import numpy as np
from job import folds
from job.pair import data, models, runtime, train
from job.pair.checkpoint import Checkpoint
from job.protocol import Protocol

name, folder, limit, epochs, per_call = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
runtime.configure(deterministic=True, precision="float32", allow_cpu=True, max_threads=models.max_threads(name))
tf = runtime.import_tensorflow()
import keras
dataset = data.load(folder, custom=True)
protocol = Protocol().with_overrides(epochs=epochs, limit=limit)
images, labels = dataset.x_train[:limit], dataset.y_train[:limit]
train_ix, val_ix = folds.split(limit, 0, protocol)

def weights_sha256(model):
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(weight.tobytes())
    return digest.hexdigest()

def keras_fit():
    x, y = tf.constant(images), tf.constant(labels.astype(np.int32))
    def gather(i):
        return tf.cast(tf.gather(x, i), tf.float32)[..., tf.newaxis] / 255.0, tf.gather(y, i)
    def batches(ix, size):
        return (tf.data.Dataset.from_tensor_slices(ix.astype(np.int64)).batch(size)
                .map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE))
    keras.utils.set_random_seed(train.model_seed(protocol, 0))
    model = models.build(name)  # one step per call, Keras's default: ours runs per_call, the numbers are the same
    held_out = batches(val_ix, train.EVAL_BATCH_SIZE)
    history = {key: [] for key in ("loss", "accuracy", "val_loss", "val_accuracy")}
    for epoch in range(epochs):
        logs = model.fit(batches(train.epoch_order(train_ix, protocol.seed, 0, epoch), protocol.batch_size),
                         validation_data=held_out, initial_epoch=epoch, epochs=epoch + 1, shuffle=False,
                         verbose=0).history
        for key in history:
            history[key].append(float(logs[key][-1]))
    score = model.evaluate(held_out, verbose=0, return_dict=True)
    return {"history": history, "score": {"accuracy": float(score["accuracy"]), "loss": float(score["loss"])},
            "weights": weights_sha256(model)}

def ours():
    train.STEPS_PER_CALL = per_call
    with tempfile.TemporaryDirectory() as tmp:
        model, outcome = train.fit(name, protocol, images, labels, train_ix, val_ix, Checkpoint(Path(tmp)),
                                   stream=0, hooks=train.Hooks())
    return {"history": {key: list(values) for key, values in dataclasses.asdict(outcome.history).items()},
            "score": dataclasses.asdict(outcome.score), "weights": weights_sha256(model)}

print(json.dumps({"keras_fit": keras_fit(), "ours": ours()}))
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "limit", "epochs", "per_call"),
    [
        # 792 training images: 24 batches of 32 and one of 24; calls of 7 steps, the last of 4 (of 13, the last of
        # 12); 198 held out: a batch of 128 and one of 70.
        ("mlp", 990, 3, 7),
        ("cnn-small", 990, 2, 13),
        ("cnn", 290, 2, 5),  # the 10-million-weight CNN, on 232 training images: 7 batches of 32 and one of 8
    ],
)
def test_the_numbers_are_keras_fits_to_the_bit(
    model: str, limit: int, epochs: int, per_call: int, mnist_mini: Path
) -> None:
    runs = script_json(_BOTH, model, str(mnist_mini), str(limit), str(epochs), str(per_call))
    assert runs["ours"] == runs["keras_fit"]  # every epoch's four numbers, the score and the weights' hash
    assert len(runs["ours"]["history"]["loss"]) == epochs


# The training calls of train.fit, as its callbacks see them: (first step, last step) of each.
_CALLS = """
import json, sys, tempfile
from pathlib import Path
import keras
from job import folds
from job.pair import data, models, runtime, train
from job.pair.checkpoint import Checkpoint
from job.protocol import Protocol

name, folder, limit, batch_size = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
runtime.configure(deterministic=True, precision="float32", allow_cpu=True, max_threads=models.max_threads(name))
dataset = data.load(folder, custom=True)
protocol = Protocol().with_overrides(epochs=1, limit=limit, batch_size=batch_size)
images, labels = dataset.x_train[:limit], dataset.y_train[:limit]
train_ix, val_ix = folds.split(limit, 0, protocol)
calls = []
recorder = keras.callbacks.LambdaCallback(
    on_train_batch_begin=lambda batch, logs: calls.append([batch]),
    on_train_batch_end=lambda batch, logs: calls[-1].append(batch),
)
with tempfile.TemporaryDirectory() as tmp:
    train.fit(name, protocol, images, labels, train_ix, val_ix, Checkpoint(Path(tmp)), stream=0,
              hooks=train.Hooks(callbacks=[recorder]))
print(json.dumps({"calls": calls, "n_train": len(train_ix)}))
"""


@pytest.mark.slow
def test_a_larger_batch_makes_shorter_calls_so_a_stop_signal_waits_no_longer(mnist_mini: Path) -> None:
    # A call's duration grows with the images it trains on, and a stop signal is honoured only between calls
    # (Slurm kills after KillWait, 30 s): at batch 64 a call of the cnn's 20 steps would train on twice the
    # images its steps per call were sized for. 792 training images: 12 batches of 64 and one of 24.
    model, batch_size = "cnn", 64
    run = script_json(_CALLS, model, str(mnist_mini), "990", str(batch_size))
    steps = [last - first + 1 for first, last in run["calls"]]
    assert sum(steps) == -(-run["n_train"] // batch_size)  # every batch, once
    budget = models.steps_per_call(model) * Protocol().batch_size  # the images a call was sized for
    assert max(steps) * batch_size <= budget, steps


# Which element types TensorFlow gathers on a GPU and which it keeps in host memory there (this build's kernel
# registry), and whether every pixel value held as `steps.GPU_IMAGES_DTYPE` scales to the very float32 it does from
# uint8.
_GPU_GATHER = """
import json
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.python.framework import kernels
from job.pair import steps

dtype = tf.as_dtype(steps.GPU_IMAGES_DTYPE)

def gpu_kernels(op, type_attr):
    # {type name: the arguments its kernel keeps in host memory} of the GPU kernels of `op` in this build
    return {
        types_pb2.DataType.Name(t): list(kernel.host_memory_arg)
        for kernel in kernels.get_registered_kernels_for_op(op).kernel if kernel.device_type == "GPU"
        for constraint in kernel.constraint if constraint.name == type_attr
        for t in constraint.allowed_values.list.type
    }

gpu_types = gpu_kernels("GatherV2", "Tparams")
labels = types_pb2.DataType.Name(tf.as_dtype(steps.LABELS_DTYPE).as_datatype_enum)
pixels = np.arange(256, dtype=np.uint8)
max_pixel = tf.Variable(255.0)
scaled = lambda held: (tf.cast(tf.constant(held), tf.float32) / max_pixel).numpy()
print(json.dumps({
    "built_with_cuda": tf.test.is_built_with_cuda(),
    "gathers_on_gpu": types_pb2.DataType.Name(dtype.as_datatype_enum) in gpu_types,
    "uint8_gathers_on_gpu": "DT_UINT8" in gpu_types,
    "labels_gather_on_gpu": labels in gpu_types,
    "labels_in_host_memory": gpu_kernels("Identity", "T")[labels],
    "same_scaled_pixels": bool(np.array_equal(scaled(pixels.astype(dtype.as_numpy_dtype)), scaled(pixels))),
}))
"""


def test_on_a_gpu_the_images_and_labels_are_held_in_types_it_gathers_in_its_own_memory() -> None:
    # TensorFlow has no GPU kernel gathering uint8: with the images on the GPU as uint8, every gather would be
    # placed on the host, silently, and copy the images back from the GPU.
    found = script_json(_GPU_GATHER, timeout=300, env={"CUDA_VISIBLE_DEVICES": ""})
    if not found["built_with_cuda"]:
        pytest.skip("this TensorFlow has no GPU kernels to look up")
    assert not found["uint8_gathers_on_gpu"]  # why the images are not held as uint8 there
    assert found["gathers_on_gpu"], steps.GPU_IMAGES_DTYPE
    assert found["same_scaled_pixels"]  # the same numbers as uint8, to the bit
    # int32 tensors of a GPU live in host memory: the labels would be copied to the GPU at every gather.
    assert found["labels_gather_on_gpu"] and found["labels_in_host_memory"] == [], steps.LABELS_DTYPE
