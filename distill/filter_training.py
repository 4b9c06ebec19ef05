"""Training the neural filter (``method: filter``): a :class:`splitdet.common.filter.PresenceFilter` on the frozen
head's stem.

The head does not change while the filter trains, so the stem features of the training set are computed once and
kept in memory as float16 when they fit (:data:`CACHE_BYTES`; otherwise once per epoch). The filter learns a
presence map: the cells holding the centre of an object of interest
(:func:`splitdet.distill.datasets.objects_of_interest`) are positive, cells far from every object negative, the rest of
each object's box is not scored; plus the frame's own label on the map's maximum, which is what the device thresholds.

The threshold is chosen on the ``calibration`` split (for COCO: the last ``num_images`` of train2017, left out of
training) for ``train.target_recall`` of the frames with objects of interest, and the ``val`` split, which neither
training nor the threshold has seen, is what the checkpoint's metrics report.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset
from tqdm import tqdm

from splitdet.common.checkpoint import load_checkpoint, save_checkpoint
from splitdet.common.filter import PRESENCE_STRIDE, PresenceFilter
from splitdet.common.models import build_model
from splitdet.common.split import Head
from splitdet.distill.config import ConfigError, TrainConfig
from splitdet.distill.dataset_config import DatasetInfo, build_dataset
from splitdet.distill.datasets import has_object_of_interest, objects_of_interest
from splitdet.distill.evaluate import object_labels

CACHE_BYTES = 6 << 30  #: stem features of the training set are cached when they take at most this much
STEM_STRIDE = 4  #: input pixels per stem pixel (ResNet's conv1 + maxpool)
CENTRE_FRACTION = 0.25  #: cells within this share of an object's box size from its centre are positive


@dataclass
class Example:
    """One training frame: its stem features (float16 ``[64, h, w]``) or image, and its targets."""

    stem: Tensor | None
    image: Tensor | None
    presence: Tensor  #: float ``[gh, gw]``: 1 where an object of interest has its centre
    scored: Tensor  #: float ``[gh, gw]``: 0 where the cell is not scored
    label: float  #: 1.0 when the frame holds an object of interest


def choose_threshold(probs: np.ndarray, positive: np.ndarray, target_recall: float) -> float:
    """Largest threshold that keeps at least ``target_recall`` of the positive frames."""
    pos = np.sort(probs[positive])
    if len(pos) == 0:
        return 0.0
    allowed = math.floor((1.0 - target_recall) * len(pos) + 1e-9)
    return float(pos[min(allowed, len(pos) - 1)])


def map_size(stem_hw: tuple[int, int]) -> tuple[int, int]:
    """The presence map's size for a stem of ``stem_hw`` (two stride-2, padding-1 convolutions)."""
    return tuple(math.ceil(math.ceil(n / 2) / 2) for n in stem_hw)


def presence_targets(
    target: dict[str, Any],
    original_hw: tuple[int, int],
    resized_hw: tuple[int, int],
    grid_hw: tuple[int, int],
    label_ids: list[int] | None,
) -> tuple[Tensor, Tensor, float]:
    """The presence map's targets for one frame: (presence, scored, frame label), boxes scaled to the resize."""
    presence, scored = torch.zeros(grid_hw), torch.ones(grid_hw)
    cell = STEM_STRIDE * PRESENCE_STRIDE
    ys = (torch.arange(grid_hw[0]) + 0.5) * cell
    xs = (torch.arange(grid_hw[1]) + 0.5) * cell
    sy, sx = resized_hw[0] / original_hw[0], resized_hw[1] / original_hw[1]
    wanted = objects_of_interest(target, original_hw, label_ids)
    for box, interesting in zip(torch.as_tensor(target["boxes"]).tolist(), wanted.tolist(), strict=True):
        x0, y0, x1, y1 = box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy
        inside = ((ys >= y0) & (ys <= y1))[:, None] & ((xs >= x0) & (xs <= x1))[None, :]
        scored[inside] = 0.0
        if not interesting:
            continue
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        centre = ((ys - cy).abs() <= CENTRE_FRACTION * (y1 - y0))[:, None] & (
            (xs - cx).abs() <= CENTRE_FRACTION * (x1 - x0)
        )[None, :]
        centre[min(int(cy // cell), grid_hw[0] - 1), min(int(cx // cell), grid_hw[1] - 1)] = True
        presence[centre], scored[centre] = 1.0, 1.0
    return presence, scored, float(bool(wanted.any()))


class FilterLoss(nn.Module):
    """Dense presence loss (scored cells) + the frame label on the map's maximum, both binary cross-entropy."""

    def forward(self, logits: Tensor, valid: Tensor, presence: Tensor, scored: Tensor, labels: Tensor) -> Tensor:
        frame = logits.masked_fill(valid == 0, float("-inf")).amax(dim=(1, 2))
        weight = scored * valid
        dense = nn.functional.binary_cross_entropy_with_logits(logits, presence, weight=weight, reduction="sum")
        return nn.functional.binary_cross_entropy_with_logits(frame, labels) + dense / weight.sum().clamp(min=1.0)


def _splits(section: dict[str, Any]) -> tuple[Dataset, Dataset, Dataset, DatasetInfo]:
    """(train, calibration, val) and the dataset info; COCO's calibration frames are held out of train2017."""
    if "calibration" not in section:
        raise ConfigError("method filter needs dataset.calibration (num_images, seed): the threshold is chosen there")
    val, _ = build_dataset(section, "val")
    if section.get("type", "synthetic") == "coco":
        full, info = build_dataset(section, "train")
        n = int(section["calibration"]["num_images"])
        if not 0 < n < len(full):
            raise ConfigError(f"dataset.calibration.num_images must be in 1..{len(full) - 1}, got {n}")
        return Subset(full, range(len(full) - n)), Subset(full, range(len(full) - n, len(full))), val, info
    train, info = build_dataset(section, "train")
    calibration, _ = build_dataset(section, "calibration")
    return train, calibration, val, info


def _student(config: TrainConfig) -> tuple[nn.Module, Any]:
    ckpt = load_checkpoint(config.student["ckpt"])
    if not ckpt.config.is_student:
        raise ConfigError(f"student.ckpt {config.student['ckpt']} holds a teacher; the filter needs a student")
    model = build_model(ckpt.config.replace(with_filter=True, filter_arch="presence"))
    kept = {k: v for k, v in ckpt.state_dict.items() if not k.startswith("neural_filter.")}
    model.load_state_dict({**model.state_dict(), **kept})
    return model.eval(), ckpt


@torch.no_grad()
def _examples(
    head: Head, dataset: Dataset, label_ids: list[int] | None, cache: bool, desc: str, chunk: int = 32
) -> list[Example]:
    out = []
    bar = tqdm(total=len(dataset), desc=desc, dynamic_ncols=True)
    for start in range(0, len(dataset), chunk):
        items = [dataset[i] for i in range(start, min(start + chunk, len(dataset)))]
        # one padded batch: for same-size frames (all synthetic ones) the stems are those of one frame at a time
        x, meta = head.preprocess([image for image, _ in items])
        stems = head.stem(x)
        for i, (image, target) in enumerate(items):
            h, w = (math.ceil(n / STEM_STRIDE) for n in meta.image_sizes[i])
            stem = stems[i, :, :h, :w]
            presence, scored, label = presence_targets(
                target, meta.original_sizes[i], meta.image_sizes[i], map_size((h, w)), label_ids
            )
            out.append(Example(stem.half() if cache else None, None if cache else image, presence, scored, label))
        bar.update(len(items))
    bar.close()
    return out


def _batch(head: Head, examples: list[Example], flip: bool) -> tuple[Tensor, ...]:
    """Stems padded to the batch's largest (padded cells are not scored), targets, labels; optionally mirrored."""
    with torch.no_grad():
        stems = [
            e.stem.float() if e.stem is not None else head.stem(head.preprocess([e.image])[0])[0] for e in examples
        ]
    h, w = max(s.shape[-2] for s in stems), max(s.shape[-1] for s in stems)
    gh, gw = map_size((h, w))
    x = torch.zeros(len(stems), stems[0].shape[0], h, w)
    presence, scored, valid = (
        torch.zeros(len(stems), gh, gw),
        torch.zeros(len(stems), gh, gw),
        torch.zeros_like(x[:, 0, :gh, :gw]),
    )
    for i, (s, e) in enumerate(zip(stems, examples, strict=True)):
        x[i, :, : s.shape[-2], : s.shape[-1]] = s
        eh, ew = e.presence.shape
        presence[i, :eh, :ew], scored[i, :eh, :ew], valid[i, :eh, :ew] = e.presence, e.scored, 1.0
    labels = torch.tensor([e.label for e in examples])
    if flip:
        x, presence, scored, valid = x.flip(-1), presence.flip(-1), scored.flip(-1), valid.flip(-1)
    return x, valid, presence, scored, labels


@torch.no_grad()
def frame_probabilities(head: Head, dataset: Dataset, label_ids: list[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """P(object) per frame, exactly as the device's head computes it, and whether each frame holds an object of
    interest."""
    probs, positive = [], []
    for i in range(len(dataset)):
        image, target = dataset[i]
        x, _ = head.preprocess([image])
        probs.append(float(head.object_probability(head.stem(x))[0]))
        positive.append(has_object_of_interest(target, tuple(image.shape[-2:]), label_ids))
    return np.array(probs), np.array(positive, dtype=bool)


def skip_rates(probs: np.ndarray, positive: np.ndarray, threshold: float) -> dict[str, float]:
    """Share of empty frames skipped and of frames with objects of interest lost at ``threshold``."""
    skipped = probs < threshold
    return {
        "empty_frames": int((~positive).sum()),
        "frames_with_objects": int(positive.sum()),
        "empty_frames_skipped": float(skipped[~positive].mean()) if (~positive).any() else float("nan"),
        "object_frames_wrongly_skipped": float(skipped[positive].mean()) if positive.any() else float("nan"),
    }


def run(config: TrainConfig, resume: bool = False) -> Path:
    """Train the filter as ``config`` says, choose its threshold on the calibration split; return ``final.pt``."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("method filter trains in one process (on cached features): run it without torchrun")
    torch.manual_seed(config.seed)
    model, source = _student(config)
    head = Head(model)
    neural_filter: PresenceFilter = model.neural_filter
    train_set, calibration_set, val_set, info = _splits(config.dataset)
    label_ids = object_labels(source.config.arch, list(info.class_names))
    out = Path(config.output)
    optimizer = torch.optim.Adam(
        neural_filter.parameters(), **{k: v for k, v in config.optimizer.items() if k != "type"}
    )
    start_epoch = 0
    if resume and (out / "last.pt").is_file():
        state = load_checkpoint(out / "last.pt")
        model.load_state_dict(state.state_dict)
        optimizer.load_state_dict(state.training["optimizer"])
        start_epoch = int(state.training["epoch"])
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(config.milestones), config.gamma)
    scheduler.last_epoch = start_epoch
    image = train_set[0][0]
    stem_bytes = 2 * 64 * math.ceil(image.shape[-2] / STEM_STRIDE) * math.ceil(image.shape[-1] / STEM_STRIDE)
    examples = _examples(head, train_set, label_ids, len(train_set) * stem_bytes <= CACHE_BYTES, "filter: stems")
    criterion = FilterLoss()
    generator = torch.Generator().manual_seed(config.seed)
    kwargs = {
        "class_names": source.class_names,
        "keypoint_names": source.keypoint_names,
        "codec": source.codec,
        "entropy": source.entropy,
    }
    metrics: dict[str, Any] = dict(source.metrics)
    for epoch in range(start_epoch, config.epochs):
        neural_filter.train()
        order = torch.randperm(len(examples), generator=generator).tolist()
        steps = range(0, len(order) - config.batch_size + 1, config.batch_size)
        bar = tqdm(steps, desc=f"filter epoch {epoch + 1}/{config.epochs}", dynamic_ncols=True)
        running = 0.0
        for n, start in enumerate(bar):
            flip = bool(torch.rand(1, generator=generator) < 0.5)
            x, valid, presence, scored, labels = _batch(
                head, [examples[i] for i in order[start : start + config.batch_size]], flip
            )
            loss = criterion(neural_filter.presence_map(x), valid, presence, scored, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running = 0.9 * running + 0.1 * loss.item() if n else loss.item()
            if n % config.log_every == 0:
                bar.set_postfix(loss=f"{running:.4g}")
        scheduler.step()
        neural_filter.eval()
        metrics["train_loss"] = running
        training = {
            "epoch": epoch + 1,
            "optimizer": optimizer.state_dict(),
            "method": "filter",
            "config": str(config.source or ""),
        }
        save_checkpoint(model, out / "last.pt", training=training, metrics=metrics, **kwargs)
    neural_filter.eval()
    probs, positive = frame_probabilities(head, calibration_set, label_ids)
    threshold = choose_threshold(probs, positive, config.target_recall)
    val_probs, val_positive = frame_probabilities(head, val_set, label_ids)
    metrics["filter"] = {
        "filter_threshold": threshold,
        "target_recall": config.target_recall,
        "calibration_frames": len(probs),
        "val_frames": len(val_probs),
        **skip_rates(val_probs, val_positive, threshold),
    }
    final = out / "final.pt"
    training = {"epoch": config.epochs, "method": "filter", "config": str(config.source or "")}
    save_checkpoint(model, final, training=training, metrics=metrics, filter_threshold=threshold, **kwargs)
    return final
