"""The error both sides' option dataclasses raise (torch-free): the option's field and what is wrong with its value.

Library users read ``str(error)`` ("workers must be >= 1, got 0"); a command line maps its flags onto the fields
and shows :func:`flag_message` ("--workers: must be >= 1, got 0").
"""

from __future__ import annotations

from collections.abc import Mapping


class OptionsError(ValueError):
    """An option value that cannot work: ``field`` names the option, ``message`` describes the value."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field} {message}")
        self.field = field
        self.message = message


def check(ok: bool, field: str, message: str) -> None:
    """Raise :class:`OptionsError` (``field``, ``message``) unless ``ok``."""
    if not ok:
        raise OptionsError(field, message)


def flag(field: str, flags: Mapping[str, str] | None = None) -> str:
    """The flag that sets ``field``: ``flags[field]`` where a command names it otherwise, else ``--`` + the field
    with ``-``."""
    return (flags or {}).get(field, "--" + field.replace("_", "-"))


def flag_message(error: OptionsError, flags: Mapping[str, str] | None = None) -> str:
    """The error's one line with its flag, e.g. "--workers: must be >= 1, got 0"."""
    return f"{flag(error.field, flags)}: {error.message}"
