"""Reproduce the bundled demo checkpoint: synthetic teacher -> GHND 3-channel student -> fp16 -> neural filter.

    python -m splitdet.distill.make_demo [--resume]

Each stage writes under ``runs/`` (see the configs); the student is exported to ``common/assets/``'s demo file, the
filter config trains the neural filter on that file's (frozen) head, and the result replaces it.
"""

from __future__ import annotations

import argparse
import sys

from splitdet.common import model_cli
from splitdet.common.demo import DEMO_CHECKPOINT
from splitdet.distill import cli

STAGES = ("configs/teacher/synthetic-faster_rcnn-resnet18.yaml", "configs/ghnd/synthetic-demo.yaml")
STUDENT = "runs/ghnd-synthetic-faster_rcnn-resnet18-b3ch/final.pt"
FILTER_CONFIG = "configs/filter/synthetic-demo.yaml"  #: its student.ckpt is the demo file
FILTERED = "runs/filter-synthetic-faster_rcnn-resnet18-b3ch/final.pt"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m splitdet.distill.make_demo", description=__doc__)
    parser.add_argument("--resume", action="store_true", help="continue interrupted stages")
    args = parser.parse_args(argv)
    resume = ["--resume"] if args.resume else []
    for config in STAGES:
        code = cli.main(["--config", config, *resume])
        if code:
            return code
    code = model_cli.main(["export", STUDENT, "--half", "--out", str(DEMO_CHECKPOINT)])
    if code:
        return code
    code = cli.main(["--config", FILTER_CONFIG, *resume])
    if code:
        return code
    return model_cli.main(["export", FILTERED, "--half", "--out", str(DEMO_CHECKPOINT)])


if __name__ == "__main__":
    sys.exit(main())
