"""Start-up phases: the arithmetic that turns a worker's marks into per-phase seconds, and the data anatomy."""

from __future__ import annotations

from pathlib import Path

import pytest

from job.perf import startup


def _marks(first_call_steps: int) -> dict:
    # Seconds since the process started at which each phase ended.
    ends = {"python": 0.1, "tensorflow": 4.1, "keras": 5.0, "data": 5.6, "configure": 5.7, "build": 6.0}
    return {"at": {**ends, "first_call": 8.0}, "first_call_steps": first_call_steps}


def test_phases_are_the_gaps_between_marks() -> None:
    phases = startup.phases(_marks(first_call_steps=1), step_s=0.01)
    assert list(phases) == [phase for phase, _ in startup.PHASES]
    assert phases["python"] == pytest.approx(0.1)
    assert phases["tensorflow"] == pytest.approx(4.0)
    assert phases["first_call"] == pytest.approx(2.0)
    assert sum(phases.values()) == pytest.approx(8.0)


def test_the_first_calls_other_steps_are_taken_off_at_the_step_time() -> None:
    # 50 steps in the first call, 0.02 s each in the steady state: 49 of them are training, not start-up.
    phases = startup.phases(_marks(first_call_steps=50), step_s=0.02)
    assert phases["first_call"] == pytest.approx(2.0 - 49 * 0.02)


def test_no_phases_without_every_mark() -> None:
    marks = _marks(1)
    del marks["at"]["build"]
    assert startup.phases(marks, step_s=0.01) is None


def test_marks_need_the_parents_stamp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(startup.SPAWNED_AT_ENV, raising=False)
    unstamped = startup.Marks()
    unstamped.mark("python")
    assert unstamped.at == {}
    monkeypatch.setenv(startup.SPAWNED_AT_ENV, startup.spawn_env({})[startup.SPAWNED_AT_ENV])
    stamped = startup.Marks()
    stamped.mark("python")
    stamped.mark("python")  # a phase ends once
    assert list(stamped.at) == ["python"] and 0 <= stamped.at["python"] < 60


def test_data_anatomy_of_the_real_mnist(mnist_full: Path, tmp_path: Path) -> None:
    anatomy = startup.data_anatomy(str(mnist_full))
    assert anatomy is not None and set(anatomy) == {"read_s", "gunzip_s", "sha256_s"}
    assert all(seconds >= 0 for seconds in anatomy.values())
    assert startup.data_anatomy(str(tmp_path)) is None  # no MNIST files there


def test_tensorflow_imports_without_the_optional_packages_which_stay_importable() -> None:
    """runtime.import_tensorflow skips what Keras imports only because it is installed; the job still can."""
    import subprocess
    import sys

    from job.pair import runtime

    code = (
        "import sys; from job.pair import runtime; tf = runtime.import_tensorflow(); "
        "print(sorted(m for m in runtime.OPTIONAL_IMPORTS if m in sys.modules)); "
        "import keras, sklearn.model_selection, scipy.sparse; "
        "print(keras.layers.Dense(2)(tf.ones((1, 3))).shape, sys.meta_path[0].__class__.__name__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    skipped, after = done.stdout.strip().splitlines()
    assert skipped == "[]"
    assert after.startswith("(1, 2)") and not after.endswith("_Skip")
    assert set(runtime.OPTIONAL_IMPORTS) == {"sklearn", "pandas", "matplotlib", "scipy"}


def test_a_package_already_imported_is_left_alone() -> None:
    """With scikit-learn (and so scipy and pandas) imported before TensorFlow, its submodules load normally for Keras;
    what nothing imported yet is still skipped."""
    import subprocess
    import sys

    code = (
        "import sklearn; from job.pair import runtime; runtime.import_tensorflow(); "
        "import sys; print('sklearn' in sys.modules, 'matplotlib' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "False"]


def test_the_task_is_one_epoch_of_the_pair_on_as_few_images_as_two_calls_need() -> None:
    from job.perf.spec import Spec
    from job.perf.task import task_spec

    spec = Spec(model="cnn", fold=3, epochs=2, limit=12000, data_dir="/data", custom_data=True)
    # 20 steps a call: 41 steps need 1640 images, the minimum is 2000
    assert task_spec(spec) == Spec(model="cnn", fold=3, epochs=1, limit=2000, data_dir="/data", custom_data=True)
    assert task_spec(Spec(model="mlp", fold=0, epochs=3)).limit == 40040  # 500 steps a call: 1001 steps
    assert task_spec(Spec(model="mlp", fold=0, epochs=3, limit=1000)).limit == 1000  # never more than the spec's


def test_first_step_takes_off_the_first_calls_other_steps() -> None:
    marks = {"at": {"first_call": 6.0}, "first_call_steps": 20}
    assert startup.first_step(marks, step_s=0.05) == pytest.approx(6.0 - 19 * 0.05)
    # With a second call, at its own step time: 10 steps in 0.2 s.
    marks = {"at": {"first_call": 6.0, "second_call": 6.2}, "first_call_steps": 20, "second_call_steps": 10}
    assert startup.first_step(marks, step_s=0.05) == pytest.approx(6.0 - 19 * 0.02)


def test_first_step_never_goes_back_past_the_fits_start() -> None:
    # One call only, and a step time from another process's first epoch (tracing included): too long to trust.
    marks = {"at": {"build": 5.0, "first_call": 6.0}, "first_call_steps": 25}
    assert startup.first_step(marks, step_s=3.0) == 5.0
