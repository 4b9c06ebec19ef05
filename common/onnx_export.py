"""``split-model export --format onnx``: the head of a checkpoint as one ONNX graph (see :mod:`common.onnx_format`).

The graph is traced from the torch head's own modules (``Head.transform``'s normalize with its mean/std, ``Head.stem``,
``Head.encoder``, ``Head.neural_filter``) by the dynamo exporter with dynamic image sizes. Two steps are written
in a form the exporter keeps dynamic, with the same results: the padding (``batch_images`` computes it through
``float``, which fixes the size at export; here integer arithmetic) and the filter's ``AdaptiveAvgPool2d``
(no ONNX operator; here the same window means as two matrix products). ``tests/test_onnx_head.py`` checks both
and the whole graph against the torch head.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common import onnx_format as fmt
from common.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from common.split import Head, split

#: Example sizes for tracing; distinct, so the exporter keeps one symbol per dimension.
_EXAMPLE_IMAGE = (89, 123)
_EXAMPLE_RESIZED = (70, 106)
_MAX_SIDE = 8192


class WindowMeanPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as ``P_h @ x @ P_w^T``: row i of ``P`` averages torch's window i,
    ``[floor(i*n/m), ceil((i+1)*n/m))``; exportable with a dynamic input size."""

    def __init__(self, output_size: tuple[int, int]) -> None:
        super().__init__()
        self.output_size = output_size

    @staticmethod
    def weights(n, m: int, like: Tensor) -> Tensor:
        i = torch.arange(m, device=like.device)
        start = torch.div(i * n, m, rounding_mode="floor")
        end = torch.div((i + 1) * n + m - 1, m, rounding_mode="floor")
        j = torch.arange(n, device=like.device)
        inside = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
        return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)

    def forward(self, x: Tensor) -> Tensor:
        rows = self.weights(x.shape[-2], self.output_size[0], x)
        cols = self.weights(x.shape[-1], self.output_size[1], x)
        return rows @ x @ cols.T


def exportable_filter(neural_filter: nn.Module) -> nn.Module:
    """A copy of the filter with every ``AdaptiveAvgPool2d`` replaced by :class:`WindowMeanPool2d`."""
    copied = copy.deepcopy(neural_filter)
    for module in list(copied.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d):
                size = child.output_size
                setattr(module, child_name, WindowMeanPool2d((size, size) if isinstance(size, int) else tuple(size)))
    return copied


class ExportedHead(nn.Module):
    """What the ONNX graph computes: uint8 RGB + resized size -> bottleneck (and P(object))."""

    def __init__(self, head: Head) -> None:
        super().__init__()
        transform = head.transform
        if getattr(transform, "fixed_size", None) is not None or getattr(transform, "_skip_resize", False):
            raise ValueError("the ONNX export supports the min_size/max_size resize only (no fixed_size)")
        self.transform = transform
        self.size_divisible = int(transform.size_divisible)
        self.stem = head.stem
        self.encoder = head.encoder
        self.neural_filter = exportable_filter(head.neural_filter) if head.neural_filter is not None else None

    def forward(self, image: Tensor, resized: Tensor) -> tuple[Tensor, ...]:
        x = image.permute(2, 0, 1).float().div(255.0)  # common.split.image_tensor
        x = self.transform.normalize(x)
        # torchvision's resize: interpolate(scale_factor, recompute_scale_factor=True) resizes to the floored size
        # with the scale recomputed from it, i.e. exactly interpolate(size=...) with that size.
        x = F.interpolate(x[None], size=resized.shape[-2:], mode="bilinear", align_corners=False)
        h, w = x.shape[-2:]
        d = self.size_divisible
        x = F.pad(x, (0, (w + d - 1) // d * d - w, 0, (h + d - 1) // d * d - h))  # batch_images' zero padding
        stem = self.stem(x)
        bottleneck = self.encoder(stem)
        if self.neural_filter is None:
            return (bottleneck,)
        return bottleneck, self.neural_filter.object_probability(stem)


def metadata(checkpoint: Checkpoint, head: Head, source: Path) -> dict[str, str]:
    """What the device needs besides the graph; the fingerprint is the torch head's (live weights + tail digest,
    and the entropy tables, which an entropic checkpoint's metadata also carries)."""
    transform = head.transform
    cfg = checkpoint.config
    tables = {}
    if (entropy := checkpoint.entropy) is not None:
        tables = {fmt.META_ENTROPY_TABLES: entropy.to_json(), fmt.META_ENTROPY_FINGERPRINT: entropy.fingerprint}
    return {
        "format": fmt.FORMAT,
        "version": str(fmt.VERSION),
        "fingerprint": checkpoint.side_fingerprint(head=head),
        "arch": cfg.arch,
        "backbone": cfg.backbone,
        "channels": str(head.channels),
        "min_size": str(int(transform.min_size[-1])),
        "max_size": str(int(transform.max_size)),
        "size_divisible": str(int(transform.size_divisible)),
        "image_mean": json.dumps([float(v) for v in transform.image_mean]),
        "image_std": json.dumps([float(v) for v in transform.image_std]),
        "resize_rule": "scale = min(min_size / min(H, W), max_size / max(H, W)); h = floor(H * scale), "
        "w = floor(W * scale); bilinear, align_corners=False; zero padding to multiples of size_divisible",
        "quantization": checkpoint.codec.quantization,
        "compression": checkpoint.codec.compression,
        "level": str(checkpoint.codec.level),
        "class_names": json.dumps(list(checkpoint.class_names)),
        "keypoint_names": json.dumps(list(checkpoint.keypoint_names)),
        "filter": "yes" if head.neural_filter is not None else "no",
        "filter_threshold": repr(float(checkpoint.filter_threshold)),
        "source_checkpoint": source.name,
        **tables,
    }


def export_onnx_head(path: str | Path, out: str | Path) -> dict[str, str]:
    """Write the head of the checkpoint at ``path`` to ``out``; its metadata."""
    import onnx

    path, out = Path(path), Path(out)
    checkpoint = load_checkpoint(path)
    if not checkpoint.config.is_student:
        raise CheckpointError(f"{path} holds a teacher; only a bottleneck-injected student has a head to export")
    fmt.check_quantization(checkpoint.codec.quantization)
    if checkpoint.codec.quantization == "entropy" and checkpoint.entropy is None:
        raise CheckpointError(f"{path} asks for the entropy codec but has no entropy tables")
    head, _ = split(checkpoint.build_model(), checkpoint.filter_threshold)
    graph = ExportedHead(head).eval()
    image = torch.randint(0, 256, (*_EXAMPLE_IMAGE, 3), dtype=torch.uint8)
    resized = torch.zeros(0, *_EXAMPLE_RESIZED)
    dim = torch.export.Dim
    shapes = {
        "image": {0: dim("H", min=2, max=_MAX_SIDE), 1: dim("W", min=2, max=_MAX_SIDE)},
        "resized": {1: dim("h", min=2, max=_MAX_SIDE), 2: dim("w", min=2, max=_MAX_SIDE)},
    }
    outputs = [fmt.OUTPUT_BOTTLENECK] + ([fmt.OUTPUT_OBJECT_PROB] if graph.neural_filter is not None else [])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    log = io.StringIO()
    with torch.no_grad(), contextlib.redirect_stdout(log):
        torch.onnx.export(
            graph,
            (image, resized),
            tmp,
            dynamo=True,
            input_names=[fmt.INPUT_IMAGE, fmt.INPUT_RESIZED],
            output_names=outputs,
            dynamic_shapes=shapes,
            external_data=False,
            verbose=False,
        )
    model = onnx.load(tmp)
    meta = metadata(checkpoint, head, path)
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=f"splitdet.{key}", value=value)
    model.doc_string = f"splitdet head of {path.name}: transform, stem, encoder" + (
        ", neural filter" if graph.neural_filter is not None else ""
    )
    onnx.save(model, tmp)
    tmp.replace(out)
    return meta
