"""Every option of the edge server, checked once: :class:`ServerOptions`.

Torch-free and grpc-free, so ``edge-server --help`` and its usage errors answer at once. The command line
(:mod:`splitdet.edge_server.cli`) maps its flags onto :class:`ServerOptions`; :func:`splitdet.edge_server.server.serve`
and :func:`splitdet.edge_server.runner.run` take one and check nothing it already checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from splitdet.common.endpoint import DEFAULT_PORT
from splitdet.common.options import OptionsError

MAX_STREAMS = 1024  #: default limit of open streams (InferStream, InferImageStream)
MAX_QUEUED_FRAMES = 32  #: default limit of frames in progress (decoding, queued, running, encoding)
SCHEDULING = ("fair", "fifo")  #: round-robin over client connections, or first come, first served
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _in_range(value: int, low: int, high: int) -> str | None:
    return None if low <= value <= high else f"must be in {low}..{high}, got {value}"


def _at_least(value: float, low: float) -> str | None:
    return None if value >= low else f"must be >= {low}, got {value}"


def _positive(value: float) -> str | None:
    return None if value > 0 else f"must be > 0, got {value}"


def _one_of(value: str, choices: tuple[str, ...]) -> str | None:
    return None if value in choices else f"must be one of {', '.join(choices)}, got {value!r}"


_NO_TLS = "needs TLS (a certificate and its key)"


@dataclass(frozen=True)
class ServerOptions:
    """The edge server's options; an impossible value raises :class:`OptionsError` on construction.

    ``serve`` uses the serving ones; ``torch_threads``, ``malloc_arenas``, ``grace_s`` and ``log_level`` concern the
    whole process and are applied by the ``edge-server`` command (:mod:`splitdet.edge_server.runner`).
    """

    host: str = "127.0.0.1"  #: address to listen on; 0.0.0.0 for all
    port: int = DEFAULT_PORT  #: 0 picks a free one
    device: str = "auto"  #: auto, cpu, cuda or cuda:N
    workers: int = 4  #: threads that decode frames and encode answers
    max_batch: int = 1  #: frames per model call
    max_batch_delay_ms: float = 5.0  #: longest wait for a batch to fill
    scheduling: str = "fair"  #: order of queued frames, one of SCHEDULING
    tls_cert: str | Path | None = None  #: PEM certificate chain; with tls_key, TLS
    tls_key: str | Path | None = None  #: PEM private key
    tls_client_ca: str | Path | None = None  #: mutual TLS: client certificates must be signed by this CA (PEM)
    token: str | None = field(default=None, repr=False)  #: the bearer token clients must present (the secret itself)
    allow_insecure_token: bool = False  #: accept a token without TLS (loopback tests)
    max_message_mb: float = 16  #: largest message in MB
    max_streams: int = MAX_STREAMS  #: open streams at most
    max_queued_frames: int = MAX_QUEUED_FRAMES  #: frames in progress at most
    keepalive_s: float = 30.0  #: ping interval and ping timeout of every connection
    torch_threads: int | None = None  #: intra-op threads for CPU inference; None: torch's
    metrics_port: int | None = None  #: Prometheus /metrics port; None: not served, 0: a free one
    trim_idle_s: float = 1.0  #: give freed heap back to the OS once idle this long after work; 0: never
    malloc_arenas: int = 2  #: glibc malloc arenas at most (M_ARENA_MAX); 0: glibc's default
    grace_s: float = 5.0  #: on SIGTERM/SIGINT, time to finish the frames in progress
    log_level: str = "INFO"  #: one of LOG_LEVELS

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem is not None:
            raise OptionsError(*problem)

    def problem(self) -> tuple[str, str] | None:
        """The first impossible value, as (field, message); None when every value can work."""
        tls = self.tls_cert is not None and self.tls_key is not None
        checks: list[tuple[str, str | None]] = [
            ("port", _in_range(self.port, 0, 65535)),
            ("workers", _at_least(self.workers, 1)),
            ("max_batch", _at_least(self.max_batch, 1)),
            ("max_batch_delay_ms", _at_least(self.max_batch_delay_ms, 0)),
            ("scheduling", _one_of(self.scheduling, SCHEDULING)),
            (
                "tls_key",
                "is required with tls_cert (TLS needs a certificate and its key)"
                if self.tls_key is None and self.tls_cert is not None
                else None,
            ),
            (
                "tls_cert",
                "is required with tls_key (TLS needs a certificate and its key)"
                if self.tls_cert is None and self.tls_key is not None
                else None,
            ),
            (
                "tls_client_ca",
                f"{_NO_TLS} to check client certificates" if self.tls_client_ca is not None and not tls else None,
            ),
            ("token", "must not be empty" if self.token == "" else None),
            (
                "token",
                f"{_NO_TLS}: the token would travel in plaintext; allow_insecure_token allows it on loopback"
                if self.token is not None and not tls and not self.allow_insecure_token
                else None,
            ),
            ("max_message_mb", _positive(self.max_message_mb)),
            ("max_streams", _at_least(self.max_streams, 1)),
            ("max_queued_frames", _at_least(self.max_queued_frames, 1)),
            ("keepalive_s", _positive(self.keepalive_s)),
            ("torch_threads", None if self.torch_threads is None else _at_least(self.torch_threads, 1)),
            ("metrics_port", None if self.metrics_port is None else _in_range(self.metrics_port, 0, 65535)),
            ("trim_idle_s", _at_least(self.trim_idle_s, 0)),
            ("malloc_arenas", _at_least(self.malloc_arenas, 0)),
            ("grace_s", _at_least(self.grace_s, 0)),
            ("log_level", _one_of(self.log_level, LOG_LEVELS)),
        ]
        return next(((name, message) for name, message in checks if message is not None), None)

    @property
    def fair(self) -> bool:
        """Whether queued frames are served round-robin over client connections."""
        return self.scheduling == "fair"


DEFAULTS = ServerOptions()  #: every option at its default (the command line's defaults too)
