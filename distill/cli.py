"""``split-distill``: train a teacher, an HND/GHND student or a neural filter from a YAML config."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from splitdet.common.extras import require
from splitdet.distill.config import ConfigError, load_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="split-distill", description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="YAML file, e.g. configs/ghnd/...yaml")
    parser.add_argument("--output", type=Path, help="write checkpoints here (default: the config's output)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set train.epochs=8 --set dataset.train.num_images=500 (default: none)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from OUTPUT/last.pt when it exists (default: start afresh)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    require("torch", "full", "split-distill")
    try:
        config = load_config(args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as e:
        print(f"split-distill: error: {e}", file=sys.stderr)
        return 2
    if args.output is not None:
        config = replace(config, output=args.output)
    from splitdet.common.checkpoint import CheckpointError  # torch loads only once the config is known to be valid
    from splitdet.distill.train import run

    try:
        final = run(config, resume=args.resume)
    except (CheckpointError, ConfigError, FileNotFoundError) as e:
        print(f"split-distill: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("split-distill: interrupted; resume with --resume", file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 writes checkpoints
        print(f"wrote {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
