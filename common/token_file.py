"""The bearer token both sides read from a file (``--token-file``)."""

from __future__ import annotations

from pathlib import Path


class TokenFileError(ValueError):
    """The token file cannot be read or is empty."""


def read_token(path: str | Path) -> str:
    """The token in ``path``, stripped of surrounding whitespace."""
    try:
        token = Path(path).read_text().strip()
    except OSError as e:
        raise TokenFileError(f"cannot read the token file {path}: {e.strerror}") from None
    if not token:
        raise TokenFileError(f"the token file {path} is empty")
    return token
