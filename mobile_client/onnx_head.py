"""The device's head run by ONNX Runtime, without torch: the file ``split-model export --format onnx`` writes.

The file holds three programs, run one call each (see :mod:`splitdet.common.onnx_format`): the stem (transform:
normalize, bilinear resize, padding; then the stem), the neural filter and the encoder; the resized size comes from
:func:`splitdet.common.shapes.resized_size`, the same rule the torch head applies. As in the torch head, the filter runs
on the stem output before the encoder, so a frame it rejects never runs the encoder; "head" times the stem and the
encoder, "filter" the filter (and the background filter's stem cells,
:func:`splitdet.mobile_client.background.stem_cells`, computed from the stem output in numpy exactly as for the torch
head). The bottleneck then goes through the same ``splitdet.common.wire.encode_frame`` as the torch head's. Nothing here
imports torch (``tests/test_onnx_head.py`` and ``tests/test_device_install.py`` check it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from splitdet.common import onnx_format as fmt
from splitdet.common.codec_settings import CodecSettings
from splitdet.common.entropy import EntropyTables
from splitdet.common.shapes import BatchMeta, bottleneck_shape, padded_size, resized_size
from splitdet.common.timing import timed
from splitdet.mobile_client.background import stem_cells
from splitdet.mobile_client.pipeline import HeadResult
from splitdet.mobile_client.settings import SetupError

_NO_IMAGE = np.empty((0, 0, 3), dtype=np.uint8)
_NO_STEM = np.empty((1, fmt.STEM_CHANNELS, 0, 0), dtype=np.float32)


@dataclass
class OnnxHead:
    """An ONNX head file loaded into an ONNX Runtime session, with the metadata it was exported with."""

    path: Path
    session: object  #: ``onnxruntime.InferenceSession``
    fingerprint: str
    codec: CodecSettings
    class_names: list[str]
    keypoint_names: list[str]
    channels: int
    min_size: int
    max_size: int
    size_divisible: int
    has_filter: bool
    filter_threshold: float
    weights: str  #: "float32", or "int8" for a head exported with --int8
    metadata: dict[str, str] = field(default_factory=dict)
    entropy_tables: EntropyTables | None = None  #: the entropy codec's tables, from the file's metadata

    @property
    def size_rule(self) -> tuple[int, int]:
        return self.min_size, self.max_size

    @classmethod
    def load(cls, path: str | Path, filter_threshold: float | None = None, threads: int | None = None) -> OnnxHead:
        """Open ``path``; ``threads`` sets ONNX Runtime's intra-op threads (default: its own choice).

        Raises :class:`SetupError` (one line) for a missing or unreadable file, a file that is not a splitdet
        head, a codec this runtime does not implement, or entropy tables that are unreadable or not the ones the
        file's metadata names.
        """
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise SetupError(f"ONNX head not found: {path} (write one with `split-model export CKPT --format onnx`)")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.inter_op_num_threads = 1
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # ONNX Runtime raises its own types for every kind of bad file
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SetupError(f"cannot load {path} as an ONNX head: {reason}") from None
        meta = {k.removeprefix("splitdet."): v for k, v in session.get_modelmeta().custom_metadata_map.items()}
        if meta.get("format") != fmt.FORMAT:
            raise SetupError(f"{path} is not a splitdet ONNX head (write one with `split-model export --format onnx`)")
        if meta.get("version") != str(fmt.VERSION):
            raise SetupError(
                f"{path} is an ONNX head of format version {meta.get('version')}, this client reads version "
                f"{fmt.VERSION}: export it again with `split-model export CKPT --format onnx`"
            )
        try:
            fmt.check_quantization(meta["quantization"])
            codec = CodecSettings(meta["quantization"], meta["compression"], int(meta["level"]))
            has_filter = meta["filter"] == "yes"
            inputs, outputs = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
            expected = [fmt.INPUT_IMAGE, fmt.INPUT_RESIZED, fmt.INPUT_STEM, fmt.INPUT_STAGE]
            if inputs != expected or outputs != [fmt.OUTPUT]:
                raise ValueError(f"unexpected inputs {inputs} or outputs {outputs}")
            threshold = float(meta["filter_threshold"]) if filter_threshold is None else filter_threshold
            tables = None
            if fmt.META_ENTROPY_TABLES in meta:
                tables = EntropyTables.from_json(meta[fmt.META_ENTROPY_TABLES])
                if tables.fingerprint != meta[fmt.META_ENTROPY_FINGERPRINT]:
                    raise ValueError("its entropy tables are not the ones its metadata names")
            if codec.quantization == "entropy" and tables is None:
                raise ValueError("the entropy codec needs entropy tables, the file has none")
            return cls(
                path=path,
                session=session,
                fingerprint=meta["fingerprint"],
                codec=codec,
                class_names=list(json.loads(meta["class_names"])),
                keypoint_names=list(json.loads(meta["keypoint_names"])),
                channels=int(meta["channels"]),
                min_size=int(meta["min_size"]),
                max_size=int(meta["max_size"]),
                size_divisible=int(meta["size_divisible"]),
                has_filter=has_filter,
                filter_threshold=threshold,
                weights=meta["weights"],
                metadata=meta,
                entropy_tables=tables,
            )
        except (KeyError, ValueError) as e:  # EntropyError is a ValueError
            raise SetupError(f"{path} is not a usable splitdet ONNX head: {e}") from None

    def run_head(
        self, rgb: np.ndarray, use_filter: bool, timing: dict[str, float] | None = None, cells: bool = False
    ) -> HeadResult:
        """RGB uint8 ``H x W x 3`` -> bottleneck (None when the filter rejects the frame; the encoder does not run
        then); with ``cells``, the stem cell means of a kept frame for the background filter."""
        if use_filter and not self.has_filter:
            raise RuntimeError("this head has no neural filter")
        h, w = int(rgb.shape[0]), int(rgb.shape[1])
        resized = resized_size(h, w, self.min_size, self.max_size)
        meta = BatchMeta([(h, w)], [resized], padded_size(resized, self.size_divisible))
        with timed(timing, "head"):
            stem = self._run(fmt.STAGE_STEM, image=np.ascontiguousarray(rgb, dtype=np.uint8), resized=resized)
        prob = None
        if use_filter:
            with timed(timing, "filter"):
                prob = float(self._run(fmt.STAGE_FILTER, stem=stem)[0])
            if prob < self.filter_threshold:
                return HeadResult(None, BatchMeta([], [], meta.batch_shape), prob)
        summary = None
        if cells:
            with timed(timing, "filter"):
                summary = stem_cells(stem[0])
        with timed(timing, "head"):
            bottleneck = self._run(fmt.STAGE_ENCODER, stem=stem)
        if tuple(bottleneck.shape[1:]) != bottleneck_shape(self.channels, meta.batch_shape):
            raise RuntimeError(
                f"the ONNX head returned a {list(bottleneck.shape)} bottleneck for a {meta.batch_shape} batch"
            )
        return HeadResult(bottleneck, meta, prob, summary)

    def _run(
        self,
        stage: int,
        image: np.ndarray = _NO_IMAGE,
        resized: tuple[int, int] = (0, 0),
        stem: np.ndarray = _NO_STEM,
    ) -> np.ndarray:
        """One program of the file; the inputs it does not read are fed empty."""
        feeds = {
            fmt.INPUT_IMAGE: image,
            fmt.INPUT_RESIZED: np.empty((0, *resized), dtype=np.float32),
            fmt.INPUT_STEM: stem,
            fmt.INPUT_STAGE: np.array(stage, dtype=np.int64),
        }
        return self.session.run(None, feeds)[0]

    def run_tail(self, out: HeadResult) -> dict:
        raise SetupError("the ONNX runtime has no tail: local mode needs --runtime torch")
