"""job/settings.py: every MNIST_CV_* variable is read there and nowhere else in job/, listed with its readers, and
the README's table is the list's."""

from __future__ import annotations

import re
from pathlib import Path

from job import settings
from job.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
NAME = re.compile(r"MNIST_CV_[A-Z0-9_]+")


def test_every_variable_the_project_mentions_is_listed_once() -> None:
    listed = [variable.name for variable in settings.VARIABLES]
    assert len(set(listed)) == len(listed)
    mentioned = set()
    for folder in ("job", "slurm", "containers", "tests", ".ci"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in {".py", ".sh", ".def", ".md", ""}:
                mentioned |= set(NAME.findall(path.read_text(errors="replace")))
    assert mentioned - set(listed) == set(), "read somewhere but not listed in job/settings.py"


def test_only_settings_reads_them_in_job() -> None:
    """No other Python module under job/ spells a variable's name: they use Settings (or settings.X.name)."""
    spelled = {
        str(path.relative_to(ROOT)): sorted(set(NAME.findall(path.read_text())))
        for path in (ROOT / "job").rglob("*.py")
        if path.name != "settings.py" and NAME.search(path.read_text())
    }
    assert spelled == {}


def test_the_shell_readers_are_the_scripts_that_read_them() -> None:
    for name, scripts in settings.SHELL_READERS.items():
        for script in scripts:
            assert f"${{{name}" in (ROOT / script).read_text(), (name, script)
    # ... and no other variable is read by a batch script: they ask job.launch.argv.
    for script in (ROOT / "slurm").glob("*.sh"):
        code = "\n".join(line for line in script.read_text().splitlines() if not line.lstrip().startswith("#"))
        read = set(re.findall(r"\$\{?(MNIST_CV_[A-Z0-9_]+)", code))
        assert read <= {name for name, scripts in settings.SHELL_READERS.items() if script.name in str(scripts)}, (
            script.name,
            read,
        )


def test_defaults_and_values() -> None:
    empty = Settings.from_env({})
    assert (empty.results, empty.run, empty.python, empty.image, empty.data) == (
        Path("results"), "default", "python3", None, None,
    )  # fmt: skip
    assert empty.allow_cpu is False and empty.git_dirty is False
    told = Settings.from_env(
        {
            "MNIST_CV_RESULTS": "/r",
            "MNIST_CV_RUN": "x",
            "MNIST_CV_ALLOW_CPU": "1",
            "MNIST_CV_IMAGE": "",
            "MNIST_CV_DATA": "~/d",
        }
    )
    assert (told.results, told.run, told.allow_cpu, told.image) == (Path("/r"), "x", True, None)
    assert told.data == Path.home() / "d"


def test_the_provenance_a_launcher_passes_is_what_settings_reads_back() -> None:
    env = settings.provenance_env("abc123", True, "ff" * 32)
    told = Settings.from_env(env)
    assert (told.git_commit, told.git_dirty, told.image_sha256) == ("abc123", True, "ff" * 32)
    assert settings.provenance_env(None, False, None) == {}


def test_the_readme_table_is_the_settings_list() -> None:
    """The lead pastes `python -m job.settings` between the README's two markers."""
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- settings-table -->\n(.*?)\n<!-- /settings-table -->", readme, flags=re.DOTALL)
    assert found, "README.md has no <!-- settings-table --> ... <!-- /settings-table --> block"
    assert found.group(1).strip() == settings.markdown_table()
