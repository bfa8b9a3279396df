"""Reading and checking a COCO-format detection split, and the dataset that serves it to the model.

``load_split`` reads the annotation JSON, checks it is COCO, checks every box, category and image file,
and returns the cleaned annotations as a pycocotools ``COCO`` object plus one ``ImageRecord`` per image.
Every problem raises ``DataError`` in one line naming the file, or (bad boxes with ``bad_boxes="skip"``)
is counted and logged; nothing is dropped silently. ``iscrowd=1`` boxes stay in the COCO object (the
evaluator ignores detections on them) but are kept out of training targets, as Detectron does.

``CocoDetection`` applies the paper's input pipeline: resize so the shorter side is ``image_size`` with
the longer side capped at ``max_size``, random horizontal flip; ``Collate`` pads a batch to a size
divisible by ``size_divisible`` and applies the ImageNet normalisation (padding = mean colour = 0).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from focalbench.checks import one_of, require
from focalbench.data.errors import DataError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BAD_BOXES = ("skip", "error")
VERIFY = ("auto", "all", "lazy")
BAD_BOXES_RULE = one_of(BAD_BOXES)      # data.bad_boxes (the config check reads these rules)
VERIFY_RULE = one_of(VERIFY)            # data.verify_images
VERIFY_ALL_UP_TO = 5000  # "auto": PIL verify() every image of sets up to this size, else check on load


@dataclass
class ImageRecord:
    """One image and its training targets (non-crowd, valid boxes) in original pixels."""

    image_id: int
    path: str
    width: int
    height: int
    boxes: np.ndarray = field(repr=False)  # (M, 4) float32 xyxy
    labels: np.ndarray = field(repr=False)  # (M,) int64 contiguous 0..K-1


def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())


def read_coco_json(path: str | os.PathLike) -> dict:
    """Load an annotation file and check its COCO structure; ``DataError`` otherwise."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"annotation file {path}: not found")
    if not path.is_file():
        raise DataError(f"annotation file {path}: is not a file")
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except OSError as e:
        raise DataError(f"annotation file {path}: cannot be read ({_one_line(e)})") from e
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"annotation file {path}: not valid JSON ({_one_line(e)})") from e
    keys = ("images", "annotations", "categories")
    if not isinstance(data, dict):
        raise DataError(f"annotation file {path}: not COCO (top level is a {type(data).__name__}; "
                        f"expected an object with keys {list(keys)})")
    missing = [k for k in keys if k not in data]
    if missing:
        raise DataError(f"annotation file {path}: not COCO (missing key(s) {missing}; a COCO file has "
                        f"{list(keys)})")
    for k in keys:
        if not isinstance(data[k], list):
            raise DataError(f"annotation file {path}: not COCO ('{k}' is a {type(data[k]).__name__}, "
                            "expected a list)")
    _check_entries(path, data["images"], "images", {"id": int, "file_name": str, "width": _num, "height": _num})
    _check_entries(path, data["categories"], "categories", {"id": int, "name": str})
    _check_entries(path, data["annotations"], "annotations",
                   {"id": int, "image_id": int, "category_id": int, "bbox": list})
    for i, img in enumerate(data["images"]):
        if not img["width"] > 0 or not img["height"] > 0:
            raise DataError(f"annotation file {path}: images[{i}] (id {img['id']}) has size "
                            f"{img['width']}x{img['height']}; width and height must be positive")
    for i, ann in enumerate(data["annotations"]):
        bbox = ann["bbox"]
        if len(bbox) != 4 or not all(_num(v) for v in bbox):
            raise DataError(f"annotation file {path}: annotations[{i}] (id {ann['id']}) has bbox {bbox!r}; "
                            "expected 4 numbers [x, y, width, height]")
    for what in ("images", "categories", "annotations"):
        ids = [e["id"] for e in data[what]]
        if len(set(ids)) != len(ids):
            dup = next(i for i, n in Counter(ids).items() if n > 1)
            raise DataError(f"annotation file {path}: {what} id {dup} appears more than once; ids must be unique")
    return data


def _num(v) -> bool:
    """A JSON number (bool excluded)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_entries(path: Path, entries: list, what: str, spec: dict) -> None:
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise DataError(f"annotation file {path}: not COCO ({what}[{i}] is a {type(e).__name__}, "
                            "expected an object)")
        for key, kind in spec.items():
            if key not in e:
                raise DataError(f"annotation file {path}: not COCO ({what}[{i}] has no '{key}'; each entry of "
                                f"'{what}' needs {list(spec)})")
            ok = kind(e[key]) if kind is _num else isinstance(e[key], kind) and not isinstance(e[key], bool)
            if not ok:
                raise DataError(f"annotation file {path}: not COCO ({what}[{i}] has {key}={e[key]!r}; expected "
                                f"{'a number' if kind is _num else kind.__name__})")


def quiet_coco(dataset: dict):
    """A pycocotools ``COCO`` object of an in-memory dataset, without its progress prints."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def clean_annotations(path: Path, data: dict, bad_boxes: str = "skip", box_tolerance: float = 1.0) -> tuple[dict, dict]:
    """Check references and boxes; returns the dataset without skipped boxes, and the counts."""
    images = {img["id"]: img for img in data["images"]}
    cat_ids = {c["id"] for c in data["categories"]}
    orphan = [a for a in data["annotations"] if a["image_id"] not in images]
    if orphan:
        raise DataError(f"annotation file {path}: {len(orphan)} annotation(s) refer to image ids not in 'images' "
                        f"(e.g. annotation id {orphan[0]['id']} -> image_id {orphan[0]['image_id']})")
    unknown = [a for a in data["annotations"] if a["category_id"] not in cat_ids]
    if unknown:
        raise DataError(f"annotation file {path}: {len(unknown)} annotation(s) have unknown category ids "
                        f"{sorted({a['category_id'] for a in unknown})[:10]} (e.g. annotation id {unknown[0]['id']}); "
                        f"known ids: {sorted(cat_ids)[:20]}")
    kept, skipped = [], {"non_positive_size": 0, "outside_image": 0}
    clipped, first_bad = 0, None
    for ann in data["annotations"]:
        img = images[ann["image_id"]]
        W, H = float(img["width"]), float(img["height"])
        x, y, w, h = (float(v) for v in ann["bbox"])
        reason = None
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
            reason = "non_positive_size"
        elif x < -box_tolerance or y < -box_tolerance or x + w > W + box_tolerance or y + h > H + box_tolerance:
            reason = "outside_image"
        if reason is not None:
            what = ("has non-positive (or non-finite) width/height" if reason == "non_positive_size"
                    else f"extends outside the {img['width']}x{img['height']} image by more than {box_tolerance} px")
            msg = (f"annotation file {path}: annotation id {ann['id']} (image id {ann['image_id']}) bbox "
                   f"{ann['bbox']} {what}")
            if bad_boxes == "error":
                raise DataError(msg + "; set bad_boxes=skip to skip such boxes")
            skipped[reason] += 1
            first_bad = first_bad or msg
            continue
        x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, W), min(y + h, H)
        if (x0, y0, x1, y1) != (x, y, x + w, y + h):  # within the tolerance: clip to the image
            clipped += 1
            ann = {**ann, "bbox": [x0, y0, x1 - x0, y1 - y0]}
            if x1 <= x0 or y1 <= y0:
                skipped["outside_image"] += 1
                first_bad = first_bad or f"annotation file {path}: annotation id {ann['id']} is empty after clipping"
                continue
        kept.append(ann)
    n_skipped = sum(skipped.values())
    if n_skipped:
        log.warning("%s: skipped %d bad box(es) (%d with non-positive width/height, %d outside the image); "
                    "first: %s", path, n_skipped, skipped["non_positive_size"], skipped["outside_image"], first_bad)
    counts = {"bad_boxes_skipped": n_skipped, **{f"bad_boxes_{k}": v for k, v in skipped.items()},
              "boxes_clipped": clipped}
    return {**data, "annotations": kept}, counts


def check_files_exist(path: Path, records: list[ImageRecord]) -> None:
    """Every image file must exist (one ``stat`` each: cheap even for COCO's 118k images)."""
    for r in records:
        if not os.path.isfile(r.path):
            missing = sum(not os.path.isfile(q.path) for q in records)
            more = f" ({missing - 1} more image files missing)" if missing > 1 else ""
            raise DataError(f"image file {r.path} (image id {r.image_id} in {path}): not found{more}")


def verify_images(path: Path, records: list[ImageRecord], verify: str = "auto") -> str:
    """``"all"``: PIL checks every file's header, size and data (``verify()``) now; ``"lazy"``: each image
    is checked when first decoded; ``"auto"``: "all" up to ``VERIFY_ALL_UP_TO`` images. Returns the mode used."""
    require(VERIFY_RULE, verify, "data.verify_images")
    if verify == "auto":
        verify = "all" if len(records) <= VERIFY_ALL_UP_TO else "lazy"
    if verify == "all":
        for r in records:
            try:
                with Image.open(r.path) as im:
                    size = im.size
                    im.verify()
            except Exception as e:  # PIL raises many types for corrupt files
                raise DataError(f"image file {r.path} (image id {r.image_id} in {path}): corrupt or not an "
                                f"image ({_one_line(e)})") from e
            _check_size(r, size, path)
    return verify


def _check_size(r: ImageRecord, size: tuple[int, int], ann_path) -> None:
    if size != (r.width, r.height):
        raise DataError(f"image file {r.path} (image id {r.image_id} in {ann_path}): is {size[0]}x{size[1]} px "
                        f"but the annotations say {r.width}x{r.height}")


def decode_image(r: ImageRecord, ann_path) -> np.ndarray:
    """uint8 ``(3, H, W)`` RGB (channels first, contiguous), or ``DataError`` naming the file."""
    try:
        with Image.open(r.path) as im:
            size = im.size
            arr = np.asarray(im.convert("RGB"))
    except FileNotFoundError as e:
        raise DataError(f"image file {r.path} (image id {r.image_id} in {ann_path}): not found") from e
    except Exception as e:
        raise DataError(f"image file {r.path} (image id {r.image_id} in {ann_path}): cannot be decoded "
                        f"({_one_line(e)})") from e
    _check_size(r, size, ann_path)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def load_split(ann_file: str | os.PathLike, image_dir: str | os.PathLike, *, bad_boxes: str = "skip",
               box_tolerance: float = 1.0, verify: str = "auto", cat_ids: list[int] | None = None):
    """Read, check and clean one split.

    Returns ``(coco, records, counts)``: the cleaned annotations as a pycocotools ``COCO`` object (crowd
    boxes kept, skipped boxes removed), one ``ImageRecord`` per image (crowd boxes excluded from its
    targets), and counts of what was skipped or excluded. ``cat_ids`` fixes the label order (sorted ids
    of this file's categories by default). ``verify``: see ``verify_images``, or "deferred" to leave the
    decode check to the caller (file existence is always checked).
    """
    ann_file = Path(ann_file)
    data = read_coco_json(ann_file)
    data, counts = clean_annotations(ann_file, data, bad_boxes, box_tolerance)
    coco = quiet_coco(data)
    if cat_ids is None:
        cat_ids = sorted(coco.cats)
    elif sorted(coco.cats) != sorted(cat_ids):
        raise DataError(f"annotation file {ann_file}: category ids {sorted(coco.cats)[:20]} differ from the other "
                        f"split's {sorted(cat_ids)[:20]}; train and val need the same categories")
    label_of = {c: i for i, c in enumerate(cat_ids)}
    records, crowd = [], 0
    for img in data["images"]:
        anns = coco.imgToAnns.get(img["id"], [])
        boxes, labels = [], []
        for a in anns:
            if a.get("iscrowd", 0):
                crowd += 1
                continue
            x, y, w, h = a["bbox"]
            boxes.append([x, y, x + w, y + h])
            labels.append(label_of[a["category_id"]])
        records.append(ImageRecord(img["id"], os.path.join(image_dir, img["file_name"]), int(img["width"]),
                                   int(img["height"]), np.asarray(boxes, np.float32).reshape(-1, 4),
                                   np.asarray(labels, np.int64)))
    counts.update(images=len(records), boxes=sum(len(r.labels) for r in records), crowd_boxes=crowd,
                  empty_images=sum(len(r.labels) == 0 for r in records))
    check_files_exist(ann_file, records)
    counts["verify"] = "deferred" if verify == "deferred" else verify_images(ann_file, records, verify)
    return coco, records, counts


def resize_scale(height: int, width: int, image_size: int, max_size: int) -> float:
    """Shorter side to ``image_size``, unless that makes the longer side exceed ``max_size``."""
    return min(image_size / min(height, width), max_size / max(height, width))


class CocoDetection(torch.utils.data.Dataset):
    """Image ``(3, h, w)`` in 0..255 (resized, maybe flipped; normalised by ``Collate``) and its target."""

    def __init__(self, records: list[ImageRecord], ann_file: str, image_size: int, max_size: int,
                 flip_prob: float = 0.0, seed: int = 0):
        self.records = records
        self.ann_file = str(ann_file)
        self.image_size, self.max_size = int(image_size), int(max_size)
        self.flip_prob = float(flip_prob)
        self.seed = int(seed)
        self.cache: list[np.ndarray] | None = None
        self._rng, self._rng_key = None, None

    def __len__(self) -> int:
        return len(self.records)

    def fill_cache(self) -> None:
        """Decode every image once and keep it (uint8): the full decode is also the corruption check."""
        if self.cache is None:
            self.cache = [decode_image(r, self.ann_file) for r in self.records]

    def image(self, index: int) -> np.ndarray:
        if self.cache is not None:
            return self.cache[index]
        return decode_image(self.records[index], self.ann_file)

    def _flip_rng(self) -> np.random.Generator:
        # Reproducible flips: in the main process one stream from ``seed``; in a DataLoader worker a stream
        # from (seed, worker seed), and the worker seed comes from the loader's seeded generator each epoch.
        info = torch.utils.data.get_worker_info()
        key = None if info is None else info.seed
        if self._rng is None or key != self._rng_key:
            self._rng = np.random.default_rng([self.seed] if key is None else [self.seed, key])
            self._rng_key = key
        return self._rng

    def __getitem__(self, index: int):
        """Pixels in 0..255 (uint8, or float32 if resized), not yet normalised: ``Collate`` normalises
        the whole batch at once, which is cheaper and makes the zero padding equal to the mean colour."""
        r = self.records[index]
        image = torch.from_numpy(self.image(index))  # (3, H, W) uint8
        scale = resize_scale(r.height, r.width, self.image_size, self.max_size)
        h, w = int(round(r.height * scale)), int(round(r.width * scale))
        boxes = torch.from_numpy(r.boxes.copy())
        if (h, w) != (r.height, r.width):
            image = F.interpolate(image[None].float(), size=(h, w), mode="bilinear", align_corners=False,
                                  antialias=scale < 1)[0]
            boxes *= torch.tensor([w / r.width, h / r.height] * 2)
        if self.flip_prob > 0 and self._flip_rng().random() < self.flip_prob:
            image = image.flip(-1)
            boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
        target = {"boxes": boxes, "labels": torch.from_numpy(r.labels.copy()), "image_id": r.image_id,
                  "scale": float(scale), "orig_size": (r.height, r.width), "size": (h, w)}
        return image, target


class Collate:
    """Batch ``(B, 3, H, W)`` float32, ImageNet-normalised, zero-padded (= mean colour) to multiples of
    ``size_divisible``; targets stay a list of dicts."""

    def __init__(self, size_divisible: int = 1):
        self.size_divisible = int(size_divisible)
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0

    def __call__(self, batch):
        images, targets = zip(*batch)
        d = self.size_divisible
        H = -(-max(im.shape[1] for im in images) // d) * d
        W = -(-max(im.shape[2] for im in images) // d) * d
        out = self.mean.expand(len(images), 3, H, W).clone()  # padding becomes 0 after normalising
        for i, im in enumerate(images):
            out[i, :, : im.shape[1], : im.shape[2]].copy_(im)
        out.sub_(self.mean).div_(self.std)
        return out, list(targets)
