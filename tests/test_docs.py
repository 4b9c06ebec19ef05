"""README.md and docs/: every relative link resolves, the README stays short and starts with the set-up commands,
and ``mkdocs build --strict`` passes (when mkdocs is installed)."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 200
SETUP_COMMANDS = ['pip install -e ".[dev]"', "python -m pytest"]

_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) and ![alt](target); the target may carry a "title" after a space.
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, with inline code spans blanked."""
    out, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, _INLINE_CODE.sub("``", line)))
    return out


def links(text: str) -> list[tuple[int, str]]:
    return [(n, m.group(1)) for n, line in prose_lines(text) for m in _LINK.finditer(line)]


def heading_texts(path: Path) -> list[str]:
    texts = []
    for _, line in prose_lines(path.read_text().replace("`", "")):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", match.group(1))  # a link in a heading: its text
            texts.append(re.sub(r"[*_]{1,2}(\S.*?\S|\S)[*_]{1,2}", r"\1", text))
    return texts


def github_slug(text: str) -> str:
    """GitHub's heading anchors: lower case, punctuation dropped, every space a hyphen (runs kept)."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def mkdocs_slug(text: str) -> str:
    """Python-Markdown's toc slugify (what mkdocs renders): ASCII, punctuation dropped, hyphen/space runs merged."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def is_ignored(path: Path) -> bool:
    """True when git ignores the file (a local run's output, e.g. under runs/): the link would break in a clone."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        return False
    result = subprocess.run(
        ["git", "check-ignore", "-q", str(path.relative_to(ROOT))], cwd=ROOT, capture_output=True, check=False
    )
    return result.returncode == 0


def check_file(path: Path, text: str | None = None) -> list[str]:
    """Problems with the relative links of ``path`` (or of ``text`` as if it were that file)."""
    problems = []
    for number, url in links(path.read_text() if text is None else text):
        scheme, netloc, target, _, anchor = urlsplit(url)
        where = f"{path.relative_to(ROOT)}:{number}: {url}"
        if scheme or netloc:
            continue  # external (http, https, mailto): not checked offline
        if target.startswith("/"):
            problems.append(f"{where}: absolute link (breaks on GitHub and in the built docs; make it relative)")
            continue
        resolved = (path.parent / unquote(target)).resolve() if target else path
        if not resolved.is_relative_to(ROOT):
            problems.append(f"{where}: points outside the repository")
        elif not resolved.is_file():
            problems.append(f"{where}: no such file {resolved.relative_to(ROOT)}")
        elif is_ignored(resolved):
            problems.append(f"{where}: {resolved.relative_to(ROOT)} is ignored by git (not in a clone)")
        elif anchor and resolved.suffix == ".md":
            headings = heading_texts(resolved)
            if anchor not in {github_slug(h) for h in headings}:
                problems.append(f"{where}: no heading with GitHub anchor #{anchor} in {resolved.relative_to(ROOT)}")
            elif anchor not in {mkdocs_slug(h) for h in headings}:
                problems.append(f"{where}: #{anchor} is GitHub's anchor but mkdocs renders it differently")
    return problems


def test_docs_exist():
    pages = {p.name for p in DOCS.glob("*.md")}
    assert "index.md" in pages and len(pages) > 1


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path):
    assert check_file(path) == []


def test_link_checker_catches_broken_links():
    probe = (
        "[a](../benchmarks/results/no-such-result.md) [b](no-such-page.md) [c](index.md#no-such-heading)\n"
        "[ok](index.md) [ok](../README.md) [ok](index.md#layout) `[code](not-checked.md)`\n"
        "\n```\n[fenced](not-checked.md)\n```\n"
    )
    problems = check_file(DOCS / "probe.md", probe)
    assert len(problems) == 3, problems
    assert "no-such-result.md" in problems[0] and "no-such-page.md" in problems[1] and "#no-such-heading" in problems[2]


def test_slugs():
    assert github_slug("Skipping static frames (--skip-static)") == "skipping-static-frames---skip-static"
    assert mkdocs_slug("Skipping static frames (--skip-static)") == "skipping-static-frames-skip-static"
    heading = "Device install (no torch)"
    assert github_slug(heading) == mkdocs_slug(heading) == "device-install-no-torch"


def test_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_starts_with_the_setup_commands():
    """The first section is the set-up, and it opens with exactly the install and the test command (CI's too)."""
    lines = README.read_text().splitlines()
    sections = [i for i, line in enumerate(lines) if line.startswith("## ")]
    assert sections and lines[sections[0]].lower().startswith("## set-up"), "README's first section must be Set-up"
    body = [line for line in lines[sections[0] + 1 :] if line.strip()]
    assert body[0].startswith("```"), "the set-up section must start with the commands"
    block = body[1 : body.index("```", 1)]
    commands = [line.split(" #")[0].strip() for line in block]
    assert commands == SETUP_COMMANDS
    ci = [line.replace(" --quiet", "").strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    for command in SETUP_COMMANDS:
        assert command in ci, f".ci/run must run the README's {command!r}"
    demo = [line for line in lines if line.strip() == "split-demo"]
    assert demo, "README must show the demo command"


def test_mkdocs_hook_keeps_only_existing_targets_outside_docs():
    sys.path.insert(0, str(ROOT))
    try:
        import mkdocs_hooks
    finally:
        sys.path.remove(str(ROOT))
    hook = mkdocs_hooks._ExistingOutsideDocs(DOCS)

    def passes(message: str) -> bool:
        return hook.filter(logging.LogRecord("mkdocs.structure.pages", logging.WARNING, "", 0, message, None, None))

    missing = "Doc file 'index.md' contains a link '{}', but the target is not found among documentation files."
    assert not passes(missing.format("../README.md"))  # exists outside docs/: allowed
    assert not passes(missing.format("../pyproject.toml#project"))
    assert passes(missing.format("../benchmarks/results/no-such-result.md"))  # missing: still a warning
    assert passes(missing.format("no-such-page.md"))  # inside docs/: still a warning
    assert passes("Doc file 'index.md' contains a link '#x', but there is no such anchor on this page.")


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "index.html").is_file()
