"""Where the edge server listens by default and how a client's ``--server`` names it."""

from __future__ import annotations

DEFAULT_PORT = 50051


def with_default_port(target: str) -> str:
    """``HOST`` -> ``HOST:50051``; a target that names a port (``HOST:PORT``, ``[::1]:PORT``, ``dns:///HOST:PORT``)
    is returned as it is. IPv6 literals are written in brackets (``[::1]``)."""
    address = target.rpartition("///")[2]
    has_port = "]:" in address if address.startswith("[") else ":" in address
    return target if has_port else f"{target}:{DEFAULT_PORT}"
