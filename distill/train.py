"""Training runs: the teacher (from scratch, torchvision's detection losses), HND/GHND and entropic students, and
a student's tail fine-tuned on its decoded bottleneck; the neural filter trains in
:mod:`splitdet.distill.filter_training`.

One loop serves them all; each method supplies a module whose ``forward(images, targets)`` returns a dict of
losses. Runs on CPU or GPU, and under ``torchrun`` with DistributedDataParallel. A checkpoint in the project's
format is written after every epoch (``last.pt``, with the optimizer state for ``--resume``) and at the end
(``final.pt``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from splitdet.common.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from splitdet.common.models import ModelConfig, build_model, build_teacher, coco_class_names, init_student_from_teacher
from splitdet.distill.config import ConfigError, TrainConfig
from splitdet.distill.dataset_config import DatasetInfo, build_dataset
from splitdet.distill.datasets import collate_detection
from splitdet.distill.mimic import HeadMimic


@dataclass
class TrainingTask:
    """What one method trains: the loss module, the model saved in checkpoints, and how to save it."""

    module: nn.Module
    model: nn.Module
    info: DatasetInfo
    checkpoint_kwargs: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    #: what else a checkpoint gets, asked at each save (the entropic student's tables)
    extra: Callable[[], dict[str, Any]] = dict
    #: extra resume state kept in ``training`` (the entropy model's learned densities), and how to restore it
    resume_state: Callable[[], dict[str, Any]] = dict
    restore: Callable[[dict[str, Any]], None] = lambda training: None
    #: run once on the training set before the first epoch of a fresh run (the entropic prior's warm-up)
    prepare: Callable[[Dataset], None] = lambda dataset: None


class DetectionTraining(nn.Module):
    """Teacher training: torchvision's own detection losses. Modules named in ``frozen`` stay in eval mode, so their
    BatchNorm statistics do not move either."""

    def __init__(self, model: nn.Module, frozen: list[str] | tuple[str, ...] = ()) -> None:
        super().__init__()
        self.model = model
        self.frozen = tuple(frozen)

    def train(self, mode: bool = True) -> DetectionTraining:
        super().train(mode)
        modules = dict(self.model.named_modules())
        for name in self.frozen:
            modules[name].eval()
        return self

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        return self.model(images, targets)


def _teacher_from(
    section: dict[str, Any], info: DatasetInfo, allow_student: bool = False
) -> tuple[nn.Module, dict[str, list[str]]]:
    """The frozen teacher and its class/keypoint names (a student predicts what its teacher predicts). With
    ``allow_student`` (entropic) a trained student may stand in: its backbone outputs are the targets."""
    if "ckpt" in section:
        ckpt = load_checkpoint(section["ckpt"])
        if ckpt.config.is_student and not allow_student:
            raise ConfigError(f"teacher.ckpt {section['ckpt']} holds a student, not a teacher")
        return ckpt.build_model(), {"class_names": ckpt.class_names, "keypoint_names": ckpt.keypoint_names}
    arch = section.get("arch", "faster_rcnn")
    options = {k: v for k, v in section.items() if k not in ("arch", "backbone", "weights")}
    if str(section.get("weights", "")).upper() == "COCO":
        # torchvision's COCO models label by COCO category id: 91 classes (2 for keypoints), not the dataset's.
        options["num_classes"] = 2 if arch == "keypoint_rcnn" else 91
    else:
        options.setdefault("num_classes", info.num_classes)
    teacher = build_teacher(arch, section.get("backbone", "resnet50"), weights=section.get("weights"), **options)
    if options["num_classes"] == info.num_classes:
        names = {"class_names": info.class_names, "keypoint_names": info.keypoint_names}
    else:
        class_names, keypoint_names = coco_class_names(teacher.config)
        names = {"class_names": class_names, "keypoint_names": keypoint_names}
    return teacher.eval(), names


def warm_start(model: nn.Module, ckpt_path: str | Path, freeze: list[str], from_student: bool = False) -> Checkpoint:
    """Copy every weight of the teacher at ``ckpt_path`` whose name and shape match ``model``'s (e.g. a Mask or
    Keypoint R-CNN teacher from a trained Faster R-CNN one), then freeze the modules named in ``freeze``.
    ``from_student`` takes a student instead (all but ``layer1``, which :mod:`splitdet.distill.layer1_recovery`
    rebuilds). Returns the source checkpoint."""
    source = load_checkpoint(ckpt_path)
    if source.config.is_student and not from_student:
        raise ConfigError(
            f"init.ckpt {ckpt_path} holds a student; warm starts take a teacher, or a student with init.layer1_steps "
            "(the teacher's layer1 rebuilt from the student's bottleneck)"
        )
    if from_student and not source.config.is_student:
        raise ConfigError(f"init.layer1_steps rebuilds layer1 from a student, but init.ckpt {ckpt_path} is a teacher")
    own = model.state_dict()
    taken = {k: v for k, v in source.state_dict.items() if k in own and own[k].shape == v.shape}
    if not taken:
        raise ConfigError(f"init.ckpt {ckpt_path}: no weight matches this model (different backbone?)")
    model.load_state_dict(taken, strict=False)
    freeze_modules(model, freeze)
    return source


def freeze_modules(model: nn.Module, patterns: list[str]) -> list[str]:
    """Stop the gradients of the modules ``init.freeze`` names (see :func:`frozen_modules`); return their names."""
    names = frozen_modules(model, patterns)
    modules = dict(model.named_modules())
    for name in names:
        for p in modules[name].parameters():
            p.requires_grad_(False)
    return names


def frozen_modules(model: nn.Module, patterns: list[str]) -> list[str]:
    """Names of the modules that ``init.freeze`` names: exact names or shell-style patterns, e.g.
    ``backbone.body.layer[234].*.bn*`` (BatchNorm frozen, as torchvision's detection backbones keep it)."""
    names = [n for n, _ in model.named_modules() if n]
    found: list[str] = []
    for pattern in patterns:
        matched = [n for n in names if fnmatch.fnmatchcase(n, pattern)] if pattern else []
        if not matched:
            raise ConfigError(f"init.freeze: the model has no module {pattern!r}")
        found += [n for n in matched if n not in found]
    return found


def init_bottleneck(student: nn.Module, ckpt_path: str | Path) -> None:
    """Start the student's encoder/decoder from another student's (same backbone and channel count), e.g. a Mask
    R-CNN student from a trained Faster R-CNN one whose teacher shares its backbone."""
    source = load_checkpoint(ckpt_path)
    mine, theirs = student.config, source.config
    if not theirs.is_student:
        raise ConfigError(f"student.init {ckpt_path} holds a teacher; it must be a student")
    if (theirs.backbone, theirs.bottleneck_channels) != (mine.backbone, mine.bottleneck_channels):
        raise ConfigError(
            f"student.init {ckpt_path} is a {theirs.backbone} {theirs.bottleneck_channels}-channel student; "
            f"this one is {mine.backbone} {mine.bottleneck_channels}-channel"
        )
    prefix = "backbone.body.layer1."
    student.load_state_dict({k: v for k, v in source.state_dict.items() if k.startswith(prefix)}, strict=False)


def build_task(config: TrainConfig, info: DatasetInfo) -> TrainingTask:
    """Build the model(s) and loss module for ``config.method``."""
    names = {"class_names": info.class_names, "keypoint_names": info.keypoint_names}
    if config.method == "teacher":
        model_cfg = ModelConfig.from_dict(
            {
                "norm_layer": "bn",
                **config.model,
                "bottleneck_channels": None,
                "num_classes": info.num_classes,
                "num_keypoints": max(len(info.keypoint_names), 1),
            }
        )
        model = build_model(model_cfg)
        frozen = frozen_modules(model, list(config.init.get("freeze") or []))
        task = TrainingTask(DetectionTraining(model, frozen), model, info, names)
        if config.init:
            steps = config.init.get("layer1_steps")
            source = warm_start(model, config.init["ckpt"], frozen, from_student=steps is not None)
            if steps is not None:
                task.prepare = lambda dataset: _recover_layer1(model, source, dataset, int(steps))
        return task
    if config.method in ("hnd", "ghnd"):
        teacher, names = _teacher_from(config.teacher, info)
        student_cfg = teacher.config.replace(
            bottleneck_channels=int(config.student["bottleneck_channels"]), norm_layer="frozen_bn", with_filter=False
        )
        student = build_model(student_cfg)
        init_student_from_teacher(student, teacher)
        if "init" in config.student:
            init_bottleneck(student, config.student["init"])
        module = HeadMimic(student, teacher, config.terms, config.reduction, config.detection_loss)
        return TrainingTask(module, student, info, names)
    if config.method == "entropic":
        return _entropic_task(config, info)
    if config.method == "finetune":
        return _finetune_task(config, info)
    raise ConfigError(f"unknown method {config.method!r}")


def _entropic_task(config: TrainConfig, info: DatasetInfo) -> TrainingTask:
    """GHND feature loss + beta x rate, the student initialised from a (possibly narrower) GHND student."""
    from splitdet.common.codec_settings import CodecSettings
    from splitdet.distill.entropic import EntropicMimic, widen_bottleneck

    teacher, names = _teacher_from(config.teacher, info, allow_student=True)
    student_cfg = teacher.config.replace(
        bottleneck_channels=int(config.student["bottleneck_channels"]), norm_layer="frozen_bn", with_filter=False
    )
    student = build_model(student_cfg)
    init_student_from_teacher(student, teacher)
    if "init" in config.student:
        source = load_checkpoint(config.student["init"])
        if not source.config.is_student or source.config.backbone != student_cfg.backbone:
            raise ConfigError(f"student.init {config.student['init']} must be a {student_cfg.backbone} student")
        widen_bottleneck(student, source.state_dict)
    module = EntropicMimic(student, teacher, config.terms, config.reduction, config.beta)
    kwargs = {**names, "codec": CodecSettings(quantization="entropy")}
    return TrainingTask(
        module,
        student,
        info,
        kwargs,
        extra=lambda: {"entropy": module.tables()},
        resume_state=lambda: {"entropy_bottleneck": module.entropy_bottleneck.state_dict()},
        restore=lambda training: module.entropy_bottleneck.load_state_dict(training["entropy_bottleneck"]),
        prepare=lambda dataset: print(
            f"entropic: prior fitted to the initial latents, {module.fit_prior(_first_images(dataset)):.0f} bits/image"
        ),
    )


def _finetune_task(config: TrainConfig, info: DatasetInfo) -> TrainingTask:
    """A trained student's tail (decoder onwards) on detection losses; its head, codec and tables unchanged."""
    from splitdet.distill.finetune import TailFinetune

    source = load_checkpoint(config.student["ckpt"])
    if not source.config.is_student:
        raise ConfigError(f"student.ckpt {config.student['ckpt']} holds a teacher; finetune takes a student")
    if source.class_names != info.class_names:
        raise ConfigError(f"student.ckpt {config.student['ckpt']} predicts other classes than the dataset holds")
    model = source.build_model()
    return TrainingTask(TailFinetune(model, source), model, info, source.save_options())


def _recover_layer1(model: nn.Module, source: Checkpoint, dataset: Dataset, steps: int) -> None:
    from splitdet.distill.layer1_recovery import recover_layer1

    first, last = recover_layer1(model, source.build_model(), dataset, steps)
    print(f"layer1 rebuilt from the student's bottleneck in {steps} steps: MSE {first:.4f} -> {last:.4f}")


def _first_images(dataset: Dataset, count: int = 16) -> list[Tensor]:
    return [dataset[i][0] for i in range(min(count, len(dataset)))]


def _optimizer(config: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    opts = {k: v for k, v in config.optimizer.items() if k != "type"}
    kind = config.optimizer.get("type", "Adam")
    return getattr(torch.optim, kind)(params, **opts)


def _init_distributed() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def state_digest(model: nn.Module) -> str:
    """sha256 over ``model``'s state (names, dtypes, shapes, values): the same on every DDP rank when in sync."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def average_buffers(module: nn.Module, world: int) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over the ranks. DDP broadcasts rank 0's
    buffers at the start of each forward, so after the last step of an epoch every rank holds its own statistics;
    without this the replicas (and what rank 0 saves) differ."""
    for buffer in module.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer.div_(world)


def _to(device: torch.device, images: list[Tensor], targets: list[dict[str, Tensor]]):
    return [im.to(device) for im in images], [
        {k: v.to(device) if isinstance(v, Tensor) else v for k, v in t.items()} for t in targets
    ]


def run(config: TrainConfig, resume: bool = False) -> Path:
    """Train as ``config`` says; return the path of the final checkpoint."""
    if config.method == "filter":  # one process, on cached stem features: splitdet.distill.filter_training
        from splitdet.distill.filter_training import run as run_filter

        return run_filter(config, resume)
    rank, world, device = _init_distributed()
    torch.manual_seed(config.seed + rank)
    train_set, info = build_dataset(config.dataset, "train", detector=config.method in ("teacher", "finetune"))
    task = build_task(config, info)
    task.module.to(device)
    params = [p for p in task.module.parameters() if p.requires_grad]
    optimizer = _optimizer(config, params)
    out = Path(config.output)
    start_epoch = 0
    if resume and (out / "last.pt").is_file():
        state = load_checkpoint(out / "last.pt")
        task.model.load_state_dict(state.state_dict)
        task.restore(state.training)
        optimizer.load_state_dict(state.training["optimizer"])
        start_epoch = int(state.training["epoch"])
    if start_epoch == 0 and rank == 0 and world == 1:
        task.prepare(train_set)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(config.milestones), config.gamma)
    scheduler.last_epoch = start_epoch
    module: nn.Module = task.module
    if world > 1:
        module = DistributedDataParallel(task.module, device_ids=[device.index] if device.type == "cuda" else None)
    sampler = DistributedSampler(train_set, seed=config.seed) if world > 1 else None
    loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=config.workers,
        collate_fn=collate_detection,
        generator=torch.Generator().manual_seed(config.seed),
        drop_last=True,
    )
    metrics: dict[str, Any] = dict(task.metrics)
    for epoch in range(start_epoch, config.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        module.train()
        bar = tqdm(
            loader, desc=f"{config.method} epoch {epoch + 1}/{config.epochs}", disable=rank != 0, dynamic_ncols=True
        )
        running = 0.0
        for step, (images, targets) in enumerate(bar):
            images, targets = _to(device, images, targets)
            losses = module(images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise RuntimeError(f"loss is {float(loss)} at epoch {epoch + 1} step {step}: lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running = 0.9 * running + 0.1 * loss.item() if step else loss.item()
            if step % config.log_every == 0:
                bar.set_postfix(loss=f"{running:.4g}", **{k: f"{v.item():.3g}" for k, v in losses.items()})
        scheduler.step()
        if world > 1:
            average_buffers(task.module, world)
        metrics["train_loss"] = running
        if rank == 0:
            training = {
                "epoch": epoch + 1,
                "optimizer": optimizer.state_dict(),
                "method": config.method,
                "config": str(config.source or ""),
                **task.resume_state(),
            }
            save_checkpoint(
                task.model,
                out / "last.pt",
                training=training,
                metrics=metrics,
                **task.checkpoint_kwargs,
                **task.extra(),
            )
    final_kwargs = dict(task.checkpoint_kwargs)
    final = out / "final.pt"
    if rank == 0:
        training = {"epoch": config.epochs, "method": config.method}
        save_checkpoint(task.model, final, training=training, metrics=metrics, **final_kwargs, **task.extra())
    if world > 1:
        # every rank says what it holds: DDP keeps the replicas identical, and a test compares these lines
        print(f"split-distill: rank {rank} of {world} done; weights sha256 {state_digest(task.model)}", flush=True)
        dist.barrier()
        dist.destroy_process_group()
    return final
