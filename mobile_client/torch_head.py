"""The device's head run by torch: a checkpoint's :class:`splitdet.common.split.Head`, and its tail for ``local``
mode."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from splitdet.common.checkpoint import Checkpoint, load_checkpoint
from splitdet.common.codec_settings import CodecSettings
from splitdet.common.entropy import EntropyTables
from splitdet.common.split import Head, Tail, image_tensor, split
from splitdet.common.timing import timed
from splitdet.common.wire import decode_detections, encode_detections
from splitdet.mobile_client.background import stem_cells
from splitdet.mobile_client.pipeline import HeadResult
from splitdet.mobile_client.settings import SetupError


@dataclass
class ClientModel:
    """The checkpoint as the device holds it: the head, and the tail for ``local`` mode."""

    checkpoint: Checkpoint
    head: Head
    tail: Tail
    fingerprint: str  #: what this head presents to the server: its live weights + the recorded tail digest

    @classmethod
    def load(cls, path: str | Path, filter_threshold: float | None = None) -> ClientModel:
        """The checkpoint's head and tail; ``filter_threshold`` overrides the checkpoint's filter threshold."""
        checkpoint = load_checkpoint(path)
        if not checkpoint.config.is_student:
            raise SetupError(f"{path} holds a teacher; the client needs a bottleneck-injected student")
        threshold = checkpoint.filter_threshold if filter_threshold is None else filter_threshold
        head, tail = split(checkpoint.build_model(), threshold)
        return cls(checkpoint, head, tail, checkpoint.side_fingerprint(head=head))

    @property
    def has_filter(self) -> bool:
        return self.head.neural_filter is not None

    @property
    def codec(self) -> CodecSettings:
        return self.checkpoint.codec

    @property
    def size_rule(self) -> tuple[int, int]:
        return self.checkpoint.config.min_size, self.checkpoint.config.max_size

    @property
    def entropy_tables(self) -> EntropyTables | None:
        return self.checkpoint.entropy

    @property
    def class_names(self) -> list[str]:
        return list(self.checkpoint.class_names)

    @property
    def keypoint_names(self) -> list[str]:
        return list(self.checkpoint.keypoint_names)

    def run_head(
        self, rgb: np.ndarray, use_filter: bool, timing: dict[str, float] | None = None, cells: bool = False
    ) -> HeadResult:
        with torch.inference_mode():
            out = self.head([image_tensor(rgb)], use_filter=use_filter, timing=timing)
        prob = None if out.object_prob is None else float(out.object_prob[0])
        if out.bottleneck is None:
            return HeadResult(None, out.meta, prob)
        summary = None
        if cells:
            with timed(timing, "filter"):
                summary = stem_cells(out.stem[0].numpy())
        return HeadResult(out.bottleneck.numpy(), out.meta, prob, summary)

    def run_tail(self, out: HeadResult) -> dict:
        with torch.inference_mode():
            detections = self.tail(torch.from_numpy(out.bottleneck), out.meta)[0]
        return decode_detections(encode_detections(detections))
