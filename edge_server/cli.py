"""``edge-server``: serve a checkpoint's tail (split) and whole model (offload) over gRPC.

The command line is checked before torch is imported, so ``--help`` and usage errors answer at once: the flags are
mapped onto :class:`~splitdet.edge_server.options.ServerOptions`, which checks them; nothing past this module sees
the parsed command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from splitdet.common.extras import require
from splitdet.common.options import OptionsError, flag_message
from splitdet.common.token_file import TokenFileError, read_token
from splitdet.edge_server.options import DEFAULTS, LOG_LEVELS, SCHEDULING, ServerOptions

# --token-file carries the token option (a flag per field otherwise: --max-batch for max_batch)
FLAGS = {"token": "--token-file"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-server",
        description="Serve the tail (bottleneck frames) and the whole model (images) of a split checkpoint.",
    )
    p.add_argument("--ckpt", metavar="PATH", help="student checkpoint (default: the bundled demo checkpoint)")
    p.add_argument("--host", default=DEFAULTS.host, help="address to listen on; 0.0.0.0 for all (default: %(default)s)")
    p.add_argument("--port", type=int, default=DEFAULTS.port, help="port; 0 picks a free one (default: %(default)s)")
    p.add_argument("--device", default=DEFAULTS.device, help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument(
        "--workers",
        type=int,
        default=DEFAULTS.workers,
        metavar="N",
        help="threads that decode frames and encode answers; streams hold none (default: %(default)s)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=DEFAULTS.max_batch,
        metavar="N",
        help="frames per model call (default: %(default)s)",
    )
    p.add_argument(
        "--max-batch-delay-ms",
        type=float,
        default=DEFAULTS.max_batch_delay_ms,
        metavar="T",
        help="longest wait for a batch to fill (default: %(default)s)",
    )
    p.add_argument(
        "--scheduling",
        choices=SCHEDULING,
        default=DEFAULTS.scheduling,
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
        "--max-message-mb",
        type=float,
        default=DEFAULTS.max_message_mb,
        metavar="M",
        help="largest message in MB (default: %(default)s)",
    )
    p.add_argument(
        "--max-streams",
        type=int,
        default=DEFAULTS.max_streams,
        metavar="N",
        help="open streams at most (an idle one costs memory only, see the README); more are refused at once with "
        "RESOURCE_EXHAUSTED and a retry hint (default: %(default)s)",
    )
    p.add_argument(
        "--max-queued-frames",
        type=int,
        default=DEFAULTS.max_queued_frames,
        metavar="N",
        help="frames in progress at most (decoding, queued for the model, running, encoding); more are refused at "
        "once with RESOURCE_EXHAUSTED and a retry hint, grpc-retry-pushback-ms (default: %(default)s)",
    )
    p.add_argument(
        "--keepalive-s",
        type=float,
        default=DEFAULTS.keepalive_s,
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
        default=DEFAULTS.trim_idle_s,
        metavar="T",
        help="give freed heap memory back to the OS (malloc_trim) once idle for T s after work; 0: never "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--malloc-arenas",
        type=int,
        default=DEFAULTS.malloc_arenas,
        metavar="N",
        help="glibc malloc arenas at most (M_ARENA_MAX), so freed memory can go back to the OS; 0: glibc's "
        "default, 8 per core (default: %(default)s)",
    )
    p.add_argument(
        "--grace-s",
        type=float,
        default=DEFAULTS.grace_s,
        help="on SIGTERM/SIGINT: NOT_SERVING and new streams refused at once, then up to this many seconds to "
        "finish the frames in progress (default: %(default)s)",
    )
    p.add_argument("--log-level", default=DEFAULTS.log_level, choices=LOG_LEVELS, help="(default: %(default)s)")
    return p


def to_options(args: argparse.Namespace, token: str | None = None) -> ServerOptions:
    """The options the command line asks for, ``token`` being the token file's; raises OptionsError."""
    values: dict[str, Any] = {
        name: getattr(args, name)
        for name in ServerOptions.__dataclass_fields__
        if name not in ("token", "metrics_port")
    }
    return ServerOptions(**values, token=token, metrics_port=args.metrics_port or None)  # --metrics-port 0: not served


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    require("torch", "full", "edge-server")
    try:
        # every option is checked before the token file is read, with a stand-in for its token
        options = to_options(args, "<token file>" if args.token_file else None)
        if args.token_file:
            options = dataclasses.replace(options, token=read_token(args.token_file))
    except TokenFileError as e:
        print(f"edge-server: error: {e}", file=sys.stderr)
        return 2
    except OptionsError as e:
        print(f"edge-server: error: {flag_message(e, FLAGS)}", file=sys.stderr)
        return 2
    if options.malloc_arenas:
        from splitdet.edge_server.memory import limit_arenas  # ctypes only: before torch and gRPC start their threads

        limit_arenas(options.malloc_arenas)
    from splitdet.edge_server import runner  # torch and the model load only once the command line is known to be good

    return runner.run(args.ckpt, options)
