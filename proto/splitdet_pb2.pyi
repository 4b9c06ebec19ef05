from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    UINT8: _ClassVar[DType]
    FLOAT16: _ClassVar[DType]
    FLOAT32: _ClassVar[DType]
    INT32: _ClassVar[DType]

class Quantization(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QUANTIZATION_UNSPECIFIED: _ClassVar[Quantization]
    NONE: _ClassVar[Quantization]
    PER_TENSOR: _ClassVar[Quantization]
    PER_CHANNEL: _ClassVar[Quantization]
    HALF: _ClassVar[Quantization]
    ENTROPY: _ClassVar[Quantization]

class Compression(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPRESSION_UNSPECIFIED: _ClassVar[Compression]
    RAW: _ClassVar[Compression]
    ZSTD: _ClassVar[Compression]
    RANS: _ClassVar[Compression]
    RANS_CONSTRICTION: _ClassVar[Compression]
DTYPE_UNSPECIFIED: DType
UINT8: DType
FLOAT16: DType
FLOAT32: DType
INT32: DType
QUANTIZATION_UNSPECIFIED: Quantization
NONE: Quantization
PER_TENSOR: Quantization
PER_CHANNEL: Quantization
HALF: Quantization
ENTROPY: Quantization
COMPRESSION_UNSPECIFIED: Compression
RAW: Compression
ZSTD: Compression
RANS: Compression
RANS_CONSTRICTION: Compression

class ImageSize(_message.Message):
    __slots__ = ("height", "width")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ...) -> None: ...

class BottleneckFrame(_message.Message):
    __slots__ = ("format_version", "fingerprint", "shape", "dtype", "quantization", "scale", "zero_point", "compression", "payload", "original_sizes", "image_sizes", "batch_shape", "frame_id")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    ZERO_POINT_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_SIZES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZES_FIELD_NUMBER: _ClassVar[int]
    BATCH_SHAPE_FIELD_NUMBER: _ClassVar[int]
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    fingerprint: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    quantization: Quantization
    scale: _containers.RepeatedScalarFieldContainer[float]
    zero_point: _containers.RepeatedScalarFieldContainer[float]
    compression: Compression
    payload: bytes
    original_sizes: _containers.RepeatedCompositeFieldContainer[ImageSize]
    image_sizes: _containers.RepeatedCompositeFieldContainer[ImageSize]
    batch_shape: ImageSize
    frame_id: int
    def __init__(self, format_version: _Optional[int] = ..., fingerprint: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ..., quantization: _Optional[_Union[Quantization, str]] = ..., scale: _Optional[_Iterable[float]] = ..., zero_point: _Optional[_Iterable[float]] = ..., compression: _Optional[_Union[Compression, str]] = ..., payload: _Optional[bytes] = ..., original_sizes: _Optional[_Iterable[_Union[ImageSize, _Mapping]]] = ..., image_sizes: _Optional[_Iterable[_Union[ImageSize, _Mapping]]] = ..., batch_shape: _Optional[_Union[ImageSize, _Mapping]] = ..., frame_id: _Optional[int] = ...) -> None: ...

class RleMask(_message.Message):
    __slots__ = ("height", "width", "counts")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    counts: bytes
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., counts: _Optional[bytes] = ...) -> None: ...

class ImageDetections(_message.Message):
    __slots__ = ("count", "boxes", "scores", "labels", "masks", "num_keypoints", "keypoints", "keypoint_scores")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    BOXES_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MASKS_FIELD_NUMBER: _ClassVar[int]
    NUM_KEYPOINTS_FIELD_NUMBER: _ClassVar[int]
    KEYPOINTS_FIELD_NUMBER: _ClassVar[int]
    KEYPOINT_SCORES_FIELD_NUMBER: _ClassVar[int]
    count: int
    boxes: bytes
    scores: bytes
    labels: bytes
    masks: _containers.RepeatedCompositeFieldContainer[RleMask]
    num_keypoints: int
    keypoints: bytes
    keypoint_scores: bytes
    def __init__(self, count: _Optional[int] = ..., boxes: _Optional[bytes] = ..., scores: _Optional[bytes] = ..., labels: _Optional[bytes] = ..., masks: _Optional[_Iterable[_Union[RleMask, _Mapping]]] = ..., num_keypoints: _Optional[int] = ..., keypoints: _Optional[bytes] = ..., keypoint_scores: _Optional[bytes] = ...) -> None: ...

class ServerTimings(_message.Message):
    __slots__ = ("queue_ms", "decode_ms", "tail_ms", "encode_ms")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    TAIL_MS_FIELD_NUMBER: _ClassVar[int]
    ENCODE_MS_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    decode_ms: float
    tail_ms: float
    encode_ms: float
    def __init__(self, queue_ms: _Optional[float] = ..., decode_ms: _Optional[float] = ..., tail_ms: _Optional[float] = ..., encode_ms: _Optional[float] = ...) -> None: ...

class InferResponse(_message.Message):
    __slots__ = ("frame_id", "images", "timings")
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    frame_id: int
    images: _containers.RepeatedCompositeFieldContainer[ImageDetections]
    timings: ServerTimings
    def __init__(self, frame_id: _Optional[int] = ..., images: _Optional[_Iterable[_Union[ImageDetections, _Mapping]]] = ..., timings: _Optional[_Union[ServerTimings, _Mapping]] = ...) -> None: ...

class ImageFrame(_message.Message):
    __slots__ = ("frame_id", "jpeg")
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    JPEG_FIELD_NUMBER: _ClassVar[int]
    frame_id: int
    jpeg: bytes
    def __init__(self, frame_id: _Optional[int] = ..., jpeg: _Optional[bytes] = ...) -> None: ...

class ModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("format_version", "server_version", "arch", "backbone", "bottleneck_channels", "bottleneck_shape_rule", "class_names", "keypoint_names", "default_quantization", "quantizations", "compressions", "fingerprint", "device", "min_size", "max_size", "max_message_bytes", "max_batch")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_FIELD_NUMBER: _ClassVar[int]
    BOTTLENECK_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    BOTTLENECK_SHAPE_RULE_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    KEYPOINT_NAMES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATIONS_FIELD_NUMBER: _ClassVar[int]
    COMPRESSIONS_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MIN_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    server_version: str
    arch: str
    backbone: str
    bottleneck_channels: int
    bottleneck_shape_rule: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    keypoint_names: _containers.RepeatedScalarFieldContainer[str]
    default_quantization: Quantization
    quantizations: _containers.RepeatedScalarFieldContainer[Quantization]
    compressions: _containers.RepeatedScalarFieldContainer[Compression]
    fingerprint: str
    device: str
    min_size: int
    max_size: int
    max_message_bytes: int
    max_batch: int
    def __init__(self, format_version: _Optional[int] = ..., server_version: _Optional[str] = ..., arch: _Optional[str] = ..., backbone: _Optional[str] = ..., bottleneck_channels: _Optional[int] = ..., bottleneck_shape_rule: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ..., keypoint_names: _Optional[_Iterable[str]] = ..., default_quantization: _Optional[_Union[Quantization, str]] = ..., quantizations: _Optional[_Iterable[_Union[Quantization, str]]] = ..., compressions: _Optional[_Iterable[_Union[Compression, str]]] = ..., fingerprint: _Optional[str] = ..., device: _Optional[str] = ..., min_size: _Optional[int] = ..., max_size: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., max_batch: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StageStats(_message.Message):
    __slots__ = ("stage", "count", "p50_ms", "p95_ms", "mean_ms")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P95_MS_FIELD_NUMBER: _ClassVar[int]
    MEAN_MS_FIELD_NUMBER: _ClassVar[int]
    stage: str
    count: int
    p50_ms: float
    p95_ms: float
    mean_ms: float
    def __init__(self, stage: _Optional[str] = ..., count: _Optional[int] = ..., p50_ms: _Optional[float] = ..., p95_ms: _Optional[float] = ..., mean_ms: _Optional[float] = ...) -> None: ...

class Stats(_message.Message):
    __slots__ = ("frames", "images", "bytes_in", "bytes_out", "errors", "errors_by_code", "stages", "in_flight", "uptime_s", "streams")
    class ErrorsByCodeEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    BYTES_IN_FIELD_NUMBER: _ClassVar[int]
    BYTES_OUT_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_BY_CODE_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    frames: int
    images: int
    bytes_in: int
    bytes_out: int
    errors: int
    errors_by_code: _containers.ScalarMap[str, int]
    stages: _containers.RepeatedCompositeFieldContainer[StageStats]
    in_flight: int
    uptime_s: float
    streams: int
    def __init__(self, frames: _Optional[int] = ..., images: _Optional[int] = ..., bytes_in: _Optional[int] = ..., bytes_out: _Optional[int] = ..., errors: _Optional[int] = ..., errors_by_code: _Optional[_Mapping[str, int]] = ..., stages: _Optional[_Iterable[_Union[StageStats, _Mapping]]] = ..., in_flight: _Optional[int] = ..., uptime_s: _Optional[float] = ..., streams: _Optional[int] = ...) -> None: ...
