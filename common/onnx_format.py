"""The ONNX head file: names and metadata keys shared by the exporter (torch) and the device runtime (no torch).

``split-model export --format onnx`` writes one ONNX model holding three programs, chosen per call by the scalar
``stage`` input (an ``If`` on it runs only the chosen one; see :mod:`splitdet.common.onnx_export`):

* :data:`STAGE_STEM`: the model's transform (uint8 RGB -> float [0, 1] -> normalize -> bilinear resize -> zero
  padding to a multiple of ``size_divisible``) and the stem: ``image`` + ``resized`` -> the stem output;
* :data:`STAGE_FILTER`: the neural filter: ``stem`` -> P(object) ``[1]`` (only when the checkpoint has one);
* :data:`STAGE_ENCODER`: the encoder: ``stem`` -> the bottleneck.

The inputs a stage does not read are fed empty. The resized size is computed outside the graph by
:func:`splitdet.common.shapes.resized_size` (torchvision's rule in double precision, as the torch head applies it) and
enters the graph as the shape of the empty ``resized`` input, whose values are never read.
"""

from __future__ import annotations

FORMAT = "splitdet-onnx-head"
VERSION = 2  #: 1: one graph, the filter's P(object) a second output of the encoder's run

INPUT_IMAGE = "image"  #: uint8 ``[H, W, 3]`` RGB frame (stem stage; empty ``[0, 0, 3]`` otherwise)
INPUT_RESIZED = "resized"  #: empty float32 ``[0, h, w]``: its shape carries the resized size
INPUT_STEM = "stem"  #: float32 ``[1, 64, h'/4, w'/4]`` stem output (filter and encoder stages; empty otherwise)
INPUT_STAGE = "stage"  #: int64 scalar: which program runs
OUTPUT = "out"  #: float32: the stem output, P(object) ``[1]`` or the bottleneck ``[1, C, h'/4+4, w'/4+4]``

STEM_CHANNELS = 64  #: channels of the stem output (``splitdet.common.bottleneck.STEM_CHANNELS``, which needs torch)
STAGE_STEM, STAGE_FILTER, STAGE_ENCODER = 0, 1, 2

#: Quantizations the ONNX client encodes with ``splitdet.common.codec`` (8-bit, float16, none) or
#: ``splitdet.common.entropy`` (entropy, with the tables from the file's metadata). A checkpoint whose codec is anything
#: else is refused at export and at load.
ONNX_QUANTIZATIONS: tuple[str, ...] = ("per_tensor", "per_channel", "float16", "none", "entropy")
#: metadata keys of the entropy codec: the tables (``EntropyTables.to_json``) and their fingerprint
META_ENTROPY_TABLES = "entropy_tables"
META_ENTROPY_FINGERPRINT = "entropy_fingerprint"


def check_quantization(quantization: str, what: str = "the checkpoint's codec") -> None:
    """Refuse, in one line, a quantization the ONNX head's runtime does not implement."""
    if quantization not in ONNX_QUANTIZATIONS:
        raise ValueError(
            f"the ONNX head supports the 8-bit (per_tensor, per_channel), float16, none and entropy codecs; {what} "
            f"is {quantization!r}: use the torch client (--runtime torch) for it"
        )
