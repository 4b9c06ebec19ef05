"""``edge-server``: serve a checkpoint's tail (split) and whole model (offload) over gRPC.

The command line is checked before torch is imported, so ``--help`` and usage errors answer at once.
"""

from __future__ import annotations

import argparse
import sys

from splitdet.common.endpoint import DEFAULT_PORT

MAX_STREAMS = 1024  # default limit of open streams (InferStream, InferImageStream)
MAX_QUEUED_FRAMES = 32  # default limit of frames in progress (decoding, queued, running, encoding)
INSECURE_TOKEN = (
    "--token-file needs TLS (--tls-cert and --tls-key): the token would travel in plaintext; "
    "--allow-insecure-token allows it (loopback tests)"
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-server",
        description="Serve the tail (bottleneck frames) and the whole model (images) of a split checkpoint.",
    )
    p.add_argument("--ckpt", metavar="PATH", help="student checkpoint (default: the bundled demo checkpoint)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 for all (default: %(default)s)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port; 0 picks a free one (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument(
        "--workers",
        type=int,
        default=4,
        metavar="N",
        help="threads that decode frames and encode answers; streams hold none (default: %(default)s)",
    )
    p.add_argument("--max-batch", type=int, default=1, metavar="N", help="frames per model call (default: %(default)s)")
    p.add_argument(
        "--max-batch-delay-ms",
        type=float,
        default=5.0,
        metavar="T",
        help="longest wait for a batch to fill (default: %(default)s)",
    )
    p.add_argument(
        "--scheduling",
        choices=["fair", "fifo"],
        default="fair",
        help="order of queued frames: round-robin over client connections, so a greedy client cannot starve the "
        "others, or first come, first served (default: %(default)s)",
    )
    p.add_argument(
        "--tls-cert", metavar="F", help="PEM certificate chain; with --tls-key serves TLS (default: plaintext)"
    )
    p.add_argument("--tls-key", metavar="F", help="PEM private key (default: none)")
    p.add_argument(
        "--tls-client-ca",
        metavar="F",
        help="mutual TLS: require client certificates signed by this CA (PEM) (default: none required)",
    )
    p.add_argument(
        "--token-file",
        metavar="F",
        help="require 'authorization: Bearer <token>' with this file's token; needs TLS (default: no token)",
    )
    p.add_argument(
        "--allow-insecure-token",
        action="store_true",
        help="accept --token-file without TLS, the token in plaintext; for loopback tests (default: %(default)s)",
    )
    p.add_argument(
        "--max-message-mb", type=float, default=16, metavar="M", help="largest message in MB (default: %(default)s)"
    )
    p.add_argument(
        "--max-streams",
        type=int,
        default=MAX_STREAMS,
        metavar="N",
        help="open streams at most (an idle one costs memory only, see the README); more are refused at once with "
        "RESOURCE_EXHAUSTED and a retry hint (default: %(default)s)",
    )
    p.add_argument(
        "--max-queued-frames",
        type=int,
        default=MAX_QUEUED_FRAMES,
        metavar="N",
        help="frames in progress at most (decoding, queued for the model, running, encoding); more are refused at "
        "once with RESOURCE_EXHAUSTED and a retry hint, grpc-retry-pushback-ms (default: %(default)s)",
    )
    p.add_argument(
        "--keepalive-s",
        type=float,
        default=30.0,
        metavar="T",
        help="ping every connection each T s and drop it when a ping goes unanswered for T s, freeing the streams "
        "of vanished clients (default: %(default)s)",
    )
    p.add_argument(
        "--torch-threads",
        type=int,
        metavar="N",
        help="intra-op threads for CPU inference (default: torch's, one per physical core); "
        "the model runs on one batch thread, so this pool is not oversubscribed",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        metavar="N",
        help="serve Prometheus metrics at http://HOST:N/metrics, HOST being --host (default 0: not served)",
    )
    p.add_argument(
        "--trim-idle-s",
        type=float,
        default=1.0,
        metavar="T",
        help="give freed heap memory back to the OS (malloc_trim) once idle for T s after work; 0: never "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--malloc-arenas",
        type=int,
        default=2,
        metavar="N",
        help="glibc malloc arenas at most (M_ARENA_MAX), so freed memory can go back to the OS; 0: glibc's "
        "default, 8 per core (default: %(default)s)",
    )
    p.add_argument(
        "--grace-s",
        type=float,
        default=5.0,
        help="on SIGTERM/SIGINT: NOT_SERVING and new streams refused at once, then up to this many seconds to "
        "finish the frames in progress (default: %(default)s)",
    )
    p.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="(default: %(default)s)"
    )
    return p


def check_args(args: argparse.Namespace) -> str | None:
    """The first option value that cannot work, as a one-line message; None when all can."""
    checks = [
        (0 <= args.port <= 65535, "--port must be in 0..65535"),
        (0 <= args.metrics_port <= 65535, "--metrics-port must be in 0..65535"),
        (args.workers >= 1, "--workers must be >= 1"),
        (args.max_batch >= 1, "--max-batch must be >= 1"),
        (args.max_batch_delay_ms >= 0, "--max-batch-delay-ms must be >= 0"),
        (args.max_message_mb > 0, "--max-message-mb must be positive"),
        (args.max_streams >= 1, "--max-streams must be >= 1"),
        (args.max_queued_frames >= 1, "--max-queued-frames must be >= 1"),
        (args.keepalive_s > 0, "--keepalive-s must be positive"),
        (args.torch_threads is None or args.torch_threads >= 1, "--torch-threads must be >= 1"),
        (args.grace_s >= 0, "--grace-s must be >= 0"),
        (args.trim_idle_s >= 0, "--trim-idle-s must be >= 0"),
        (args.malloc_arenas >= 0, "--malloc-arenas must be >= 0"),
        ((args.tls_cert is None) == (args.tls_key is None), "TLS needs both --tls-cert and --tls-key"),
        (args.tls_client_ca is None or args.tls_cert is not None, "--tls-client-ca needs --tls-cert and --tls-key"),
        (args.token_file is None or args.tls_cert is not None or args.allow_insecure_token, INSECURE_TOKEN),
    ]
    return next((message for ok, message in checks if not ok), None)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    problem = check_args(args)
    if problem is not None:
        print(f"edge-server: error: {problem}", file=sys.stderr)
        return 2
    if args.malloc_arenas:
        from splitdet.edge_server.memory import limit_arenas  # ctypes only: before torch and gRPC start their threads

        limit_arenas(args.malloc_arenas)
    from splitdet.edge_server import runner  # torch and the model load only once the command line is known to be good

    return runner.run(args)
