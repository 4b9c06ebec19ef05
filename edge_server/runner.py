"""What ``edge-server`` does once its command line is checked: load the checkpoint, serve, stop on a signal."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

import torch

from splitdet.common.checkpoint import CheckpointError
from splitdet.common.demo import demo_checkpoint
from splitdet.common.token_file import TokenFileError, read_token
from splitdet.edge_server.server import ServerError, serve

log = logging.getLogger("edge_server")


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; the exit status."""
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.torch_threads is not None:
            torch.set_num_threads(args.torch_threads)
        ckpt = Path(args.ckpt) if args.ckpt else demo_checkpoint()
        if args.ckpt is None:
            log.info("serving the bundled demo checkpoint: it knows only the synthetic scenes' classes")
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
            max_streams=args.max_streams,
            max_queued_frames=args.max_queued_frames,
            keepalive_s=args.keepalive_s,
            metrics_port=args.metrics_port or None,
            tls_client_ca=args.tls_client_ca,
            allow_insecure_token=args.allow_insecure_token,
            trim_idle_s=args.trim_idle_s,
            fair=args.scheduling == "fair",
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
