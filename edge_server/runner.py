"""What ``edge-server`` does once its options are checked: load the checkpoint, serve, stop on a signal."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import torch

from splitdet.common.checkpoint import CheckpointError
from splitdet.common.demo import demo_checkpoint
from splitdet.edge_server.options import ServerOptions
from splitdet.edge_server.server import ServerError, serve

log = logging.getLogger("edge_server")


def run(ckpt: str | Path | None, options: ServerOptions) -> int:
    """Serve ``ckpt`` (None: the bundled demo checkpoint) until SIGTERM or SIGINT; the exit status."""
    logging.basicConfig(level=options.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if options.torch_threads is not None:
            torch.set_num_threads(options.torch_threads)
        path = Path(ckpt) if ckpt else demo_checkpoint()
        if not ckpt:
            log.info("serving the bundled demo checkpoint: it knows only the synthetic scenes' classes")
        server = serve(path, options)
    except (CheckpointError, ServerError, FileNotFoundError) as e:
        print(f"edge-server: error: {e}", file=sys.stderr)
        return 2
    log.info(
        "serving %s (fingerprint %s) on %s, max batch %d",
        path,
        server.engine.fingerprint,
        server.engine.description,
        options.max_batch,
    )
    for sig in (signal.SIGTERM, signal.SIGINT):  # both stop the server the way Ctrl-C does: KeyboardInterrupt
        signal.signal(sig, signal.default_int_handler)
    if server.metrics_port is not None:
        print(f"metrics on {options.host}:{server.metrics_port}", flush=True)
    print(f"listening on {options.host}:{server.port}", flush=True)
    try:
        server.wait()
    except KeyboardInterrupt:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        log.info("shutting down: finishing in-flight frames (up to %.1f s)", options.grace_s)
        server.stop(options.grace_s)
    return 0
