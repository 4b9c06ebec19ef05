"""A fresh virtual environment with the torch-free device client installed (``pip install "<project>[device]"``),
built from a copy of this checkout: the device install test and ``studies/device_client.py`` use it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def copy_project(dest: Path) -> Path:
    """The files ``pip install`` builds from (no checkpoints or results: the device needs none)."""
    folders = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pt", "results")
    for folder in sorted(set(folders)):
        shutil.copytree(ROOT / folder, dest / folder, ignore=ignore)
    return dest


def make_device_venv(venv: Path, work: Path) -> Path:
    """``python -m venv VENV`` + ``pip install "<copy of this project>[device]"``; the venv's python."""
    source = copy_project(work / "source")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    proc = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"{source}[device]"],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"pip install failed: {proc.stderr[-2000:]}")
    return python
