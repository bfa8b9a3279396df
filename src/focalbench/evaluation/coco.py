"""COCO box AP (AP, AP50, AP75, APs, APm, APl in percent) with faster-coco-eval or pycocotools."""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any, Mapping, Sequence

from focalbench.checks import one_of, require

import numpy as np
import torch

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
BACKENDS = ("faster", "pycocotools")
BACKEND = one_of(BACKENDS, "evaluation backend")    # eval_backend (the config check reads this rule)


def to_coco_detections(prediction: Mapping[str, torch.Tensor], target: Mapping[str, Any],
                       label_to_cat_id: Sequence[int] | Mapping[int, int]) -> list[dict]:
    """One image's detections (xyxy boxes in input pixels, labels 0..K-1) -> COCO result dicts in original image
    coordinates (boxes divided by ``target["scale"]``, xywh) with COCO category ids."""
    boxes = prediction["boxes"].detach().float().cpu()
    if len(boxes) == 0:
        return []
    scale = torch.as_tensor(target.get("scale", 1.0), dtype=torch.float32).flatten().cpu()
    if scale.numel() == 2:  # (scale_y, scale_x)
        boxes = boxes / scale[[1, 0, 1, 0]]
    else:
        boxes = boxes / scale[0]
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    image_id = int(target["image_id"])
    cat = [int(label_to_cat_id[int(l)]) for l in prediction["labels"].tolist()]
    return [{"image_id": image_id, "category_id": c, "bbox": [round(x, 3) for x in b], "score": round(float(s), 5)}
            for b, c, s in zip(xywh, cat, prediction["scores"].tolist())]


def _dataset(coco_gt) -> dict:
    return coco_gt.dataset if hasattr(coco_gt, "dataset") else coco_gt


def evaluate_detections(coco_gt, detections: list[dict], backend: str = "faster",
                        image_ids: Sequence[int] | None = None) -> dict[str, float]:
    """COCO box evaluation of ``detections`` against ``coco_gt`` (a pycocotools/faster-coco-eval ``COCO`` or a
    COCO-format dict). Returns the six stats in percent; no detections -> all 0."""
    require(BACKEND, backend, "eval_backend")
    if not detections:
        return {k: 0.0 for k in STAT_NAMES}
    quiet = contextlib.redirect_stdout(io.StringIO())
    if backend == "faster":
        from faster_coco_eval import COCO, COCOeval_faster

        gt = COCO(copy.deepcopy(_dataset(coco_gt)))
        dt = gt.loadRes(copy.deepcopy(detections))
        ev = COCOeval_faster(gt, dt, "bbox", print_function=lambda *a, **k: None)
    else:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        with quiet:
            gt = coco_gt if isinstance(coco_gt, COCO) else _pycoco(coco_gt)
            dt = gt.loadRes(copy.deepcopy(detections))
        ev = COCOeval(gt, dt, "bbox")
    if image_ids is not None:
        ev.params.imgIds = list(image_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = np.asarray(ev.stats[:6], dtype=float)
    stats = np.where(stats < 0, 0.0, stats)  # -1 = no ground truth in that area range
    return {k: float(v) * 100.0 for k, v in zip(STAT_NAMES, stats)}


def _pycoco(dataset: dict):
    from pycocotools.coco import COCO

    gt = COCO()
    gt.dataset = copy.deepcopy(dataset)
    gt.createIndex()
    return gt
