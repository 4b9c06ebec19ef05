"""Training configurations (YAML, in the spirit of the seed's): load, validate, one-line errors."""

from __future__ import annotations

import difflib
import re
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

import yaml

METHODS = ("teacher", "hnd", "ghnd", "entropic", "finetune", "filter")
LAYER_PATH = re.compile(r"^backbone\.body\.layer([1-4])$")
OPTIMIZERS = ("SGD", "Adam", "AdamW")
S = TypeVar("S")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key."""


# Each section's keys are the fields of a dataclass below: the field's default is the key's default, its type
# (int / float) how a number is checked. MODEL_KEYS mirrors splitdet.common.models.ModelConfig (tests check that they
# agree; not imported here so that a bad config is reported before torch is loaded).
MODEL_KEYS = (
    "arch", "backbone", "min_size", "max_size", "fpn_channels", "box_representation_size",
    "box_batch_size_per_image", "anchor_sizes", "mask_head_layers", "keypoint_head_layers", "norm_layer",
)  # fmt: skip


@dataclass(frozen=True)
class TopSection:
    """The top level of a config (``base`` is resolved by :func:`load_config` before this is checked)."""

    method: str
    output: str
    dataset: dict | None = None
    model: dict | None = None
    teacher: dict | None = None
    student: dict | None = None
    init: dict | None = None
    train: dict | None = None


@dataclass(frozen=True)
class DatasetSection:
    type: str = "synthetic"
    coco_root: str | None = None
    task: str = "bbox"
    scene: dict | None = None  #: SceneConfig's keys, checked where the scene is built
    video: dict | None = None
    train: dict | None = None
    calibration: dict | None = None
    val: dict | None = None
    jpeg_quality: int | None = None


@dataclass(frozen=True)
class SplitSection:
    num_images: int | None = None
    seed: int | None = None
    first_frame: int | None = None  #: dataset type video


@dataclass(frozen=True)
class TeacherSection:
    ckpt: str | None = None
    weights: str | None = None
    num_classes: int | None = None
    num_keypoints: int | None = None


@dataclass(frozen=True)
class StudentSection:
    bottleneck_channels: int | None = None
    init: str | None = None
    ckpt: str | None = None


@dataclass(frozen=True)
class InitSection:
    ckpt: str
    freeze: list | None = None
    layer1_steps: int | None = None


@dataclass(frozen=True)
class TrainSection:
    epochs: int = 1
    batch_size: int = 4
    workers: int = 0
    optimizer: dict | None = None
    scheduler: dict | None = None
    criterion: dict | None = None
    target_recall: float = 0.99
    seed: int = 0
    log_every: int = 20


@dataclass(frozen=True)
class SchedulerSection:
    milestones: list | None = None
    gamma: float = 0.1


@dataclass(frozen=True)
class CriterionSection:
    reduction: str = "sum"
    terms: list | None = None
    detection_loss: float = 0.0
    beta: float | None = None


@dataclass(frozen=True)
class TermSection:
    student: str
    teacher: str | None = None
    factor: float = 1.0


@dataclass(frozen=True)
class SGDSection:
    type: str = "SGD"
    lr: float | None = None
    momentum: float | None = None
    dampening: float | None = None
    weight_decay: float | None = None
    nesterov: bool | None = None


@dataclass(frozen=True)
class AdamSection:
    type: str = "Adam"
    lr: float | None = None
    betas: list | None = None
    eps: float | None = None
    weight_decay: float | None = None
    amsgrad: bool | None = None


def keys(section: type) -> tuple[str, ...]:
    """The keys a section takes: its dataclass's field names."""
    return tuple(f.name for f in fields(section))


TOP_KEYS = keys(TopSection)
DATASET_KEYS = keys(DatasetSection)
SPLIT_KEYS = keys(SplitSection)
TEACHER_KEYS = (*keys(TeacherSection), *MODEL_KEYS)
STUDENT_KEYS = {
    "hnd": ("bottleneck_channels", "init"),
    "ghnd": ("bottleneck_channels", "init"),
    "entropic": ("bottleneck_channels", "init"),
    "finetune": ("ckpt",),
    "filter": ("ckpt",),
}
ANY_STUDENT_KEYS = keys(StudentSection)  # method teacher ignores the section
INIT_KEYS = keys(InitSection)
TRAIN_KEYS = keys(TrainSection)
OPTIMIZER_KEYS = {"SGD": keys(SGDSection), "Adam": keys(AdamSection), "AdamW": keys(AdamSection)}
SCHEDULER_KEYS = keys(SchedulerSection)
CRITERION_KEYS = keys(CriterionSection)
TERM_KEYS = keys(TermSection)


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


def _number(value: Any, kind: type, name: str, where: str) -> Any:
    """``value`` as ``kind`` (int or float); a wrong type is a one-line ``ConfigError``."""
    if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
        raise ConfigError(f"{where}: {name} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{where}: {name} must be {'an integer' if kind is int else 'a number'}, got {value!r}"
        ) from None


def take(section: type[S], d: dict, name: str, where: str, allowed: tuple[str, ...] | None = None) -> S:
    """``d`` as the dataclass ``section``: keys checked against its fields (or ``allowed``), required keys present,
    int / float fields converted, defaults filled in."""
    check_keys(d, allowed if allowed is not None else keys(section), name, where)
    values = {}
    for f in fields(section):
        if f.name not in d or d[f.name] is None:
            if f.default is MISSING:
                raise ConfigError(f"{where}: {name + ': ' if name else ''}missing key '{f.name}'")
            continue
        value = d[f.name]
        kind = str(f.type).split(" | ")[0]
        if kind in ("int", "float"):
            value = _number(value, int if kind == "int" else float, f"{name}.{f.name}" if name else f.name, where)
        elif kind == "dict" and not isinstance(value, dict):
            raise ConfigError(f"{where}: '{f.name}' must be a mapping")
        values[f.name] = value
    return section(**values)


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


def parse_config(raw: Any, where: str = "config") -> TrainConfig:
    """Validate a parsed YAML document: every key known, required keys there, values of the right kind."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    if "method" not in raw:
        raise ConfigError(f"{where}: missing key 'method'")
    check_keys(raw, TOP_KEYS, "the top level", where)
    top = take(TopSection, raw, "", where)
    method = top.method
    if method not in METHODS:
        raise ConfigError(f"{where}: method must be one of {', '.join(METHODS)}, got {method!r}")
    dataset_raw = top.dataset or {}
    dataset = take(DatasetSection, dataset_raw, "dataset", where)
    if dataset.type not in ("synthetic", "coco", "video"):
        raise ConfigError(f"{where}: dataset.type must be synthetic, coco or video, got {dataset.type!r}")
    if dataset.type == "coco" and dataset.coco_root is None:
        raise ConfigError(f"{where}: dataset: missing key 'coco_root'")
    for split in ("train", "calibration", "val"):
        take(SplitSection, getattr(dataset, split) or {}, f"dataset.{split}", where)
    train = take(TrainSection, top.train or {}, "train", where)
    criterion = take(CriterionSection, train.criterion or {}, "train.criterion", where)
    raw_terms = criterion.terms or []
    if not isinstance(raw_terms, list):
        raise ConfigError(f"{where}: train.criterion.terms must be a list")
    terms = []
    for i, raw_term in enumerate(raw_terms):
        if not isinstance(raw_term, dict):
            raise ConfigError(f"{where}: train.criterion.terms[{i}] must be a mapping")
        term = take(TermSection, raw_term, f"train.criterion.terms[{i}]", where)
        t = Term(str(term.student), str(term.teacher or term.student), term.factor)
        for path in (t.student, t.teacher):
            if not LAYER_PATH.match(path):
                raise ConfigError(f"{where}: terms[{i}]: module path {path!r} is not backbone.body.layer1..4")
        if t.student != t.teacher:
            raise ConfigError(f"{where}: terms[{i}]: student and teacher paths must name the same layer")
        terms.append(t)
    teacher = top.teacher or {}
    take(TeacherSection, teacher, "teacher", where, allowed=TEACHER_KEYS)
    student_raw = top.student or {}
    student = take(
        StudentSection, student_raw, f"student (method {method})", where, STUDENT_KEYS.get(method, ANY_STUDENT_KEYS)
    )
    model = top.model or {}
    check_keys(model, MODEL_KEYS, "model", where)
    if method in ("hnd", "ghnd", "entropic"):
        if not terms:
            raise ConfigError(f"{where}: {method} needs train.criterion.terms")
        if top.teacher is None:
            raise ConfigError(f"{where}: missing key 'teacher'")
        if student.bottleneck_channels is None:
            raise ConfigError(f"{where}: student: missing key 'bottleneck_channels'")
    beta = 0.0 if criterion.beta is None else criterion.beta
    if beta < 0 or (method == "entropic" and criterion.beta is None):
        raise ConfigError(f"{where}: entropic needs train.criterion.beta >= 0 (weight of bits per image)")
    if criterion.beta is not None and method != "entropic":
        raise ConfigError(f"{where}: train.criterion.beta is for method entropic only")
    if method == "hnd" and any(t.layer != 1 for t in terms):
        raise ConfigError(f"{where}: hnd mimics layer1 only; use method: ghnd for deeper terms")
    if method == "teacher" and not model:
        raise ConfigError(f"{where}: method teacher needs a model section (arch, backbone, sizes)")
    if method in ("finetune", "filter") and student.ckpt is None:
        raise ConfigError(f"{where}: student: missing key 'ckpt'")
    init_raw = top.init or {}
    if init_raw:
        check_keys(init_raw, INIT_KEYS, "init", where)
        if method != "teacher":
            raise ConfigError(f"{where}: init (warm start from a teacher checkpoint) is for method teacher only")
        init = take(InitSection, init_raw, "init", where)
        freeze = init.freeze or []
        if not isinstance(freeze, list) or not all(isinstance(f, str) and f for f in freeze):
            raise ConfigError(
                f"{where}: init.freeze must be a list of module names or patterns, e.g. [backbone] or "
                "[backbone.body.layer*.*.bn*]"
            )
        if init.layer1_steps is not None and init.layer1_steps < 1:
            raise ConfigError(f"{where}: init.layer1_steps must be >= 1, got {init.layer1_steps}")
    optimizer = dict(train.optimizer or {"type": "Adam", "lr": 1e-3})
    kind = optimizer.get("type", "Adam")
    if kind not in OPTIMIZERS:
        raise ConfigError(f"{where}: train.optimizer.type must be one of {', '.join(OPTIMIZERS)}, got {kind!r}")
    check_keys(optimizer, OPTIMIZER_KEYS[kind], f"train.optimizer ({kind})", where)
    take(SGDSection if kind == "SGD" else AdamSection, optimizer, "train.optimizer", where)
    scheduler = take(SchedulerSection, train.scheduler or {}, "train.scheduler", where)
    milestones = scheduler.milestones or []
    if not isinstance(milestones, list):
        raise ConfigError(f"{where}: train.scheduler.milestones must be a list of epochs, got {milestones!r}")
    if criterion.reduction not in ("sum", "mean"):
        raise ConfigError(f"{where}: train.criterion.reduction must be sum or mean")
    if not isinstance(top.output, str) or not top.output:
        raise ConfigError(f"{where}: output must be a directory path, got {top.output!r}")
    return TrainConfig(
        method=method,
        output=Path(top.output),
        dataset=dataset_raw,
        model=model,
        teacher=teacher,
        student=student_raw,
        init=init_raw,
        epochs=train.epochs,
        batch_size=train.batch_size,
        workers=train.workers,
        optimizer=optimizer,
        milestones=tuple(_number(m, int, "train.scheduler.milestones", where) for m in milestones),
        gamma=scheduler.gamma,
        terms=tuple(terms),
        reduction=str(criterion.reduction),
        detection_loss=criterion.detection_loss,
        beta=beta,
        target_recall=train.target_recall,
        seed=train.seed,
        log_every=train.log_every,
    )


def merge(base: dict, child: dict) -> dict:
    """``child`` over ``base``: mappings merge key by key, anything else (lists too) is replaced."""
    merged = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_override(raw: dict, assignment: str) -> dict:
    """``raw`` with one ``dotted.key=value`` override (the value read as YAML: ``8``, ``0.5``, ``[4]``, ``x``)."""
    key, sep, text = assignment.partition("=")
    path = key.strip().split(".")
    if not sep or not all(path):
        raise ConfigError(f"override {assignment!r} is not KEY=VALUE with a dotted key, e.g. train.epochs=8")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"override {assignment!r}: the value is not valid YAML") from None
    for part in reversed(path):
        value = {part: value}
    return merge(raw, value)


def read_raw(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A YAML config with its ``base:`` chain resolved (a base path is relative to the file naming it)."""
    if not path.is_file():
        where = f" (base of {seen[-1]})" if seen else ""
        raise ConfigError(f"config file not found: {path}{where}")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: base configs form a cycle: {' -> '.join(str(p) for p in (*seen, path))}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{at}") from None
    if not isinstance(raw, dict) or "base" not in raw:
        return raw
    base = raw.pop("base")
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: base must be the path of another config, got {base!r}")
    return merge(read_raw(path.parent / base, (*seen, path.resolve())), raw)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a YAML config (with its ``base:`` chain), apply ``KEY=VALUE`` overrides, validate."""
    path = Path(path)
    raw = read_raw(path)
    for assignment in overrides:
        if not isinstance(raw, dict):
            break
        raw = apply_override(raw, assignment)
    return replace(parse_config(raw, str(path)), source=path)
