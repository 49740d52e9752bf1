"""The documentation: README.md and docs/*.md link only to files and headings that exist, the README stays a front
door, and the text speaks of the project itself (no tracker numbers, no word on which machines were handed over).

Standard library only, and nothing is trained: the whole module runs in a few milliseconds.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MARKDOWN = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,}).*?^ {0,3}\1[ \t]*$", flags=re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", flags=re.DOTALL)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$", flags=re.MULTILINE)
SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")

# What the text must not say. A tracker's numbers mean nothing to a reader of the repository; the hardware the
# project was measured on is said as "not measured on a GPU". "session" is checked in prose only (markdown outside
# code): in code it names a module (job/pair/session.py), a type, or pytest's fixture scope.
TRACKER = re.compile(r"issue [0-9#]", flags=re.IGNORECASE)
HANDED_OVER = re.compile(r"\blent\b", flags=re.IGNORECASE)
PROSE_ONLY = re.compile(r"session", flags=re.IGNORECASE)
TEXT_SUFFIXES = {".md", ".py", ".sh", ".txt", ".json", ".toml", ".def", ".cfg", ".ini", ".yml", ".yaml"}


def prose(text: str) -> str:
    """Markdown without its fenced code blocks and code spans; line breaks kept, so line numbers still hold."""
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    return CODE_SPAN.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, lowercase, punctuation dropped but '-' and '_', spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a markdown file's headings make; a repeated heading gets -1, -2... as on GitHub."""
    made: set[str] = set()
    seen: dict[str, int] = {}
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    for match in HEADING.finditer(text):
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        made.add(base if count == 0 else f"{base}-{count}")
    return made


def links(path: Path) -> Iterator[tuple[int, str]]:
    """(line, target) of every link and image in a markdown file, outside code."""
    text = prose(path.read_text(encoding="utf-8"))
    for match in LINK.finditer(text):
        yield text.count("\n", 0, match.start()) + 1, match.group(1)


def broken(path: Path, line: int, target: str) -> str | None:
    """Why a relative link does not resolve, or None when it does (or is not relative)."""
    if SCHEME.match(target) or target.startswith("//"):
        return None  # a URL: not this test's business
    where, _, anchor = target.partition("#")
    file = (path.parent / where).resolve() if where else path
    name = f"{path.relative_to(ROOT)}:{line}: {target}"
    if not file.is_relative_to(ROOT):
        return f"{name}: leaves the repository"
    if not file.exists():
        return f"{name}: no such file"
    if anchor:
        if file.suffix != ".md" or file.is_dir():
            return f"{name}: an anchor into a file that is not markdown"
        if anchor not in anchors(file):
            return f"{name}: no heading makes #{anchor} in {file.relative_to(ROOT)}"
    return None


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path: Path) -> None:
    problems = [why for line, target in links(path) if (why := broken(path, line, target))]
    assert problems == [], "\n".join(problems)


def test_the_readme_is_a_front_door() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: move the detail into docs/"


def text_files(top: Path) -> Iterator[Path]:
    if top.is_file():
        yield top
        return
    for path in sorted(top.rglob("*")):
        hidden = any(part.startswith(".") or part == "__pycache__" for part in path.relative_to(ROOT).parts)
        if path.is_file() and path.suffix in TEXT_SUFFIXES and not hidden:
            yield path


def offending(path: Path) -> Iterator[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    checks = [(TRACKER, text), (HANDED_OVER, text)]
    if path.suffix == ".md":
        checks.append((PROSE_ONLY, prose(text)))
    for pattern, checked in checks:
        for match in pattern.finditer(checked):
            line = checked.count("\n", 0, match.start()) + 1
            yield f"{path.relative_to(ROOT)}:{line}: {text.splitlines()[line - 1].strip()[:100]}"


@pytest.mark.parametrize("where", ["README.md", "docs", "job", "tests"])
def test_the_text_speaks_of_the_project_itself(where: str) -> None:
    found = sorted({hit for path in text_files(ROOT / where) for hit in offending(path)})
    assert found == [], "\n".join(found)


def test_the_slug_is_githubs() -> None:
    assert slug("Performance: `mnist-cv bench`") == "performance-mnist-cv-bench"
    assert slug("The final model's result") == "the-final-models-result"
    assert slug("Per-epoch logs: CSV and TensorBoard") == "per-epoch-logs-csv-and-tensorboard"
    assert slug("Leases: one trainer per pair") == "leases-one-trainer-per-pair"
    assert slug("submitit: `mnist-cv submit`") == "submitit-mnist-cv-submit"
