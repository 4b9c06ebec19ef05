"""``split-model export --format onnx --int8``: the encoder's convolutions statically quantized to int8.

ONNX Runtime's ``quantize_static`` (QDQ format: int8 weights per output channel, uint8 activations, MinMax
calibration) rewrites the ``Conv`` nodes of the encoder program, after ``quant_pre_process`` has folded each
BatchNorm into its convolution. The stem program (the transform: normalize, resize, padding; and the stem) and the
neural filter stay float32: the preprocessing is exact, the filter decides on the float stem, and the stem's 7x7
convolution over 3 channels runs slower quantized (measured on the demo head, x86: 3.4 ms against 1.4 ms per 240x320
frame on one thread, the encoder 1.4 ms against 4.2 ms). The calibration frames are ``--calibration N`` frames of a
training config's dataset (its train split, not the frames ``split-eval`` scores) or of a folder of images; the
encoder is calibrated on their stem outputs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from splitdet.common import onnx_format as fmt
from splitdet.common.shapes import resized_size


def calibration_frames(count: int, config: str | Path | None = None, images: str | Path | None = None) -> list:
    """``count`` uint8 RGB frames: the first of the ``config``'s train split, or of the images in ``images``."""
    if count < 1:
        raise ValueError(f"--calibration must be >= 1, got {count}")
    if (config is None) == (images is None):
        raise ValueError("--int8 calibrates on --calibration-config CONFIG (its dataset) or --calibration-images DIR")
    if images is not None:
        from splitdet.mobile_client import sources

        try:
            readable = (f.image for f in sources.images(str(images)).frames if f.error is None)
            frames = [image for _, image in zip(range(count), readable, strict=False)]
        except sources.SourceError as e:
            raise ValueError(str(e)) from None
    else:
        from splitdet.distill.config import load_config
        from splitdet.distill.dataset_config import build_dataset

        section = dict(load_config(config).dataset)
        if section.get("type", "synthetic") in ("synthetic", "video") and "num_images" in (section.get("train") or {}):
            section["train"] = {**section["train"], "num_images": min(count, int(section["train"]["num_images"]))}
        dataset, _ = build_dataset(section, "train")
        frames = [
            (dataset[i][0] * 255).round().byte().permute(1, 2, 0).contiguous().numpy()
            for i in range(min(count, len(dataset)))
        ]
    if not frames:
        raise ValueError(f"no calibration frames in {images or config}")
    return frames


class _Feeds:
    """ONNX Runtime's ``CalibrationDataReader``: the feeds of one program, one frame after the other."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_program(program, feeds: list[dict[str, np.ndarray]]):
    """``program`` (an ``onnx.ModelProto``) with its ``Conv`` nodes quantized, calibrated on ``feeds``."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(_Feeds, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory() as tmp:
        source, prepared, quantized = (Path(tmp) / name for name in ("float.onnx", "prepared.onnx", "int8.onnx"))
        onnx.save(program, source)
        quant_pre_process(source, prepared, skip_symbolic_shape=True)
        quantize_static(
            prepared,
            quantized,
            Reader(feeds),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv"],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        return onnx.load(quantized)


def quantize_programs(programs: dict, frames: list[np.ndarray], size_rule: tuple[int, int]) -> dict:
    """The programs with the encoder quantized, calibrated on the stem outputs of ``frames`` (uint8 RGB)."""
    import onnxruntime as ort

    stem_feeds = [
        {
            fmt.INPUT_IMAGE: np.ascontiguousarray(frame, dtype=np.uint8),
            fmt.INPUT_RESIZED: np.empty((0, *resized_size(*frame.shape[:2], *size_rule)), dtype=np.float32),
        }
        for frame in frames
    ]
    stem = ort.InferenceSession(programs["stem"].SerializeToString(), providers=["CPUExecutionProvider"])
    stems = [{fmt.INPUT_STEM: stem.run(None, feeds)[0]} for feeds in stem_feeds]
    return {**programs, "encoder": quantize_program(programs["encoder"], stems)}
