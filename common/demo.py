"""The bundled demo checkpoints, served by ``edge-server`` and used by ``mobile-client`` when no ``--ckpt`` is given.

They are torch files, so they are not in the wheel (the torch-free device install carries none): they ship with the
repository (``common/assets/``, found by an editable install of a checkout) and in the Docker image, which sets
``SPLITDET_ASSETS`` to the folder holding them.
"""

from __future__ import annotations

import os
from pathlib import Path

#: the folder holding the demo checkpoints: $SPLITDET_ASSETS, else ``common/assets/`` of this checkout
ASSETS: Path = Path(os.environ.get("SPLITDET_ASSETS") or Path(__file__).resolve().parent / "assets")
DEMO_CHECKPOINT: Path = ASSETS / "demo-ghnd-faster_rcnn-resnet18-b3ch.pt"
#: the same detector with an entropy-coded bottleneck (``python -m splitdet.distill.make_entropic_demo``)
ENTROPIC_DEMO_CHECKPOINT: Path = DEMO_CHECKPOINT.with_name("demo-entropic-faster_rcnn-resnet18-b3ch.pt")


def demo_checkpoint() -> Path:
    """Path of the demo checkpoint; ``FileNotFoundError`` (one line) when it is not there."""
    if not DEMO_CHECKPOINT.is_file():
        raise FileNotFoundError(
            f"the demo checkpoint {DEMO_CHECKPOINT} is not there: it ships with the repository's common/assets/ "
            "(install a checkout with pip install -e '.[full]'), or set SPLITDET_ASSETS to the folder holding it, or "
            "make it with `python -m splitdet.distill.make_demo`, or pass --ckpt"
        )
    return DEMO_CHECKPOINT
