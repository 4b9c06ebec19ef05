"""Shared fixtures: tiny models and inputs so the suite stays fast on 2 CPU cores."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from splitdet.common.checkpoint import save_checkpoint
from splitdet.common.models import build_student

torch.set_num_threads(2)

TINY = dict(min_size=64, max_size=96, fpn_channels=32, box_representation_size=64)
TINY_NAMES = ["__background__", "disc", "ring", "star"]  #: class names of the ``ckpt`` fixture


def tiny_student(arch: str = "faster_rcnn", channels: int = 3, seed: int = 0, **overrides):
    """A small ResNet-18 student in eval mode, with its BatchNorm statistics made non-trivial."""
    torch.manual_seed(seed)
    options = {**TINY, "num_classes": 4, "num_keypoints": 5, **overrides}
    model = build_student(arch, "resnet18", channels, **options)
    # Random BN running stats so eval-mode BN is not the identity (a stronger equivalence check).
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    # Low score threshold so random weights still yield detections to compare.
    model.roi_heads.score_thresh = 0.0
    return model.eval()


@pytest.fixture
def images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.rand(3, 70, 90, generator=g), torch.rand(3, 80, 60, generator=g)]


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A certificate for localhost / 127.0.0.1 and its key, made by the openssl command."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def certificate_authority(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA certificate and its key, named ``name``."""
    cert, key = folder / f"{name}-ca.pem", folder / f"{name}-ca.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name} CA",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def client_cert(folder: Path, ca: tuple[Path, Path], name: str) -> tuple[Path, Path]:
    """A client certificate for ``name`` signed by ``ca`` (cert, key), and its key."""
    cert, key, csr = folder / f"{name}.pem", folder / f"{name}.key", folder / f"{name}.csr"
    subprocess.run(
        ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key),
         "-out", str(csr)],
        check=True, capture_output=True,
    )  # fmt: skip
    extensions = folder / f"{name}.ext"
    extensions.write_text("extendedKeyUsage=clientAuth\n")
    subprocess.run(
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
         "-days", "1", "-extfile", str(extensions), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny Faster R-CNN student checkpoint (classes :data:`TINY_NAMES`), one per test module."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(tiny_student("faster_rcnn"), path, TINY_NAMES)
    return path


def wait_until(condition: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    """Poll ``condition`` every 20 ms; False when it has not held within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
