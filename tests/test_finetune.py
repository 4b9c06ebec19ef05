"""Stage two of entropic training: the tail learns on what the server decodes; the device's half, the codec and the
bytes on the wire do not change."""

from __future__ import annotations

import pytest
import torch
import yaml

from splitdet.common.checkpoint import load_checkpoint, save_checkpoint
from splitdet.common.codec_settings import CodecSettings
from splitdet.common.models import build_student
from splitdet.common.split import split
from splitdet.common.wire import encode_frame
from splitdet.distill.cli import main
from splitdet.distill.config import ConfigError, parse_config
from tests.test_distill import SMALL, base_config
from tests.test_entropy import tables

NAMES = ["__background__", "person", "disc", "triangle", "star", "ring", "cross"]


def entropic_student(path):
    torch.manual_seed(0)
    model = build_student("faster_rcnn", "resnet18", 3, num_classes=len(NAMES), **SMALL).eval()
    with torch.no_grad():
        model.backbone.body.layer1.encoder[-1].weight.mul_(0.05)  # small latents: rANS beats 8-bit + zstd
    tab, _ = tables()
    return save_checkpoint(model, path, NAMES, codec=CodecSettings(quantization="entropy"), entropy=tab)


def test_a_tiny_finetune_step_lowers_the_detection_loss_and_moves_only_the_tail(tmp_path):
    from splitdet.distill.finetune import TailFinetune

    ckpt = entropic_student(tmp_path / "e.pt")
    model = ckpt.build_model()
    module = TailFinetune(model, ckpt).train()
    images = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    targets = [
        {"boxes": torch.tensor([[8.0, 8.0, 40.0, 44.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.tensor([[20.0, 10.0, 60.0, 30.0]]), "labels": torch.tensor([4])},
    ]
    optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=3e-4)
    losses = []
    for _ in range(8):
        torch.manual_seed(0)  # the same RPN and RoI samples at every step
        loss = sum(module(images, targets).values())
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < 0.95 * losses[0]
    head, tail = split(model)
    assert head.digest() == ckpt.head_digest and tail.digest() != ckpt.tail_digest


def test_finetune_run_keeps_the_codec_tables_and_bytes_and_changes_the_tail(tmp_path):
    source = entropic_student(tmp_path / "e.pt")
    raw = {
        "method": "finetune",
        "output": str(tmp_path / "ft"),
        "dataset": base_config(tmp_path)["dataset"],
        "student": {"ckpt": str(tmp_path / "e.pt")},
        "train": {"epochs": 1, "batch_size": 2, "optimizer": {"type": "Adam", "lr": 0.001}},
    }
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(raw))
    assert main(["--config", str(tmp_path / "ft.yaml")]) == 0
    tuned = load_checkpoint(tmp_path / "ft" / "final.pt")
    assert tuned.codec == source.codec and tuned.entropy.fingerprint == source.entropy.fingerprint
    assert tuned.head_digest == source.head_digest and tuned.tail_digest != source.tail_digest
    assert tuned.fingerprint != source.fingerprint  # a server with the old tail refuses the new client, and back
    image = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(9))]
    payloads = []
    for ckpt in (source, tuned):
        out = split(ckpt.build_model())[0](image)
        frame = encode_frame(out.bottleneck.detach().numpy(), out.meta, ckpt.codec, entropy_tables=ckpt.entropy)
        payloads.append(frame.payload)
    assert payloads[0] == payloads[1]


def test_finetune_needs_a_student_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match="missing key 'ckpt'"):
        parse_config({"method": "finetune", "output": "x", "dataset": {}, "student": {}})
    with pytest.raises(ConfigError, match="unknown key 'bottleneck_channels'"):
        parse_config({"method": "finetune", "output": "x", "dataset": {}, "student": {"bottleneck_channels": 3}})
