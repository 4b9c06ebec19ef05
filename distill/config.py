"""Training configurations (YAML, in the spirit of the seed's): load, validate, one-line errors."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

METHODS = ("teacher", "hnd", "ghnd", "entropic", "finetune", "filter")
LAYER_PATH = re.compile(r"^backbone\.body\.layer([1-4])$")
OPTIMIZERS = ("SGD", "Adam", "AdamW")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key."""


# The keys each section takes. MODEL_KEYS mirrors common.models.ModelConfig (tests check that they agree; not
# imported here so that a bad config is reported before torch is loaded).
MODEL_KEYS = (
    "arch", "backbone", "min_size", "max_size", "fpn_channels", "box_representation_size",
    "box_batch_size_per_image", "anchor_sizes", "mask_head_layers", "keypoint_head_layers", "norm_layer",
)  # fmt: skip
TOP_KEYS = ("method", "output", "dataset", "model", "teacher", "student", "init", "train")
DATASET_KEYS = ("type", "coco_root", "task", "scene", "video", "train", "calibration", "val", "jpeg_quality")
SPLIT_KEYS = ("num_images", "seed", "first_frame")  # first_frame: dataset type video
TEACHER_KEYS = ("ckpt", "weights", "num_classes", "num_keypoints", *MODEL_KEYS)
STUDENT_KEYS = {
    "hnd": ("bottleneck_channels", "init"),
    "ghnd": ("bottleneck_channels", "init"),
    "entropic": ("bottleneck_channels", "init"),
    "finetune": ("ckpt",),
    "filter": ("ckpt",),
}
ANY_STUDENT_KEYS = ("bottleneck_channels", "init", "ckpt")  # method teacher ignores the section
INIT_KEYS = ("ckpt", "freeze", "layer1_steps")
TRAIN_KEYS = ("epochs", "batch_size", "workers", "optimizer", "scheduler", "criterion", "target_recall", "seed",
              "log_every")  # fmt: skip
OPTIMIZER_KEYS = {
    "SGD": ("type", "lr", "momentum", "dampening", "weight_decay", "nesterov"),
    "Adam": ("type", "lr", "betas", "eps", "weight_decay", "amsgrad"),
    "AdamW": ("type", "lr", "betas", "eps", "weight_decay", "amsgrad"),
}
SCHEDULER_KEYS = ("milestones", "gamma")
CRITERION_KEYS = ("reduction", "terms", "detection_loss", "beta")
TERM_KEYS = ("student", "teacher", "factor")


def check_keys(d: dict, allowed: tuple[str, ...] | list[str], section: str, where: str) -> None:
    """``ConfigError`` naming the first key of ``d`` not in ``allowed`` and the section it is in, with the closest
    allowed key when one is close."""
    for key in d:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), [str(a) for a in allowed], n=1)
            if close:
                hint = f" (did you mean '{close[0]}'?)"
            else:
                hint = f"; known keys: {', '.join(allowed)}" if allowed else " (it takes no keys here)"
            prefix = f"{where}: " if where else ""
            raise ConfigError(f"{prefix}unknown key '{key}' in {section}{hint}")


def _number(d: dict, key: str, kind: type, default: Any, name: str, where: str) -> Any:
    """``d[key]`` as ``kind`` (int or float), or ``default``; a wrong type is a one-line ``ConfigError``."""
    value = d.get(key, default)
    if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
        raise ConfigError(f"{where}: {name} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{where}: {name} must be {'an integer' if kind is int else 'a number'}, got {value!r}"
        ) from None


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
    beta: float = 0.0  #: entropic: weight of the rate (bits per image) against the feature loss
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
    """Validate a parsed YAML document: every key known, required keys there, values of the right kind."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    check_keys(raw, TOP_KEYS, "the top level", where)
    method = _require(raw, "method", where)
    if method not in METHODS:
        raise ConfigError(f"{where}: method must be one of {', '.join(METHODS)}, got {method!r}")
    dataset = _section(raw, "dataset", where)
    check_keys(dataset, DATASET_KEYS, "dataset", where)
    if dataset.get("type", "synthetic") not in ("synthetic", "coco", "video"):
        raise ConfigError(f"{where}: dataset.type must be synthetic, coco or video, got {dataset.get('type')!r}")
    if dataset.get("type") == "coco":
        _require(dataset, "coco_root", f"{where}: dataset")
    for split in ("train", "val"):
        check_keys(_section(dataset, split, f"{where}: dataset"), SPLIT_KEYS, f"dataset.{split}", where)
    _section(dataset, "scene", f"{where}: dataset")  # its keys are SceneConfig's: checked where it is built
    train = _section(raw, "train", where)
    check_keys(train, TRAIN_KEYS, "train", where)
    criterion = _section(train, "criterion", f"{where}: train")
    check_keys(criterion, CRITERION_KEYS, "train.criterion", where)
    raw_terms = criterion.get("terms", []) or []
    if not isinstance(raw_terms, list):
        raise ConfigError(f"{where}: train.criterion.terms must be a list")
    terms = []
    for i, term in enumerate(raw_terms):
        if not isinstance(term, dict):
            raise ConfigError(f"{where}: train.criterion.terms[{i}] must be a mapping")
        check_keys(term, TERM_KEYS, f"train.criterion.terms[{i}]", where)
        t = Term(
            str(_require(term, "student", f"{where}: terms[{i}]")),
            str(term.get("teacher", term["student"])),
            _number(term, "factor", float, 1.0, f"train.criterion.terms[{i}].factor", where),
        )
        for path in (t.student, t.teacher):
            if not LAYER_PATH.match(path):
                raise ConfigError(f"{where}: terms[{i}]: module path {path!r} is not backbone.body.layer1..4")
        if t.student != t.teacher:
            raise ConfigError(f"{where}: terms[{i}]: student and teacher paths must name the same layer")
        terms.append(t)
    teacher = _section(raw, "teacher", where)
    check_keys(teacher, TEACHER_KEYS, "teacher", where)
    student = _section(raw, "student", where)
    check_keys(student, STUDENT_KEYS.get(method, ANY_STUDENT_KEYS), f"student (method {method})", where)
    model = _section(raw, "model", where)
    check_keys(model, MODEL_KEYS, "model", where)
    if method in ("hnd", "ghnd", "entropic"):
        if not terms:
            raise ConfigError(f"{where}: {method} needs train.criterion.terms")
        _require(raw, "teacher", where)
        _require(student, "bottleneck_channels", f"{where}: student")
        _number(student, "bottleneck_channels", int, None, "student.bottleneck_channels", where)
    beta = _number(criterion, "beta", float, 0.0, "train.criterion.beta", where)
    if beta < 0 or (method == "entropic" and "beta" not in criterion):
        raise ConfigError(f"{where}: entropic needs train.criterion.beta >= 0 (weight of bits per image)")
    if "beta" in criterion and method != "entropic":
        raise ConfigError(f"{where}: train.criterion.beta is for method entropic only")
    if method == "hnd" and any(t.layer != 1 for t in terms):
        raise ConfigError(f"{where}: hnd mimics layer1 only; use method: ghnd for deeper terms")
    if method == "teacher" and not model:
        raise ConfigError(f"{where}: method teacher needs a model section (arch, backbone, sizes)")
    if method in ("finetune", "filter"):
        _require(student, "ckpt", f"{where}: student")
    init = _section(raw, "init", where)
    if init:
        check_keys(init, INIT_KEYS, "init", where)
        if method != "teacher":
            raise ConfigError(f"{where}: init (warm start from a teacher checkpoint) is for method teacher only")
        _require(init, "ckpt", f"{where}: init")
        freeze = init.get("freeze", []) or []
        if not isinstance(freeze, list) or not all(isinstance(f, str) and f for f in freeze):
            raise ConfigError(
                f"{where}: init.freeze must be a list of module names or patterns, e.g. [backbone] or "
                "[backbone.body.layer*.*.bn*]"
            )
        if "layer1_steps" in init:
            _number(init, "layer1_steps", int, None, "init.layer1_steps", where)
            if init["layer1_steps"] < 1:
                raise ConfigError(f"{where}: init.layer1_steps must be >= 1, got {init['layer1_steps']}")
    optimizer = dict(_section(train, "optimizer", f"{where}: train") or {"type": "Adam", "lr": 1e-3})
    kind = optimizer.get("type", "Adam")
    if kind not in OPTIMIZERS:
        raise ConfigError(f"{where}: train.optimizer.type must be one of {', '.join(OPTIMIZERS)}, got {kind!r}")
    check_keys(optimizer, OPTIMIZER_KEYS[kind], f"train.optimizer ({kind})", where)
    for key in ("lr", "weight_decay", "momentum", "dampening", "eps"):
        if key in optimizer:
            _number(optimizer, key, float, None, f"train.optimizer.{key}", where)
    scheduler = _section(train, "scheduler", f"{where}: train")
    check_keys(scheduler, SCHEDULER_KEYS, "train.scheduler", where)
    milestones = scheduler.get("milestones", []) or []
    if not isinstance(milestones, list):
        raise ConfigError(f"{where}: train.scheduler.milestones must be a list of epochs, got {milestones!r}")
    if criterion.get("reduction", "sum") not in ("sum", "mean"):
        raise ConfigError(f"{where}: train.criterion.reduction must be sum or mean")
    output = _require(raw, "output", where)
    if not isinstance(output, str) or not output:
        raise ConfigError(f"{where}: output must be a directory path, got {output!r}")
    return TrainConfig(
        method=method,
        output=Path(output),
        dataset=dataset,
        model=model,
        teacher=teacher,
        student=student,
        init=init,
        epochs=_number(train, "epochs", int, 1, "train.epochs", where),
        batch_size=_number(train, "batch_size", int, 4, "train.batch_size", where),
        workers=_number(train, "workers", int, 0, "train.workers", where),
        optimizer=optimizer,
        milestones=tuple(_number({"m": m}, "m", int, None, "train.scheduler.milestones", where) for m in milestones),
        gamma=_number(scheduler, "gamma", float, 0.1, "train.scheduler.gamma", where),
        terms=tuple(terms),
        reduction=str(criterion.get("reduction", "sum")),
        detection_loss=_number(criterion, "detection_loss", float, 0.0, "train.criterion.detection_loss", where),
        beta=beta,
        target_recall=_number(train, "target_recall", float, 0.99, "train.target_recall", where),
        seed=_number(train, "seed", int, 0, "train.seed", where),
        log_every=_number(train, "log_every", int, 20, "train.log_every", where),
    )


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
