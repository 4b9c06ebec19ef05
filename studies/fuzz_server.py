"""Fuzz the edge server's gRPC methods with random and mutated frames and count its answers.

    python -m studies.fuzz_server --cases 10000 [--ckpt PATH] [--out studies/results/fuzz.md]

The server runs as a child process (``edge-server --workers 2 --torch-threads 1``, the bundled demo checkpoint
unless ``--ckpt``). Cases come from hypothesis and go to the server as raw bytes: bottleneck frames made by the
real client codec (``splitdet.common.wire.encode_frame``) and then mutated field by field (versions, fingerprints,
shapes, dtypes, NaN/inf/zero scales, payload sizes, zstd bombs, sizes), frames of consistent but unusual geometry,
rANS-coded frames (entropy checkpoints: constriction's 32-bit words) with random, truncated or extended strings,
strings cut mid-word or ending in a zero word, huge declared shapes and the retired CompressAI compression flag,
byte-level mutations of serialized frames, random bytes to every method, corrupt images, images declaring huge
sizes and unusual modes, and streams that end normally, are aborted by the client or stall past their deadline.

Every answer must be OK or one of :data:`ALLOWED` with a message (never UNKNOWN, INTERNAL or a hang, each call has
a deadline), answers must match their frames, and afterwards a clean frame must still get the detections of the
local tail. The report counts status codes per category and the server's RSS before, after and at its peak.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import re
import struct
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import torch
import zstandard
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from PIL import Image

from splitdet.benchmarks.paths import shown_args
from splitdet.benchmarks.server_process import ServerProcess
from splitdet.common.checkpoint import load_checkpoint
from splitdet.common.codec_settings import CodecSettings
from splitdet.common.demo import demo_checkpoint
from splitdet.common.split import bottleneck_shape, image_tensor, split
from splitdet.common.wire import decode_detections, encode_frame
from splitdet.proto import splitdet_pb2 as pb
from splitdet.synthetic import SceneConfig, render_scene

SERVICE = "splitdet.v1.SplitDetection"
METHODS = {  # name -> streaming
    "GetModelInfo": False,
    "GetStats": False,
    "Infer": False,
    "InferStream": True,
    "InferImage": False,
    "InferImageStream": True,
}
ALLOWED = frozenset({"OK", "INVALID_ARGUMENT", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED"})
ENDS = ("close", "close", "close", "cancel", "stall")  # how a stream case ends; mostly a normal half-close
CODECS = (
    CodecSettings("none", "raw"),
    CodecSettings("per_tensor", "zstd"),
    CodecSettings("per_channel", "zstd"),
    CodecSettings("float16", "raw"),
    CodecSettings("float16", "zstd"),
)
SHED = ("the server is busy", "the server holds its limit")  # edge-server's refusals for capacity (its limits)
TIMEOUT_S = 60.0
STALL_S = 0.3
CANCEL_AFTER_S = 0.05


@dataclass(frozen=True)
class Case:
    """One call: method, raw request messages, how a stream ends, and whether every message is a clean frame."""

    category: str
    method: str
    messages: tuple[bytes, ...]
    end: str = "close"  # streams: "close" (half-close), "cancel" (the client aborts), "stall" (never half-closes)
    valid: bool = False


@dataclass(frozen=True)
class Outcome:
    code: str
    details: str
    responses: tuple[bytes, ...]
    seconds: float


@dataclass
class Seeds:
    """Clean frames and images from the real client path, and the payloads the mutations draw on."""

    frames: list[pb.BottleneckFrame]
    expected: list[dict]  # local tail detections of frames[0] (unquantized, so the server must match them)
    images: list[bytes]
    bombs: list[bytes]
    fingerprint: str
    channels: int
    max_message_bytes: int
    entropy: list[pb.BottleneckFrame] = field(default_factory=list)  #: rANS frames (entropy checkpoints only)

    def __repr__(self) -> str:  # short, for hypothesis' reports
        return f"Seeds({len(self.frames)} frames, {len(self.images)} images, {len(self.bombs)} bombs)"


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _zstd_bomb(size: int, declare: bool) -> bytes:
    """A small zstd frame of ``size`` zero bytes, with or without the size in its header."""
    compressor = zstandard.ZstdCompressor(level=3, write_content_size=declare)
    out = compressor.compressobj(size=size if declare else -1)
    chunk = bytes(1 << 20)
    parts = [out.compress(chunk) for _ in range(size >> 20)]
    return b"".join([*parts, out.flush()])


def make_seeds(ckpt: Path, max_message_bytes: int) -> Seeds:
    """Frames from the checkpoint's head in every codec, images, zstd bombs; the tail's answer to frames[0]."""
    checkpoint = load_checkpoint(ckpt)
    head, tail = split(checkpoint.build_model())
    fingerprint = checkpoint.side_fingerprint(head=head)
    scenes = [np.array(render_scene(seed, SceneConfig(height=96, width=128))[0]) for seed in (3, 4)]
    tensors = [image_tensor(s) for s in scenes]
    frames, expected = [], []
    with torch.inference_mode():
        one = head(tensors[:1], use_filter=False)
        two = head([tensors[0], tensors[1][:, :80, :]], use_filter=False)
        for i, settings_ in enumerate(CODECS):
            frames.append(encode_frame(one.bottleneck.numpy(), one.meta, settings_, fingerprint, frame_id=i + 1))
        frames.append(encode_frame(two.bottleneck.numpy(), two.meta, CODECS[1], fingerprint, frame_id=len(CODECS) + 1))
        expected = [{k: v.numpy() for k, v in d.items()} for d in tail(one.bottleneck, one.meta)]
        entropy = []
        if checkpoint.entropy is not None:
            for out in (one, two):
                entropy.append(
                    encode_frame(
                        out.bottleneck, out.meta, CodecSettings("entropy"), fingerprint, 99, checkpoint.entropy
                    )
                )
            frames += [f for f in entropy if f.quantization == pb.ENTROPY]
    images = [_png(scenes[0]), _jpeg(scenes[1]), _png(scenes[0][:1, :7]), _png(scenes[1], "L"), _png(scenes[1], "P")]
    bombs = [_zstd_bomb(256 << 20, declare=False), _zstd_bomb(64 << 20, declare=True)]
    entropy = [f for f in entropy if f.quantization == pb.ENTROPY]
    return Seeds(frames, expected, images, bombs, fingerprint, head.channels, max_message_bytes, entropy)


# ---- strategies ----

U32 = st.integers(0, 2**32 - 1)
DIM = st.one_of(st.integers(0, 300), st.sampled_from([65536, 2**31 - 1, 2**32 - 1]), U32)
FLOAT = st.one_of(
    st.floats(width=32), st.sampled_from([0.0, -0.0, -1.0, float("nan"), float("inf"), -float("inf"), 1e-45, 3e38])
)
POSITIVE = st.floats(float(np.float32(1e-30)), float(np.float32(1e30)), width=32)
SIZE = st.builds(lambda h, w: pb.ImageSize(height=h, width=w), DIM, DIM)
FRAME_ID = st.integers(0, 2**64 - 1)

Mutation = Callable[[pb.BottleneckFrame], None]


def one_of_values(values: list) -> st.SearchStrategy:
    """Like ``st.sampled_from`` without putting the (large) values into the strategy's repr."""
    return st.integers(0, len(values) - 1).map(lambda i: values[i])


def _setter(name: str) -> Callable[[object], Mutation]:
    def make(value: object) -> Mutation:
        def apply(frame: pb.BottleneckFrame) -> None:
            if isinstance(value, list):
                frame.ClearField(name)
                getattr(frame, name).extend(value)
            elif value is None:
                frame.ClearField(name)
            elif isinstance(value, pb.ImageSize):
                getattr(frame, name).CopyFrom(value)
            else:
                setattr(frame, name, value)

        return apply

    return make


def _payload(edit: Callable[[pb.BottleneckFrame], bytes]) -> Mutation:
    def apply(frame: pb.BottleneckFrame) -> None:
        frame.payload = edit(frame)

    return apply


def _right_size_random(seed: int) -> Callable[[pb.BottleneckFrame], bytes]:
    """Random bytes of exactly the decompressed size the frame's shape and dtype need (recompressed for zstd)."""

    def edit(frame: pb.BottleneckFrame) -> bytes:
        itemsize = {pb.UINT8: 1, pb.FLOAT16: 2}.get(frame.dtype, 4)
        count = math.prod(frame.shape) if frame.shape else 0
        raw = np.random.default_rng(seed).bytes(min(count * itemsize, 1 << 22))
        return zstandard.ZstdCompressor().compress(raw) if frame.compression == pb.ZSTD else raw

    return edit


def _flip(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for index, value in edits:
        if out:
            out[index % len(out)] = value
    return bytes(out)


def _byte_edit() -> st.SearchStrategy[Callable[[bytes], bytes]]:
    """Truncate, extend, overwrite bytes, or splice random bytes in."""
    return st.one_of(
        st.integers(0, 1 << 16).map(lambda k: lambda b: b[: k % (len(b) + 1)]),
        st.binary(min_size=1, max_size=64).map(lambda extra: lambda b: b + extra),
        st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=8).map(
            lambda edits: lambda b: _flip(b, edits)
        ),
        st.tuples(st.integers(0, 1 << 16), st.binary(min_size=1, max_size=32)).map(
            lambda cut: lambda b: b[: cut[0] % (len(b) + 1)] + cut[1] + b[cut[0] % (len(b) + 1) :]
        ),
    )


def _mutations(seeds: Seeds) -> st.SearchStrategy[Mutation]:
    fp = seeds.fingerprint
    fingerprints = st.one_of(
        one_of_values(["", "0" * 16, fp + "0", fp[:-1], fp.upper(), "f" * 100_000]), st.text(max_size=40)
    )
    payloads = st.one_of(
        st.binary(max_size=2048).map(lambda b: lambda f: b),
        _byte_edit().map(lambda edit: lambda f: edit(f.payload)),
        one_of_values(seeds.bombs).map(lambda b: lambda f: b),
        st.integers(0, 2**32 - 1).map(_right_size_random),
        st.just(lambda f: bytes(seeds.max_message_bytes + 1024)),
    )
    return st.one_of(
        st.one_of(U32, st.sampled_from([0, 2, 255])).map(_setter("format_version")),
        fingerprints.map(_setter("fingerprint")),
        st.one_of(st.lists(DIM, max_size=6), st.just(20_000).map(lambda n: [1] * n)).map(_setter("shape")),
        st.integers(-3, 8).map(_setter("dtype")),
        st.integers(-3, 8).map(_setter("quantization")),
        st.integers(-3, 5).map(_setter("compression")),
        st.lists(FLOAT, max_size=5).map(_setter("scale")),
        st.lists(FLOAT, max_size=5).map(_setter("zero_point")),
        payloads.map(_payload),
        st.lists(SIZE, max_size=4).map(_setter("original_sizes")),
        st.lists(SIZE, max_size=4).map(_setter("image_sizes")),
        st.one_of(st.none(), SIZE).map(_setter("batch_shape")),
        FRAME_ID.map(_setter("frame_id")),
    )


def mutated_frame(seeds: Seeds) -> st.SearchStrategy[bytes]:
    """A clean frame with one to four fields changed."""

    def build(base: pb.BottleneckFrame, changes: list[Mutation]) -> bytes:
        frame = pb.BottleneckFrame()
        frame.CopyFrom(base)
        for change in changes:
            change(frame)
        return frame.SerializeToString()

    return st.builds(build, one_of_values(seeds.frames), st.lists(_mutations(seeds), min_size=1, max_size=4))


@st.composite
def odd_geometry(draw: st.DrawFn, seeds: Seeds) -> bytes:
    """A self-consistent frame (shape, sizes, scales all agree) of random geometry and random values."""
    n = draw(st.integers(1, 3))
    bh, bw = draw(st.integers(1, 640)), draw(st.integers(1, 640))
    resized = [pb.ImageSize(height=draw(st.integers(1, bh)), width=draw(st.integers(1, bw))) for _ in range(n)]
    original = [pb.ImageSize(height=draw(st.integers(1, 8192)), width=draw(st.integers(1, 8192))) for _ in range(n)]
    c, h, w = bottleneck_shape(seeds.channels, (bh, bw))
    quantization = draw(st.sampled_from(["per_tensor", "per_channel", "float16", "none"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    magnitude = draw(st.sampled_from([1e-3, 1.0, 1e3, 6e4]))
    params = {"per_tensor": 1, "per_channel": c}.get(quantization, 0)
    scale = [draw(POSITIVE) for _ in range(params)]
    zero_point = [draw(st.floats(-1e4, 1e4, width=32)) for _ in range(params)]
    count = n * c * h * w
    if quantization in ("per_tensor", "per_channel"):
        raw = rng.integers(0, 256, count, dtype=np.uint8).tobytes()
    else:
        dtype = "<f2" if quantization == "float16" else "<f4"
        with np.errstate(over="ignore"):  # float16 overflows to inf at 6e4: the server must refuse those
            raw = (rng.standard_normal(count) * magnitude).astype(dtype).tobytes()
    compression = draw(st.sampled_from(["raw", "zstd"]))
    frame = pb.BottleneckFrame(
        format_version=1,
        fingerprint=seeds.fingerprint,
        shape=[n, c, h, w],
        dtype={"per_tensor": pb.UINT8, "per_channel": pb.UINT8, "float16": pb.FLOAT16}.get(quantization, pb.FLOAT32),
        quantization={"per_tensor": pb.PER_TENSOR, "per_channel": pb.PER_CHANNEL, "float16": pb.HALF}.get(
            quantization, pb.NONE
        ),
        scale=scale,
        zero_point=zero_point,
        compression=pb.ZSTD if compression == "zstd" else pb.RAW,
        payload=zstandard.ZstdCompressor().compress(raw) if compression == "zstd" else raw,
        original_sizes=original,
        image_sizes=resized,
        batch_shape=pb.ImageSize(height=bh, width=bw),
        frame_id=draw(FRAME_ID),
    )
    return frame.SerializeToString()


@st.composite
def entropy_frame(draw: st.DrawFn, seeds: Seeds) -> bytes:
    """A rANS frame of a real or random geometry (up to a huge one) whose string is real, cut, extended, garbled,
    random, cut or padded by whole 32-bit words, ended by a zero word or cut mid-word, sometimes flagged with the
    retired CompressAI compression (RANS): the server must decode it or refuse it, in bounded time and memory."""
    base = pb.BottleneckFrame()
    base.CopyFrom(draw(one_of_values(seeds.entropy)))
    if draw(st.booleans()):
        n = draw(st.integers(1, 3))
        bh, bw = draw(st.sampled_from([(1, 1), (96, 128), (640, 640), (8192, 8192)]))
        c, h, w = bottleneck_shape(seeds.channels, (bh, bw))
        base.ClearField("shape")
        base.shape.extend([n, c, h, w])
        size = pb.ImageSize(height=bh, width=bw)
        base.batch_shape.CopyFrom(size)
        for field_name in ("original_sizes", "image_sizes"):
            base.ClearField(field_name)
            getattr(base, field_name).extend([size] * n)
    base.payload = draw(
        st.one_of(
            st.binary(max_size=4096),
            _byte_edit().map(lambda edit: edit(base.payload)),
            st.integers(0, 2**32 - 1).map(lambda seed: np.random.default_rng(seed).bytes(len(base.payload))),
            st.just(b"\xff" * 65536),
            st.integers(-64, 64).map(lambda k: base.payload[: 4 * k] if k < 0 else base.payload + bytes(4 * k)),
            st.integers(0, 3).map(lambda k: base.payload + bytes(4) + b"\x01" * k),
        )
    )
    if draw(st.integers(0, 9)) == 0:
        base.compression = pb.RANS
    return base.SerializeToString()


def png_declaring(png: bytes, height: int, width: int) -> bytes:
    """The PNG with its IHDR rewritten to claim ``width`` x ``height`` pixels (CRC fixed, pixel data unchanged)."""
    ihdr = bytearray(png[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)) & 0xFFFFFFFF)
    return png[:16] + bytes(ihdr) + crc + png[33:]


def jpeg_declaring(jpeg: bytes, height: int, width: int) -> bytes:
    """The JPEG with its SOF0 header rewritten to claim ``width`` x ``height`` pixels."""
    at = jpeg.find(b"\xff\xc0")
    if at < 0:
        return jpeg
    return jpeg[: at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9 :]


@st.composite
def plain_image(draw: st.DrawFn) -> bytes:
    """A decodable PNG or JPEG of random size (extreme aspect ratios included) and colour mode."""
    h = draw(st.one_of(st.integers(1, 64), st.integers(1, 2000)))
    w = draw(st.one_of(st.integers(1, 64), st.integers(1, max(1, 2_000_000 // h))))
    value = draw(st.integers(0, 255))
    array = np.full((h, w, 3), value, dtype=np.uint8)
    mode = draw(st.sampled_from(["RGB", "L", "RGBA", "P", "1", "I;16", "CMYK"]))
    if max(h, w) > 65500:  # beyond JPEG's limit
        return _png(array, None if mode == "CMYK" else mode)
    if mode == "CMYK":
        buf = io.BytesIO()
        Image.fromarray(array).convert("CMYK").save(buf, format="JPEG")
        return buf.getvalue()
    return _jpeg(array) if mode == "RGB" and draw(st.booleans()) else _png(array, mode)


def image_bytes(seeds: Seeds) -> st.SearchStrategy[bytes]:
    big = st.integers(1, 2**31 - 1)
    return st.one_of(
        st.binary(max_size=2048),
        st.tuples(one_of_values(seeds.images), _byte_edit()).map(lambda t: t[1](t[0])),
        st.tuples(big, big).map(lambda hw: png_declaring(seeds.images[0], *hw)),
        st.tuples(st.integers(0, 65535), st.integers(0, 65535)).map(lambda hw: jpeg_declaring(seeds.images[1], *hw)),
        plain_image(),
    )


def image_frame(seeds: Seeds) -> st.SearchStrategy[bytes]:
    def build(data: bytes, frame_id: int) -> bytes:
        return pb.ImageFrame(frame_id=frame_id, jpeg=data).SerializeToString()

    return st.builds(build, image_bytes(seeds), FRAME_ID)


def cases(seeds: Seeds) -> st.SearchStrategy[Case]:
    """Every kind of hostile call, in the categories the report counts."""
    clean = one_of_values([f.SerializeToString() for f in seeds.frames])
    clean_image = one_of_values([pb.ImageFrame(frame_id=7, jpeg=i).SerializeToString() for i in seeds.images[:2]])
    bottleneck = st.one_of(mutated_frame(seeds), odd_geometry(seeds))
    raw = st.binary(max_size=4096)
    serialized_edit = st.tuples(clean, _byte_edit()).map(lambda t: t[1](t[0]))

    def unary(category: str, method: str, message: st.SearchStrategy[bytes], valid: bool = False):
        return message.map(lambda m: Case(category, method, (m,), valid=valid))

    def stream(category: str, method: str, message: st.SearchStrategy[bytes], good: st.SearchStrategy[bytes]):
        def build(items: list[tuple[bool, bytes]], end: str) -> Case:
            return Case(category, method, tuple(m for _, m in items), end, valid=all(ok for ok, _ in items))

        item = st.one_of(good.map(lambda m: (True, m)), message.map(lambda m: (False, m)))
        return st.builds(build, st.lists(item, min_size=0, max_size=4), st.sampled_from(ENDS))

    return st.one_of(
        unary("bottleneck/clean", "Infer", clean, valid=True),
        unary("bottleneck/mutated", "Infer", mutated_frame(seeds)),
        unary("bottleneck/geometry", "Infer", odd_geometry(seeds)),
        unary("bottleneck/bytes", "Infer", serialized_edit),
        *([unary("bottleneck/entropy", "Infer", entropy_frame(seeds))] if seeds.entropy else []),
        stream("bottleneck/stream", "InferStream", st.one_of(bottleneck, serialized_edit, raw), clean),
        unary("image/mutated", "InferImage", image_frame(seeds)),
        stream("image/stream", "InferImageStream", st.one_of(image_frame(seeds), raw), clean_image),
        st.builds(lambda method, data: Case("random bytes", method, (data,)), st.sampled_from(list(METHODS)), raw),
        st.sampled_from(["GetModelInfo", "GetStats"]).map(lambda m: Case("info", m, (b"",), valid=True)),
    )


# ---- calls and checks ----


def execute(channel: grpc.Channel, case: Case, timeout_s: float = TIMEOUT_S) -> Outcome:
    """Send the case's raw messages; the final status, its message and the raw responses."""
    path = f"/{SERVICE}/{case.method}"
    start = time.perf_counter()
    if not METHODS[case.method]:
        try:
            response = channel.unary_unary(path)(case.messages[0], timeout=timeout_s)
            return Outcome("OK", "", (response,), time.perf_counter() - start)
        except grpc.RpcError as e:
            return Outcome(e.code().name, e.details() or "", (), time.perf_counter() - start)
    finished = threading.Event()

    def requests():
        yield from case.messages
        if case.end != "close":
            finished.wait(timeout_s)

    call = channel.stream_stream(path)(requests(), timeout=STALL_S if case.end == "stall" else timeout_s)
    timer = threading.Timer(CANCEL_AFTER_S, call.cancel)
    if case.end == "cancel":
        timer.start()
    responses: list[bytes] = []
    try:
        responses.extend(call)
        code, details = "OK", ""
    except grpc.RpcError as e:
        code, details = e.code().name, e.details() or ""
    finally:
        finished.set()
        timer.cancel()
    return Outcome(code, details, tuple(responses), time.perf_counter() - start)


def _images_in(method: str, message: bytes) -> tuple[int, int] | None:
    """(frame_id, images) the server must answer for ``message``; None when the bytes do not parse."""
    try:
        if method in ("Infer", "InferStream"):
            frame = pb.BottleneckFrame.FromString(message)
            return frame.frame_id, len(frame.image_sizes)
        return pb.ImageFrame.FromString(message).frame_id, 1
    except Exception:
        return None


def problem(case: Case, outcome: Outcome) -> str | None:
    """What is wrong with the server's answer to ``case``, or None."""
    allowed = set(ALLOWED)
    if case.end == "cancel":
        allowed.add("CANCELLED")
    if case.end == "stall":
        allowed.add("DEADLINE_EXCEEDED")
    if outcome.code not in allowed:
        return f"status {outcome.code}: {outcome.details[:300]}"
    if "metadata size exceeds" in outcome.details:
        return f"the status message outgrew the client's metadata limit: {outcome.details[:300]}"
    if outcome.code != "OK" and not outcome.details:
        return f"status {outcome.code} without a message"
    if case.valid and case.end == "close" and outcome.code != "OK" and not outcome.details.startswith(SHED):
        return f"a clean frame was refused: {outcome.code}: {outcome.details[:300]}"
    if outcome.code == "OK" and case.end == "close" and len(outcome.responses) != len(case.messages):
        return f"stream ended OK with {len(outcome.responses)} answers for {len(case.messages)} frames"
    if case.method in ("GetModelInfo", "GetStats"):
        return None
    for message, raw in zip(case.messages, outcome.responses, strict=False):
        sent = _images_in(case.method, message)
        if sent is None:
            return "an unparsable request was answered"
        response = pb.InferResponse.FromString(raw)
        if (response.frame_id, len(response.images)) != sent:
            return f"answer (frame {response.frame_id}, {len(response.images)} images) for frame {sent[0]}, {sent[1]}"
    return None


def still_serving(channel: grpc.Channel, seeds: Seeds, atol: float = 1e-4) -> str | None:
    """None when a clean unquantized frame gets the local tail's detections; else what differs."""
    outcome = execute(channel, Case("final", "Infer", (seeds.frames[0].SerializeToString(),)))
    if outcome.code != "OK":
        return f"clean frame refused after the fuzz: {outcome.code}: {outcome.details}"
    got = [decode_detections(m) for m in pb.InferResponse.FromString(outcome.responses[0]).images]
    for g, want in zip(got, seeds.expected, strict=True):
        for key in ("boxes", "scores", "labels"):
            if g[key].shape != want[key].shape or not np.allclose(g[key], want[key], atol=atol, rtol=0):
                return f"detections differ from the local tail in {key}"
    return None


@dataclass
class Tally:
    """Status codes per category, problems found, and the server's memory over the run."""

    codes: Counter = field(default_factory=Counter)
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (category, method, what)
    rss_mb: list[float] = field(default_factory=list)
    seconds: float = 0.0
    slowest: tuple[float, str] = (0.0, "")  # the longest call and its category
    exhausted: Counter = field(default_factory=Counter)  # RESOURCE_EXHAUSTED messages, numbers masked

    @property
    def cases(self) -> int:
        return sum(self.codes.values())

    def add(self, case: Case, outcome: Outcome) -> None:
        self.codes[case.category, outcome.code] += 1
        self.slowest = max(self.slowest, (outcome.seconds, case.category))
        if outcome.code == "RESOURCE_EXHAUSTED":
            self.exhausted[re.sub(r"\d+", "N", outcome.details)[:100]] += 1
        if (what := problem(case, outcome)) is not None:
            self.problems.append((case.category, case.method, what))


def fuzz(
    channel: grpc.Channel,
    seeds: Seeds,
    examples: int,
    seed: int = 0,
    sample_rss: Callable[[], float] | None = None,
    every: int = 50,
) -> Tally:
    """Run ``examples`` hypothesis cases against the server behind ``channel``; never raises on a bad answer."""
    tally = Tally()
    start = time.perf_counter()

    @hypothesis_seed(seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(cases(seeds))
    def one(case: Case) -> None:
        tally.add(case, execute(channel, case))
        if sample_rss is not None and tally.cases % every == 0:
            tally.rss_mb.append(sample_rss())

    one()
    tally.seconds = time.perf_counter() - start
    return tally


# ---- the long run ----


def _machine() -> str:
    load = os.getloadavg()
    return (
        f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}, "
        f"torch {torch.__version__}, grpcio {grpc.__version__}; load average at the end {load[0]:.2f}"
    )


def report(tally: Tally, command: str, ckpt: Path, server_args: list[str], memory: dict[str, float], final: str) -> str:
    categories = sorted({c for c, _ in tally.codes})
    codes = sorted({k for _, k in tally.codes}, key=lambda k: (k != "OK", k))
    lines = [
        "# Edge-server fuzz",
        "",
        f"Command: `{command}`",
        "",
        f"Server: `edge-server {' '.join(shown_args(server_args))}` (child process) serving `{ckpt.name}`.",
        f"Machine: {_machine()}.",
        "",
        f"{tally.cases} cases in {tally.seconds:.0f} s ({tally.cases / max(tally.seconds, 1e-9):.1f} cases/s); "
        f"problems: **{len(tally.problems)}**; clean frame after the run: **{final}**; slowest call "
        f"{tally.slowest[0]:.1f} s ({tally.slowest[1]}).",
        "",
        f"| category | cases | {' | '.join(codes)} |",
        f"| --- | --- |{' --- |' * len(codes)}",
    ]
    for category in categories:
        row = [str(tally.codes[category, code]) for code in codes]
        total = sum(tally.codes[category, code] for code in codes)
        lines.append(f"| {category} | {total} | {' | '.join(row)} |")
    totals = [str(sum(tally.codes[c, code] for c in categories)) for code in codes]
    lines.append(f"| **all** | {tally.cases} | {' | '.join(totals)} |")
    lines += [
        "",
        "Allowed: OK, INVALID_ARGUMENT, FAILED_PRECONDITION, RESOURCE_EXHAUSTED, each with a message; CANCELLED for "
        f"streams the client aborts, DEADLINE_EXCEEDED for streams that stall past their {STALL_S:g} s deadline. "
        "Never UNKNOWN, INTERNAL or a hang; answers match their frames (frame id, image count); a clean frame is "
        "answered unless the server sheds load (RESOURCE_EXHAUSTED, a message beginning "
        f"{' or '.join(f'`{m}`' for m in SHED)}: its --max-streams or --max-queued-frames limit, reached while the "
        "work of aborted and stalled calls drains). RESOURCE_EXHAUSTED messages: "
        + ("; ".join(f"`{message}` {n}" for message, n in tally.exhausted.most_common()) or "none")
        + ".",
        "",
        "Server memory (MiB, /proc/PID/status):",
        "",
        "| RSS after warm-up | RSS at the end | RSS after the idle wait | highest sampled RSS | peak (VmHWM) |",
        "| --- | --- | --- | --- | --- |",
        f"| {memory['start']:.0f} | {memory['end']:.0f} | {memory['settled']:.0f} | {memory['max']:.0f} "
        f"| {memory['peak']:.0f} |",
        "",
        "Highest sampled RSS in each tenth of the run (MiB): "
        + ", ".join(f"{max(part):.0f}" for part in np.array_split(np.array(tally.rss_mb), 10) if len(part))
        + ".",
    ]
    if tally.problems:
        lines += ["", "Problems (first 20):", ""]
        lines += [f"- {category} / {method}: {what}" for category, method, what in tally.problems[:20]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--ckpt", type=Path, help="student checkpoint (default: the bundled demo checkpoint)")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed (default 0)")
    parser.add_argument("--max-message-mb", type=float, default=4, help="the server's message limit (default 4)")
    parser.add_argument("--out", type=Path, help="write the markdown report here (and a .json next to it)")
    parser.add_argument(
        "--server-arg", action="append", default=[], metavar="ARG", help="extra edge-server argument (repeatable)"
    )
    parser.add_argument(
        "--settle-s", type=float, default=5.0, help="idle seconds before the last RSS sample (default 5)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    ckpt = args.ckpt or demo_checkpoint()
    server_args = ["--ckpt", str(ckpt), "--workers", "2", "--torch-threads", "1"]
    server_args += ["--max-message-mb", f"{args.max_message_mb:g}", "--log-level", "WARNING", *args.server_arg]
    seeds = make_seeds(ckpt, int(args.max_message_mb * 1024 * 1024))
    with ServerProcess(server_args) as server, grpc.insecure_channel(server.target) as channel:
        for frame in seeds.frames:  # warm-up: the first calls allocate the model's buffers
            execute(channel, Case("warm-up", "Infer", (frame.SerializeToString(),)))
        start = server.memory_mb()[0]
        tally = fuzz(channel, seeds, args.cases, args.seed, sample_rss=lambda: server.memory_mb()[0])
        final = still_serving(channel, seeds) or "same detections as the local tail"
        end, peak = server.memory_mb()
        time.sleep(args.settle_s)
        settled = server.memory_mb()[0]
        tracebacks = server.log().count("Traceback")
    memory = {"start": start, "end": end, "max": max(tally.rss_mb, default=end), "peak": peak, "settled": settled}
    command = "python -m studies.fuzz_server " + " ".join(shown_args(argv if argv is not None else sys.argv[1:]))
    text = report(tally, command, ckpt, server_args, memory, final)
    text += f"\nTracebacks in the server log: {tracebacks}.\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        summary = {
            "cases": tally.cases,
            "seconds": round(tally.seconds, 1),
            "slowest_call_s": round(tally.slowest[0], 2),
            "resource_exhausted": dict(tally.exhausted),
            "codes": {f"{c}|{k}": n for (c, k), n in sorted(tally.codes.items())},
            "problems": tally.problems,
            "memory_mb": {k: round(v, 1) for k, v in memory.items()},
            "rss_mb": [round(v, 1) for v in tally.rss_mb],
            "tracebacks": tracebacks,
        }
        args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    return 1 if tally.problems or final != "same detections as the local tail" or tracebacks else 0


if __name__ == "__main__":
    raise SystemExit(main())
