"""A folder's TensorBoard logs as TensorBoard itself reads them for `tensorboard --logdir FOLDER`: every run's scalars
through its event multiplexer (the scalars plugin's data), and what the HParams view shows through the hparams
plugin's own request handlers (its experiment: hparams and metrics; its sessions: their hparams and metric values).

TensorBoard imports TensorFlow to read event files, so `read` reads in a fresh interpreter (this file run as a
script) and hands the result over as JSON: the test processes stay free of TensorFlow.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# Every status a session may have: the job writes no session end, so its sessions' status is unknown.
STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


def read(logdir: Path) -> dict[str, Any]:
    """{"scalars": {run: {tag: [[step, value], ...]}}, "experiment": the HParams view's experiment,
    "sessions": {session run: {"hparams": {...}, "metrics": {"GROUP/TAG": last value}}}}."""
    done = subprocess.run([sys.executable, __file__, str(logdir)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def assert_runs_hold_the_history(
    scalars: dict[str, Any], runs: dict[str, dict[str, str]], result: dict[str, Any]
) -> None:
    """The runs are `runs` (run -> tag -> the result's curve it holds), each tag one value per epoch, in order, at
    step = the epoch's index, each value the result's (the event files hold float32)."""
    curves = {**result["history"], "epoch_seconds": result["timings"]["epoch_seconds"]}
    assert {run: sorted(tags) for run, tags in scalars.items()} == {run: sorted(tags) for run, tags in runs.items()}
    for run, tags in runs.items():
        for tag, curve in tags.items():
            assert [step for step, _ in scalars[run][tag]] == list(range(len(curves[curve]))), (run, tag)
            assert [value for _, value in scalars[run][tag]] == pytest.approx(curves[curve], rel=1e-6), (run, tag)


def config_hparams(result: dict[str, Any]) -> dict[str, Any]:
    """The hparams a training's config gives: its fields (a null --limit left out) and its id."""
    config = {name: value for name, value in result["config"].items() if value is not None}
    return {**config, "config_id": result["config_id"]}


def _read(logdir: str) -> dict[str, Any]:
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import hparams_plugin
    from tensorboard.util import tensor_util
    from werkzeug.test import Client
    from werkzeug.wrappers import Response

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(logdir)
    multiplexer.Reload()
    scalars = {
        run: {
            tag: [
                [event.step, float(tensor_util.make_ndarray(event.tensor_proto))]
                for event in multiplexer.Tensors(run, tag)
            ]
            for tag in tags
        }
        for run, tags in multiplexer.PluginRunToTagToContent("scalars").items()
    }
    provider = data_provider.MultiplexerDataProvider(multiplexer, logdir)
    plugin = hparams_plugin.HParamsPlugin(base_plugin.TBContext(logdir=logdir, data_provider=provider))
    apps = plugin.get_plugin_apps()

    def ask(route: str, request: dict[str, Any]) -> dict[str, Any]:
        answer = Client(apps[route], Response).post(route, json=request)
        assert answer.status_code == 200, answer.get_data(as_text=True)
        return json.loads(answer.get_data(as_text=True))

    experiment = ask("/experiment", {"experimentName": ""})
    groups = ask(
        "/session_groups", {"experimentName": "", "allowedStatuses": STATUSES, "startIndex": 0, "sliceSize": 1000}
    )
    sessions = {
        session["name"]: {
            "hparams": group["hparams"],
            "metrics": {f"{m['name']['group']}/{m['name']['tag']}": m["value"] for m in session["metricValues"]},
        }
        for group in groups["sessionGroups"]
        for session in group["sessions"]
    }
    return {"scalars": scalars, "experiment": experiment, "sessions": sessions}


if __name__ == "__main__":
    print(json.dumps(_read(sys.argv[1])))
