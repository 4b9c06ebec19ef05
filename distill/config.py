"""Training configurations (YAML, in the spirit of the seed's): load, validate, one-line errors."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

METHODS = ("teacher", "hnd", "ghnd", "filter")
LAYER_PATH = re.compile(r"^backbone\.body\.layer([1-4])$")
OPTIMIZERS = ("SGD", "Adam", "AdamW")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key."""


@dataclass(frozen=True)
class Term:
    """One distillation term: MSE between a student and a teacher module's outputs, times ``factor``."""

    student: str
    teacher: str
    factor: float = 1.0

    @property
    def layer(self) -> int:
        return int(LAYER_PATH.match(self.student).group(1))


@dataclass(frozen=True)
class TrainConfig:
    """A whole run: what to train, on which data, how, and where to write checkpoints."""

    method: str
    output: Path
    dataset: dict[str, Any]
    model: dict[str, Any] = field(default_factory=dict)
    teacher: dict[str, Any] = field(default_factory=dict)
    student: dict[str, Any] = field(default_factory=dict)
    init: dict[str, Any] = field(default_factory=dict)
    epochs: int = 1
    batch_size: int = 4
    workers: int = 0
    optimizer: dict[str, Any] = field(default_factory=lambda: {"type": "Adam", "lr": 1e-3})
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    terms: tuple[Term, ...] = ()
    reduction: str = "sum"
    detection_loss: float = 0.0
    target_recall: float = 0.99
    seed: int = 0
    log_every: int = 20
    source: Path | None = None


def _require(d: dict, key: str, where: str) -> Any:
    if key not in d:
        raise ConfigError(f"{where}: missing key '{key}'")
    return d[key]


def _section(d: dict, key: str, where: str) -> dict:
    value = d.get(key, {}) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: '{key}' must be a mapping")
    return value


def parse_config(raw: Any, where: str = "config") -> TrainConfig:
    """Validate a parsed YAML document."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    method = _require(raw, "method", where)
    if method not in METHODS:
        raise ConfigError(f"{where}: method must be one of {', '.join(METHODS)}, got {method!r}")
    dataset = _section(raw, "dataset", where)
    if dataset.get("type", "synthetic") not in ("synthetic", "coco"):
        raise ConfigError(f"{where}: dataset.type must be synthetic or coco, got {dataset.get('type')!r}")
    if dataset.get("type") == "coco":
        _require(dataset, "coco_root", f"{where}: dataset")
    train = _section(raw, "train", where)
    criterion = _section(train, "criterion", f"{where}: train")
    terms = []
    for i, term in enumerate(criterion.get("terms", []) or []):
        if not isinstance(term, dict):
            raise ConfigError(f"{where}: train.criterion.terms[{i}] must be a mapping")
        t = Term(
            str(_require(term, "student", f"{where}: terms[{i}]")),
            str(term.get("teacher", term["student"])),
            float(term.get("factor", 1.0)),
        )
        for path in (t.student, t.teacher):
            if not LAYER_PATH.match(path):
                raise ConfigError(f"{where}: terms[{i}]: module path {path!r} is not backbone.body.layer1..4")
        if t.student != t.teacher:
            raise ConfigError(f"{where}: terms[{i}]: student and teacher paths must name the same layer")
        terms.append(t)
    if method in ("hnd", "ghnd"):
        if not terms:
            raise ConfigError(f"{where}: {method} needs train.criterion.terms")
        _require(raw, "teacher", where)
        _require(_section(raw, "student", where), "bottleneck_channels", f"{where}: student")
    if method == "hnd" and any(t.layer != 1 for t in terms):
        raise ConfigError(f"{where}: hnd mimics layer1 only; use method: ghnd for deeper terms")
    if method == "teacher" and not _section(raw, "model", where):
        raise ConfigError(f"{where}: method teacher needs a model section (arch, backbone, sizes)")
    if method == "filter":
        _require(_section(raw, "student", where), "ckpt", f"{where}: student")
    init = _section(raw, "init", where)
    if init:
        if method != "teacher":
            raise ConfigError(f"{where}: init (warm start from a teacher checkpoint) is for method teacher only")
        _require(init, "ckpt", f"{where}: init")
        freeze = init.get("freeze", []) or []
        if not isinstance(freeze, list) or not all(isinstance(f, str) and f for f in freeze):
            raise ConfigError(f"{where}: init.freeze must be a list of module names, e.g. [backbone]")
    optimizer = dict(_section(train, "optimizer", f"{where}: train") or {"type": "Adam", "lr": 1e-3})
    if optimizer.get("type", "Adam") not in OPTIMIZERS:
        raise ConfigError(f"{where}: train.optimizer.type must be one of {', '.join(OPTIMIZERS)}")
    scheduler = _section(train, "scheduler", f"{where}: train")
    if criterion.get("reduction", "sum") not in ("sum", "mean"):
        raise ConfigError(f"{where}: train.criterion.reduction must be sum or mean")
    try:
        return TrainConfig(
            method=method,
            output=Path(_require(raw, "output", where)),
            dataset=dataset,
            model=_section(raw, "model", where),
            teacher=_section(raw, "teacher", where),
            student=_section(raw, "student", where),
            init=init,
            epochs=int(train.get("epochs", 1)),
            batch_size=int(train.get("batch_size", 4)),
            workers=int(train.get("workers", 0)),
            optimizer=optimizer,
            milestones=tuple(int(m) for m in scheduler.get("milestones", []) or []),
            gamma=float(scheduler.get("gamma", 0.1)),
            terms=tuple(terms),
            reduction=str(criterion.get("reduction", "sum")),
            detection_loss=float(criterion.get("detection_loss", 0.0)),
            target_recall=float(train.get("target_recall", 0.99)),
            seed=int(train.get("seed", 0)),
            log_every=int(train.get("log_every", 20)),
        )
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def load_config(path: str | Path) -> TrainConfig:
    """Read and validate a YAML config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{at}") from None
    return replace(parse_config(raw, str(path)), source=path)
