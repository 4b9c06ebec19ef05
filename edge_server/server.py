"""Build and start the gRPC server: engine, batcher, servicer, health and reflection services, optional TLS, token
and Prometheus ``/metrics`` endpoint.

The server is a ``grpc.aio`` server on an event loop thread of its own (one per process, shared by the servers of
a process): an open stream is a coroutine, not a thread, so thousands of idle streams cost only memory, and health
checks, reflection and GetModelInfo are answered by the loop whatever the frames are doing. The model runs on the
batcher's thread, frames are decoded and answers encoded on a small thread pool (``workers``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import ssl
import threading
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from splitdet.edge_server.admission import Admission
from splitdet.edge_server.auth import TokenInterceptor
from splitdet.edge_server.batching import Batcher
from splitdet.edge_server.engine import DeviceError, Engine
from splitdet.edge_server.memory import Trimmer
from splitdet.edge_server.metrics import MetricsServer
from splitdet.edge_server.options import ServerOptions
from splitdet.edge_server.servicer import SERVICE_NAME, Servicer, method_handlers
from splitdet.edge_server.stats import Stats

HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


class ServerError(RuntimeError):
    """The server cannot start (TLS files, device, address); the message is one line. Impossible option values
    are refused earlier, by :class:`~splitdet.edge_server.options.ServerOptions` (OptionsError)."""


def event_loop() -> asyncio.AbstractEventLoop:
    """The process's server event loop, running on its own daemon thread (started on first use)."""
    global _loop
    with _loop_lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="edge-loop", daemon=True).start()
            _loop = loop
        return _loop


def _on_loop(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coroutine`` on the server event loop and wait for its result."""
    return asyncio.run_coroutine_threadsafe(coroutine, event_loop()).result()


class RunningServer:
    """A started server. ``port`` is the bound port (the real one when 0 was asked for); ``metrics_port`` likewise
    for ``/metrics``, None when it is not served."""

    def __init__(
        self,
        server: grpc.aio.Server,
        port: int,
        engine: Engine,
        batcher: Batcher,
        stats: Stats,
        admission: Admission,
        health_servicer: health.aio.HealthServicer,
        executor: ThreadPoolExecutor,
        metrics_server: MetricsServer | None,
        trimmer: Trimmer | None = None,
    ) -> None:
        self.port = port
        self.metrics_port = metrics_server.port if metrics_server else None
        self.engine = engine
        self.batcher = batcher
        self.stats = stats
        self.admission = admission
        self.trimmer = trimmer
        self._server = server
        self._health = health_servicer
        self._executor = executor
        self._metrics_server = metrics_server
        self._lock = threading.Lock()
        self._stopped = False
        self._terminated = threading.Event()

    def stop(self, grace: float | None = 5.0) -> None:
        """Drain, then stop: report NOT_SERVING, refuse new streams and frames with UNAVAILABLE, end the streams
        that wait for a frame, let frames in progress finish for up to ``grace`` seconds, cancel what is left, then
        stop serving ``/metrics``."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        _on_loop(self._drain(grace or 0.0))
        self.batcher.close()
        self._executor.shutdown()
        if self.trimmer is not None:
            self.trimmer.close()
        if self._metrics_server is not None:
            self._metrics_server.stop()
        self._terminated.set()

    async def _drain(self, grace: float) -> None:
        await self._health.enter_graceful_shutdown()
        self.admission.drain()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.admission.idle(), grace)
        await self._server.stop(0)

    def wait(self) -> None:
        """Block until the server has stopped (Ctrl-C interrupts the wait)."""
        while not self._terminated.wait(0.5):
            pass


def _tls_credentials(
    cert: str | Path | None, key: str | Path | None, client_ca: str | Path | None = None
) -> grpc.ServerCredentials | None:
    """Server TLS credentials (None without a certificate); with ``client_ca``, mutual TLS: clients must present a
    certificate signed by it. ServerOptions has checked that the certificate and key come together."""
    if cert is None or key is None:
        return None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
        if client_ca is not None:
            ssl.create_default_context(cafile=str(client_ca))
    except FileNotFoundError as e:
        raise ServerError(f"TLS file not found: {e.filename}") from None
    except (ssl.SSLError, OSError) as e:
        files = f"certificate {cert}, key {key}" + (f" or client CA {client_ca}" if client_ca else "")
        raise ServerError(f"bad TLS {files}: {e}") from None
    return grpc.ssl_server_credentials(
        [(Path(key).read_bytes(), Path(cert).read_bytes())],
        root_certificates=Path(client_ca).read_bytes() if client_ca is not None else None,
        require_client_auth=client_ca is not None,
    )


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def serve(ckpt_path: str | Path, options: ServerOptions | None = None, **overrides: Any) -> RunningServer:
    """Load the checkpoint and start serving with ``options`` (default: ServerOptions()), any keyword in
    ``overrides`` replacing that option (``serve(ckpt, port=0, workers=2)``, checked as ServerOptions checks);
    raises CheckpointError, :class:`ServerError`, or OptionsError for an impossible override.

    At most ``max_streams`` streams are open and ``max_queued_frames`` frames in progress at once; beyond, a stream
    or frame is refused at once with RESOURCE_EXHAUSTED and a retry hint (:mod:`splitdet.edge_server.admission`), so
    memory stays bounded under any load. Health, reflection and GetModelInfo are never limited. ``workers`` threads
    decode frames and encode answers. Every connection is pinged each ``keepalive_s`` seconds and dropped when a ping
    goes unanswered for as long, which ends the streams of clients that vanished without closing them.

    With ``metrics_port`` (0 picks a free one) Prometheus metrics are served over HTTP at ``host:metrics_port``
    ``/metrics``; reflection lists the SplitDetection and health services.

    A ``token`` needs TLS (it would travel in plaintext) unless ``allow_insecure_token`` (loopback tests);
    ``tls_client_ca`` requires client certificates signed by that CA (mutual TLS). After each burst of work, once
    the server has been idle for ``trim_idle_s`` seconds (0: never), freed heap memory goes back to the OS. With
    ``scheduling`` "fair" the batcher serves client connections round-robin (else first come, first served).
    The process-wide options (``torch_threads``, ``malloc_arenas``, ``grace_s``, ``log_level``) are the caller's to
    apply, as :func:`splitdet.edge_server.runner.run` does.
    """
    o = dataclasses.replace(options or ServerOptions(), **overrides)
    host, port, token, metrics_port = o.host, o.port, o.token, o.metrics_port
    credentials = _tls_credentials(o.tls_cert, o.tls_key, o.tls_client_ca)
    try:
        engine = Engine.load(ckpt_path, o.device)
    except DeviceError as e:
        raise ServerError(str(e)) from None
    stats = Stats()
    batcher = Batcher(
        engine.run_batch,
        o.max_batch,
        o.max_batch_delay_ms / 1000,
        max_queue=o.max_queued_frames,
        on_batch=stats.batch,
        fair=o.fair,
    )
    admission = Admission(o.max_streams, o.max_queued_frames)
    executor = ThreadPoolExecutor(max_workers=o.workers, thread_name_prefix="edge-codec")
    max_bytes = int(o.max_message_mb * 1024 * 1024)
    grpc_options = _options(max_bytes, int(o.keepalive_s * 1000))
    interceptors = [TokenInterceptor(token, stats)] if token else None
    address = _address(host, port)

    async def start() -> tuple[grpc.aio.Server, int, health.aio.HealthServicer | None]:
        server = grpc.aio.server(interceptors=interceptors, options=grpc_options)
        try:
            bound = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        except RuntimeError:
            bound = 0
        if not bound:
            return server, 0, None
        servicer = Servicer(engine, batcher, stats, admission, executor, max_bytes, f"{socket.gethostname()}:{bound}")
        handlers = method_handlers(servicer)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
        server.add_registered_method_handlers(SERVICE_NAME, handlers)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection((SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), server)
        await server.start()
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        return server, bound, health_servicer

    def discard() -> None:
        batcher.close()
        executor.shutdown()

    server, bound, health_servicer = _on_loop(start())
    if not bound:
        discard()
        raise ServerError(f"cannot listen on {address}: the port is in use or the address is not available")
    metrics_server = None
    if metrics_port is not None:
        try:
            metrics_server = MetricsServer(stats.metrics, host, metrics_port)
        except OSError as e:
            _on_loop(server.stop(None))
            discard()
            metrics_address = _address(host, metrics_port)
            raise ServerError(f"cannot serve metrics on {metrics_address}: {e.strerror or e}") from None
    trimmer = Trimmer(lambda: stats.activity, o.trim_idle_s) if o.trim_idle_s > 0 else None
    return RunningServer(
        server, bound, engine, batcher, stats, admission, health_servicer, executor, metrics_server, trimmer
    )


def _options(max_bytes: int, keepalive_ms: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_bytes),
        ("grpc.max_send_message_length", max_bytes),
        ("grpc.so_reuseport", 0),  # a second server on a busy port must fail, not share it
        ("grpc.keepalive_time_ms", keepalive_ms),
        ("grpc.keepalive_timeout_ms", keepalive_ms),
        ("grpc.http2.ping_timeout_ms", keepalive_ms),  # without it this grpc waits 60 s for the ack
        ("grpc.http2.max_pings_without_data", 0),  # keep pinging a stream that waits for its next frame
        ("grpc.keepalive_permit_without_calls", 1),  # dead idle connections are dropped too
    ]
