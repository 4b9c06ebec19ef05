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


def _stream_from_the_device_venv(device_venv: Path, tmp_path: Path, ckpt: Path) -> tuple[list[dict], set[str]]:
    """Export ``ckpt``'s ONNX head, serve ``ckpt``, stream 3 images from the device venv's ``mobile-client``
    (asserting torch is neither imported nor installed there); the JSON lines and the coders it loaded."""
    head = tmp_path / "head.onnx"
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
            "print('coders:', *sorted({'constriction', 'compressai'} & set(sys.modules)), file=sys.stderr)\n"
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
    coders = next(line for line in proc.stderr.splitlines() if line.startswith("coders:")).split()[1:]
    return results, set(coders)


def test_device_client_streams_without_torch(device_venv, tmp_path):
    ckpt = tmp_path / "student.pt"
    save_checkpoint(tiny_student("faster_rcnn", with_filter=True), ckpt, TINY_NAMES)
    results, coders = _stream_from_the_device_venv(device_venv, tmp_path, ckpt)
    assert any(r["detections"] for r in results) and "compressai" not in coders


def test_device_client_streams_entropy_frames_without_torch(device_venv, tmp_path):
    """An entropic checkpoint's exported head: the device install codes its frames with the entropy codec
    (constriction, no torch, no CompressAI) and the server decodes them."""
    from tests.test_entropy import entropic_checkpoint, tables

    ckpt = tmp_path / "entropic.pt"
    entropic_checkpoint(ckpt, tables()[0])
    _, coders = _stream_from_the_device_venv(device_venv, tmp_path, ckpt)
    assert coders == {"constriction"}, coders


def test_installs_beside_proto_plus_and_pypi_common(device_venv, tmp_path):
    """The wheel's one import namespace, splitdet, leaves the top-level names ``proto`` (proto-plus, pulled in by
    Google Cloud clients) and ``common`` (a PyPI package) to their owners: both sides of each pair import."""
    python = str(device_venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "proto-plus", "common"],
        check=True, capture_output=True, env=env, timeout=600,
    )  # fmt: skip
    code = (
        "import proto, common, splitdet.proto.splitdet_pb2 as pb, splitdet.common.codec, splitdet.edge_server, "
        "splitdet.mobile_client\n"
        "assert proto.Message and 'site-packages/proto/' in proto.__file__, proto.__file__\n"
        "assert 'site-packages/common/' in common.__file__ and not hasattr(common, 'codec'), common.__file__\n"
        "assert pb.DESCRIPTOR.package == 'splitdet.v1' and '/splitdet/proto/' in pb.__file__\n"
        "print('OK')\n"
    )
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "OK", proc.stderr


def test_device_install_carries_no_torch_checkpoint_and_one_namespace(device_venv):
    listed = subprocess.run(
        [str(device_venv / "bin" / "python"), "-m", "pip", "show", "-f", "splitdet"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    files = [line.strip() for line in listed.stdout.split("Files:", 1)[1].splitlines() if line.strip()]
    assert files and not [f for f in files if f.endswith(".pt")]
    top_level = {f.split("/")[0] for f in files if f.endswith(".py")}
    assert top_level == {"splitdet"}, top_level
