"""Reproduce the bundled demo checkpoint: synthetic teacher -> GHND 3-channel student -> neural filter -> fp16.

    python -m distill.make_demo [--resume]

Each stage writes under ``runs/`` (see the configs); the result replaces ``common/assets/``'s demo file.
"""

from __future__ import annotations

import argparse
import sys

from common import model_cli
from common.demo import DEMO_CHECKPOINT
from distill import cli

STAGES = (
    "configs/teacher/synthetic-faster_rcnn-resnet18.yaml",
    "configs/ghnd/synthetic-demo.yaml",
    "configs/filter/synthetic-demo.yaml",
)
FILTERED = "runs/filter-synthetic-faster_rcnn-resnet18-b3ch/final.pt"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distill.make_demo", description=__doc__)
    parser.add_argument("--resume", action="store_true", help="continue interrupted stages")
    args = parser.parse_args(argv)
    for config in STAGES:
        code = cli.main(["--config", config, *(["--resume"] if args.resume else [])])
        if code:
            return code
    return model_cli.main(["export", FILTERED, "--half", "--out", str(DEMO_CHECKPOINT)])


if __name__ == "__main__":
    sys.exit(main())
