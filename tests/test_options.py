"""ServerOptions: every impossible value refused once, in words a library user reads; no import cycle."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from splitdet.common.options import OptionsError
from splitdet.edge_server.options import DEFAULTS, MAX_QUEUED_FRAMES, MAX_STREAMS, ServerOptions

ROOT = Path(__file__).resolve().parent.parent
TLS = {"tls_cert": "cert.pem", "tls_key": "key.pem"}


@pytest.mark.parametrize(
    ("values", "field", "message"),
    [
        ({"port": -1}, "port", "must be in 0..65535, got -1"),
        ({"port": 65536}, "port", "must be in 0..65535, got 65536"),
        ({"workers": 0}, "workers", "must be >= 1, got 0"),
        ({"max_batch": 0}, "max_batch", "must be >= 1, got 0"),
        ({"max_batch_delay_ms": -1.0}, "max_batch_delay_ms", "must be >= 0, got -1.0"),
        ({"scheduling": "lifo"}, "scheduling", "must be one of fair, fifo, got 'lifo'"),
        ({"tls_cert": "cert.pem"}, "tls_key", "is required with tls_cert (TLS needs a certificate and its key)"),
        ({"tls_key": "key.pem"}, "tls_cert", "is required with tls_key (TLS needs a certificate and its key)"),
        ({"tls_client_ca": "ca.pem"}, "tls_client_ca", "needs TLS (a certificate and its key) to check client"),
        ({"token": "", **TLS}, "token", "must not be empty"),
        ({"token": "s3cret"}, "token", "needs TLS (a certificate and its key): the token would travel in plaintext"),
        ({"max_message_mb": 0}, "max_message_mb", "must be > 0, got 0"),
        ({"max_streams": 0}, "max_streams", "must be >= 1, got 0"),
        ({"max_queued_frames": 0}, "max_queued_frames", "must be >= 1, got 0"),
        ({"keepalive_s": 0.0}, "keepalive_s", "must be > 0, got 0.0"),
        ({"torch_threads": 0}, "torch_threads", "must be >= 1, got 0"),
        ({"metrics_port": 70000}, "metrics_port", "must be in 0..65535, got 70000"),
        ({"trim_idle_s": -0.5}, "trim_idle_s", "must be >= 0, got -0.5"),
        ({"malloc_arenas": -1}, "malloc_arenas", "must be >= 0, got -1"),
        ({"grace_s": -1.0}, "grace_s", "must be >= 0, got -1.0"),
        ({"log_level": "LOUD"}, "log_level", "must be one of DEBUG, INFO, WARNING, ERROR, got 'LOUD'"),
    ],
)
def test_each_impossible_value_is_refused_with_its_value(values, field, message):
    with pytest.raises(OptionsError) as caught:
        ServerOptions(**values)
    assert caught.value.field == field
    assert caught.value.message.startswith(message)
    assert str(caught.value) == f"{field} {caught.value.message}"
    assert isinstance(caught.value, ValueError)
    with pytest.raises(OptionsError):  # replace checks as construction does
        dataclasses.replace(DEFAULTS, **values)


def test_possible_values_are_kept():
    assert DEFAULTS.max_streams == MAX_STREAMS and DEFAULTS.max_queued_frames == MAX_QUEUED_FRAMES
    assert DEFAULTS.metrics_port is None and DEFAULTS.fair
    options = ServerOptions(port=0, metrics_port=0, scheduling="fifo", token="s3cret", allow_insecure_token=True)
    assert not options.fair and options.metrics_port == 0
    ServerOptions(token="s3cret", tls_client_ca="ca.pem", **TLS)
    ServerOptions(torch_threads=1, trim_idle_s=0, malloc_arenas=0, grace_s=0, max_batch_delay_ms=0)


def test_the_token_never_shows():
    options = ServerOptions(token="s3cret-value", allow_insecure_token=True)
    assert "s3cret-value" not in repr(options) and "s3cret-value" not in str(options)
    with pytest.raises(OptionsError) as caught:
        ServerOptions(token="s3cret-value")
    assert "s3cret-value" not in str(caught.value)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):  # lazy imports inside functions count too
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_cycle_and_no_command_line_in_the_library():
    for name in ("server", "runner", "servicer", "engine", "options"):
        imported = _imports(ROOT / "edge_server" / f"{name}.py")
        assert not imported & {"splitdet.edge_server.cli", "argparse"}, name
    assert "splitdet.edge_server.runner" not in _imports(ROOT / "edge_server" / "server.py")


def test_options_import_neither_torch_nor_grpc():
    code = (
        "import sys\n"
        "sys.modules['torch'] = sys.modules['grpc'] = None\n"
        "from splitdet.edge_server.options import ServerOptions\n"
        "print(ServerOptions(workers=2).workers)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0 and proc.stdout == "2\n", proc.stderr
