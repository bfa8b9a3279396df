"""COCO evaluation: faster-coco-eval agrees with pycocotools; coordinate/category mapping; empty detections."""

import numpy as np
import pytest
import torch

from focalbench.evaluation import STAT_NAMES, evaluate_detections, to_coco_detections


def _gt(num_images=40, seed=0):
    """A COCO-format set with small, medium and large boxes of 3 categories (ids 7, 9, 11: not 0..K-1)."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(1, num_images + 1):
        images.append({"id": i, "width": 256, "height": 256, "file_name": f"{i}.png"})
        for _ in range(rng.integers(0, 6)):
            s = float(rng.choice([12, 40, 120])) * rng.uniform(0.8, 1.2)
            w, h = s * rng.uniform(0.6, 1.4), s * rng.uniform(0.6, 1.4)
            x, y = rng.uniform(0, 256 - w), rng.uniform(0, 256 - h)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(rng.choice([7, 9, 11])),
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    return {"images": images, "annotations": anns,
            "categories": [{"id": c, "name": f"c{c}"} for c in (7, 9, 11)]}


def _perturbed(gt, seed=1):
    """Jittered GT boxes with random scores, missed boxes, wrong classes and false positives."""
    rng = np.random.default_rng(seed)
    dets = []
    for a in gt["annotations"]:
        if rng.random() < 0.15:
            continue
        x, y, w, h = a["bbox"]
        j = rng.normal(0, 0.12, 4) * [w, h, w, h]
        cat = a["category_id"] if rng.random() > 0.1 else int(rng.choice([7, 9, 11]))
        dets.append({"image_id": a["image_id"], "category_id": cat, "score": float(rng.random()),
                     "bbox": [x + j[0], y + j[1], max(1.0, w + j[2]), max(1.0, h + j[3])]})
    for i in range(60):
        s = rng.uniform(8, 100)
        dets.append({"image_id": int(rng.integers(1, len(gt["images"]) + 1)), "category_id": int(rng.choice([7, 9, 11])),
                     "score": float(rng.random() * 0.5), "bbox": [rng.uniform(0, 150), rng.uniform(0, 150), s, s]})
    return dets


def test_faster_coco_eval_agrees_with_pycocotools():
    gt = _gt()
    dets = _perturbed(gt)
    fast = evaluate_detections(gt, dets, backend="faster")
    ref = evaluate_detections(gt, dets, backend="pycocotools")
    assert set(fast) == set(STAT_NAMES)
    for k in STAT_NAMES:
        assert abs(fast[k] - ref[k]) < 1e-4, (k, fast[k], ref[k])
    assert 10 < ref["AP"] < 95 and ref["APs"] > 0 and ref["APl"] > 0  # a non-trivial prediction set


def test_perfect_and_empty_detections():
    gt = _gt(10)
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in gt["annotations"]]
    for backend in ("faster", "pycocotools"):
        assert evaluate_detections(gt, perfect, backend=backend)["AP"] == pytest.approx(100.0)
        assert evaluate_detections(gt, [], backend=backend) == {k: 0.0 for k in STAT_NAMES}
    with pytest.raises(ValueError, match="backend"):
        evaluate_detections(gt, perfect, backend="mmdet")


def test_pycocotools_coco_object_is_accepted():
    from pycocotools.coco import COCO

    gt = _gt(10)
    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    dets = _perturbed(gt)
    assert evaluate_detections(coco, dets)["AP"] == pytest.approx(evaluate_detections(gt, dets)["AP"], abs=1e-4)


def test_to_coco_detections_maps_back_to_original_pixels_and_category_ids():
    pred = {"boxes": torch.tensor([[10.0, 20.0, 50.0, 40.0]]), "scores": torch.tensor([0.9]),
            "labels": torch.tensor([2])}
    target = {"image_id": 5, "scale": 2.0}
    (d,) = to_coco_detections(pred, target, [7, 9, 11])
    assert d["image_id"] == 5 and d["category_id"] == 11
    assert d["bbox"] == pytest.approx([5.0, 10.0, 20.0, 10.0])
    assert to_coco_detections({"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                               "labels": torch.zeros(0, dtype=torch.long)}, target, [7]) == []
