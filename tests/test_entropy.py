"""The entropy codec: exact rANS round trips through the wire, fallback, hostile strings, tables in the handshake,
and a tiny entropic training step."""

from __future__ import annotations

import sys
import time

import pytest
import torch

from common import entropy
from common.checkpoint import load_checkpoint, save_checkpoint
from common.codec_settings import CodecSettings
from common.entropy import EntropyError, EntropyTables
from common.split import BatchMeta, bottleneck_shape
from common.wire import FrameError, FrameLimits, decode_frame, encode_frame
from proto import splitdet_pb2 as pb
from tests.conftest import TINY_NAMES, tiny_student

ENTROPY = CodecSettings(quantization="entropy")


def tables(channels: int = 3, init_scale: float = 10.0, fit_std: float | None = 2.0) -> EntropyTables:
    """Tables of a CompressAI EntropyBottleneck, fitted a little to Gaussian latents of ``fit_std``."""
    from compressai.entropy_models import EntropyBottleneck

    torch.manual_seed(0)
    eb = EntropyBottleneck(channels, init_scale=init_scale)
    if fit_std is not None:
        y = torch.randn(4, channels, 16, 16) * fit_std
        opt = torch.optim.Adam(eb.parameters(), lr=0.05)
        for _ in range(60):
            _, likelihoods = eb(y)
            loss = -torch.log2(likelihoods).sum() + eb.loss()
            opt.zero_grad()
            loss.backward()
            opt.step()
    eb.update(force=True)
    return EntropyTables.from_entropy_bottleneck(eb), eb


def latent(n=1, c=3, batch=(96, 128), std=2.0, seed=1):
    _, h, w = bottleneck_shape(c, batch)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g) * std
    meta = BatchMeta([batch] * n, [batch] * n, batch)
    return x, meta


def test_rans_string_is_compressai_s_and_decodes_to_identical_symbols():
    tab, eb = tables()
    x, _ = latent()
    coded = entropy.encode(x, tab)
    assert coded == eb.compress(x)[0]  # bit-identical to EntropyBottleneck.compress
    got = entropy.decode_symbols(coded, tuple(x.shape), tab)
    assert torch.equal(got, entropy.symbols(x, tab))
    # a "server" that only has the tables from a saved state decodes the same symbols
    server_tables = EntropyTables.from_state({k: v.clone() for k, v in tab.state().items()})
    assert torch.equal(entropy.decode_symbols(coded, tuple(x.shape), server_tables), got)
    assert server_tables.fingerprint == tab.fingerprint


@pytest.mark.parametrize("n", [1, 2])
def test_wire_round_trip_is_exact(n):
    tab, _ = tables()
    x, meta = latent(n=n)
    frame = pb.BottleneckFrame.FromString(
        encode_frame(x, meta, ENTROPY, "fp", 7, entropy_tables=tab).SerializeToString()
    )
    assert frame.quantization == pb.ENTROPY and frame.compression == pb.RANS and frame.dtype == pb.INT32
    zstd8 = encode_frame(x, meta, CodecSettings("per_tensor"))
    assert len(frame.payload) < len(zstd8.payload)
    y, meta2 = decode_frame(frame, FrameLimits(channels=3, entropy=tab))
    expected = torch.round(x - tab.medians.view(1, -1, 1, 1)) + tab.medians.view(1, -1, 1, 1)
    assert torch.equal(y, expected) and meta2 == meta
    assert encode_frame(x, meta, ENTROPY, "fp", 7, entropy_tables=tab) == frame  # deterministic


def test_frames_never_cost_more_than_8bit_zstd():
    tab, _ = tables()
    x, meta = latent(std=300.0)  # far outside the tables: every symbol escapes
    frame = encode_frame(x, meta, ENTROPY, entropy_tables=tab)
    assert frame.quantization == pb.PER_TENSOR and frame.compression == pb.ZSTD
    assert frame == encode_frame(x, meta, CodecSettings("per_tensor"))
    y, _ = decode_frame(frame, FrameLimits(entropy=tab))
    assert (y - x).abs().max() <= (x.max() - x.min()) / 255 / 2 + 1e-4


def test_entropy_codec_needs_tables():
    x, meta = latent()
    with pytest.raises(ValueError, match="entropy tables"):
        encode_frame(x, meta, ENTROPY)
    tab, _ = tables()
    frame = encode_frame(x, meta, ENTROPY, entropy_tables=tab)
    with pytest.raises(FrameError, match="no entropy tables"):
        decode_frame(frame)


def _mutated(frame: pb.BottleneckFrame, **changes) -> pb.BottleneckFrame:
    out = pb.BottleneckFrame()
    out.CopyFrom(frame)
    for k, v in changes.items():
        if isinstance(v, list):
            del getattr(out, k)[:]
            getattr(out, k).extend(v)
        elif isinstance(v, pb.ImageSize):
            getattr(out, k).CopyFrom(v)
        else:
            setattr(out, k, v)
    return out


def test_hostile_strings_and_shapes_are_frame_errors_quickly():
    tab, _ = tables()
    x, meta = latent()
    frame = encode_frame(x, meta, ENTROPY, entropy_tables=tab)
    limits = FrameLimits(channels=3, entropy=tab)
    g = torch.Generator().manual_seed(3)
    payloads = [b"", frame.payload[:3], frame.payload[: len(frame.payload) // 2], b"\xff" * len(frame.payload)]
    payloads += [bytes(torch.randint(0, 256, (k,), generator=g, dtype=torch.uint8).tolist()) for k in (1, 9, 500)]
    start = time.perf_counter()
    for payload in payloads:  # garbage decodes to some symbols or is refused; never crashes or hangs
        try:
            y, _ = decode_frame(_mutated(frame, payload=payload), limits)
            assert y.shape == x.shape and torch.isfinite(y).all()
        except FrameError:
            pass
    assert time.perf_counter() - start < 5
    n_symbols = x.numel()
    with pytest.raises(FrameError, match="longer than"):
        decode_frame(_mutated(frame, payload=b"\xff" * (entropy.max_string_bytes(n_symbols) + 1)), limits)
    with pytest.raises(FrameError, match="4 channels"):
        decode_frame(_mutated(frame, shape=[1, 4, *x.shape[2:]]), FrameLimits(entropy=tab))
    with pytest.raises(FrameError, match="channels, this model expects 3"):
        decode_frame(_mutated(frame, shape=[1, 6, *x.shape[2:]]), limits)
    huge = (8192, 8192)
    big = _mutated(
        frame,
        shape=[1, 3, *bottleneck_shape(3, huge)[1:]],
        batch_shape=pb.ImageSize(height=huge[0], width=huge[1]),
        image_sizes=[pb.ImageSize(height=huge[0], width=huge[1])],
    )
    with pytest.raises(FrameError, match="symbols"):
        decode_frame(big, FrameLimits(entropy=tab))
    for changes, message in [
        ({"compression": pb.ZSTD}, "rANS"),
        ({"dtype": pb.UINT8}, "does not go with"),
        ({"scale": [1.0]}, "no scale"),
    ]:
        with pytest.raises(FrameError, match=message):
            decode_frame(_mutated(frame, **changes), limits)
    # the 8-bit codec does not accept RANS
    plain = encode_frame(x, meta, CodecSettings("per_tensor"))
    with pytest.raises(FrameError, match="does not go with"):
        decode_frame(_mutated(plain, compression=pb.RANS), limits)


def test_bad_tables_are_refused():
    tab, _ = tables()
    state = tab.state()
    state["quantized_cdf"][0, 2] = state["quantized_cdf"][0, 1]
    with pytest.raises(EntropyError, match="strictly increasing"):
        EntropyTables.from_state(state)
    with pytest.raises(EntropyError, match="lack"):
        EntropyTables.from_state({"medians": tab.medians})


def test_compressai_package_is_not_imported_by_the_codec():
    tab, _ = tables()
    x, _ = latent()
    coded = entropy.encode(x, tab)
    entropy.decode(coded, tuple(x.shape), tab)
    code = (
        "import sys, torch; from common import entropy; entropy.rans(); "
        "print('pandas' in sys.modules, 'scipy' in sys.modules)"
    )
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def entropic_checkpoint(path, tab, seed=0):
    model = tiny_student("faster_rcnn", seed=seed)
    with torch.no_grad():
        model.backbone.body.layer1.encoder[-1].weight.mul_(0.05)  # small latents: rANS beats 8-bit + zstd
    codec = ENTROPY if tab is not None else CodecSettings()
    return save_checkpoint(model, path, TINY_NAMES, codec=codec, entropy=tab, half=True)


def test_checkpoint_keeps_tables_and_fingerprint_covers_them(tmp_path):
    tab, _ = tables()
    other, _ = tables(init_scale=4.0, fit_std=0.5)
    a = entropic_checkpoint(tmp_path / "a.pt", tab)
    b = entropic_checkpoint(tmp_path / "b.pt", other)
    plain = entropic_checkpoint(tmp_path / "p.pt", None)
    loaded = load_checkpoint(tmp_path / "a.pt")
    assert loaded.codec.quantization == "entropy" and loaded.entropy.fingerprint == tab.fingerprint
    assert torch.equal(loaded.entropy.medians, tab.medians)  # float32 even in an fp16 checkpoint
    assert a.head_digest == b.head_digest == plain.head_digest
    assert len({a.fingerprint, b.fingerprint, plain.fingerprint}) == 3


def test_client_and_server_run_the_entropy_codec_and_refuse_other_tables(tmp_path, capsys):
    import json

    from edge_server.server import serve
    from mobile_client import cli

    tab, _ = tables()
    other, _ = tables(init_scale=4.0, fit_std=0.5)
    entropic_checkpoint(tmp_path / "a.pt", tab)
    entropic_checkpoint(tmp_path / "b.pt", other)
    server = serve(tmp_path / "a.pt", host="127.0.0.1", port=0, workers=2)
    try:
        args = ["--server", f"127.0.0.1:{server.port}", "--synthetic", "2", "--no-filter", "--score-threshold", "0"]
        code = cli.main([*args, "--ckpt", str(tmp_path / "a.pt")])
        out, err = capsys.readouterr()
        lines = [json.loads(line) for line in out.splitlines()]
        assert code == 0 and len(lines) == 2 and all("error" not in f for f in lines), err
        code = cli.main([*args, "--ckpt", str(tmp_path / "b.pt")])
        out, err = capsys.readouterr()
        assert code == 2 and out == "" and "fingerprint" in err and len(err.strip().splitlines()) == 1
    finally:
        server.stop(0)
    # the bytes sent are the rANS strings: smaller than the same frames at 8 bits + zstd
    assert all(f["sent_bytes"] > 0 for f in lines)


def test_a_tiny_entropic_step_lowers_its_loss():
    from distill.config import Term
    from distill.entropic import EntropicMimic
    from tests.test_distill import pair

    student, teacher = pair()
    terms = [Term(f"backbone.body.layer{i}", f"backbone.body.layer{i}") for i in (1, 2, 3, 4)]
    mimic = EntropicMimic(student, teacher, terms, beta=1.0).train()
    images = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    mimic.fit_prior(images, steps=20)
    optimizer = torch.optim.Adam([p for p in mimic.parameters() if p.requires_grad], lr=1e-3)
    torch.manual_seed(0)
    before = {k: v.item() for k, v in mimic(images).items()}
    for _ in range(5):
        loss = sum(mimic(images).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.manual_seed(0)
    after = {k: v.item() for k, v in mimic(images).items()}
    assert set(after) == {"layer1", "layer2", "layer3", "layer4", "rate", "aux"}
    assert sum(after.values()) < sum(before.values())
    assert all(p.grad is None or not p.requires_grad for n, p in student.named_parameters() if "layer1" not in n)
    tab = mimic.tables()
    assert tab.channels == 3


def test_split_model_info_names_the_codec(tmp_path, capsys):
    from common import model_cli

    tab, _ = tables()
    entropic_checkpoint(tmp_path / "e.pt", tab)
    entropic_checkpoint(tmp_path / "p.pt", None)
    assert model_cli.main(["info", str(tmp_path / "e.pt")]) in (0, None)
    out = capsys.readouterr().out
    assert "codec          entropy: rANS" in out and tab.fingerprint[:16] in out
    assert model_cli.main(["info", str(tmp_path / "p.pt")]) in (0, None)
    assert "codec          8-bit per tensor + zstd (level 3)" in capsys.readouterr().out
    assert model_cli.main(["export", str(tmp_path / "e.pt"), "--out", str(tmp_path / "x.pt")]) in (0, None)
    assert load_checkpoint(tmp_path / "x.pt").entropy.fingerprint == tab.fingerprint


def test_client_refuses_entropy_codec_without_tables(tmp_path, capsys):
    from mobile_client import cli

    entropic_checkpoint(tmp_path / "p.pt", None)
    code = cli.main(
        ["--mode", "local", "--synthetic", "1", "--ckpt", str(tmp_path / "p.pt"), "--quantization", "entropy"]
    )
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "entropic checkpoint" in err


def test_entropic_config_needs_beta_and_beta_needs_entropic():
    from pathlib import Path

    from distill.config import ConfigError, parse_config, read_raw

    raw = read_raw(Path("configs/entropic/synthetic-faster_rcnn-resnet18-b3ch-beta8.yaml"))
    assert parse_config(raw).beta == 8.0
    del raw["train"]["criterion"]["beta"]
    with pytest.raises(ConfigError, match=r"needs train\.criterion\.beta"):
        parse_config(raw)
    raw["train"]["criterion"]["beta"] = 1.0
    raw["method"] = "ghnd"
    with pytest.raises(ConfigError, match="for method entropic only"):
        parse_config(raw)
