"""Reproduce the bundled entropic demo checkpoint from the bundled GHND demo, in one command:

    python -m splitdet.distill.make_entropic_demo [--reuse]

Trains the two stages of ``CONFIGS`` in turn (an entropic student initialised from, and mimicking, the GHND demo;
then its tail fine-tuned on the decoded bottleneck; ``--reuse`` keeps a stage's existing ``runs/`` result), gives
the result the GHND demo's neural filter and threshold (the filter reads the stem, which both share, unchanged) and
exports it in float16 with its entropy tables next to the GHND demo.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from splitdet.common.checkpoint import load_checkpoint, save_checkpoint
from splitdet.common.demo import DEMO_CHECKPOINT, ENTROPIC_DEMO_CHECKPOINT
from splitdet.common.models import build_model
from splitdet.distill import cli

#: (config, what it writes): stage one (bottleneck + entropy model), stage two (the tail, on the decoded bottleneck)
CONFIGS = (
    (
        "configs/entropic/synthetic-faster_rcnn-resnet18-b3ch-beta8-long.yaml",
        Path("runs/entropic-synthetic-faster_rcnn-resnet18-b3ch-beta8-long/final.pt"),
    ),
    (
        "configs/finetune/synthetic-entropic-faster_rcnn-resnet18-b3ch-beta8-long.yaml",
        Path("runs/finetune-entropic-synthetic-faster_rcnn-resnet18-b3ch-beta8-long/final.pt"),
    ),
)
TRAINED = CONFIGS[-1][1]


def export(trained: Path = TRAINED, out: Path = ENTROPIC_DEMO_CHECKPOINT) -> None:
    ckpt, ghnd = load_checkpoint(trained), load_checkpoint(DEMO_CHECKPOINT)
    model = build_model(ckpt.config.replace(with_filter=True, filter_arch=ghnd.config.filter_arch))
    filter_state = {k: v for k, v in ghnd.state_dict.items() if k.startswith("neural_filter.")}
    stem = ("backbone.body.conv1.", "backbone.body.bn1.")
    if any(not ckpt.state_dict[k].equal(v) for k, v in ghnd.state_dict.items() if k.startswith(stem)):
        raise SystemExit(f"{trained} does not share the GHND demo's stem: its neural filter would not fit")
    model.load_state_dict({**ckpt.state_dict, **filter_state})
    saved = save_checkpoint(
        model.eval(),
        out,
        **{**ckpt.save_options(), "filter_threshold": ghnd.filter_threshold},
        half=True,
        training={
            "exported_from": str(trained),
            "configs": [config for config, _ in CONFIGS],
            "filter_from": DEMO_CHECKPOINT.name,
        },
        metrics={**ckpt.metrics, "filter": ghnd.metrics.get("filter", {})},
    )
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, float16, fingerprint {saved.fingerprint})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m splitdet.distill.make_entropic_demo", description=__doc__)
    parser.add_argument(
        "--reuse", action="store_true", help="keep a stage's runs/ result when it exists (default: retrain both)"
    )
    args = parser.parse_args(argv)
    for config, trained in CONFIGS:
        if not (args.reuse and trained.is_file()):
            code = cli.main(["--config", config])
            if code:
                return code
    export()
    return 0


if __name__ == "__main__":
    sys.exit(main())
