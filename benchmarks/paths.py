"""Where benchmarks write their reports, and paths as committed reports show them: relative to the working
directory (the repository, when a committed report is made), never one machine's absolute path."""

from __future__ import annotations

import json
from pathlib import Path


def shown_path(path: str | Path) -> str:
    """``path`` relative to the working directory when it lies inside, else its file name; a relative path is kept
    as given."""
    path = Path(path)
    if not path.is_absolute():
        return str(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path.name


def shown_args(args: list[str]) -> list[str]:
    """Command-line arguments with every absolute path among them shown as :func:`shown_path` shows it."""
    return [shown_path(a) if a.startswith("/") else a for a in args]


def write_report(out: str | Path, report: dict, text: str) -> None:
    """Write ``OUT.json`` (the numbers) and ``OUT.md`` (``text``), creating OUT's folder, then print ``text``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(report, indent=1) + "\n")
    Path(f"{out}.md").write_text(text)
    print(text)
