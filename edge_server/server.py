"""Build and start the gRPC server: engine, batcher, servicer, health and reflection services, optional TLS, token
and Prometheus ``/metrics`` endpoint."""

from __future__ import annotations

import ssl
import threading
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edge_server.auth import TokenInterceptor
from edge_server.batching import Batcher
from edge_server.cli import INSECURE_TOKEN
from edge_server.engine import DeviceError, Engine
from edge_server.memory import Trimmer
from edge_server.metrics import MetricsServer
from edge_server.servicer import SERVICE_NAME, Servicer, method_handlers
from edge_server.stats import Stats

QUEUE_PER_SLOT = 4  # queued frames allowed per (batch slot x worker) before RESOURCE_EXHAUSTED
CALLS_PER_WORKER = 2  # default limit of open calls (running or waiting for a worker) per worker thread
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class ServerError(RuntimeError):
    """The server cannot start (bad option, TLS files, device, address); the message is one line."""


class RunningServer:
    """A started server. ``port`` is the bound port (the real one when 0 was asked for); ``metrics_port`` likewise
    for ``/metrics``, None when it is not served."""

    def __init__(
        self,
        server: grpc.Server,
        port: int,
        engine: Engine,
        batcher: Batcher,
        stats: Stats,
        health_servicer: health.HealthServicer,
        metrics_server: MetricsServer | None,
        trimmer: Trimmer | None = None,
    ) -> None:
        self.port = port
        self.metrics_port = metrics_server.port if metrics_server else None
        self.engine = engine
        self.batcher = batcher
        self.stats = stats
        self._server = server
        self._health = health_servicer
        self._metrics_server = metrics_server
        self.trimmer = trimmer
        self._lock = threading.Lock()
        self._stopped = False

    def stop(self, grace: float | None = 5.0) -> None:
        """Report NOT_SERVING, refuse new calls, let in-flight ones finish for up to ``grace`` seconds, then stop
        serving ``/metrics``."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._health.enter_graceful_shutdown()
        self._server.stop(grace).wait()
        self.batcher.close()
        if self.trimmer is not None:
            self.trimmer.close()
        if self._metrics_server is not None:
            self._metrics_server.stop()

    def wait(self) -> None:
        """Block until the server has stopped."""
        self._server.wait_for_termination()


def _tls_credentials(
    cert: str | Path | None, key: str | Path | None, client_ca: str | Path | None = None
) -> grpc.ServerCredentials | None:
    """Server TLS credentials; with ``client_ca``, mutual TLS: clients must present a certificate signed by it."""
    if cert is None and key is None:
        if client_ca is not None:
            raise ServerError("--tls-client-ca needs TLS (--tls-cert and --tls-key)")
        return None
    if cert is None or key is None:
        raise ServerError("TLS needs both a certificate (--tls-cert) and a key (--tls-key)")
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


def serve(
    ckpt_path: str | Path,
    host: str = "127.0.0.1",
    port: int = 0,
    device: str = "auto",
    workers: int = 4,
    max_batch: int = 1,
    max_batch_delay_ms: float = 5.0,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    token: str | None = None,
    max_message_mb: float = 16,
    max_calls: int | None = None,
    keepalive_s: float = 30.0,
    metrics_port: int | None = None,
    tls_client_ca: str | Path | None = None,
    allow_insecure_token: bool = False,
    trim_idle_s: float = 1.0,
    fair: bool = True,
) -> RunningServer:
    """Load the checkpoint and start serving; raises CheckpointError or :class:`ServerError`.

    At most ``max_calls`` calls (default ``2 x workers``) are open at once: ``workers`` run, the rest wait for a
    worker, and calls beyond are refused with RESOURCE_EXHAUSTED, so memory stays bounded under any load. Every
    connection is pinged each ``keepalive_s`` seconds and dropped when a ping goes unanswered for as long, which
    ends the streams of clients that vanished without closing them and frees their workers.

    With ``metrics_port`` (0 picks a free one) Prometheus metrics are served over HTTP at ``host:metrics_port``
    ``/metrics``; reflection lists the SplitDetection and health services.

    A ``token`` needs TLS (it would travel in plaintext) unless ``allow_insecure_token`` (loopback tests);
    ``tls_client_ca`` requires client certificates signed by that CA (mutual TLS). After each burst of work, once
    the server has been idle for ``trim_idle_s`` seconds (0: never), freed heap memory goes back to the OS. With
    ``fair`` the batcher serves client connections round-robin (else first come, first served).
    """
    max_calls = CALLS_PER_WORKER * workers if max_calls is None else max_calls
    if workers < 1 or max_batch < 1 or max_batch_delay_ms < 0 or max_message_mb <= 0:
        raise ServerError("need workers >= 1, max_batch >= 1, max_batch_delay_ms >= 0 and max_message_mb > 0")
    if max_calls < 1 or keepalive_s <= 0:
        raise ServerError("need max_calls >= 1 and keepalive_s > 0")
    if metrics_port is not None and not 0 <= metrics_port <= 65535:
        raise ServerError(f"the metrics port must be in 0..65535, not {metrics_port}")
    if token is not None and not token:
        raise ServerError("the token is empty")
    if trim_idle_s < 0:
        raise ServerError("trim_idle_s must be >= 0")
    credentials = _tls_credentials(tls_cert, tls_key, tls_client_ca)
    if token is not None and credentials is None and not allow_insecure_token:
        raise ServerError(INSECURE_TOKEN)
    try:
        engine = Engine.load(ckpt_path, device)
    except DeviceError as e:
        raise ServerError(str(e)) from None
    stats = Stats()
    batcher = Batcher(
        engine.run_batch,
        max_batch,
        max_batch_delay_ms / 1000,
        max_queue=QUEUE_PER_SLOT * max_batch * workers,
        on_batch=stats.batch,
        fair=fair,
    )
    max_bytes = int(max_message_mb * 1024 * 1024)
    keepalive_ms = int(keepalive_s * 1000)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edge-rpc"),
        interceptors=[TokenInterceptor(token, stats)] if token else None,
        options=[
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
            ("grpc.so_reuseport", 0),  # a second server on a busy port must fail, not share it
            ("grpc.keepalive_time_ms", keepalive_ms),
            ("grpc.keepalive_timeout_ms", keepalive_ms),
            ("grpc.http2.ping_timeout_ms", keepalive_ms),  # without it this grpc waits 60 s for the ack
            ("grpc.http2.max_pings_without_data", 0),  # keep pinging a stream that waits for its next frame
            ("grpc.keepalive_permit_without_calls", 1),  # dead idle connections are dropped too
        ],
        maximum_concurrent_rpcs=max_calls,
    )
    handlers = method_handlers(Servicer(engine, batcher, stats, max_bytes))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = _address(host, port)
    try:
        bound = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if not bound:
        batcher.close()
        raise ServerError(f"cannot listen on {address}: the port is in use or the address is not available")
    metrics_server = None
    if metrics_port is not None:
        try:
            metrics_server = MetricsServer(stats.metrics, host, metrics_port)
        except OSError as e:
            server.stop(None)
            batcher.close()
            metrics_address = _address(host, metrics_port)
            raise ServerError(f"cannot serve metrics on {metrics_address}: {e.strerror or e}") from None
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    trimmer = Trimmer(lambda: stats.activity, trim_idle_s) if trim_idle_s > 0 else None
    return RunningServer(server, bound, engine, batcher, stats, health_servicer, metrics_server, trimmer)
