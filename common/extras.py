"""Commands that need an optional dependency say so in one line (torch-free, so it runs before any heavy import).

The base and ``device`` installs carry every console script; those that need torch check for it right after
parsing their command line, so a torch-free install answers ``--help`` and then names the extra to install.
"""

from __future__ import annotations

import importlib.util
import sys


def require(module: str, extra: str, prog: str) -> None:
    """Exit with status 2 and a one-line error when ``module`` cannot be imported: ``prog`` needs the ``extra``."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that fails to import, or a module without a spec
        found = False
    if not found:
        print(f"{prog}: error: {prog} needs {module}: pip install 'splitdet[{extra}]'", file=sys.stderr)
        raise SystemExit(2)
