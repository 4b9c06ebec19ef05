"""mkdocs hook: links from docs/ to existing files elsewhere in the repository are not broken links.

mkdocs checks links against the documentation files only, so ``[load.md](../studies/results/load.md)`` would be
reported "not found among documentation files" and fail ``mkdocs build --strict``. This hook drops exactly those
reports whose target lies outside ``docs_dir`` and exists on disk; a link to a missing file (inside ``docs/`` or
out of it) still fails the build. tests/test_docs.py checks the same links without mkdocs.
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

_NOT_FOUND = re.compile(r"^Doc file '(?P<page>[^']+)' contains a link '(?P<url>[^']+)', but the target")


class _ExistingOutsideDocs(logging.Filter):
    def __init__(self, docs_dir: Path) -> None:
        super().__init__()
        self.docs_dir = docs_dir.resolve()

    def filter(self, record: logging.LogRecord) -> bool:
        match = _NOT_FOUND.match(record.getMessage())
        if match is None:
            return True
        path = unquote(urlsplit(match["url"]).path)
        if not path or path.startswith("/"):
            return True
        target = (self.docs_dir / posixpath.dirname(match["page"]) / path).resolve()
        outside = not target.is_relative_to(self.docs_dir)
        return not (outside and target.is_file())


def on_config(config):
    logger = logging.getLogger("mkdocs.structure.pages")
    for old in [f for f in logger.filters if isinstance(f, _ExistingOutsideDocs)]:
        logger.removeFilter(old)
    logger.addFilter(_ExistingOutsideDocs(Path(config["docs_dir"])))
    return config
