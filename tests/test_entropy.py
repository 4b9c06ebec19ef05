"""The entropy codec: exact rANS round trips through the wire, fallback, hostile strings, tables in the handshake,
a golden bitstream, a torch-free client side, and a tiny entropic training step."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from splitdet.common import entropy
from splitdet.common.checkpoint import load_checkpoint, save_checkpoint
from splitdet.common.codec_settings import CodecSettings
from splitdet.common.entropy import EntropyError, EntropyTables
from splitdet.common.split import BatchMeta, bottleneck_shape
from splitdet.common.wire import FrameError, FrameLimits, RetiredCodecError, decode_frame, encode_frame
from splitdet.proto import splitdet_pb2 as pb
from tests.conftest import TINY_NAMES, tiny_student

ENTROPY = CodecSettings(quantization="entropy")
ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


def tables(channels: int = 3, init_scale: float = 10.0, fit_std: float | None = 2.0) -> EntropyTables:
    """Tables of a CompressAI EntropyBottleneck, fitted a little to Gaussian latents of ``fit_std``."""
    from compressai.entropy_models import EntropyBottleneck

    from splitdet.distill.entropic import tables_of

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
    return tables_of(eb), eb


def latent(n=1, c=3, batch=(96, 128), std=2.0, seed=1) -> tuple[np.ndarray, BatchMeta]:
    _, h, w = bottleneck_shape(c, batch)
    x = (np.random.default_rng(seed).standard_normal((n, c, h, w)) * std).astype(np.float32)
    meta = BatchMeta([batch] * n, [batch] * n, batch)
    return x, meta


def rounded(x: np.ndarray, tab: EntropyTables) -> np.ndarray:
    """What the server decodes: ``round(x - median) + median`` in float32."""
    medians = tab.medians.reshape(1, -1, 1, 1)
    return np.round(x - medians) + medians


def test_round_trip_is_exact_and_costs_what_compressai_s_did():
    tab, eb = tables()
    x, _ = latent()
    coded = entropy.encode(x, tab)
    assert coded == entropy.encode(x.copy(), tab)  # deterministic
    got = entropy.decode_symbols(coded, x.shape, tab)
    assert got.dtype == np.int32 and np.array_equal(got, entropy.symbols(x, tab))
    assert np.array_equal(got, eb.quantize(torch.from_numpy(x), "symbols", eb._get_medians()).numpy())
    compressai_bytes = len(eb.compress(torch.from_numpy(x))[0])
    assert abs(len(coded) - compressai_bytes) <= 0.02 * compressai_bytes + 8, (len(coded), compressai_bytes)
    # a "server" that only has the tables from a saved state (torch tensors) decodes the same symbols
    server_tables = EntropyTables.from_state({k: torch.from_numpy(v) for k, v in tab.state().items()})
    assert np.array_equal(entropy.decode_symbols(coded, x.shape, server_tables), got)
    assert server_tables.fingerprint == tab.fingerprint
    assert np.array_equal(entropy.decode(coded, x.shape, tab), rounded(x, tab))


def test_every_int32_symbol_round_trips_through_the_escapes():
    tab, _ = tables()
    rng = np.random.default_rng(4)
    sym = rng.integers(-3, 4, size=(2, 3, 8, 12)).astype(np.int32)
    lo, hi = int(tab.offset[0]), int(tab.offset[0] + tab.cdf_length[0]) - 3  # the tables' range in channel 0
    extremes = [-(2**31), 2**31 - 1, -(2**16), 2**16, -40, 40, lo - 1, lo, hi, hi + 1]
    sym[1, 0, 0, : len(extremes)] = extremes
    sym[0, 2, 5, :3] = [-(2**31), 2**31 - 1, 0]
    coded = entropy.encode_symbols(sym, tab)
    assert np.array_equal(entropy.decode_symbols(coded, sym.shape, tab), sym)
    with pytest.raises(EntropyError, match="int32"):
        entropy.encode_symbols(sym.astype(np.int64) * 2**20, tab)
    with pytest.raises(EntropyError, match="beyond the int32"):
        entropy.symbols(np.full((1, 3, 2, 2), 3e9, np.float32), tab)


def golden_tables() -> EntropyTables:
    return EntropyTables.from_state(dict(np.load(DATA / "entropy_tables.npz")))


def golden_latent() -> np.ndarray:
    """A seeded [1, 3, 12, 16] latent with escapes of one and two 16-bit chunks at both ends of the tables."""
    y = (np.random.default_rng(2024).standard_normal((1, 3, 12, 16)) * 3).astype(np.float32)
    y[0, 0, 0, :4] = [40.0, -40.0, 1e5, -1e5]
    y[0, 2, 11, 15] = 2e9
    return y


def test_golden_bitstream():
    """The coder's output for a fixed latent is fixed: a change of coder, table handling or constriction version
    that alters the stream fails here (and would break old clients against new servers, or the reverse).

    ``tests/data/entropy_tables.npz`` holds the bundled entropic demo's tables, written by
    ``python -c "import numpy as np; from splitdet.common.checkpoint import load_checkpoint; np.savez('tests/data/
    entropy_tables.npz', **load_checkpoint('common/assets/demo-entropic-faster_rcnn-resnet18-b3ch.pt').entropy
    .state())"``; ``tests/data/entropy_golden.bin`` by ``python -c "from common import entropy; from
    tests.test_entropy import golden_latent, golden_tables; open('tests/data/entropy_golden.bin', 'wb')
    .write(entropy.encode(golden_latent(), golden_tables()))"`` (constriction 0.5.0).
    """
    tab, y = golden_tables(), golden_latent()
    # the fingerprint the torch-tensor tables had (commit a101dc3): checkpoints keep their fingerprints
    assert tab.fingerprint == "0bd6206ed4a228beb09ac0d2212a956bf141482062a8dd644073e9f5b271906c"
    golden = (DATA / "entropy_golden.bin").read_bytes()
    assert entropy.encode(y, tab) == golden
    assert np.array_equal(entropy.decode_symbols(golden, y.shape, tab), entropy.symbols(y, tab))
    assert np.array_equal(entropy.decode(golden, y.shape, tab), rounded(y, tab))


def test_tables_travel_as_json():
    tab, _ = tables()
    back = EntropyTables.from_json(tab.to_json())
    assert back.fingerprint == tab.fingerprint
    for text in ["{}", "not json", tab.to_json().replace('"int32"', '"int64"', 1)]:
        with pytest.raises(EntropyError):
            EntropyTables.from_json(text)


@pytest.mark.parametrize("n", [1, 2])
def test_wire_round_trip_is_exact(n):
    tab, _ = tables()
    x, meta = latent(n=n)
    frame = pb.BottleneckFrame.FromString(
        encode_frame(x, meta, ENTROPY, "fp", 7, entropy_tables=tab).SerializeToString()
    )
    assert frame.quantization == pb.ENTROPY and frame.compression == pb.RANS_CONSTRICTION and frame.dtype == pb.INT32
    zstd8 = encode_frame(x, meta, CodecSettings("per_tensor"))
    assert len(frame.payload) < len(zstd8.payload)
    y, meta2 = decode_frame(frame, FrameLimits(channels=3, entropy=tab))
    assert np.array_equal(y.numpy(), rounded(x, tab)) and meta2 == meta
    assert encode_frame(x, meta, ENTROPY, "fp", 7, entropy_tables=tab) == frame  # deterministic


def test_frames_never_cost_more_than_8bit_zstd():
    tab, _ = tables()
    for std in (300.0, 1e12):  # far outside the tables: every symbol escapes; beyond int32 symbols
        x, meta = latent(std=std)
        frame = encode_frame(x, meta, ENTROPY, entropy_tables=tab)
        assert frame.quantization == pb.PER_TENSOR and frame.compression == pb.ZSTD
        assert frame == encode_frame(x, meta, CodecSettings("per_tensor"))
        y, _ = decode_frame(frame, FrameLimits(entropy=tab))
        assert np.abs(y.numpy() - x).max() <= (x.max() - x.min()) / 255 / 2 * 1.001


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
    rng = np.random.default_rng(3)
    payloads = [b"", frame.payload[:4], frame.payload[: len(frame.payload) // 8 * 4], b"\xff" * len(frame.payload)]
    payloads += [frame.payload[4:], frame.payload + b"\x01\x00\x00\x00", bytes(4)]
    payloads += [rng.bytes(k) for k in (4, 8, 500, len(frame.payload))]
    start = time.perf_counter()
    for payload in payloads:  # garbage decodes to some symbols or is refused; never crashes or hangs
        try:
            y, _ = decode_frame(_mutated(frame, payload=payload), limits)
            assert y.shape == x.shape and torch.isfinite(y).all()
        except FrameError:
            pass
    assert time.perf_counter() - start < 5
    n_symbols = x.size
    for payload, message in [
        (b"\xff" * (entropy.max_string_bytes(n_symbols) + 1), "longer than"),
        (frame.payload + b"\x01", "32-bit words"),
        (frame.payload[4:], "more data than its symbols"),
        (bytes(8), "zero word"),
    ]:
        with pytest.raises(FrameError, match=message):
            decode_frame(_mutated(frame, payload=payload), limits)
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
        ({"compression": pb.ZSTD}, "RANS_CONSTRICTION"),
        ({"dtype": pb.UINT8}, "does not go with"),
        ({"scale": [1.0]}, "no scale"),
    ]:
        with pytest.raises(FrameError, match=message):
            decode_frame(_mutated(frame, **changes), limits)
    # the 8-bit codec does not accept rANS
    plain = encode_frame(x, meta, CodecSettings("per_tensor"))
    with pytest.raises(FrameError, match="does not go with"):
        decode_frame(_mutated(plain, compression=pb.RANS_CONSTRICTION), limits)


def test_compressai_rans_frames_are_refused_as_retired():
    """An old client's frame (CompressAI's rANS, compression RANS) is never decoded as something else."""
    tab, _ = tables()
    x, meta = latent()
    frame = encode_frame(x, meta, ENTROPY, entropy_tables=tab)
    for old in (frame, encode_frame(x, meta, CodecSettings("per_tensor"))):
        with pytest.raises(RetiredCodecError, match=r"CompressAI's rANS.*no longer decodes; upgrade the client"):
            decode_frame(_mutated(old, compression=pb.RANS), FrameLimits(channels=3, entropy=tab))


def test_bad_tables_are_refused():
    tab, _ = tables()
    state = tab.state()
    state["quantized_cdf"][0, 2] = state["quantized_cdf"][0, 1]
    with pytest.raises(EntropyError, match="strictly increasing"):
        EntropyTables.from_state(state)
    with pytest.raises(EntropyError, match="lack"):
        EntropyTables.from_state({"medians": tab.medians})


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def test_client_side_codes_entropy_frames_without_torch_or_compressai(tmp_path):
    """encode_frame -> bytes -> decode_bottleneck in an interpreter where importing torch or compressai fails."""
    tab, _ = tables()
    x, _ = latent(n=2)
    (tmp_path / "tables.json").write_text(tab.to_json())
    np.save(tmp_path / "x.npy", x)
    code = f"""
import sys
sys.modules["torch"] = None  # any import of torch (or of something that needs it) raises ImportError
sys.modules["compressai"] = None
import numpy as np
from pathlib import Path
from splitdet.common.entropy import EntropyTables
from splitdet.common.codec_settings import CodecSettings
from splitdet.common.shapes import BatchMeta
from splitdet.common.wire import FrameLimits, decode_bottleneck, encode_frame
from splitdet.proto import splitdet_pb2 as pb
tab = EntropyTables.from_json(Path({str(tmp_path / "tables.json")!r}).read_text())
x = np.load({str(tmp_path / "x.npy")!r})
meta = BatchMeta([(96, 128)] * 2, [(96, 128)] * 2, (96, 128))
data = encode_frame(x, meta, CodecSettings("entropy"), "fp", 1, tab).SerializeToString()
frame = pb.BottleneckFrame.FromString(data)
y, _ = decode_bottleneck(frame, FrameLimits(channels=3, entropy=tab))
np.save({str(tmp_path / "y.npy")!r}, y)
print(frame.compression == pb.RANS_CONSTRICTION, "torch" in sys.modules and sys.modules["torch"] is not None)
"""
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "False"]
    assert np.array_equal(np.load(tmp_path / "y.npy"), rounded(x, tab))


def test_server_decode_path_does_not_load_compressai(tmp_path):
    """The edge server's modules, its checkpoint loading and an entropy frame's decoding leave CompressAI (and the
    pandas and scipy its package import pulls in) unloaded."""
    tab, _ = tables()
    entropic_checkpoint(tmp_path / "e.pt", tab)
    code = f"""
import sys
import numpy as np
import splitdet.edge_server.server
from splitdet.common.checkpoint import load_checkpoint
from splitdet.common.codec_settings import CodecSettings
from splitdet.common.shapes import BatchMeta
from splitdet.common.wire import FrameLimits, decode_frame, encode_frame
ckpt = load_checkpoint({str(tmp_path / "e.pt")!r})
x = np.random.default_rng(0).standard_normal((1, 3, 28, 36)).astype(np.float32)
meta = BatchMeta([(96, 128)], [(96, 128)], (96, 128))
frame = encode_frame(x, meta, CodecSettings("entropy"), "fp", 1, ckpt.entropy)
y, _ = decode_frame(frame, FrameLimits(channels=3, entropy=ckpt.entropy))
print(frame.quantization, sorted(m for m in sys.modules if m.split(".")[0] in ("compressai", "pandas", "scipy")))
"""
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split(maxsplit=1) == [str(pb.ENTROPY), "[]\n"]


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
    assert loaded.entropy.medians.dtype == np.float32  # float32 even in an fp16 checkpoint
    assert np.array_equal(loaded.entropy.medians, tab.medians)
    assert a.head_digest == b.head_digest == plain.head_digest
    assert len({a.fingerprint, b.fingerprint, plain.fingerprint}) == 3


def test_client_and_server_run_the_entropy_codec_and_refuse_other_tables(tmp_path, capsys):
    import json

    from splitdet.edge_server.server import serve
    from splitdet.mobile_client import cli

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


def test_client_refuses_a_server_that_decodes_only_compressai_rans(tmp_path, capsys, monkeypatch):
    from splitdet.edge_server import servicer
    from splitdet.edge_server.server import serve
    from splitdet.mobile_client import cli

    entropic_checkpoint(tmp_path / "a.pt", tables()[0])
    old = ([pb.NONE, pb.PER_TENSOR, pb.PER_CHANNEL, pb.HALF, pb.ENTROPY], [pb.RAW, pb.ZSTD, pb.RANS])
    monkeypatch.setattr(servicer, "accepted_codecs", lambda tables: old)  # what an older server advertises
    server = serve(tmp_path / "a.pt", host="127.0.0.1", port=0, workers=1)
    try:
        argv = ["--server", f"127.0.0.1:{server.port}", "--synthetic", "1", "--ckpt", str(tmp_path / "a.pt")]
        code = cli.main(argv)
    finally:
        server.stop(0)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "does not decode constriction rANS" in err, err


def test_a_tiny_entropic_step_lowers_its_loss():
    from splitdet.distill.config import Term
    from splitdet.distill.entropic import EntropicMimic
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
    from splitdet.common import model_cli

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
    from splitdet.mobile_client import cli

    entropic_checkpoint(tmp_path / "p.pt", None)
    code = cli.main(
        ["--mode", "local", "--synthetic", "1", "--ckpt", str(tmp_path / "p.pt"), "--quantization", "entropy"]
    )
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "entropic checkpoint" in err


def test_entropic_config_needs_beta_and_beta_needs_entropic():
    from pathlib import Path

    from splitdet.distill.config import ConfigError, parse_config, read_raw

    raw = read_raw(Path("configs/entropic/synthetic-faster_rcnn-resnet18-b3ch-beta8.yaml"))
    assert parse_config(raw).beta == 8.0
    del raw["train"]["criterion"]["beta"]
    with pytest.raises(ConfigError, match=r"needs train\.criterion\.beta"):
        parse_config(raw)
    raw["train"]["criterion"]["beta"] = 1.0
    raw["method"] = "ghnd"
    with pytest.raises(ConfigError, match="for method entropic only"):
        parse_config(raw)
