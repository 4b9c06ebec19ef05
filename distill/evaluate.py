"""Evaluate a (split) detector on a COCO-format dataset: COCO AP, distillation fidelity, bytes per frame, filter.

* :func:`predict` runs a model over a dataset, whole or split (head -> wire frame -> tail, no network, one image
  per frame), and returns COCO-format results plus per-image byte and filter statistics; the head of a split run
  is the torch head or an exported ONNX head (``split-eval --head``: the device's :class:`OnnxHead`, the same
  call the client makes, with the tail in torch).
* :func:`coco_eval` scores results with pycocotools' COCOeval (AP, AP50, AP75, AR100).
* :func:`teacher_as_ground_truth` turns a teacher's detections into ground truth, to score a student against it.
* :func:`jpeg_bytes` gives the JPEG size of every image, the baseline for bytes per frame.
* :func:`evaluate` puts it together into one report (see :func:`format_markdown`).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from tqdm import tqdm

from splitdet.common.checkpoint import Checkpoint, load_checkpoint
from splitdet.common.codec_settings import CodecSettings
from splitdet.common.entropy import EntropyTables
from splitdet.common.filter import DEFAULT_THRESHOLD
from splitdet.common.masks import binary_masks, encode_rle
from splitdet.common.split import split
from splitdet.common.wire import QUANTIZATION_TO_PB, FrameLimits, decode_frame, encode_frame
from splitdet.distill.datasets import coco_from_dict, has_object_of_interest

if TYPE_CHECKING:
    from splitdet.mobile_client.onnx_head import OnnxHead

__all__ = [
    "IOU_TYPES_BY_ARCH",
    "ImageStats",
    "Predictions",
    "coco_eval",
    "evaluate",
    "format_markdown",
    "iou_types",
    "jpeg_bytes",
    "object_labels",
    "predict",
    "teacher_as_ground_truth",
    "with_jpeg_quality",
]

IOU_TYPES_BY_ARCH: dict[str, tuple[str, ...]] = {
    "faster_rcnn": ("bbox",),
    "mask_rcnn": ("bbox", "segm"),
    "keypoint_rcnn": ("bbox", "keypoints"),
}
METRICS = ("AP", "AP50", "AP75", "AR100")
#: COCOeval ``stats`` index of each metric (same layout for bbox/segm; keypoints has its own)
_STATS_INDEX = {
    "bbox": {"AP": 0, "AP50": 1, "AP75": 2, "AR100": 8},
    "segm": {"AP": 0, "AP50": 1, "AP75": 2, "AR100": 8},
    "keypoints": {"AP": 0, "AP50": 1, "AP75": 2, "AR100": 5},
}
#: OKS sigma used for every keypoint when a dataset does not have COCO's 17 person keypoints
DEFAULT_OKS_SIGMA = 0.07
EIGHT_BIT = ("per_tensor", "per_channel")


@dataclass
class ImageStats:
    """Per-image statistics of one prediction run. Byte counts are ``None`` in whole mode or for skipped frames."""

    image_id: int
    has_object: bool
    raw_bytes: int | None = None  #: float32 bottleneck, C*h*w*4
    uint8_bytes: int | None = None  #: 8-bit bottleneck, C*h*w
    zstd_bytes: int | None = None  #: 8-bit + zstd wire payload
    payload_bytes: int | None = None  #: payload of the frame actually sent (the run's quantization)
    fallback: bool = False  #: entropy codec: the frame went as 8-bit + zstd, which was smaller
    object_prob: float | None = None
    skipped: bool = False
    bottleneck_error: float | None = None  #: ONNX head: mean |its bottleneck - the torch head's| / mean |torch's|


@dataclass
class Predictions:
    """COCO-format results (``image_id``, ``category_id``, ``bbox`` xywh, ``score``, optional
    ``segmentation`` RLE / ``keypoints``) and per-image statistics, in dataset order."""

    mode: str
    quantization: str | None
    results: list[dict[str, Any]] = field(default_factory=list)
    images: list[ImageStats] = field(default_factory=list)

    def mean_bytes(self) -> dict[str, float] | None:
        """Mean bytes per transmitted frame (raw float32, 8-bit, 8-bit+zstd, sent payload); ``None`` if none."""
        sent = [s for s in self.images if s.raw_bytes is not None]
        if not sent:
            return None
        keys = ("raw_bytes", "uint8_bytes", "zstd_bytes", "payload_bytes")
        out = {k.removesuffix("_bytes"): float(np.mean([getattr(s, k) for s in sent])) for k in keys}
        out["frames_sent"] = len(sent)
        if self.quantization == "entropy":
            out["fallback_frames"] = sum(s.fallback for s in sent)
        return out

    def bottleneck_error(self) -> float | None:
        """Mean over sent frames of the ONNX head's relative bottleneck error; ``None`` for the torch head."""
        errors = [s.bottleneck_error for s in self.images if s.bottleneck_error is not None]
        return float(np.mean(errors)) if errors else None

    def filter_stats(self) -> dict[str, float] | None:
        """Share of empty frames skipped and of frames with objects wrongly skipped; ``None`` without filter.

        "Objects" are objects of interest (:func:`splitdet.distill.datasets.objects_of_interest`): a frame holding only
        smaller ones counts as empty."""
        if not any(s.object_prob is not None for s in self.images):
            return None
        empty = [s for s in self.images if not s.has_object]
        full = [s for s in self.images if s.has_object]
        return {
            "empty_frames": len(empty),
            "frames_with_objects": len(full),
            "empty_skipped": sum(s.skipped for s in empty) / len(empty) if empty else 0.0,
            "objects_skipped": sum(s.skipped for s in full) / len(full) if full else 0.0,
            "skipped": sum(s.skipped for s in self.images) / len(self.images),
        }


def iou_types(arch: str) -> tuple[str, ...]:
    """The COCO iou types a model of ``arch`` can be scored on."""
    return IOU_TYPES_BY_ARCH[arch]


def object_labels(arch: str, class_names: list[str]) -> list[int] | None:
    """Labels that make a frame non-empty: every label, or only the person class for keypoint R-CNN."""
    if arch != "keypoint_rcnn":
        return None
    people = [i for i, name in enumerate(class_names) if name == "person"]
    return people or [1]


def _results_for_image(det: dict[str, Tensor], image_id: int, label_to_cat_id: dict[int, int]) -> list[dict]:
    boxes = det["boxes"].detach().cpu().float()
    if len(boxes) == 0:
        return []
    xywh = boxes.clone()
    xywh[:, 2:] -= xywh[:, :2]
    scores = det["scores"].detach().cpu().tolist()
    labels = det["labels"].detach().cpu().tolist()
    rles: list[dict] | None = None
    if "masks" in det:
        rles = encode_rle(binary_masks(det["masks"]))
    kps = kp_scores = None
    if "keypoints" in det:
        kps = det["keypoints"].detach().cpu().float().numpy()
        kp_scores = det["keypoints_scores"].detach().cpu().float().numpy()
    out = []
    for i, (label, score) in enumerate(zip(labels, scores, strict=True)):
        if int(label) not in label_to_cat_id:
            continue  # a label the dataset does not know (model trained on other classes)
        r: dict[str, Any] = {
            "image_id": int(image_id),
            "category_id": int(label_to_cat_id[int(label)]),
            "bbox": [round(float(v), 3) for v in xywh[i].tolist()],
            "score": float(score),
        }
        if rles is not None:
            r["segmentation"] = rles[i]
        if kps is not None:
            vis = np.where(kp_scores[i] > 0, 2.0, 1.0)
            r["keypoints"] = [round(float(v), 3) for v in np.column_stack([kps[i, :, :2], vis]).reshape(-1)]
        out.append(r)
    return out


def _as_model(
    checkpoint_or_model: Checkpoint | GeneralizedRCNN | str | Path,
) -> tuple[GeneralizedRCNN, float, EntropyTables | None]:
    if isinstance(checkpoint_or_model, str | Path):
        checkpoint_or_model = load_checkpoint(checkpoint_or_model)
    if isinstance(checkpoint_or_model, Checkpoint):
        ckpt = checkpoint_or_model
        return ckpt.build_model(), ckpt.filter_threshold, ckpt.entropy
    return checkpoint_or_model, DEFAULT_THRESHOLD, None


def predict(
    checkpoint_or_model: Checkpoint | GeneralizedRCNN | str | Path,
    dataset,
    mode: str = "whole",
    quantization: str = "per_tensor",
    use_filter: bool = False,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    filter_threshold: float | None = None,
    progress: bool = True,
    bits: int = 8,
    entropy_tables: EntropyTables | None = None,
    onnx_head: OnnxHead | None = None,
) -> Predictions:
    """Run a model over ``dataset`` ("whole" or "split": head -> encode_frame -> decode_frame -> tail, one image per
    frame, exactly as the client and the edge server run it). ``filter_threshold`` overrides the checkpoint's (or the
    default) neural-filter threshold; ``bits`` sets the 8-bit codecs' levels; ``entropy_tables`` (default: the
    checkpoint's) are what quantization "entropy" codes with, and its bytes are the rANS strings actually sent.
    With ``onnx_head`` (split mode) the head of every frame is that ONNX head, fed the frame as uint8 RGB, and each
    sent frame records its bottleneck's error against the torch head's."""
    if mode not in ("whole", "split"):
        raise ValueError(f"mode must be 'whole' or 'split', got {mode!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model, threshold, tables = _as_model(checkpoint_or_model)
    tables = entropy_tables if entropy_tables is not None else tables
    threshold = threshold if filter_threshold is None else filter_threshold
    model = model.to(device).eval()
    head = tail = None
    settings = zstd8 = None
    if mode == "split":
        head, tail = split(model, threshold)
        if use_filter and head.neural_filter is None:
            raise ValueError("use_filter: this model has no neural filter")

        settings = CodecSettings(quantization=quantization, compression="zstd", bits=bits)
        zstd8 = settings if quantization in EIGHT_BIT and bits == 8 else CodecSettings(quantization="per_tensor")
    elif use_filter:
        raise ValueError("use_filter needs mode 'split'")
    arch = model.config.arch if hasattr(model, "config") else "faster_rcnn"
    wanted = object_labels(arch, list(dataset.class_names))
    preds = Predictions(mode, quantization if mode == "split" else None)
    indices = list(range(len(dataset)))
    bar = tqdm(total=len(indices), desc=f"{mode}{'/' + quantization if mode == 'split' else ''}", disable=not progress)
    with torch.inference_mode(), bar:
        for start in range(0, len(indices), batch_size):
            items = [dataset[i] for i in indices[start : start + batch_size]]
            images = [im.to(device) for im, _ in items]
            targets = [t for _, t in items]
            stats = [
                ImageStats(int(t["image_id"]), has_object_of_interest(t, tuple(im.shape[-2:]), wanted))
                for im, t in zip(images, targets, strict=True)
            ]
            if mode == "whole":
                dets: list[dict[str, Tensor] | None] = list(model(images))
            else:
                dets = [None] * len(images)
                for i, image in enumerate(images):
                    # One frame per image, as the client sends it (a padded batch would change the bottleneck).
                    if onnx_head is None:
                        out = head([image], use_filter=use_filter)
                        prob = None if out.object_prob is None else float(out.object_prob[0])
                        bottleneck = None if out.bottleneck is None else out.bottleneck.cpu().numpy()
                        meta = out.meta
                    else:
                        result = onnx_head.run_head(_rgb(image), use_filter=use_filter)
                        bottleneck, meta, prob = result.bottleneck, result.meta, result.object_prob
                    stats[i].skipped = bottleneck is None
                    stats[i].object_prob = prob
                    if bottleneck is None:
                        continue
                    if onnx_head is not None:
                        reference = head([image], use_filter=False).bottleneck.cpu().numpy()
                        stats[i].bottleneck_error = float(
                            np.abs(bottleneck - reference).mean() / max(np.abs(reference).mean(), 1e-12)
                        )
                    frame = encode_frame(bottleneck, meta, settings, entropy_tables=tables)
                    stats[i].fallback = (
                        quantization == "entropy" and frame.quantization != QUANTIZATION_TO_PB["entropy"]
                    )
                    c, h, w = bottleneck.shape[1:]
                    stats[i].raw_bytes = c * h * w * 4
                    stats[i].uint8_bytes = c * h * w
                    stats[i].payload_bytes = len(frame.payload)
                    if zstd8 is settings:
                        stats[i].zstd_bytes = len(frame.payload)
                    else:
                        stats[i].zstd_bytes = len(encode_frame(bottleneck, meta, zstd8).payload)
                    x, meta2 = decode_frame(frame, FrameLimits(entropy=tables))
                    dets[i] = tail(x.to(device), meta2)[0]
            for s, det in zip(stats, dets, strict=True):
                if det is not None:
                    preds.results.extend(_results_for_image(det, s.image_id, dataset.label_to_cat_id))
            preds.images.extend(stats)
            bar.update(len(items))
    return preds


def _rgb(image: Tensor) -> np.ndarray:
    """A dataset image (float ``3 x H x W`` in [0, 1], from uint8) as the uint8 ``H x W x 3`` frame it came from."""
    return image.mul(255).round().byte().permute(1, 2, 0).contiguous().cpu().numpy()


def coco_eval(
    coco_gt: COCO, results: list[dict[str, Any]], iou_type: str = "bbox", cat_ids: list[int] | None = None
) -> dict[str, float]:
    """AP, AP50, AP75 and AR100 of ``results`` against ``coco_gt`` (COCOeval over all ground-truth images and the
    ``cat_ids`` categories, by default all). No results give zeros; undefined values (-1, e.g. no ground truth at
    all) are reported as 0.0."""
    if iou_type not in _STATS_INDEX:
        raise ValueError(f"iou_type must be one of {', '.join(_STATS_INDEX)}, got {iou_type!r}")
    if iou_type == "keypoints" and cat_ids is None:
        cat_ids = [c["id"] for c in coco_gt.loadCats(coco_gt.getCatIds()) if c.get("keypoints")]
    key = {"segm": "segmentation", "keypoints": "keypoints"}.get(iou_type)
    results = [r for r in results if key is None or key in r]
    if not results or not coco_gt.getAnnIds():
        return dict.fromkeys(METRICS, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))  # loadRes mutates the dicts (area, id, bbox)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        if cat_ids is not None:
            ev.params.catIds = sorted(cat_ids)
        if iou_type == "keypoints":
            k = len(results[0]["keypoints"]) // 3
            if k != 17:
                ev.params.kpt_oks_sigmas = np.full(k, DEFAULT_OKS_SIGMA)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {m: max(0.0, float(ev.stats[i])) for m, i in _STATS_INDEX[iou_type].items()}


def teacher_as_ground_truth(coco_gt: COCO, teacher_results: list[dict[str, Any]], score_threshold: float = 0.5) -> COCO:
    """A COCO index whose annotations are the teacher's detections scoring ``>= score_threshold`` (same images and
    categories as ``coco_gt``; area from the box; iscrowd 0), to score a student against its teacher."""
    anns = []
    for r in teacher_results:
        if r["score"] < score_threshold:
            continue
        x, y, w, h = (float(v) for v in r["bbox"])
        ann: dict[str, Any] = {
            "id": len(anns) + 1,
            "image_id": int(r["image_id"]),
            "category_id": int(r["category_id"]),
            "bbox": [x, y, w, h],
            "area": w * h,
            "iscrowd": 0,
        }
        if "segmentation" in r:
            ann["segmentation"] = r["segmentation"]
        else:
            ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
        if "keypoints" in r:
            kps = [float(v) for v in r["keypoints"]]
            visible = [2.0 if v > 1 else 0.0 for v in kps[2::3]]  # only keypoints the teacher was sure of
            kps[2::3] = visible
            ann["keypoints"] = kps
            ann["num_keypoints"] = int(sum(v > 0 for v in visible))
        anns.append(ann)
    d = {
        "info": dict(coco_gt.dataset.get("info", {})),
        "images": list(coco_gt.dataset.get("images", [])),
        "categories": list(coco_gt.dataset.get("categories", [])),
        "annotations": anns,
    }
    return coco_from_dict(d)


def jpeg_bytes(dataset, quality: int, image_format: str = "JPEG") -> list[int]:
    """Bytes of every image of ``dataset`` when JPEG-encoded (or ``image_format``, e.g. WEBP) by PIL at ``quality``
    (dataset order)."""
    if not (isinstance(quality, int) and 1 <= quality <= 100):
        raise ValueError(f"JPEG quality must be an int in [1, 100], got {quality!r}")
    out = []
    for i in range(len(dataset)):
        image = dataset[i][0]
        arr = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=image_format, quality=quality)
        out.append(buf.tell())
    return out


def _scores(
    coco_gt: COCO, results: list[dict], types: tuple[str, ...], cat_ids: list[int] | None = None
) -> dict[str, dict[str, float]]:
    return {t: coco_eval(coco_gt, results, t, cat_ids) for t in types}


def evaluate(
    ckpt_path: str | Path,
    dataset,
    *,
    teacher_ckpt: str | Path | None = None,
    quantizations: tuple[str, ...] | list[str] = ("none", "per_tensor"),
    use_filter: bool = True,
    jpeg_qualities: tuple[int, ...] | list[int] = (),
    webp_qualities: tuple[int, ...] | list[int] = (),
    teacher_score_threshold: float = 0.5,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    progress: bool = True,
    onnx_heads: tuple[str | Path, ...] | list[str | Path] = (),
) -> dict[str, Any]:
    """A report over ``dataset``: for a student, mode "whole" and mode "split" per quantization (the filter, when
    the model has one and ``use_filter``, at the checkpoint's threshold); for a teacher, mode "whole" only. Each run
    has AP per iou type against ground truth and, with ``teacher_ckpt``, against the teacher's detections
    (``fidelity``); split runs add mean bytes per frame and filter statistics. ``batch_size`` 1 (the default)
    makes every frame carry only its own image's padding. Each of ``onnx_heads`` (ONNX head files exported from this
    checkpoint) adds a split run per quantization with that head on the device side."""
    ckpt = load_checkpoint(ckpt_path)
    if onnx_heads and not ckpt.config.is_student:
        raise ValueError(f"{ckpt_path} holds a teacher: it has no head to run as ONNX")
    model = ckpt.build_model()
    arch = ckpt.config.arch
    # keypoints need keypoint ground truth; segm uses the annotation files' segmentation whatever the task
    types = tuple(t for t in iou_types(arch) if t != "keypoints" or dataset.task == "keypoints")
    cat_ids = sorted(dataset.label_to_cat_id.values())
    report: dict[str, Any] = {
        "checkpoint": str(ckpt_path),
        "arch": arch,
        "student": ckpt.config.is_student,
        "num_images": len(dataset),
        "iou_types": list(types),
        "filter_threshold": ckpt.filter_threshold if ckpt.config.with_filter else None,
        "runs": [],
        "jpeg": {},
        "jpeg_ap": {},
    }
    if webp_qualities:
        report["webp"], report["webp_ap"] = {}, {}
    teacher_gt = None
    if teacher_ckpt is not None:
        teacher = load_checkpoint(teacher_ckpt)
        t_preds = predict(teacher, dataset, "whole", batch_size=batch_size, device=device, progress=progress)
        teacher_gt = teacher_as_ground_truth(dataset.coco, t_preds.results, teacher_score_threshold)
        t_types = tuple(t for t in iou_types(teacher.config.arch) if t in types)
        report["teacher"] = {
            "checkpoint": str(teacher_ckpt),
            "arch": teacher.config.arch,
            "score_threshold": teacher_score_threshold,
            "ap": _scores(dataset.coco, t_preds.results, t_types, cat_ids),
        }
        types_fid = t_types
    else:
        types_fid = ()

    def add_run(preds: Predictions, head: dict[str, str] | None = None) -> None:
        run: dict[str, Any] = {
            "mode": preds.mode,
            "quantization": preds.quantization,
            "head": head,
            "bottleneck_error": preds.bottleneck_error(),
            "ap": _scores(dataset.coco, preds.results, types, cat_ids),
            "bytes": preds.mean_bytes(),
            "filter": preds.filter_stats(),
            "num_detections": len(preds.results),
        }
        if teacher_gt is not None:
            run["fidelity"] = _scores(teacher_gt, preds.results, types_fid, cat_ids)
        report["runs"].append(run)

    add_run(predict(model, dataset, "whole", batch_size=batch_size, device=device, progress=progress))
    if ckpt.config.is_student:
        with_filter = use_filter and ckpt.config.with_filter
        heads: list[tuple[OnnxHead | None, dict[str, str]]] = [(None, {"runtime": "torch"})]
        for path in onnx_heads:
            onnx_head = load_onnx_head(path, ckpt)
            heads.append((onnx_head, {"runtime": "onnx", "path": str(path), "weights": onnx_head.weights}))
        for onnx_head, head in heads:
            for q in quantizations:
                preds = predict(
                    model,
                    dataset,
                    "split",
                    quantization=q,
                    use_filter=with_filter,
                    batch_size=batch_size,
                    device=device,
                    filter_threshold=ckpt.filter_threshold,
                    progress=progress,
                    entropy_tables=ckpt.entropy,
                    onnx_head=onnx_head,
                )
                add_run(preds, head)
    for quality in jpeg_qualities:
        sizes = jpeg_bytes(dataset, quality)
        report["jpeg"][str(quality)] = float(np.mean(sizes)) if sizes else 0.0
        # offloading: the whole model on the JPEG the device would send
        jpeg_set = with_jpeg_quality(dataset, quality)
        preds = predict(model, jpeg_set, "whole", batch_size=batch_size, device=device, progress=progress)
        report["jpeg_ap"][str(quality)] = _scores(dataset.coco, preds.results, types, cat_ids)
    for quality in webp_qualities:  # the same for WebP (lossy, Pillow's default method)
        sizes = jpeg_bytes(dataset, quality, "WEBP")
        report["webp"][str(quality)] = float(np.mean(sizes)) if sizes else 0.0
        webp_set = with_jpeg_quality(dataset, quality, "WEBP")
        preds = predict(model, webp_set, "whole", batch_size=batch_size, device=device, progress=progress)
        report["webp_ap"][str(quality)] = _scores(dataset.coco, preds.results, types, cat_ids)
    return report


def load_onnx_head(path: str | Path, ckpt: Checkpoint) -> OnnxHead:
    """The ONNX head file at ``path``, which must have been exported from ``ckpt``; ``ValueError`` (one line)
    otherwise. Its filter threshold is the checkpoint's."""
    from splitdet.mobile_client.onnx_head import OnnxHead
    from splitdet.mobile_client.settings import SetupError

    try:
        head = OnnxHead.load(path, filter_threshold=ckpt.filter_threshold)
    except SetupError as e:
        raise ValueError(str(e)) from None
    if head.fingerprint != ckpt.fingerprint:
        raise ValueError(
            f"{path} is the head of another model (fingerprint {head.fingerprint[:16]}, the checkpoint's "
            f"{ckpt.fingerprint[:16]}): export it from this checkpoint"
        )
    return head


def with_jpeg_quality(dataset, quality: int, image_format: str = "JPEG"):
    """A shallow copy of ``dataset`` whose images are re-encoded as JPEG (or ``image_format``, e.g. WEBP) at
    ``quality`` before use."""
    if not hasattr(dataset, "jpeg_quality"):
        raise ValueError(f"{type(dataset).__name__} cannot re-encode its images as JPEG")
    copied = copy.copy(dataset)
    copied.jpeg_quality = quality
    copied.image_format = image_format
    return copied


def _fmt(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def format_markdown(report: dict[str, Any]) -> str:
    """The report as a markdown table: one row per run (and the teacher, and one per JPEG quality)."""
    types = report["iou_types"]
    fid = "teacher" in report
    cols = ["model", "mode", "quant."]
    cols += [f"{t} AP" for t in types] + [f"{t} AP50" for t in types]
    cols += [f"{t} fidelity AP" for t in types] if fid else []
    cols += ["raw B", "8-bit B", "8-bit+zstd B", "sent B", "empty skipped", "objects skipped"]
    errors = any(run.get("bottleneck_error") is not None for run in report["runs"])
    cols += ["bottleneck error"] if errors else []
    lines = [
        f"Evaluation of `{report['checkpoint']}` ({report['arch']}) on {report['num_images']} images",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]

    def row(name: str, run: dict[str, Any]) -> None:
        ap = run.get("ap", {})
        cells = [name, run.get("mode") or "-", run.get("quantization") or "-"]
        cells += [_fmt(ap[t]["AP"]) if t in ap else "-" for t in types]
        cells += [_fmt(ap[t]["AP50"]) if t in ap else "-" for t in types]
        if fid:
            f = run.get("fidelity") or {}
            cells += [_fmt(f[t]["AP"]) if t in f else "-" for t in types]
        b = run.get("bytes") or {}
        cells += [_fmt(b.get("raw"), 0), _fmt(b.get("uint8"), 0), _fmt(b.get("zstd"), 0), _fmt(b.get("payload"), 0)]
        fs = run.get("filter") or {}
        cells += [_fmt(fs.get("empty_skipped"), 2), _fmt(fs.get("objects_skipped"), 2)]
        error = run.get("bottleneck_error")
        cells += ["-" if error is None else f"{error:.1e}"] if errors else []
        lines.append("| " + " | ".join(cells) + " |")

    if fid:
        row("teacher", {"mode": "whole", **report["teacher"]})
    for run in report["runs"]:
        head = run.get("head") or {}
        name = "student" if report["student"] else "model"
        row(f"{name}, ONNX {head['weights']} head" if head.get("runtime") == "onnx" else name, run)
    for quality, size in report.get("jpeg", {}).items():
        ap = report.get("jpeg_ap", {}).get(quality, {})
        row(f"JPEG q{quality}", {"mode": "offload", "ap": ap, "bytes": {"zstd": size}})
    for quality, size in report.get("webp", {}).items():
        ap = report.get("webp_ap", {}).get(quality, {})
        row(f"WebP q{quality}", {"mode": "offload", "ap": ap, "bytes": {"zstd": size}})
    if errors:
        lines += [
            "",
            "ONNX head rows: the head run by ONNX Runtime (the device client's), the tail by torch; bottleneck error = "
            "mean |ONNX bottleneck - torch bottleneck| / mean |torch bottleneck| over the frames sent.",
        ]
    if report.get("jpeg") or report.get("webp"):
        lines += [
            "",
            "JPEG/WebP rows (offloading): the whole model on the re-encoded image; mean encoded bytes per image in the "
            "8-bit+zstd column.",
        ]
    return "\n".join(lines) + "\n"
