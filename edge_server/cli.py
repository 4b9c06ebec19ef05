"""``edge-server``: serve a checkpoint's tail (split) and whole model (offload) over gRPC."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

import torch

from common.checkpoint import CheckpointError
from common.demo import demo_checkpoint
from common.token_file import TokenFileError, read_token
from edge_server.server import ServerError, serve

log = logging.getLogger("edge_server")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-server",
        description="Serve the tail (bottleneck frames) and the whole model (images) of a split checkpoint.",
    )
    p.add_argument("--ckpt", metavar="PATH", help="student checkpoint (default: the bundled demo checkpoint)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=50051, help="port (default 50051; 0 picks a free one)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument(
        "--workers",
        type=int,
        default=4,
        metavar="N",
        help="gRPC worker threads; each open stream holds one (default 4)",
    )
    p.add_argument("--max-batch", type=int, default=1, metavar="N", help="frames per model call (default 1)")
    p.add_argument(
        "--max-batch-delay-ms",
        type=float,
        default=5.0,
        metavar="T",
        help="longest wait for a batch to fill (default 5)",
    )
    p.add_argument("--tls-cert", metavar="F", help="PEM certificate chain; with --tls-key serves TLS")
    p.add_argument("--tls-key", metavar="F", help="PEM private key")
    p.add_argument("--token-file", metavar="F", help="require 'authorization: Bearer <token>' with this file's token")
    p.add_argument("--max-message-mb", type=float, default=16, metavar="M", help="largest message (default 16)")
    p.add_argument(
        "--max-calls",
        type=int,
        metavar="N",
        help="open calls at most, running or waiting for a worker; more are refused with RESOURCE_EXHAUSTED "
        "(default 2 x --workers)",
    )
    p.add_argument(
        "--keepalive-s",
        type=float,
        default=30.0,
        metavar="T",
        help="ping every connection each T s and drop it when a ping goes unanswered for T s, freeing the streams "
        "of vanished clients (default 30)",
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
    p.add_argument("--grace-s", type=float, default=5.0, help="on SIGTERM/SIGINT, time to finish frames (default 5)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.torch_threads is not None:
            if args.torch_threads < 1:
                raise ServerError("--torch-threads must be >= 1")
            torch.set_num_threads(args.torch_threads)
        ckpt = Path(args.ckpt) if args.ckpt else demo_checkpoint()
        token = read_token(args.token_file) if args.token_file else None
        server = serve(
            ckpt,
            host=args.host,
            port=args.port,
            device=args.device,
            workers=args.workers,
            max_batch=args.max_batch,
            max_batch_delay_ms=args.max_batch_delay_ms,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            token=token,
            max_message_mb=args.max_message_mb,
            max_calls=args.max_calls,
            keepalive_s=args.keepalive_s,
            metrics_port=args.metrics_port or None,
        )
    except (CheckpointError, ServerError, TokenFileError, FileNotFoundError) as e:
        print(f"edge-server: error: {e}", file=sys.stderr)
        return 2
    log.info(
        "serving %s (fingerprint %s) on %s, max batch %d",
        ckpt,
        server.engine.fingerprint,
        server.engine.description,
        args.max_batch,
    )
    for sig in (signal.SIGTERM, signal.SIGINT):  # both stop the server the way Ctrl-C does: KeyboardInterrupt
        signal.signal(sig, signal.default_int_handler)
    if server.metrics_port is not None:
        print(f"metrics on {args.host}:{server.metrics_port}", flush=True)
    print(f"listening on {args.host}:{server.port}", flush=True)
    try:
        server.wait()
    except KeyboardInterrupt:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        log.info("shutting down: finishing in-flight frames (up to %.1f s)", args.grace_s)
        server.stop(args.grace_s)
    return 0
