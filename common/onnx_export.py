"""``split-model export --format onnx``: the head of a checkpoint as one ONNX file (see
:mod:`splitdet.common.onnx_format`).

Three programs are traced from the torch head's own modules by the dynamo exporter with dynamic image sizes: the
stem program (``Head.transform``'s normalize with its mean/std, the resize and padding, ``Head.stem``), the filter
(``Head.neural_filter``) and the encoder (``Head.encoder``). Two steps are written in a form the exporter keeps
dynamic, with the same results: the padding (``batch_images`` computes it through ``float``, which fixes the size
at export; here integer arithmetic) and the filter's ``AdaptiveAvgPool2d`` (no ONNX operator; here the same window
means as two matrix products).

Filter first: the device runs the stem, then the filter, and the encoder only for a frame the filter keeps, so a
rejected frame costs stem + filter. The three programs are the branches of ``If`` nodes on the ``stage`` input of
one model, not three files: the user keeps one head file, ONNX Runtime runs only the chosen branch (it runs every
node of a graph whatever outputs are asked for, so one graph with three outputs would not do), and each stage is
its own call, so the client times "head" (stem + encoder) and "filter" apart as the torch head does. The cost is
one copy of the stem output between calls. ``tests/test_onnx_head.py`` checks the parts and the whole file against
the torch head.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from splitdet.common import onnx_format as fmt
from splitdet.common.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from splitdet.common.split import Head, split

#: Example sizes for tracing; distinct, so the exporter keeps one symbol per dimension.
_EXAMPLE_IMAGE = (89, 123)
_EXAMPLE_RESIZED = (70, 106)
_EXAMPLE_STEM = (24, 40)
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


class StemProgram(nn.Module):
    """The stem stage: uint8 RGB + resized size -> the stem output."""

    def __init__(self, head: Head) -> None:
        super().__init__()
        transform = head.transform
        if getattr(transform, "fixed_size", None) is not None or getattr(transform, "_skip_resize", False):
            raise ValueError("the ONNX export supports the min_size/max_size resize only (no fixed_size)")
        self.transform = transform
        self.size_divisible = int(transform.size_divisible)
        self.stem = head.stem

    def forward(self, image: Tensor, resized: Tensor) -> Tensor:
        x = image.permute(2, 0, 1).float().div(255.0)  # splitdet.common.split.image_tensor
        x = self.transform.normalize(x)
        # torchvision's resize: interpolate(scale_factor, recompute_scale_factor=True) resizes to the floored size
        # with the scale recomputed from it, i.e. exactly interpolate(size=...) with that size.
        x = F.interpolate(x[None], size=resized.shape[-2:], mode="bilinear", align_corners=False)
        h, w = x.shape[-2:]
        d = self.size_divisible
        x = F.pad(x, (0, (w + d - 1) // d * d - w, 0, (h + d - 1) // d * d - h))  # batch_images' zero padding
        return self.stem(x)


class FilterProgram(nn.Module):
    """The filter stage: the stem output -> P(object) ``[1]``."""

    def __init__(self, neural_filter: nn.Module) -> None:
        super().__init__()
        self.neural_filter = exportable_filter(neural_filter)

    def forward(self, stem: Tensor) -> Tensor:
        return self.neural_filter.object_probability(stem)


def _trace(module: nn.Module, inputs: dict[str, Tensor], shapes: dict[str, dict[int, object]]):
    """``module`` exported by the dynamo exporter, one output named :data:`fmt.OUTPUT`; an ``onnx.ModelProto``."""
    import onnx

    log = io.StringIO()
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad(), contextlib.redirect_stdout(log):
        path = Path(tmp) / "part.onnx"
        torch.onnx.export(
            module.eval(),
            tuple(inputs.values()),
            path,
            dynamo=True,
            input_names=list(inputs),
            output_names=[fmt.OUTPUT],
            dynamic_shapes=tuple(shapes[name] for name in inputs),
            external_data=False,
            verbose=False,
        )
        return onnx.load(path)


def trace_programs(head: Head) -> dict[str, object]:
    """The head's programs as standalone ONNX models: ``stem``, ``filter`` (when it has one) and ``encoder``."""
    dim = torch.export.Dim
    side = lambda name: dim(name, min=2, max=_MAX_SIDE)  # noqa: E731
    image = torch.randint(0, 256, (*_EXAMPLE_IMAGE, 3), dtype=torch.uint8)
    resized = torch.zeros(0, *_EXAMPLE_RESIZED)
    stem = torch.randn(1, fmt.STEM_CHANNELS, *_EXAMPLE_STEM)
    stem_shape = {fmt.INPUT_STEM: {2: side("sh"), 3: side("sw")}}
    programs = {
        "stem": _trace(
            StemProgram(head),
            {fmt.INPUT_IMAGE: image, fmt.INPUT_RESIZED: resized},
            {fmt.INPUT_IMAGE: {0: side("H"), 1: side("W")}, fmt.INPUT_RESIZED: {1: side("h"), 2: side("w")}},
        )
    }
    if head.neural_filter is not None:
        programs["filter"] = _trace(FilterProgram(head.neural_filter), {fmt.INPUT_STEM: stem}, stem_shape)
    programs["encoder"] = _trace(head.encoder, {fmt.INPUT_STEM: stem}, stem_shape)
    return programs


def _branch(program, name: str):
    """``program`` as an ``If`` branch: its names prefixed with ``name/``, its inputs read from the outer graph's
    inputs of the same names, its output renamed ``name/result``."""
    import onnx
    from onnx import compose, helper

    prefixed = compose.add_prefix(program, f"{name}/")
    graph = prefixed.graph
    wiring = [helper.make_node("Identity", [i.name.split("/", 1)[1]], [i.name]) for i in graph.input]
    out = f"{name}/result"
    wiring_out = helper.make_node("Identity", [graph.output[0].name], [out])
    return helper.make_graph(
        [*wiring, *graph.node, wiring_out],
        name,
        [],
        [helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None)],
        initializer=list(graph.initializer),
    )


def _stage_is(stage: int, name: str) -> list:
    """Nodes that set the boolean ``name`` to ``stage input == stage``."""
    from onnx import helper, numpy_helper

    constant = numpy_helper.from_array(np.array(stage, dtype=np.int64), f"{name}/value")
    return [
        helper.make_node("Constant", [], [f"{name}/value"], value=constant),
        helper.make_node("Equal", [fmt.INPUT_STAGE, f"{name}/value"], [name]),
    ]


def assemble(programs: dict[str, object]):
    """One model that runs ``programs[...]`` by the ``stage`` input (see :mod:`splitdet.common.onnx_format`)."""
    import onnx
    from onnx import helper

    later = _branch(programs["encoder"], "encoder")
    if "filter" in programs:
        is_filter = _stage_is(fmt.STAGE_FILTER, "is_filter")
        choose = helper.make_node(
            "If", ["is_filter"], ["later/out"], then_branch=_branch(programs["filter"], "filter"), else_branch=later
        )
        out = helper.make_tensor_value_info("later/out", onnx.TensorProto.FLOAT, None)
        later = helper.make_graph([*is_filter, choose], "later", [], [out])
    is_stem = _stage_is(fmt.STAGE_STEM, "is_stem")
    top = helper.make_node(
        "If", ["is_stem"], [fmt.OUTPUT], then_branch=_branch(programs["stem"], "stem"), else_branch=later
    )
    graph = helper.make_graph(
        [*is_stem, top],
        "splitdet_head",
        [
            helper.make_tensor_value_info(fmt.INPUT_IMAGE, onnx.TensorProto.UINT8, ["H", "W", 3]),
            helper.make_tensor_value_info(fmt.INPUT_RESIZED, onnx.TensorProto.FLOAT, [0, "h", "w"]),
            helper.make_tensor_value_info(fmt.INPUT_STEM, onnx.TensorProto.FLOAT, [1, fmt.STEM_CHANNELS, "sh", "sw"]),
            helper.make_tensor_value_info(fmt.INPUT_STAGE, onnx.TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info(fmt.OUTPUT, onnx.TensorProto.FLOAT, None)],
    )
    if any(program.functions for program in programs.values()):
        raise ValueError("the exporter wrote ONNX functions; the head's programs are assembled from plain graphs")
    opsets: dict[str, int] = {}
    for program in programs.values():
        for opset in program.opset_import:
            opsets[opset.domain] = max(opsets.get(opset.domain, 0), opset.version)
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(domain, version) for domain, version in sorted(opsets.items())],
        ir_version=max(program.ir_version for program in programs.values()),
    )


def metadata(checkpoint: Checkpoint, head: Head, source: Path, weights: str = "float32") -> dict[str, str]:
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
        "weights": weights,
        "source_checkpoint": source.name,
        **tables,
    }


def export_onnx_head(path: str | Path, out: str | Path, calibration: list[np.ndarray] | None = None) -> dict[str, str]:
    """Write the head of the checkpoint at ``path`` to ``out``; its metadata. With ``calibration`` frames (uint8
    RGB), the encoder's convolutions are statically quantized to int8 (:mod:`splitdet.common.onnx_int8`)."""
    import onnx

    path, out = Path(path), Path(out)
    checkpoint = load_checkpoint(path)
    if not checkpoint.config.is_student:
        raise CheckpointError(f"{path} holds a teacher; only a bottleneck-injected student has a head to export")
    fmt.check_quantization(checkpoint.codec.quantization)
    if checkpoint.codec.quantization == "entropy" and checkpoint.entropy is None:
        raise CheckpointError(f"{path} asks for the entropy codec but has no entropy tables")
    head, _ = split(checkpoint.build_model(), checkpoint.filter_threshold)
    programs = trace_programs(head)
    if calibration is not None:
        from splitdet.common.onnx_int8 import quantize_programs

        size_rule = (int(head.transform.min_size[-1]), int(head.transform.max_size))
        programs = quantize_programs(programs, calibration, size_rule)
    model = assemble(programs)
    meta = metadata(checkpoint, head, path, "int8" if calibration is not None else "float32")
    for key, value in meta.items():
        model.metadata_props.add(key=f"splitdet.{key}", value=value)
    stages = "stem" + (", neural filter" if "filter" in programs else "") + ", encoder"
    model.doc_string = f"splitdet head of {path.name}: {stages}, chosen by the stage input"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    onnx.save(model, tmp)
    tmp.replace(out)
    return meta
