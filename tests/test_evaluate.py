"""splitdet.distill.evaluate / split-eval: COCOeval end to end on tiny models and a tiny synthetic set."""

from __future__ import annotations

import pytest
import torch

from splitdet.common.checkpoint import save_checkpoint
from splitdet.distill import eval_cli
from splitdet.distill.datasets import SyntheticCoco
from splitdet.distill.evaluate import (
    coco_eval,
    evaluate,
    format_markdown,
    iou_types,
    jpeg_bytes,
    predict,
    teacher_as_ground_truth,
    with_jpeg_quality,
)
from splitdet.synthetic import SceneConfig
from tests.conftest import tiny_student

SCENE = SceneConfig(height=64, width=64)
TASK = {"faster_rcnn": "bbox", "mask_rcnn": "segm", "keypoint_rcnn": "keypoints"}


def _dataset(arch: str) -> SyntheticCoco:
    return SyntheticCoco(4, 3, SCENE, task=TASK[arch])


def _model(arch: str, dataset: SyntheticCoco):
    model = tiny_student(arch, num_classes=len(dataset.class_names), num_keypoints=max(dataset.num_keypoints, 1))
    model.roi_heads.detections_per_img = 20  # keeps mask pasting / COCOeval cheap
    return model


def _gt_as_results(dataset: SyntheticCoco) -> list[dict]:
    out = []
    for ann in dataset.coco.dataset["annotations"]:
        if ann["category_id"] not in dataset.cat_id_to_label:
            continue
        r = {"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": ann["bbox"], "score": 1.0}
        if "keypoints" in ann:
            r["keypoints"] = ann["keypoints"]
        out.append(r)
    return out


@pytest.mark.parametrize("arch", ["faster_rcnn", "mask_rcnn", "keypoint_rcnn"])
def test_coco_eval_end_to_end(arch):
    dataset = _dataset(arch)
    preds = predict(_model(arch, dataset), dataset, "whole", batch_size=4, progress=False)
    assert preds.results and len(preds.images) == len(dataset)
    for iou_type in iou_types(arch):
        scores = coco_eval(dataset.coco, preds.results, iou_type)
        assert set(scores) == {"AP", "AP50", "AP75", "AR100"}
        assert all(0.0 <= v <= 1.0 for v in scores.values()), scores
    r = preds.results[0]
    assert len(r["bbox"]) == 4 and isinstance(r["score"], float)
    if arch == "mask_rcnn":
        assert isinstance(r["segmentation"]["counts"], str)
    if arch == "keypoint_rcnn":
        assert len(r["keypoints"]) == 3 * dataset.num_keypoints


@pytest.mark.parametrize("task", ["bbox", "keypoints"])
def test_ground_truth_as_results_scores_one(task):
    dataset = SyntheticCoco(4, 3, SCENE, task=task)
    scores = coco_eval(dataset.coco, _gt_as_results(dataset), task)
    assert scores["AP"] == pytest.approx(1.0)


def test_empty_results_give_zeros():
    dataset = _dataset("faster_rcnn")
    assert coco_eval(dataset.coco, [], "bbox") == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "AR100": 0.0}


def test_teacher_as_ground_truth_of_itself_scores_one():
    dataset = _dataset("faster_rcnn")
    preds = predict(_model("faster_rcnn", dataset), dataset, "whole", batch_size=4, progress=False)
    gt = teacher_as_ground_truth(dataset.coco, preds.results, score_threshold=0.0)
    assert len(gt.getAnnIds()) == len(preds.results)
    assert sorted(gt.getImgIds()) == sorted(dataset.coco.getImgIds())
    assert coco_eval(gt, preds.results, "bbox")["AP"] == pytest.approx(1.0)
    assert len(teacher_as_ground_truth(dataset.coco, preds.results, 1.1).getAnnIds()) == 0


def test_whole_equals_split_without_quantization_and_bytes(tmp_path):
    dataset = _dataset("faster_rcnn")
    model = _model("faster_rcnn", dataset)
    # Zero two of the three bottleneck channels so the 8-bit payload is compressible, as a trained one is.
    with torch.no_grad():
        model.backbone.body.layer1.encoder[-1].weight[1:] = 0.0
    path = tmp_path / "student.pt"
    save_checkpoint(model, path, dataset.class_names)
    report = evaluate(
        path, dataset, quantizations=("none", "per_tensor"), jpeg_qualities=(75,), webp_qualities=(75,), progress=False
    )
    whole, split_none, split_8bit = report["runs"]
    assert (whole["mode"], split_none["quantization"], split_8bit["quantization"]) == ("whole", "none", "per_tensor")
    assert whole["ap"] == split_none["ap"]
    assert whole["bytes"] is None and whole["filter"] is None
    b = split_8bit["bytes"]
    assert b["zstd"] <= b["uint8"] < b["raw"]
    assert b["uint8"] * 4 == b["raw"] and b["frames_sent"] == len(dataset)
    assert report["jpeg"]["75"] > 0
    assert set(report["jpeg_ap"]["75"]["bbox"]) == {"AP", "AP50", "AP75", "AR100"}
    assert 0 < report["webp"]["75"] != report["jpeg"]["75"] and "bbox" in report["webp_ap"]["75"]
    table = format_markdown(report)
    assert "| student | whole |" in table and "| JPEG q75 | offload |" in table and "| WebP q75 | offload |" in table

    # Identical detections, not only identical AP, image by image.
    a = predict(model, dataset, "whole", batch_size=1, progress=False)
    s = predict(model, dataset, "split", quantization="none", batch_size=1, progress=False)
    assert a.results == s.results and a.results


def test_jpeg_bytes_shrink_with_quality():
    dataset = _dataset("faster_rcnn")
    hi, lo = jpeg_bytes(dataset, 95), jpeg_bytes(dataset, 20)
    assert len(hi) == len(dataset) and all(h > q > 0 for h, q in zip(hi, lo, strict=True))


def test_offload_inputs_are_jpeg_reencoded():
    dataset = _dataset("faster_rcnn")
    lossy = with_jpeg_quality(dataset, 10)
    assert dataset.jpeg_quality is None
    webp = with_jpeg_quality(dataset, 10, "WEBP")
    assert webp.image_format == "WEBP" and not torch.equal(webp[0][0], lossy[0][0])
    original, degraded = dataset[0][0], lossy[0][0]
    assert original.shape == degraded.shape and not torch.equal(original, degraded)
    assert (original - degraded).abs().mean() < 0.1


def test_cli_missing_checkpoint(tmp_path, capsys):
    rc = eval_cli.main(["--ckpt", str(tmp_path / "nope.pt"), "--config", str(tmp_path / "cfg.yaml")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("split-eval: error:") and err.count("\n") == 1


def test_onnx_head_is_scored_like_the_torch_head(tmp_path):
    """split-eval --head: the exported head on the device side gives the torch head's scores and bytes."""
    from splitdet.common import model_cli

    dataset = _dataset("faster_rcnn")
    path, head = tmp_path / "student.pt", tmp_path / "head.onnx"
    save_checkpoint(_model("faster_rcnn", dataset), path, dataset.class_names)
    assert model_cli.main(["export", str(path), "--out", str(head), "--format", "onnx"]) == 0
    report = evaluate(path, dataset, quantizations=("none",), progress=False, onnx_heads=[head])
    _, torch_run, onnx_run = report["runs"]
    assert torch_run["head"] == {"runtime": "torch"} and torch_run["bottleneck_error"] is None
    assert onnx_run["head"] == {"runtime": "onnx", "path": str(head), "weights": "float32"}
    assert onnx_run["bottleneck_error"] < 1e-4
    assert onnx_run["ap"]["bbox"]["AP"] == pytest.approx(torch_run["ap"]["bbox"]["AP"], abs=0.02)
    assert onnx_run["bytes"]["raw"] == torch_run["bytes"]["raw"]
    table = format_markdown(report)
    assert "| student, ONNX float32 head | split | none |" in table and "bottleneck error" in table

    other = tmp_path / "other.pt"
    model = _model("faster_rcnn", dataset)
    with torch.no_grad():
        model.backbone.body.layer1.encoder[0].weight.mul_(2)
    save_checkpoint(model, other, dataset.class_names)
    with pytest.raises(ValueError, match="is the head of another model"):
        evaluate(other, dataset, quantizations=("none",), progress=False, onnx_heads=[head])


def test_cli_missing_head(tmp_path, capsys):
    ckpt = tmp_path / "student.pt"
    ckpt.write_bytes(b"")
    rc = eval_cli.main(["--ckpt", str(ckpt), "--config", "x.yaml", "--head", str(tmp_path / "nope.onnx")])
    err = capsys.readouterr().err
    assert rc == 2 and err == f"split-eval: error: --head: ONNX head not found: {tmp_path / 'nope.onnx'}\n"
