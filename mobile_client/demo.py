"""``split-demo``: one command that starts an edge server on loopback and streams synthetic frames through it.

The server runs in this process (a background gRPC server on a free port) with the bundled demo checkpoint;
the client runs ``split`` mode with the neural filter (when the checkpoint has one), prints one JSON line per
frame on stdout and the summary on stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from splitdet.common.demo import demo_checkpoint
from splitdet.common.extras import require
from splitdet.mobile_client import cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="split-demo", description="Start an edge server on loopback and stream synthetic frames through it."
    )
    p.add_argument(
        "--frames", type=int, default=60, metavar="N", help="synthetic frames to stream (default: %(default)s)"
    )
    p.add_argument("--save-vis", metavar="DIR", help="write annotated frames into DIR (default: none written)")
    p.add_argument("--ckpt", metavar="PATH", help="checkpoint for both sides (default: the bundled demo checkpoint)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic video (default: %(default)s)")
    p.add_argument("--window", type=int, default=4, metavar="N", help="frames in flight (default: %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    require("torch", "full", "split-demo")
    if args.frames < 1 or args.window < 1:
        print("split-demo: error: --frames and --window must be >= 1", file=sys.stderr)
        return 2
    from splitdet.common.checkpoint import CheckpointError  # torch loads only once the command line is known to be good
    from splitdet.edge_server.server import ServerError, serve

    try:
        ckpt = Path(args.ckpt) if args.ckpt else demo_checkpoint()
        if ckpt.is_dir():
            raise FileNotFoundError(f"{ckpt} is a directory; give the checkpoint file inside it")
        if not ckpt.is_file():
            raise FileNotFoundError(f"checkpoint not found: {ckpt}")
        server = serve(ckpt, host="127.0.0.1", port=0)
    except (FileNotFoundError, CheckpointError, ServerError) as e:
        print(f"split-demo: error: {e}", file=sys.stderr)
        return 2
    print(f"split-demo: edge server listening on 127.0.0.1:{server.port} ({ckpt})", file=sys.stderr, flush=True)
    client_args = ["--server", f"127.0.0.1:{server.port}", "--ckpt", str(ckpt), "--mode", "split"]
    client_args += ["--synthetic", str(args.frames), "--seed", str(args.seed), "--window", str(args.window)]
    if args.save_vis:
        client_args += ["--save-vis", args.save_vis]
    try:
        return cli.main(client_args)
    finally:
        server.stop(0)
