"""The benchmark's device: a child process that holds the head, the filter, the codec, the JPEG/WebP encoder, the
local tail and the client's gRPC link, so that all of it (and nothing else) can be held to a CPU quota.

With ``runtime`` "onnx" the head of split, split+filter and auto is the torch-free client's ONNX head
(:class:`splitdet.mobile_client.onnx_head.OnnxHead`) and auto chooses between split and offload; local mode, which runs
the tail on the device, keeps the torch head.

``split-bench`` starts one :class:`Device` per device speed. The child loads the model and the frames at full
speed, says ``ready``, and the parent puts it under the quota (:mod:`splitdet.mobile_client.device_cpu`); the edge
server and the link shaper stay outside. Then the parent sends one ``run`` per (mode, link, window) and the child sends
back one line per frame; in a run with ``sync`` the child waits for the parent's ``ack`` after each frame (outside
the frame's timing), so the parent can read the shaper's byte counters for exactly that frame.

Protocol: JSON lines, parent -> child on stdin, child -> parent on stdout; the child's log goes to stderr.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

RESULT_FIELDS = (
    "index", "source", "mode", "skipped", "sent_bytes", "timing_ms", "error", "server_ms", "received_bytes", "sent_at",
)  # fmt: skip


class DeviceError(RuntimeError):
    """The device process failed; the message ends with its last log line."""


@dataclass(frozen=True)
class DeviceSpec:
    """What the child loads: checkpoint, torch threads, frames (synthetic video or images) and run settings."""

    ckpt: str
    threads: int
    frames: int
    images: str | None
    synthetic: int | None
    seed: int
    empty_ratio: float | None
    run_frames: tuple[int, int]
    jpeg_quality: int
    offload_format: str
    offload_resize: str
    timeout_s: float
    background_filter: float = 0.0  #: split+filter: the background filter's threshold (0: off)
    runtime: str = "torch"  #: "torch", or "onnx": ``head`` runs every mode but local
    head: str | None = None  #: the ONNX head file of ``runtime`` "onnx"


# ---- the parent's side ----


class Device:
    """``python -m splitdet.benchmarks.device_worker`` with the model and frames loaded; a context manager."""

    def __init__(self, spec: DeviceSpec, log: Callable[[str], None]) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": str(spec.threads), "MKL_NUM_THREADS": str(spec.threads)}
        self._log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "splitdet.benchmarks.device_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
            bufsize=1,
        )
        self.pid = self.proc.pid
        self._send(asdict(spec))
        ready = self._receive()
        if ready.get("op") != "ready":
            raise DeviceError(f"device process did not start: {ready.get('error', ready)}")
        self.info = ready

    def _send(self, message: dict) -> None:
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def _receive(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise DeviceError(f"device process exited with status {code}")
        return json.loads(line)

    def run(
        self,
        mode: str,
        window: int,
        target: str | None,
        warmup: int,
        on_frame: Callable[[dict], None] | None = None,
        on_warm: Callable[[], None] | None = None,
        pace_s: float | None = None,
        duration_s: float | None = None,
    ) -> tuple[list[dict], float, list]:
        """One run: per-frame result dicts, wall seconds, auto's switches. With ``on_frame`` the child waits while
        it is called for each frame, and for ``on_warm`` after the warm-up frames (sync); ``pace_s`` spaces frame
        starts; ``duration_s`` cycles the frames until then."""
        self._send(
            {
                "op": "run",
                "mode": mode,
                "window": window,
                "target": target,
                "warmup": warmup,
                "sync": on_frame is not None,
                "pace_s": pace_s,
                "duration_s": duration_s,
            }
        )
        results = []
        while True:
            message = self._receive()
            if message["op"] == "warm":
                if on_warm is not None:
                    on_warm()
                self._send({"op": "ack"})
            elif message["op"] == "frame":
                results.append(message["result"])
                if on_frame is not None:
                    on_frame(message["result"])
                    self._send({"op": "ack"})
            elif message["op"] == "end":
                return results, message["wall_s"], message.get("switches", [])
            else:
                raise DeviceError(message.get("error", str(message)))

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._send({"op": "quit"})
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- the child's side ----


def load_frames(spec: DeviceSpec) -> list:
    """The frames every run uses (held in memory, so every mode sees the same)."""
    from splitdet.mobile_client import sources
    from splitdet.mobile_client.sources import SourceError

    if spec.images:
        source = sources.images(spec.images)
    else:
        count = spec.synthetic or spec.frames
        source = sources.synthetic(count, spec.seed, spec.empty_ratio, tuple(spec.run_frames))
    frames = list(itertools.islice(source.frames, spec.frames))
    if not frames:
        raise SourceError("no frames")
    return frames


def build_pipeline(mode: str, window: int, model, target: str | None, spec: DeviceSpec, log: Callable[[str], None]):
    """The client's pipeline for one mode (``auto`` with its policy), after the handshake over the emulated link;
    ``model`` is the device's head for that mode (:class:`splitdet.mobile_client.pipeline.DeviceModel`)."""
    from splitdet.mobile_client import handshake
    from splitdet.mobile_client.auto import CHOICES, AutoPolicy
    from splitdet.mobile_client.link import LinkConfig
    from splitdet.mobile_client.pipeline import Pipeline
    from splitdet.mobile_client.settings import Options

    options = Options(
        mode=mode.split("+")[0],
        use_filter=mode in ("split+filter", "auto") and model.has_filter,
        codec=model.codec,
        jpeg_quality=spec.jpeg_quality,
        window=window,
        offload_format=spec.offload_format,
        offload_size=model.size_rule if spec.offload_resize == "model" else None,
        background_filter=spec.background_filter if mode == "split+filter" else 0.0,
    )
    link = None
    if target is not None:
        fingerprint = None if mode == "offload" else model.fingerprint
        link, _ = handshake.connect(LinkConfig(target, timeout_s=spec.timeout_s), fingerprint=fingerprint)
    choices = ("split", "offload") if spec.runtime == "onnx" else CHOICES
    policy = AutoPolicy(use_filter=options.use_filter, log=log, choices=choices) if mode == "auto" else None
    pipeline = Pipeline(
        options,
        model.class_names,
        model=None if mode == "offload" else model,
        link=link,
        choose_mode=policy.choose if policy else None,
        observe=policy.observe if policy else None,
    )
    return pipeline, policy


def _paced(frames: list, pace_s: float | None, duration_s: float | None, start: float) -> Iterator:
    """The frames, each started ``pace_s`` after the one before; cycled until ``duration_s`` when given."""
    from splitdet.mobile_client.sources import Frame

    source = itertools.cycle(frames) if duration_s else iter(frames)
    for i, frame in enumerate(source):
        if duration_s and time.monotonic() - start >= duration_s:
            return
        if pace_s:
            time.sleep(max(0.0, start + i * pace_s - time.monotonic()))
        yield Frame(i, frame.source, frame.image, frame.error) if duration_s else frame


def _expect_ack(commands: Iterator[dict]) -> None:
    ack = next(commands)
    if ack["op"] != "ack":
        raise RuntimeError(f"expected ack, got {ack}")


def _serve(spec: DeviceSpec, commands: Iterator[dict], send: Callable[[dict], None]) -> None:
    import torch

    from splitdet.mobile_client.torch_head import ClientModel

    def log(message: str) -> None:
        print(f"split-bench device: {message}", file=sys.stderr, flush=True)

    torch.set_num_threads(spec.threads)
    model = ClientModel.load(spec.ckpt)
    head = model
    if spec.runtime == "onnx":
        from splitdet.mobile_client.onnx_head import OnnxHead

        head = OnnxHead.load(spec.head, threads=spec.threads)
    frames = load_frames(spec)
    runtime = f"ONNX Runtime ({head.weights} weights)" if spec.runtime == "onnx" else "torch"
    threads = torch.get_num_threads()
    send({"op": "ready", "pid": os.getpid(), "threads": threads, "frames": len(frames), "head": runtime})
    for command in commands:
        if command["op"] == "quit":
            return
        mode, window = command["mode"], command["window"]
        device_model = model if mode == "local" else head
        pipeline, policy = build_pipeline(mode, window, device_model, command["target"], spec, log)
        try:
            warmup = max(command["warmup"], 3) if mode == "auto" else command["warmup"]  # auto tries every mode
            list(pipeline.run(frames[i % len(frames)] for i in range(warmup)))
            if command["sync"]:
                send({"op": "warm"})
                _expect_ack(commands)
            first = len(policy.switches) if policy else 0
            start = time.monotonic()
            for result in pipeline.run(_paced(frames, command["pace_s"], command["duration_s"], start)):
                out = {name: getattr(result, name) for name in RESULT_FIELDS}
                out["finished_at"] = time.monotonic()
                send({"op": "frame", "result": out})
                if command["sync"]:
                    _expect_ack(commands)
            wall = time.monotonic() - start
        finally:
            pipeline.close()
        send({"op": "end", "wall_s": wall, "switches": policy.switches[first:] if policy else []})


def main() -> int:
    stdout = sys.stdout
    sys.stdout = sys.stderr  # nothing but the protocol on the real stdout

    def send(message: dict) -> None:
        stdout.write(json.dumps(message) + "\n")
        stdout.flush()

    commands = (json.loads(line) for line in sys.stdin)
    try:
        raw = next(commands)
        raw["run_frames"] = tuple(raw["run_frames"])
        _serve(DeviceSpec(**raw), commands, send)
    except Exception as e:  # reported to the parent as one line
        send({"op": "error", "error": f"{type(e).__name__}: {e}"})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
