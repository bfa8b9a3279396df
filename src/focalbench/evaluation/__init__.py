"""COCO evaluation of detections (faster-coco-eval by default, pycocotools as the reference)."""

from focalbench.evaluation.coco import STAT_NAMES, evaluate_detections, to_coco_detections

__all__ = ["STAT_NAMES", "evaluate_detections", "to_coco_detections"]
