"""The bundled demo checkpoint, served by ``edge-server`` and used by ``mobile-client`` when no ``--ckpt`` is given."""

from __future__ import annotations

from pathlib import Path

DEMO_CHECKPOINT: Path = Path(__file__).resolve().parent / "assets" / "demo-ghnd-faster_rcnn-resnet18-b3ch.pt"
#: the same detector with an entropy-coded bottleneck (``python -m distill.make_entropic_demo``)
ENTROPIC_DEMO_CHECKPOINT: Path = DEMO_CHECKPOINT.with_name("demo-entropic-faster_rcnn-resnet18-b3ch.pt")


def demo_checkpoint() -> Path:
    """Path of the demo checkpoint; ``FileNotFoundError`` (one line) when it has not been made yet."""
    if not DEMO_CHECKPOINT.is_file():
        raise FileNotFoundError(
            f"the demo checkpoint {DEMO_CHECKPOINT} is not there yet: make it with "
            "`python -m distill.make_demo` (see README) or pass --ckpt"
        )
    return DEMO_CHECKPOINT
