"""A new user's first two commands, in a fresh clone with no ../shared/ beside it and no network: the README's run
command on the shipped subset, and the fast test tier, whose tests of the full MNIST are then skipped and counted.

The clone runs the fast tier of the files whose tests find their data, their settings and their network (FILES):
what a clone, a new home and no network change. The rest of the fast tier runs from a fresh clone in CI already,
beside the full MNIST; running it a second time here only repeated that, for a minute or more of the suite.

The clone is of this checkout's HEAD (commit first: uncommitted work is not what a user gets). The venv's Python
runs it with PYTHONPATH=<clone>, so nothing is installed. The network is taken away with a new network namespace
(`unshare -rn`, loopback up: local servers still work, nothing else does); where the kernel refuses one, every
proxy and the MNIST mirror point at a closed local port instead. Either way a probe of the real mirror must fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from support import ROOT, mnist

from job.pair import data

pytestmark = pytest.mark.slow  # a clone, one training run and part of the fast tier: about half a minute

# The data: where it is looked for, its cache, its download (from a local mirror; here offline) and the shipped
# subset; the MNIST_CV_* settings; and `run` on the subset with the task id from Slurm's variable.
FILES = ("tests/test_data.py", "tests/test_mini_data.py", "tests/test_settings.py", "tests/test_run.py")

NETNS = ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "offline"]
PROBE = f"import urllib.request; urllib.request.urlopen({data.DEFAULT_MIRROR!r}, timeout=10)"


def offline() -> tuple[list[str], dict[str, str]]:
    """A command prefix and environment variables that leave a command without a network."""
    if shutil.which("unshare") and subprocess.run([*NETNS, "true"], capture_output=True).returncode == 0:
        return NETNS, {}
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/"
    proxies = {name: url for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")}
    return [], {**proxies, "no_proxy": "127.0.0.1,localhost", "MNIST_CV_MIRROR": url}


def outcomes(report: Path) -> tuple[list[str], dict[str, str]]:
    """The tests a JUnit XML report says passed, and the reason of each one skipped."""
    passed, skipped = [], {}
    for case in ET.parse(report).iter("testcase"):
        name = f"{case.get('classname')}.{case.get('name')}"
        skip = case.find("skipped")
        if skip is not None:
            skipped[name] = skip.get("message", "")
        elif case.find("failure") is None and case.find("error") is None:
            passed.append(name)
    return passed, skipped


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This checkout's HEAD, cloned where no ../shared/ is beside it."""
    where = tmp_path_factory.mktemp("fresh") / "mnist-cv"
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    subprocess.run(["git", "clone", "-q", "--no-checkout", str(ROOT), str(where)], check=True)
    subprocess.run(["git", "-C", str(where), "checkout", "-q", "--detach", head.stdout.strip()], check=True)
    assert not (where.parent / "shared").exists()
    return where


@pytest.fixture(scope="module")
def as_a_new_user(clone: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], dict[str, str]]:
    """(command prefix, environment): offline, a new home (no data cache, no Keras cache), no MNIST_CV_* setting."""
    prefix, cut_off = offline()
    home = tmp_path_factory.mktemp("home")
    kept = {k: v for k, v in os.environ.items() if not k.startswith(("MNIST_CV_", "KERAS_", "PYTEST_"))}
    env = {**kept, **cut_off, "HOME": str(home), "PYTHONPATH": str(clone)}
    probe = subprocess.run([*prefix, sys.executable, "-c", PROBE], env=env, capture_output=True, text=True)
    assert probe.returncode != 0, "the MNIST mirror answered: the network was not cut off"
    return prefix, env


def test_the_run_command_trains_on_the_shipped_subset(
    clone: Path, as_a_new_user: tuple[list[str], dict[str, str]]
) -> None:
    prefix, env = as_a_new_user
    run = [sys.executable, "-m", "job", "run", "--model", "mlp", "--fold", "0", "--epochs", "1"]
    done = subprocess.run(
        [*prefix, *run, "--data-dir", "tests/data/mnist-mini", "--custom-data"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((clone / "results" / "default" / "mlp" / "fold-0.json").read_text())
    assert result["data"]["name"] == "custom" and result["data"]["sha256"] == mnist.mini_sums()
    assert (result["data"]["n_train"], result["data"]["n_val"]) == (4_800, 1_200)
    assert result["score"]["accuracy"] > 0.8  # one epoch on 4,800 real digits
    head = subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    assert result["environment"]["git"] == {"commit": head.stdout.strip(), "dirty": False}  # the clone's code ran


def test_the_data_tests_fast_tier_passes_with_the_full_set_tests_skipped_and_counted(
    clone: Path, as_a_new_user: tuple[list[str], dict[str, str]]
) -> None:
    prefix, env = as_a_new_user
    report = clone.parent / "fast-tier.xml"
    # -n 0: in this process, as this test's own worker is one of two already
    tier = [sys.executable, "-m", "pytest", *FILES, "-m", "not slurm and not slow", "-p", "no:cacheprovider", "-q"]
    tier += ["-n", "0"]
    done = subprocess.run(
        [*prefix, *tier, f"--junitxml={report}"], cwd=clone, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-4000:]
    passed, skipped = outcomes(report)
    assert re.search(rf"\b{len(passed)} passed, {len(skipped)} skipped\b", done.stdout), done.stdout[-1000:]
    full_set = {name for name, reason in skipped.items() if mnist.SKIP_PREFIX in reason}
    print(f"fresh clone, offline: {len(passed)} passed, {len(full_set)} skipped for want of the full MNIST")
    assert full_set and passed
    reason = skipped[next(iter(full_set))]
    assert f"cache {Path(env['HOME']) / '.cache' / 'mnist-cv' / 'mnist'}: no MNIST .gz files; download: " in reason
    assert len({skipped[name] for name in full_set}) == 1  # one clear reason, the same for every such test
    # Trained for real on the shipped subset, not skipped: a pair from `run`, loaded as users load it.
    assert "tests.test_run.test_the_task_id_comes_from_slurm_when_not_given" in passed
    assert "tests.test_mini_data.test_the_users_loader_takes_it_as_custom_data_never_as_mnist" in passed
