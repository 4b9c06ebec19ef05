"""Regenerate the Python code for ``splitdet.proto`` (committed; tests check it is up to date)."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

PROTO_DIR = Path(__file__).resolve().parent
PROTO_FILES = ("splitdet.proto",)


def generate(out_dir: Path) -> None:
    """Write ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` for every proto file under ``out_dir/splitdet/proto``
    (the proto files are seen as ``splitdet/proto/NAME``, so the generated imports name ``splitdet.proto``)."""
    (out_dir / "splitdet" / "proto").mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).resolve().parent / "_proto"
    for name in PROTO_FILES:
        args = [
            "protoc",
            f"-Isplitdet/proto={PROTO_DIR}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            f"splitdet/proto/{name}",
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {name}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        for path in sorted((Path(tmp) / "splitdet" / "proto").iterdir()):
            shutil.copyfile(path, (Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_DIR) / path.name)
