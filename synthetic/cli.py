"""Command line of the synthetic data generator: ``python -m splitdet.synthetic write OUT_DIR`` (COCO-2017 layout) or
``python -m splitdet.synthetic montage OUT.png``.
"""

from __future__ import annotations

import argparse

from splitdet import synthetic
from splitdet.synthetic.coco import write_coco_dataset
from splitdet.synthetic.config import SceneConfig
from splitdet.synthetic.draw import montage


def main(argv: list[str] | None = None) -> int:
    """CLI: ``write OUT_DIR`` (COCO-2017 layout) or ``montage OUT.png``."""
    p = argparse.ArgumentParser(prog="python -m splitdet.synthetic", description=synthetic.__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pw = sub.add_parser("write", help="write a COCO-2017-layout synthetic dataset")
    pw.add_argument("out_dir")
    pw.add_argument("--split", default="val")
    pm = sub.add_parser("montage", help="draw generated images with their annotations")
    pm.add_argument("out_png")
    for q in (pw, pm):
        q.add_argument("-n", "--num-images", type=int, default=12)
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--height", type=int, default=160)
        q.add_argument("--width", type=int, default=160)
        q.add_argument("--empty-ratio", type=float, default=0.2)
    args = p.parse_args(argv)
    cfg = SceneConfig(height=args.height, width=args.width, empty_ratio=args.empty_ratio)
    if args.cmd == "write":
        out = write_coco_dataset(args.out_dir, args.num_images, args.seed, cfg, split=args.split)
    else:
        out = montage(args.out_png, args.num_images, args.seed, cfg)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
