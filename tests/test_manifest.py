"""The run manifest (RESULTS/RUN/run.json, job/results/manifest.py): the first command that writes into a run records
its protocol and repeats, so that status, pairs, submit, final, collect and the tasks need only --run; an override
that differs is refused; a run folder of an earlier version (no manifest) is read as its results say, and written
by none of the readers; a broken manifest is one line, never overwritten.

Everything runs the real CLI in its own processes. One pair is trained (--epochs 1 --limit 500 on the shipped subset),
one more through `submit --executor debug`; the rest reads copies of tests/data/run-folder/ or fails before training.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support import ROOT, cli, last_line

from job.cli.options import PROTOCOL_OPTIONS
from job.protocol import OPTIONS, Protocol
from job.results import manifest, store
from job.results.layout import RunLayout

QUICK = ("--epochs", "1", "--limit", "500")
CONFIG = Protocol(epochs=1, limit=500)
RUN_FOLDER = ROOT / "tests" / "data" / "run-folder"  # run `default`: --epochs 2 --limit 1000, no run.json
OLD_CONFIG = Protocol(epochs=2, limit=1000)


def manifest_of(results: Path, run: str) -> dict:
    return json.loads((results / run / "run.json").read_text())


def refused(done: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """The one line a refused command printed, after checking its exit code and that it says `words`."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == code and len(lines) == 1, done.stdout + done.stderr
    assert all(word in lines[0] for word in words), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def day1(tmp_path_factory: pytest.TempPathFactory, mnist_mini: Path) -> Path:
    """RESULTS with run day1 (--epochs 1 --limit 500): task 0 trained, nothing else."""
    results = tmp_path_factory.mktemp("manifest") / "results"
    done = cli("run", "--task-id", "0", *QUICK, "--data-dir", str(mnist_mini), "--custom-data",
               "--results", str(results), "--run", "day1")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return results


@pytest.fixture
def copy_of_day1(day1: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(day1, tmp_path / "results"))


@pytest.fixture
def recorded(tmp_path: Path) -> Path:
    """RESULTS with run day1's manifest (--epochs 1 --limit 500, one repeat) and no result."""
    results = tmp_path / "results"
    assert manifest.record(RunLayout(results, "day1"), CONFIG, 1) is None
    return results


def no_slurm(tmp_path: Path) -> dict[str, str]:
    """An environment where squeue and sacct cannot be found: the files alone decide (tests/data/run-folder's
    Slurm job ids are made up, and the local cluster's may be the same numbers)."""
    (tmp_path / "no-slurm").mkdir(exist_ok=True)
    return {"PATH": str(tmp_path / "no-slurm")}


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    """A copy of the committed run folder, a run of a version before manifests."""
    results = Path(shutil.copytree(RUN_FOLDER, tmp_path / "results"))
    assert not (results / "default" / "run.json").exists()
    return results


def test_the_protocol_words_name_every_protocol_option() -> None:
    assert sorted(flag for flag, _ in OPTIONS.values()) == sorted(option.flag for option in PROTOCOL_OPTIONS)
    assert CONFIG.describe() == "--epochs 1 --limit 500" and Protocol().describe() == "the defaults"
    odd = Protocol(seed=0, precision="mixed_float16", jit=True, split_seed=2)
    assert odd.describe() == "split_seed 2 --seed 0 --mixed-precision --xla"
    assert odd.as_options() == ["--seed", "0", "--mixed-precision", "--xla"]  # no option sets split_seed


@pytest.mark.slow  # one real training (~10 s here)
def test_a_run_records_its_manifest_and_status_and_pairs_need_only_run(day1: Path) -> None:
    assert manifest_of(day1, "day1") == {
        "schema_version": 1, "config_id": CONFIG.config_id, "config": CONFIG.to_dict(), "repeats": 1,
    }  # fmt: skip
    where = ("--results", str(day1), "--run", "day1")
    table = cli("status", *where, env={"COLUMNS": "200"})
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0] == f"{day1}/day1  (config {CONFIG.config_id}: --epochs 1 --limit 500)"
    assert last_line(table.stdout) == "1 done, 9 missing"
    listed = cli("pairs", *where, env={"COLUMNS": "200"})
    assert listed.stdout.startswith(f"{day1}/day1  (config {CONFIG.config_id}: --epochs 1 --limit 500)\n")
    assert last_line(listed.stdout) == "1/10 done"
    missing = cli("pairs", "--missing", *where)
    assert (missing.returncode, missing.stdout) == (0, "1-9\n")
    # Overrides equal to the run's are accepted, in part or in full.
    for given in (("--epochs", "1"), QUICK):
        assert cli("pairs", "--missing", *where, *given).stdout == "1-9\n"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "given", "words"),
    [
        (("status",), ("--epochs", "2"), "you gave --epochs 2"),
        (("pairs", "--missing"), ("--limit", "600", "--epochs", "1", "--seed", "7"), "you gave --seed 7 --limit 600"),
        (("run", "--task-id", "1", "--data-dir", "/nowhere"), ("--mixed-precision",), "you gave --mixed-precision"),
        (("submit", "--executor", "debug", "--live-code", "--dry-run"), ("--batch-size", "64"), "--batch-size 64"),
        (("submit", "--executor", "debug", "--live-code"), ("--epochs", "10"), "you gave --epochs 10"),
        (("final", "--model", "mlp", "--data-dir", "/nowhere"), ("--xla",), "you gave --xla"),
    ],
)
def test_an_override_that_differs_from_the_runs_is_refused_naming_it(
    day1: Path, command: tuple[str, ...], given: tuple[str, ...], words: str
) -> None:
    before = (day1 / "day1" / "run.json").read_bytes()
    done = cli(*command, "--results", str(day1), "--run", "day1", *given, cwd=ROOT)
    line = refused(done, 2, "run day1 is --epochs 1 --limit 500; ", words)
    assert line.startswith(f"mnist-cv {command[0]}: error: ")
    assert (day1 / "day1" / "run.json").read_bytes() == before


@pytest.mark.slow
def test_submit_with_only_run_gives_its_tasks_the_runs_protocol_and_grows_the_run(
    copy_of_day1: Path, mnist_mini: Path
) -> None:
    where = ("--results", str(copy_of_day1), "--run", "day1", "--data-dir", str(mnist_mini), "--custom-data")
    plan = cli("submit", "--executor", "debug", "--live-code", "--dry-run", *where, cwd=ROOT)
    assert plan.returncode == 0, plan.stderr
    assert f"would submit 9 pairs of config {CONFIG.config_id}" in plan.stdout
    assert "--custom-data --epochs 1 --limit 500\n" in plan.stdout  # each task's line ends with the run's protocol
    dry = cli("submit", "--executor", "debug", "--live-code", "--dry-run", "--repeats", "2", *where, cwd=ROOT)
    assert "would submit 19 pairs" in dry.stdout and manifest_of(copy_of_day1, "day1")["repeats"] == 1  # dry: unwritten

    # Task 10 is of repeat 1: the run grows to 2 before the task starts, which then trains with the run's protocol.
    done = cli("submit", "--executor", "debug", "--live-code", "--repeats", "2", "--task-ids", "10", *where, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"run day1: grown from 1 to 2 repeats ({copy_of_day1}/day1/run.json)" in done.stderr
    assert manifest_of(copy_of_day1, "day1")["repeats"] == 2
    layout = RunLayout(copy_of_day1, "day1")
    result = store.check_pair(copy_of_day1 / "day1" / "mlp" / "repeat-1" / "fold-0.json", layout)
    assert (result.config_id, result.repeat, result.task_id) == (CONFIG.config_id, 1, 10)

    # status and pairs show the run's two repeats; another --repeats is a view, which writes nothing.
    rows = json.loads(cli("status", "--json", "--results", str(copy_of_day1), "--run", "day1").stdout)
    assert [(r["task_id"], r["state"]) for r in rows if r["state"] == "done"] == [(0, "done"), (10, "done")]
    assert len(rows) == 20
    view = cli("pairs", "--missing", "--repeats", "3", "--results", str(copy_of_day1), "--run", "day1")
    assert view.stdout == "1-9,11-29\n" and manifest_of(copy_of_day1, "day1")["repeats"] == 2


def test_a_task_beyond_the_runs_repeats_is_refused_naming_how_to_grow_it(recorded: Path) -> None:
    where = ("--results", str(recorded), "--run", "day1", "--data-dir", "/nowhere")
    beyond = cli("run", "--task-id", "25", *where)
    refused(beyond, 2, "cnn/repeat-2/fold-0 is beyond run day1's 1 repeat: give --repeats 3 to grow the run")
    by_name = cli("run", "--model", "mlp", "--fold", "1", "--repeat", "1", *where)
    refused(by_name, 2, "mlp/repeat-1/fold-1 is beyond run day1's 1 repeat: give --repeats 2")
    assert manifest_of(recorded, "day1")["repeats"] == 1
    # A task whose data is missing records nothing: neither a new run's config nor a growth.
    assert cli("run", "--task-id", "25", "--repeats", "3", *where).returncode == 1
    assert manifest_of(recorded, "day1")["repeats"] == 1


@pytest.mark.slow  # one real training (~10 s here)
def test_run_with_a_larger_repeats_grows_the_run_and_a_smaller_one_keeps_it(recorded: Path, mnist_mini: Path) -> None:
    where = ("--results", str(recorded), "--run", "day1", "--data-dir", str(mnist_mini), "--custom-data")
    grown = cli("run", "--task-id", "20", "--repeats", "3", *where)
    assert grown.returncode == 0, grown.stderr
    assert f"run day1: grown from 1 to 3 repeats ({recorded}/day1/run.json)\n" in grown.stderr
    assert "mlp/repeat-2/fold-0: held-out accuracy" in last_line(grown.stdout)
    assert manifest_of(recorded, "day1")["repeats"] == 3
    assert manifest.record(RunLayout(recorded, "day1"), CONFIG, 1) is None  # what --repeats 1 records: nothing
    assert manifest_of(recorded, "day1")["repeats"] == 3


# One process of the race: says it is ready, waits for the go, records its config's manifest (job/results/manifest.py,
# as `run`, `final` and `submit` do) and exits 2 with the one line of a refusal.
RECORD = """
import sys, time
from pathlib import Path
from job.errors import UsageError
from job.protocol import Protocol
from job.results import manifest
from job.results.layout import RunLayout

results, epochs, ready, go = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
ready.touch()
while not go.exists():
    time.sleep(0.001)
try:
    manifest.record(RunLayout(results, "race"), Protocol(epochs=epochs, limit=500), 1)
except UsageError as error:
    sys.exit(str(error))
"""


@pytest.mark.parametrize("epochs", [(1, 1), (1, 2)], ids=["same config", "two configs"])
def test_two_processes_creating_the_manifest_at_once_make_one(tmp_path: Path, epochs: tuple[int, int]) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for attempt in range(5):
        results, go = tmp_path / str(attempt), tmp_path / f"go-{attempt}"
        ready = [tmp_path / f"ready-{attempt}-{i}" for i in (0, 1)]
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", RECORD, str(results), str(n), str(flag), str(go)],
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for n, flag in zip(epochs, ready, strict=True)
        ]
        while not all(flag.exists() for flag in ready):  # both imported and waiting: then they go at once
            time.sleep(0.01)
        go.touch()
        ended = [(p.wait(timeout=60), p.communicate()[1]) for p in processes]
        recorded = manifest_of(results, "race")
        assert [p.name for p in (results / "race").iterdir()] == ["run.json"]  # no temp file left behind
        if epochs[0] == epochs[1]:
            assert ended == [(0, ""), (0, "")] and recorded["config_id"] == Protocol(epochs=1, limit=500).config_id
            continue
        # Whichever came first recorded its config; the other read it and was refused in one line.
        (winner,) = [i for i, (code, _) in enumerate(ended) if code == 0]
        (loser,) = [i for i, (code, _) in enumerate(ended) if code != 0]
        assert recorded["config_id"] == Protocol(epochs=epochs[winner], limit=500).config_id
        assert ended[loser][1] == (
            f"run race is --epochs {epochs[winner]} --limit 500 (config {recorded['config_id']}); this is "
            f"--epochs {epochs[loser]} --limit 500 (config {Protocol(epochs=epochs[loser], limit=500).config_id}): "
            "one run holds one config, use another --run\n"
        )


@pytest.mark.slow  # one real training (~10 s here)
def test_a_run_folder_of_an_earlier_version_needs_only_run_and_readers_write_no_manifest(
    old_run: Path, mnist_mini: Path, tmp_path: Path
) -> None:
    where = ("--results", str(old_run))  # run `default`
    # Its results say: --epochs 2 --limit 1000, repeats 0 and 1 (1 in part).
    rows = json.loads(cli("status", "--json", *where, env=no_slurm(tmp_path)).stdout)
    assert len(rows) == 20 and [r["state"] for r in rows[:12]] == ["done"] * 12
    assert cli("pairs", "--missing", *where, env=no_slurm(tmp_path)).stdout == "12,14-19\n"
    refused(cli("status", *where, "--epochs", "3"), 2, "run default is --epochs 2 --limit 1000; you gave --epochs 3")
    collected = cli("collect", *where, "--allow-partial", "--json", "--data-dir", str(mnist_mini))
    assert collected.returncode == 0, collected.stderr
    assert json.loads(collected.stdout)["config_id"] == OLD_CONFIG.config_id
    assert not (old_run / "default" / "run.json").exists()

    # Repeat 1 removed: a complete run. The first command that writes into it records what its results say; one
    # that finds its pair done writes nothing.
    shutil.rmtree(old_run / "default" / "mlp" / "repeat-1")
    assert cli("pairs", "--missing", *where).returncode == 1
    assert cli("status", "--check", *where).returncode == 0
    assert "already done" in cli("final", "--model", "mlp", *where).stdout
    assert not (old_run / "default" / "run.json").exists()
    done = cli("run", "--task-id", "3", "--force", *where, "--data-dir", str(mnist_mini), "--custom-data")
    assert done.returncode == 0, done.stderr
    assert manifest_of(old_run, "default") == {
        "schema_version": 1, "config_id": OLD_CONFIG.config_id, "config": OLD_CONFIG.to_dict(), "repeats": 1,
    }  # fmt: skip
    missing = cli("pairs", "--missing", *where)
    assert (missing.returncode, missing.stdout, missing.stderr) == (1, "", "")


@pytest.mark.slow
def test_a_run_folder_of_several_configs_and_no_manifest_is_read_as_before(old_run: Path, day1: Path) -> None:
    # A result of day1's config among the run's: two configs, so no manifest can be derived.
    for name in ("fold-0.json", "fold-0.predictions.npz"):  # a result and the predictions it names
        shutil.copy(day1 / "day1" / "mlp" / name, old_run / "default" / "mlp" / name)
    where = ("--results", str(old_run))
    rows = json.loads(cli("status", "--json", *where, "--epochs", "2", "--limit", "1000").stdout)
    assert len(rows) == 10 and [r["state"] for r in rows[:2]] == ["other config", "done"]  # --repeats: 1, as before
    assert json.loads(cli("status", "--json", *where).stdout)[1]["state"] == "other config"  # the defaults
    mixed = cli("collect", *where, "--allow-partial")
    refused(mixed, 1, "results of 2 configs are mixed")
    # run refuses only what it refused before (another config at its pair's path), and records nothing.
    blocked = cli("run", "--task-id", "0", *where, "--epochs", "2", "--limit", "1000", "--data-dir", "/nowhere")
    refused(blocked, 1, f"holds config {CONFIG.config_id}, not {OLD_CONFIG.config_id}")
    assert not (old_run / "default" / "run.json").exists()


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:60])


def _oversized(path: Path) -> None:
    path.write_bytes(path.read_bytes() + b" " * (1 << 17))


def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _symlink(path: Path) -> None:
    elsewhere = path.parent.parent / "elsewhere.json"
    path.rename(elsewhere)
    path.symlink_to(elsewhere)


def _other_config_id(path: Path) -> None:
    data = json.loads(path.read_text())
    data["config"]["epochs"] = 2  # the recorded id is the hash of --epochs 1
    path.write_text(json.dumps(data))


def _unknown_version(path: Path) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), "schema_version": 9}))


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (_truncated, "corrupt or truncated JSON"),
        (_oversized, "over 65,536 bytes, more than a run manifest holds"),
        (_fifo, "not a regular file (a FIFO)"),
        (_folder, "not a regular file (a folder)"),
        (_symlink, "a symlink, not a run manifest"),
        (_other_config_id, f"config_id '{CONFIG.config_id}' is not its config's"),
        (_unknown_version, "schema_version 9, this code reads 1"),
    ],
)
def test_a_broken_manifest_is_one_line_and_never_overwritten(
    recorded: Path, damage: Callable[[Path], None], says: str
) -> None:
    path = recorded / "day1" / "run.json"
    damage(path)
    kind, size = path.lstat().st_mode, path.lstat().st_size
    where = ("--results", str(recorded), "--run", "day1")
    run = ("run", "--task-id", "1", "--repeats", "2", "--data-dir", "/nowhere")
    readers = [("pairs", "--missing"), ("collect",)] if damage is _truncated else []  # they read it as status does
    for command in (("status",), run, *readers):
        assert str(path) in refused(cli(*command, *where), 1, says)
    assert (path.lstat().st_mode, path.lstat().st_size) == (kind, size)
