"""Prometheus metrics of one server, in its own registry, and the HTTP endpoint that serves them at ``/metrics``.

:class:`splitdet.edge_server.stats.Stats` records into :class:`Metrics` at the same points as into the GetStats
counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

STAGE_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    """Counters, gauges and histograms of one server in a private ``registry`` (servers in one process never
    collide). Labels: ``method`` is the RPC's short name (``Infer``), ``code`` a gRPC status code name, ``stage``
    one of :data:`splitdet.edge_server.stats.SERVER_STAGES`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames = Counter("splitdet_frames", "Frames answered", ["method"], registry=r)
        self.received_bytes = Counter("splitdet_received_bytes", "Request bytes of frames", ["method"], registry=r)
        self.sent_bytes = Counter("splitdet_sent_bytes", "Response bytes of answered frames", ["method"], registry=r)
        self.errors = Counter("splitdet_errors", "Frames and calls refused, by code", ["method", "code"], registry=r)
        self.in_flight = Gauge("splitdet_in_flight_frames", "Frames being worked on now", ["method"], registry=r)
        self.streams = Gauge("splitdet_open_streams", "Streaming calls open now", ["method"], registry=r)
        self.refused = Counter(
            "splitdet_refused",
            "Streams and frames refused for capacity (limit: streams, frames) or while draining",
            ["method", "limit"],
            registry=r,
        )
        self.batch_size = Histogram("splitdet_batch_size", "Frames per model call", buckets=BATCH_BUCKETS, registry=r)
        self.stage_seconds = Histogram(
            "splitdet_stage_seconds",
            "Time per answered frame in each server stage (queue, decode, tail, encode, total)",
            ["stage"],
            buckets=STAGE_BUCKETS_S,
            registry=r,
        )


class MetricsServer:
    """``/metrics`` of a :class:`Metrics` over HTTP on ``host:port`` (0 picks a free port; :attr:`port` is the
    bound one); raises OSError when the address cannot be bound."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self._httpd, self._thread = start_http_server(port, addr=host, registry=metrics.registry)
        self.port: int = self._httpd.server_port

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
