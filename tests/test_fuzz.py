"""Hostile input: a short hypothesis fuzz of every gRPC method of an ``edge-server`` child process (tiny model),
plus one regression test per bug the fuzzer found. The long run is ``python -m studies.fuzz_server``."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
from PIL import Image

from splitdet.benchmarks.server_process import ServerProcess
from splitdet.edge_server.servicer import MAX_DETAILS
from splitdet.proto import splitdet_pb2 as pb
from studies.fuzz_server import (
    METHODS,
    Case,
    execute,
    fuzz,
    jpeg_declaring,
    make_seeds,
    still_serving,
)
from tests.conftest import TINY_NAMES

NAMES = TINY_NAMES
CATEGORIES = {
    "bottleneck/clean",
    "bottleneck/mutated",
    "bottleneck/geometry",
    "bottleneck/bytes",
    "bottleneck/stream",
    "image/mutated",
    "image/stream",
    "random bytes",
    "info",
}


@pytest.fixture(scope="module")
def seeds(ckpt):
    return make_seeds(ckpt, 1024 * 1024)


@pytest.fixture(scope="module")
def server(ckpt):
    args = ["--ckpt", str(ckpt), "--workers", "2", "--torch-threads", "1", "--max-message-mb", "1"]
    with ServerProcess([*args, "--log-level", "WARNING"]) as running:
        yield running


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.target) as channel:
        yield channel


def call(channel, method: str, message: bytes):
    return execute(channel, Case("test", method, (message,)), timeout_s=30)


def test_fuzz_every_answer_is_a_clear_status(server, channel, seeds):
    for frame in seeds.frames:  # warm-up, so the model's first allocations are not counted as growth
        assert call(channel, "Infer", frame.SerializeToString()).code == "OK"
    start_mb = server.memory_mb()[0]
    tally = fuzz(channel, seeds, examples=150, seed=6, sample_rss=lambda: server.memory_mb()[0], every=25)
    assert tally.problems == []
    assert tally.cases == 150 and {category for category, _ in tally.codes} == CATEGORIES
    assert still_serving(channel, seeds) is None
    end_mb, _ = server.memory_mb()
    assert end_mb - start_mb < 400, tally.rss_mb
    assert "Traceback" not in server.log()


# ---- regressions: one per bug the fuzzer found ----


@pytest.mark.parametrize("method", list(METHODS))
def test_unparsable_request_is_invalid_argument(channel, seeds, method):
    """gRPC's own parsing answered INTERNAL ("Exception deserializing request!") and logged a traceback."""
    corrupt = b"\x0a\xff\xff\xff\xff\x0f"  # a length-delimited field longer than the message
    outcome = call(channel, method, corrupt)
    assert outcome.code == "INVALID_ARGUMENT", outcome
    assert "Error parsing message" in outcome.details
    if method in ("Infer", "InferStream"):
        outcome = call(channel, method, b"\x12\x02\xff\xfe")  # the fingerprint (a string) in invalid UTF-8
        assert outcome.code == "INVALID_ARGUMENT" and "UTF-8" in outcome.details
    assert still_serving(channel, seeds) is None


def test_status_message_is_clipped(channel, seeds):
    """A refusal quoting a 100 KB fingerprint outgrew the client's 16 KiB metadata limit: it saw RESOURCE_EXHAUSTED."""
    frame = pb.BottleneckFrame()
    frame.CopyFrom(seeds.frames[0])
    frame.fingerprint = "f" * 100_000
    outcome = call(channel, "Infer", frame.SerializeToString())
    assert outcome.code == "FAILED_PRECONDITION"
    assert len(outcome.details) == MAX_DETAILS and outcome.details.startswith("frame fingerprint ffff")
    frame.CopyFrom(seeds.frames[0])
    frame.ClearField("shape")
    frame.shape.extend([1] * 20_000)
    outcome = call(channel, "Infer", frame.SerializeToString())
    assert outcome.code == "INVALID_ARGUMENT" and len(outcome.details) == MAX_DETAILS


def _png(height: int, width: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 90, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_elongated_image_is_invalid_argument(channel):
    """A 1x97 image resized for the model (at most 96 pixels per side) became 0 pixels high: INTERNAL."""
    outcome = call(channel, "InferImage", pb.ImageFrame(jpeg=_png(1, 97)).SerializeToString())
    assert outcome.code == "INVALID_ARGUMENT" and "too elongated" in outcome.details
    assert call(channel, "InferImage", pb.ImageFrame(jpeg=_png(2, 190)).SerializeToString()).code == "OK"


def test_image_declaring_huge_size_is_refused(channel, seeds):
    """A 4.6 KB JPEG declaring 6275x6275 pixels decoded (grey fill) and ran the model: 2.5 GB peak RSS.

    The pixel limit is now 4096 x 4096 and images stay uint8 until their batch runs.
    """
    jpeg = jpeg_declaring(seeds.images[1], 6275, 6275)
    outcome = call(channel, "InferImage", pb.ImageFrame(jpeg=jpeg).SerializeToString())
    assert outcome.code == "INVALID_ARGUMENT" and "exceeds the limit of 16777216 pixels" in outcome.details


def test_fuzz_entropy_frames_are_decoded_or_refused(tmp_path):
    """rANS frames with random, cut or extended strings (by bytes and by 32-bit words, ending in a zero word) and
    huge shapes, against an entropic checkpoint; an old client's CompressAI-coded frame is FAILED_PRECONDITION."""
    from tests.test_entropy import entropic_checkpoint, tables

    path = tmp_path / "entropic.pt"
    entropic_checkpoint(path, tables()[0])
    seeds = make_seeds(path, 1024 * 1024)
    assert len(seeds.entropy) == 2
    args = ["--ckpt", str(path), "--workers", "2", "--torch-threads", "1", "--max-message-mb", "1"]
    with ServerProcess([*args, "--log-level", "WARNING"]) as server, grpc.insecure_channel(server.target) as channel:
        for frame in seeds.entropy:
            assert call(channel, "Infer", frame.SerializeToString()).code == "OK"
            old = pb.BottleneckFrame()
            old.CopyFrom(frame)
            old.compression = pb.RANS
            outcome = call(channel, "Infer", old.SerializeToString())
            assert outcome.code == "FAILED_PRECONDITION" and "upgrade the client" in outcome.details, outcome
        tally = fuzz(channel, seeds, examples=80, seed=7)
        assert tally.problems == []
        assert sum(n for (category, _), n in tally.codes.items() if category == "bottleneck/entropy") > 5
        assert still_serving(channel, seeds) is None
        assert tally.slowest[0] < 10
        assert "Traceback" not in server.log()
