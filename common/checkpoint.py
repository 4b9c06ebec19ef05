"""One file per trained model: weights plus everything needed to rebuild it, loaded with ``weights_only=True``.

The fingerprint ties a head to its tail: it hashes the model config, class names and the digests of the
head's and the tail's weights. The file records both digests, so each side computes the fingerprint from
its own half's live weights plus the other half's recorded digest; a client and a server built from
different checkpoints (or a tampered half) disagree.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from splitdet.common.codec_settings import CodecSettings
from splitdet.common.entropy import EntropyError, EntropyTables
from splitdet.common.filter import DEFAULT_THRESHOLD
from splitdet.common.models import ModelConfig, build_model
from splitdet.common.split import Head, Tail, split, state_digest

FORMAT = "splitdet-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a loadable checkpoint; the message says why."""


def fingerprint(
    config: ModelConfig, class_names: list[str], head_digest: str, tail_digest: str, entropy: str = ""
) -> str:
    """16 hex digits identifying a (head, tail) pair and, for the entropy codec, its tables (``entropy``, the
    tables' own fingerprint; checkpoints without tables keep the fingerprint they always had)."""
    # Fields that do not change what the head sends or the tail computes stay out of the fingerprint.
    wire = {
        k: v for k, v in config.to_dict().items() if k not in ("with_filter", "filter_arch", "box_batch_size_per_image")
    }
    fields = {"config": wire, "class_names": class_names, "head": head_digest, "tail": tail_digest}
    if entropy:
        fields["entropy"] = entropy
    blob = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Checkpoint:
    """A loaded checkpoint. ``state_dict`` is float32; ``training`` holds optional resume state."""

    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    class_names: list[str]
    keypoint_names: list[str] = field(default_factory=list)
    filter_threshold: float = DEFAULT_THRESHOLD
    codec: CodecSettings = field(default_factory=CodecSettings)
    head_digest: str = ""
    tail_digest: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    entropy: EntropyTables | None = None  #: the entropy codec's tables (entropic students only)

    def save_options(self) -> dict[str, Any]:
        """The :func:`save_checkpoint` arguments that keep this checkpoint's names, filter threshold, codec and
        entropy tables: a model derived from it (exported, fine-tuned) is saved with them."""
        return {
            "class_names": self.class_names,
            "keypoint_names": self.keypoint_names,
            "filter_threshold": self.filter_threshold,
            "codec": self.codec,
            "entropy": self.entropy,
        }

    @property
    def entropy_fingerprint(self) -> str:
        return self.entropy.fingerprint if self.entropy is not None else ""

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.config, self.class_names, self.head_digest, self.tail_digest, self.entropy_fingerprint)

    def side_fingerprint(self, head: Head | None = None, tail: Tail | None = None) -> str:
        """The fingerprint one side computes: its own half's live weights plus the other's recorded digest."""
        if (head is None) == (tail is None):
            raise ValueError("pass exactly one of head= or tail=")
        head_digest = head.digest() if head is not None else self.head_digest
        tail_digest = tail.digest() if tail is not None else self.tail_digest
        return fingerprint(self.config, self.class_names, head_digest, tail_digest, self.entropy_fingerprint)

    def build_model(self) -> GeneralizedRCNN:
        """Rebuild the model in eval mode with the stored weights."""
        model = build_model(self.config)
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as e:
            first = str(e).splitlines()[0] if str(e) else "state dict does not match"
            raise CheckpointError(f"checkpoint weights do not match its config: {first}") from None
        return model.eval()


def _digests(model: GeneralizedRCNN) -> tuple[str, str]:
    if not model.config.is_student:
        whole = state_digest(model)
        return whole, whole
    head, tail = split(model)
    return head.digest(), tail.digest()


def save_checkpoint(
    model: GeneralizedRCNN,
    path: str | Path,
    class_names: list[str],
    keypoint_names: list[str] | None = None,
    filter_threshold: float = DEFAULT_THRESHOLD,
    codec: CodecSettings = CodecSettings(),
    half: bool = False,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    entropy: EntropyTables | None = None,
) -> Checkpoint:
    """Write ``model`` (built by :func:`splitdet.common.models.build_model`) to ``path``; ``half`` stores floats as fp16
    (never the ``entropy`` tables: their integers and float32 medians are what both sides code with)."""
    config: ModelConfig = model.config
    if len(class_names) != config.num_classes:
        raise ValueError(f"{len(class_names)} class names for {config.num_classes} classes (background included)")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        # Digest what a reader will load: the fp16 values widened back to float32.
        probe = build_model(config)
        probe.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        head_digest, tail_digest = _digests(probe)
    else:
        head_digest, tail_digest = _digests(model)
    blob = {
        "format": FORMAT,
        "version": VERSION,
        "config": config.to_dict(),
        "class_names": list(class_names),
        "keypoint_names": list(keypoint_names or []),
        "filter_threshold": float(filter_threshold),
        "codec": {"quantization": codec.quantization, "compression": codec.compression, "level": codec.level},
        "digests": {"head": head_digest, "tail": tail_digest},
        "state_dict": state,
        "training": training or {},
        "metrics": metrics or {},
    }
    if entropy is not None:
        blob["entropy"] = {k: torch.from_numpy(v) for k, v in entropy.state().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)
    return load_checkpoint(path)


def read_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with one-line errors; never runs pickled code."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; give the checkpoint file inside it (a .pt file)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        if found:
            raise CheckpointError(
                f"refusing to load {path}: it carries pickled code ({found.group(1)}), not only weights"
            ) from None
        raise CheckpointError(f"cannot read {path}: not a PyTorch checkpoint file") from None
    except Exception as e:  # torch.load raises many types on corrupt input; all mean the same to the user
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"cannot read {path} as a checkpoint (corrupt or truncated?): {reason}") from None


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load and validate a checkpoint written by :func:`save_checkpoint`."""
    blob = read_checkpoint_file(path)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a splitdet checkpoint (for the seed's files use `split-model import-seed`)"
        )
    if blob.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {blob.get('version')}, this program reads {VERSION}")
    try:
        config = ModelConfig.from_dict(blob["config"])
        codec_settings = CodecSettings(**blob.get("codec", {}))
        state = {k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()}
        ckpt = Checkpoint(
            config=config,
            state_dict=state,
            class_names=list(blob["class_names"]),
            keypoint_names=list(blob.get("keypoint_names", [])),
            filter_threshold=float(blob.get("filter_threshold", DEFAULT_THRESHOLD)),
            codec=codec_settings,
            head_digest=blob["digests"]["head"],
            tail_digest=blob["digests"]["tail"],
            training=dict(blob.get("training", {})),
            metrics=dict(blob.get("metrics", {})),
            entropy=EntropyTables.from_state(blob["entropy"]) if "entropy" in blob else None,
        )
        if ckpt.entropy is not None and ckpt.entropy.channels != config.bottleneck_channels:
            raise EntropyError(
                f"{ckpt.entropy.channels} channels for a {config.bottleneck_channels}-channel bottleneck"
            )
        return ckpt
    except EntropyError as e:
        raise CheckpointError(f"{path} has unusable entropy tables: {e}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path} is not a valid checkpoint: {e}") from None
