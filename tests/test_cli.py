"""Command-line habits every console script keeps: fast --help, every default shown, one-line errors."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from splitdet.common.endpoint import DEFAULT_PORT, with_default_port

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
PARSERS = {name: target.split(":")[0] for name, target in SCRIPTS.items()}


def _run(module: str, argv: list[str]) -> tuple[int, str, list[str]]:
    """Run ``module.main(argv)`` in a fresh interpreter: exit code, stderr and the heavy modules it imported."""
    code = (
        "import sys\n"
        f"import {module} as m\n"
        "try:\n"
        f"    rc = m.main({argv!r})\n"
        "except SystemExit as e:\n"
        "    rc = e.code\n"
        "print([n for n in ('torch', 'torchvision', 'grpc') if n in sys.modules], file=sys.stderr)\n"
        "sys.exit(rc or 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    *lines, imported = proc.stderr.strip().splitlines()
    return proc.returncode, "\n".join(lines), eval(imported)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_answers_without_torch(script):
    code, _, imported = _run(PARSERS[script], ["--help"])
    assert code == 0
    assert "torch" not in imported


@pytest.mark.parametrize(
    ("script", "argv", "message"),
    [
        ("mobile-client", ["--synthetic", "2", "--window", "0"], "--server: a HOST[:PORT] target is required"),
        ("mobile-client", ["--synthetic", "2", "--mode", "local", "--window", "0"], "--window: must be >= 1, got 0"),
        ("split-bench", ["--loss", "2"], "--loss: must be in [0, 1), got 2"),
        ("split-demo", ["--frames", "0"], "--frames and --window must be >= 1"),
        ("split-eval", ["--ckpt", "missing.pt", "--config", "x.yaml"], "checkpoint not found"),
        ("split-distill", ["--config", "missing.yaml"], "missing.yaml"),
        ("edge-server", ["--port", "-1"], "--port"),
        ("edge-server", ["--workers", "0"], "edge-server: error: --workers: must be >= 1, got 0"),
        ("edge-server", ["--metrics-port", "-1"], "edge-server: error: --metrics-port: must be in 0..65535, got -1"),
        ("edge-server", ["--tls-key", "k.pem"], "edge-server: error: --tls-cert: is required with tls_key"),
        ("edge-server", ["--tls-client-ca", "ca.pem"], "edge-server: error: --tls-client-ca: needs TLS"),
        (
            "edge-server",
            ["--token-file", "missing-token", "--allow-insecure-token"],
            "edge-server: error: cannot read the token file",
        ),
    ],
)
def test_usage_errors_are_one_line_before_torch(script, argv, message):
    code, err, imported = _run(PARSERS[script], argv)
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err
    assert "torch" not in imported


def test_server_token_file_without_tls_names_the_flag(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret-value\n")
    code, err, imported = _run("splitdet.edge_server.cli", ["--token-file", str(token)])
    assert code == 2 and "torch" not in imported
    assert err == (
        "edge-server: error: --token-file: needs TLS (a certificate and its key): the token would travel in "
        "plaintext; allow_insecure_token allows it on loopback"
    )


TORCH_COMMANDS = {
    "edge-server": [],
    "split-model": ["info", "x.pt"],
    "split-distill": ["--config", "x.yaml"],
    "split-eval": ["--ckpt", "x.pt", "--config", "x.yaml"],
    "split-demo": [],
    "split-bench": [],
}


@pytest.mark.parametrize("script", sorted(TORCH_COMMANDS))
def test_commands_that_need_torch_say_so_without_it(script):
    """A torch-free install (the device extra) has every console script; those that need torch say so in one line."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # as if torch were not installed\n"
        f"import {PARSERS[script]} as m\n"
        f"sys.exit(m.main({TORCH_COMMANDS[script]!r}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"{script}: error: {script} needs torch: pip install 'splitdet[full]'"]


def _actions(parser: argparse.ArgumentParser):
    for action in parser._actions:  # argparse has no public way to walk the options of a parser
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _actions(sub)
        elif not isinstance(action, argparse._HelpAction):
            yield action


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_option_shows_its_default(script):
    parser = importlib.import_module(PARSERS[script]).build_parser()
    for action in _actions(parser):
        assert action.help, f"{script} {action.option_strings or action.dest} has no help"
        assert "``" not in action.help
        if action.option_strings and not action.required:
            in_required_group = any(
                action in group._group_actions and group.required for group in parser._mutually_exclusive_groups
            )
            assert in_required_group or "default" in action.help, f"{script} {action.option_strings} shows no default"


def test_server_without_port_means_the_default_port():
    assert with_default_port("edge") == f"edge:{DEFAULT_PORT}"
    assert with_default_port("dns:///edge.ns.svc") == f"dns:///edge.ns.svc:{DEFAULT_PORT}"
    assert with_default_port("[::1]") == f"[::1]:{DEFAULT_PORT}"
    for target in ("edge:7", "dns:///edge:7", "[::1]:7", "10.0.0.1:7"):
        assert with_default_port(target) == target


def test_checkpoint_directory_is_named(tmp_path):
    code, err, _ = _run("splitdet.mobile_client.cli", ["--ckpt", str(tmp_path), "--synthetic", "1", "--mode", "local"])
    assert code == 2
    assert err == f"mobile-client: error: {tmp_path} is a directory; give the checkpoint file inside it (a .pt file)"
