"""containers/: what can be checked without Apptainer, which cannot be installed on these machines.

The def file against pyproject.toml (one TensorFlow pin), its scriptlets run by sh and shellcheck;
containers/build.sh driven by a fake `apptainer`; and slurm/array.sh's image branch end to end on the real
local Slurm, through a pass-through `apptainer` that records its command line and runs the command in it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from support import ROOT, last_line
from support.cluster import ensure_cluster, reconfigure, submit, wait_for_jobs

from job.protocol import Pair
from job.results import store as results
from job.results.layout import RunLayout

DEF_FILE = ROOT / "containers" / "mnist-cv.def"
BUILD_SH = ROOT / "containers" / "build.sh"
ARRAY_SH = ROOT / "slurm" / "array.sh"
GOLDEN = Path(__file__).resolve().parent / "golden"
SECTIONS = ("files", "post", "environment", "runscript", "test", "labels", "help")
SCRIPTLETS = ("post", "environment", "runscript", "test")  # run by /bin/sh, at build time or at run time
PROJECT_FILES = ("pyproject.toml", "README.md", "job")


def parse_def(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """An Apptainer definition file's header keywords (in order) and its sections' bodies."""
    header: dict[str, str] = {}
    sections: dict[str, str] = {}
    current = None
    for line in path.read_text().splitlines():
        if line.startswith("%"):
            current = line[1:].split()[0]
            sections.setdefault(current, "")
        elif current is not None:
            sections[current] += line + "\n"
        elif line.strip() and not line.startswith("#"):
            key, _, value = line.partition(":")
            header[key.strip()] = value.strip()
    return header, sections


def statements(body: str) -> list[str]:
    """A section's lines without indentation, blank lines and comments."""
    stripped = (line.strip() for line in body.splitlines())
    return [line for line in stripped if line and not line.startswith("#")]


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def tensorflow_pin() -> str:
    pins = [dep.split("==", 1)[1] for dep in project()["dependencies"] if re.match(r"tensorflow\s*==", dep)]
    assert len(pins) == 1, f"pyproject.toml must pin tensorflow exactly once (tensorflow==X.Y.Z), not {pins}"
    return pins[0].strip()


@pytest.fixture(scope="module")
def deffile() -> tuple[dict[str, str], dict[str, str]]:
    return parse_def(DEF_FILE)


def run_sh(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", script, "sh", *args], env=env, capture_output=True, text=True, timeout=60)


# --- the definition file --------------------------------------------------------------------------------------


def test_the_image_is_the_official_tensorflow_gpu_image_of_the_pinned_version(deffile) -> None:
    header, _ = deffile
    assert list(header) == ["Bootstrap", "From"], "Bootstrap must come first, then From"
    assert header["Bootstrap"] == "docker"
    tag = re.fullmatch(r"tensorflow/tensorflow:(\d+\.\d+\.\d+)-gpu", header["From"])
    assert tag, f"From: {header['From']} is not an official tensorflow/tensorflow:X.Y.Z-gpu tag"
    assert tag[1] == tensorflow_pin(), (
        f"containers/mnist-cv.def builds on TensorFlow {tag[1]} but pyproject.toml pins {tensorflow_pin()}: "
        "change both together"
    )


def test_every_section_is_there_and_the_labels_match_pyproject(deffile) -> None:
    _, sections = deffile
    assert set(SECTIONS) <= set(sections), f"missing sections: {set(SECTIONS) - set(sections)}"
    assert all(statements(sections[name]) for name in SECTIONS), "a section is empty"
    labels = dict(line.split(None, 1) for line in statements(sections["labels"]))
    assert labels["name"] == project()["name"]
    assert labels["version"] == project()["version"]
    assert labels["tensorflow"] == tensorflow_pin()
    assert "containers/mnist-cv.def" in labels["source"]


def test_files_copies_the_project_that_post_installs(deffile) -> None:
    _, sections = deffile
    copies = dict(line.split() for line in statements(sections["files"]))
    assert copies == {name: f"/opt/mnist-cv/{name}" for name in PROJECT_FILES}
    # Sources are relative to the build's working directory, which build.sh makes the project root.
    missing = [name for name in copies if not (ROOT / name).exists()]
    assert not missing, f"%files copies {missing}, which the project root does not have: the build would fail"
    assert "python -m pip install --no-cache-dir /opt/mnist-cv" in statements(sections["post"])


def test_post_refuses_a_base_image_whose_tensorflow_is_not_the_pin(deffile, tmp_path: Path) -> None:
    _, sections = deffile
    # %post's own lines before the install, on this checkout's pyproject.toml, with a fake `python` that
    # reports the base image's TensorFlow version.
    check, install, _ = sections["post"].partition("python -m pip install")
    assert install, "%post does not install the project"
    check = check.replace("/opt/mnist-cv/", f"{ROOT}/")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    python = fake_bin / "python"
    python.write_text('#!/bin/sh\necho "$BASE_TF"\n')
    python.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"}

    assert run_sh(check, env={**env, "BASE_TF": tensorflow_pin()}).returncode == 0
    drifted = run_sh(check, env={**env, "BASE_TF": "2.0.0"})
    assert drifted.returncode == 1
    assert (
        drifted.stderr
        == f"base image has tensorflow '2.0.0' but pyproject.toml pins '{tensorflow_pin()}': fix From: above\n"
    )


def test_environment_keeps_host_python_packages_out(deffile) -> None:
    _, sections = deffile
    host = {"PATH": os.environ["PATH"], "PYTHONPATH": "/host/lib/python3/site-packages", "PYTHONHOME": "/host"}
    env = dict(
        line.split("=", 1)
        for line in run_sh(sections["environment"] + "env", env=host).stdout.splitlines()
        if "=" in line
    )
    assert env["PYTHONNOUSERSITE"] == "1"  # Apptainer binds $HOME, and with it ~/.local
    assert "PYTHONPATH" not in env and "PYTHONHOME" not in env
    assert env["TF_CPP_MIN_LOG_LEVEL"] == "2"
    debug = run_sh(sections["environment"] + 'echo "$TF_CPP_MIN_LOG_LEVEL"', env={**host, "TF_CPP_MIN_LOG_LEVEL": "0"})
    assert debug.stdout == "0\n", "the host can still turn TensorFlow's logs back on"


def test_runscript_hands_every_argument_to_the_cli(deffile) -> None:
    _, sections = deffile
    assert statements(sections["runscript"]) == ['exec python -m job "$@"']
    # `apptainer run img.sif run --help` runs the runscript with "run --help" as its arguments.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = run_sh(sections["runscript"], "run", "--help", env=env)
    assert done.returncode == 0, done.stderr
    assert "--task-id" in done.stdout


def test_test_section_imports_the_installed_package_and_lists_the_gpus(deffile) -> None:
    _, sections = deffile
    lines = statements(sections["test"])
    assert "cd /" in lines, "%test must not pick up a job/ folder in the caller's directory"
    assert any("import tensorflow" in line and 'list_physical_devices("GPU")' in line for line in lines)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
@pytest.mark.parametrize("name", SCRIPTLETS)
def test_scriptlets_pass_shellcheck(deffile, name: str, tmp_path: Path) -> None:
    _, sections = deffile
    script = tmp_path / f"{name}.sh"
    script.write_text(f"#!/bin/sh\n{sections[name]}")
    done = subprocess.run(["shellcheck", "-s", "sh", str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout


# --- containers/build.sh ------------------------------------------------------------------------------------


def write_fake_apptainer_for_build(bin_dir: Path, record: Path, uid: int) -> None:
    """`apptainer` that records argv and cwd and writes a small image; `id` that says who we are."""
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "apptainer").write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"open({str(record)!r}, 'w').write(json.dumps({{'argv': sys.argv[1:], 'cwd': os.getcwd()}}))\n"
        "if os.environ.get('FAKE_BUILD_FAILS'):\n"
        "    sys.exit('FATAL: fake build failure')\n"
        "open(sys.argv[-2], 'wb').write(b'not really a SIF image\\n')\n"
    )
    (bin_dir / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    for tool in ("apptainer", "id"):
        (bin_dir / tool).chmod(0o755)


@pytest.mark.parametrize(("uid", "options"), [(0, []), (1000, ["--fakeroot"])], ids=["root", "user"])
def test_build_sh_builds_from_the_project_root_and_writes_the_digest(
    tmp_path: Path, uid: int, options: list[str]
) -> None:
    record, elsewhere = tmp_path / "argv.json", tmp_path / "elsewhere"
    write_fake_apptainer_for_build(tmp_path / "bin", record, uid)
    elsewhere.mkdir()
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    # A relative output path is relative to where the user is, not to the project root the build runs in.
    done = subprocess.run(
        [str(BUILD_SH), "images/mnist-cv.sif"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    image = elsewhere / "images" / "mnist-cv.sif"
    called = json.loads(record.read_text())
    assert called == {"argv": ["build", *options, str(image), str(DEF_FILE)], "cwd": str(ROOT)}
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    assert (elsewhere / "images" / "mnist-cv.sif.sha256").read_text() == f"{digest}  mnist-cv.sif\n"
    assert last_line(done.stdout) == digest
    check = subprocess.run(["sha256sum", "-c", "mnist-cv.sif.sha256"], cwd=image.parent, capture_output=True)
    assert check.returncode == 0


def test_build_sh_leaves_no_digest_when_the_build_fails(tmp_path: Path) -> None:
    write_fake_apptainer_for_build(tmp_path / "bin", tmp_path / "argv.json", 0)
    image = tmp_path / "mnist-cv.sif"
    image.write_bytes(b"an older image\n")
    Path(f"{image}.sha256").write_text("0" * 64 + "  mnist-cv.sif\n")
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "FAKE_BUILD_FAILS": "1"}
    done = subprocess.run([str(BUILD_SH), str(image)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert last_line(done.stderr) == "FATAL: fake build failure"
    assert not Path(f"{image}.sha256").exists()


def test_build_sh_without_apptainer_is_a_one_line_error(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    # Only the shell itself: no apptainer here even on a machine that has one.
    done = subprocess.run(
        [shutil.which("bash") or "/bin/bash", str(BUILD_SH), str(tmp_path / "mnist-cv.sif")],
        env={"PATH": str(empty)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 127
    assert done.stderr.count("\n") == 1 and "apptainer is not on PATH" in done.stderr, done.stderr
    assert done.stdout == "" and list(tmp_path.iterdir()) == [empty]


# --- slurm/array.sh with MNIST_CV_IMAGE, end to end on the local Slurm -------------------------------------------

# Stands in for `apptainer exec [--nv] [--OPTION VALUE]... IMAGE COMMAND...`: records the command line, then
# does what the real one does for the job: checks the image and bind sources exist, enters --pwd, sets
# APPTAINER_CONTAINER, and runs COMMAND with the image's `python` played by the test's interpreter.
PASS_THROUGH = """\
import json, os, sys
args = sys.argv[1:]
with open({record!r}, "w") as f:
    json.dump(args, f)
assert args[0] == "exec", args
i, options = 1, {{}}
while args[i].startswith("--"):
    if args[i] == "--nv":
        i += 1
    else:
        options[args[i]] = args[i + 1]
        i += 2
image, command = args[i], args[i + 1 :]
for path in [image, *options.get("--bind", "").split(",")]:
    if path and not os.path.exists(path):
        sys.exit(f"FATAL: {{path}}: no such file or directory")
os.chdir(options.get("--pwd", os.getcwd()))
os.environ["APPTAINER_CONTAINER"] = image
if command[0] == "python":
    command[0] = {python!r}
os.execv(command[0], command)
"""


@pytest.fixture(scope="module")
def gpu_cluster() -> dict[str, str]:
    """The local cluster with its fake GPUs: array.sh asks for --gres=gpu:1."""
    info = ensure_cluster()
    return info if info["gres"].startswith("gpu:") else reconfigure()


@pytest.mark.slurm
def test_array_sh_runs_the_pair_inside_the_image(gpu_cluster, mnist_full: Path, tmp_path: Path) -> None:
    bin_dir, record = tmp_path / "bin", tmp_path / "apptainer-argv.json"
    bin_dir.mkdir()
    apptainer = bin_dir / "apptainer"
    apptainer.write_text(f"#!{sys.executable}\n" + PASS_THROUGH.format(record=str(record), python=sys.executable))
    apptainer.chmod(0o755)
    image = tmp_path / "images" / "mnist-cv.sif"
    image.parent.mkdir()
    image.write_bytes(b"not really a SIF image\n")
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    Path(f"{image}.sha256").write_text(f"{digest}  {image.name}\n")
    out = tmp_path / "results"

    env = {key: value for key, value in os.environ.items() if not key.startswith("MNIST_CV_")}
    env.update(
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        MNIST_CV_IMAGE=str(image),
        MNIST_CV_ALLOW_CPU="1",  # the node's GPUs are fake: TensorFlow sees none
        MNIST_CV_DATA=str(mnist_full),
        MNIST_CV_RESULTS=str(out),
        MNIST_CV_HOME=str(ROOT),
    )
    args = ["--epochs", "1", "--limit", "1000"]
    job = submit(["--array=0", "-c", "1", "--mem=3G", str(ARRAY_SH), *args], cwd=tmp_path, env=env)
    states = wait_for_jobs(job, timeout=600)
    log = tmp_path / f"mnist-cv-pairs_{job}_0.out"
    assert states == {f"{job}_0": "COMPLETED"}, log.read_text() if log.exists() else states

    argv = "\n".join(json.loads(record.read_text())) + "\n"
    for path, placeholder in [(image, "<IMAGE>"), (out, "<RESULTS>"), (mnist_full, "<DATA>"), (ROOT, "<HOME>")]:
        argv = argv.replace(str(path), placeholder)
    assert argv == (GOLDEN / "array-apptainer-argv.txt").read_text()

    result = results.read_result(RunLayout(out, "default").pair_paths(Pair("mlp", 0)).result)
    assert result["environment"]["container"] == {"runtime": "apptainer", "image": str(image), "sha256": digest}
    assert result["environment"]["slurm"]["array_task_id"] == "0"
    assert (result["config"]["epochs"], result["config"]["limit"]) == (1, 1000)
