"""``pip install ".[device]"`` in a fresh virtual environment: no torch is installed, and the ONNX client in it
streams frames to an edge server (started from this environment) without ever importing torch."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from splitdet.benchmarks.server_process import ServerProcess
from splitdet.common import model_cli
from splitdet.common.checkpoint import save_checkpoint
from splitdet.synthetic import SceneConfig, render_scene
from tests.conftest import TINY_NAMES, tiny_student
from tests.device_venv import make_device_venv

pytestmark = pytest.mark.device_install


@pytest.fixture(scope="module")
def device_venv(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("device")
    make_device_venv(work / "venv", work)
    return work / "venv"


def test_device_extra_installs_no_torch(device_venv):
    listed = subprocess.run(
        [str(device_venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"onnxruntime", "numpy", "grpcio", "zstandard", "splitdet"} <= names
    assert not names & {"torch", "torchvision", "triton", "onnx", "onnxscript"}, sorted(names)


def test_device_client_streams_without_torch(device_venv, tmp_path):
    ckpt, head = tmp_path / "student.pt", tmp_path / "head.onnx"
    save_checkpoint(tiny_student("faster_rcnn", with_filter=True), ckpt, TINY_NAMES)
    assert model_cli.main(["export", str(ckpt), "--out", str(head), "--format", "onnx"]) == 0
    images = tmp_path / "images"
    images.mkdir()
    for seed in range(3):
        Image.fromarray(np.array(render_scene(seed, SceneConfig(height=96, width=128))[0])).save(images / f"{seed}.png")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with ServerProcess(["--ckpt", str(ckpt), "--workers", "2", "--torch-threads", "1"]) as server:
        argv = ["--runtime", "onnx", "--head", str(head), "--server", server.target, "--images", str(images)]
        argv += ["--score-threshold", "0", "--no-filter"]
        code = (
            "import sys\nfrom splitdet.mobile_client.cli import main\n"
            f"rc = main({argv!r})\n"
            "print('TORCH_IMPORTED' if 'torch' in sys.modules else 'NO_TORCH', file=sys.stderr)\n"
            "try:\n    import torch  # noqa: F401\n    print('TORCH_INSTALLED', file=sys.stderr)\n"
            "except ImportError:\n    pass\nsys.exit(rc)\n"
        )
        proc = subprocess.run(
            [str(device_venv / "bin" / "python"), "-c", code],
            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "NO_TORCH", proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(results) == 3 and not any(r.get("error") for r in results)
    assert all(r["mode"] == "split" and r["sent_bytes"] > 0 for r in results)
    assert any(r["detections"] for r in results)
