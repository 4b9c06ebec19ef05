"""``python -m splitdet.edge_server.healthcheck HOST:PORT``: exit 0 when the server's gRPC health service says SERVING.

Used by the container healthcheck; the health service needs no token.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(target: str, service: str = "", timeout_s: float = 3.0, tls_ca: str | None = None) -> str:
    """The serving status name (``SERVING``, ``NOT_SERVING``, ...); raises grpc.RpcError when unreachable."""
    if tls_ca:
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(Path(tls_ca).read_bytes()))
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m splitdet.edge_server.healthcheck", description=__doc__.splitlines()[0])
    p.add_argument("target", help="HOST:PORT of the edge server")
    p.add_argument("--service", default="", help="service name to ask about (default: the whole server)")
    p.add_argument("--timeout-s", type=float, default=3.0)
    p.add_argument("--tls-ca", metavar="F", help="PEM root certificate when the server serves TLS")
    args = p.parse_args(argv)
    try:
        status = check(args.target, args.service, args.timeout_s, args.tls_ca)
    except grpc.RpcError as e:
        print(f"{args.target}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    raise SystemExit(main())
