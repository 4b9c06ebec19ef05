"""The committed generated gRPC code matches ``proto/``."""

from __future__ import annotations

from pathlib import Path

from splitdet.proto.generate import PROTO_DIR, generate


def test_generated_code_is_up_to_date(tmp_path):
    generate(tmp_path)
    generated = sorted(p.name for p in (tmp_path / "splitdet" / "proto").iterdir())
    assert generated == ["splitdet_pb2.py", "splitdet_pb2.pyi", "splitdet_pb2_grpc.py"]
    for name in generated:
        committed = Path(PROTO_DIR, name).read_text()
        assert (tmp_path / "splitdet" / "proto" / name).read_text() == committed, (
            f"{name} is stale: run python -m splitdet.proto.generate"
        )
