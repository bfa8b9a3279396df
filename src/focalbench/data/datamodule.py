"""``CocoDataModule``: any COCO-format detection set (built-in ``shapes``/``digits``, COCO 2017, ...).

``setup`` checks everything before training starts (see ``focalbench.data.coco``) and raises ``DataError``
in one line on bad data. Training targets exclude crowd boxes; images without targets are kept as pure
negatives unless ``keep_empty=False`` (training split only: evaluation always covers every image).
``prepare_data`` builds a built-in dataset when ``build`` is set and ``root`` holds none yet.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from focalbench.checks import int_at_least, is_int, num_in, one_of, or_null, require, show
from focalbench.data.build import GENERATORS
from focalbench.data.coco import BAD_BOXES_RULE, VERIFY_RULE, CocoDetection, Collate, load_split, verify_images
from focalbench.data.errors import DataError

log = logging.getLogger(__name__)


# the rules of data.* (focalbench.checks; the config check reads these objects)
POSITIVE = int_at_least(1)                              # image_size, batch_size, size_divisible (>= 1 here;
                                                        # the detector asks more of it: model.anchors.PADDING)
VAL_BATCH_SIZE = or_null(POSITIVE)
NUM_WORKERS = int_at_least(0)
FLIP_PROB = num_in(0, 1)
BUILD = or_null(one_of(tuple(GENERATORS), "built-in dataset"))
MAX_SIZE_TEXT = "must be an integer >= data.image_size ({other})"


def max_size_ok(max_size, image_size) -> bool:
    """data.max_size: an integer >= data.image_size (the resize's longer-side cap)."""
    return is_int(max_size) and is_int(image_size) and max_size >= image_size

class CocoDataModule(L.LightningDataModule):
    """COCO-format detection data with the paper's pipeline (resize to scale, horizontal flip).

    A batch is ``(images, targets)``: ``images`` float32 ``(B, 3, H, W)`` ImageNet-normalised, zero-padded
    (= mean-padded) to H, W divisible by ``size_divisible``; ``targets`` a list of B dicts with ``boxes``
    float32 ``(M, 4)`` xyxy in input pixels, ``labels`` int64 ``(M,)`` in ``0..K-1``, ``image_id`` (COCO
    id), ``scale`` (input px / original px), ``orig_size`` (h, w) and ``size`` (h, w) before padding.

    ``root`` holds the set (relative paths: to the working directory); the other paths are relative to
    it. ``keep_empty``: keep training images without (non-crowd) boxes as pure negatives. ``bad_boxes``:
    "skip" (count and log) or "error" for boxes with non-positive size or outside the image (boxes at
    most ``box_tolerance`` px outside are clipped and counted). ``verify_images``: "all" opens every
    image with PIL ``verify()`` at setup, "lazy" checks each on first load, "auto" = "all" up to 5,000
    images. With ``cache_images`` (and the decoded split under ``cache_limit_mb``) every image is
    decoded at setup instead, which checks all of them fully. ``seed`` drives the shuffle and the flips
    (a new stream per epoch, the same for the same seed). ``drop_last`` drops the last partial training
    batch of an epoch (the shuffle changes which images that is). ``build``/``build_args``: the built-in
    set (``build_dataset`` arguments) that ``prepare_data`` generates when ``root`` holds none.
    """

    def __init__(self, root: str = "data/shapes", train_ann: str = "annotations/instances_train.json",
                 val_ann: str = "annotations/instances_val.json", train_images: str = "images",
                 val_images: str = "images", image_size: int = 128, max_size: int = 128,
                 size_divisible: int = 128, batch_size: int = 8, num_workers: int = 0,
                 flip_prob: float = 0.5, keep_empty: bool = True, bad_boxes: str = "skip",
                 cache_images: bool = True, seed: int = 0, val_batch_size: int | None = None,
                 build: str | None = None, build_args: dict | None = None, verify_images: str = "auto",
                 box_tolerance: float = 1.0, cache_limit_mb: float = 4096, drop_last: bool = True):
        super().__init__()
        require(BAD_BOXES_RULE, bad_boxes, "data.bad_boxes")
        require(VERIFY_RULE, verify_images, "data.verify_images")
        for key, value in (("image_size", image_size), ("size_divisible", size_divisible), ("batch_size", batch_size)):
            require(POSITIVE, value, f"data.{key}")
        if not max_size_ok(max_size, image_size):
            raise ValueError(f"data.max_size={show(max_size)}: {MAX_SIZE_TEXT.format(other=show(image_size))}")
        require(FLIP_PROB, flip_prob, "data.flip_prob")
        require(BUILD, build, "data.build")
        self.root = str(root)
        self.train_ann, self.val_ann = train_ann, val_ann
        self.train_images, self.val_images = train_images, val_images
        self.image_size, self.max_size, self.size_divisible = image_size, max_size, size_divisible
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers, self.flip_prob, self.keep_empty = num_workers, flip_prob, keep_empty
        self.bad_boxes, self.cache_images, self.seed = bad_boxes, cache_images, int(seed)
        self.build = build
        self.build_args = {k: v for k, v in dict(build_args or {}).items() if v is not None}  # None: default
        self.verify_images, self.box_tolerance = verify_images, float(box_tolerance)
        self.cache_limit_mb, self.drop_last = cache_limit_mb, drop_last
        self.train_set: CocoDetection | None = None
        self.val_set: CocoDetection | None = None
        self.val_coco = None
        self.stats: dict = {}
        self._cat_ids: list[int] | None = None
        self._class_names: list[str] | None = None
        self._loaders_made = 0

    # --- paths -------------------------------------------------------------------------------------
    def _path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    # --- Lightning hooks ---------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Build the built-in dataset named by ``build`` if ``root`` holds none (rank zero only)."""
        if self.build is None:
            return
        from focalbench.data import build as b

        root = Path(self.root)
        wanted = {"name": self.build, **b.build_defaults(self.build), **self.build_args}
        wanted = {k: wanted[k] for k in ("name", "seed", "train", "val", "size", *b.generator_options(self.build))}
        if b.is_built(root):
            have = b.build_args_of(root)
            diff = {k: (have.get(k), v) for k, v in wanted.items() if have.get(k) != v}
            if diff:
                raise DataError(f"{root}/build.json: dataset was built with "
                                f"{ {k: h for k, (h, _) in diff.items()} } but data.build/build_args ask for "
                                f"{ {k: w for k, (_, w) in diff.items()} }; give this set its own folder, e.g. "
                                f"data.root={root.parent / _folder_for(wanted)} (runs of the other set keep using "
                                f"{root})")
            return
        if root.exists() and not (root / "build.json").exists() and any(root.iterdir()):
            return  # someone else's data in this folder: setup() checks it
        log.info("building dataset %r into %s", self.build, root)
        stats = b.build_dataset(self.build, root, overwrite=False, progress=True,
                                **{k: v for k, v in self.build_args.items() if k != "name"})
        for line in b.summary(stats):
            log.info(line)

    def setup(self, stage: str | None = None) -> None:
        """Read and check the splits needed by ``stage`` (idempotent; "fit" needs train and val)."""
        if self.val_set is None:
            self._setup_val()
        if stage in (None, "fit") and self.train_set is None:
            self._setup_train()
        for ds, split in ((self.val_set, "val"), (self.train_set, "train")):
            if ds is not None and ds.cache is None:
                self._cache_or_verify(ds, split)

    def _setup_val(self) -> None:
        coco, records, counts = self._load(self.val_ann, self.val_images, cat_ids=self._cat_ids)
        if not records:  # found here, not as an evaluation of nothing after training
            raise DataError(f"annotation file {self._path(self.val_ann)}: no validation images ('images' is "
                            "empty); the evaluation needs at least one")
        if self._cat_ids is None:
            self._set_categories(coco, self.val_ann)
        self.val_coco = coco
        self.val_set = CocoDetection(records, self._path(self.val_ann), self.image_size, self.max_size,
                                     flip_prob=0.0, seed=self.seed)
        self.stats["val"] = counts
        log.info("val %s: %s", self._path(self.val_ann), _fmt(counts))

    def _setup_train(self) -> None:
        coco, records, counts = self._load(self.train_ann, self.train_images, cat_ids=self._cat_ids)
        self._check_same_categories(coco, self.train_ann)
        dropped = 0
        if not self.keep_empty:
            kept = [r for r in records if len(r.labels)]
            dropped = len(records) - len(kept)
            records = kept
        counts["empty_images_dropped"] = dropped
        if not records:
            raise DataError(f"annotation file {self._path(self.train_ann)}: no training images left "
                            f"(keep_empty={self.keep_empty}, {counts['images']} images, {counts['boxes']} boxes)")
        if not counts["boxes"]:  # only pure negatives: nothing to learn, every AP would be 0
            raise DataError(f"annotation file {self._path(self.train_ann)}: no boxes to train on "
                            f"({counts['images']} images, {counts['crowd_boxes']} crowd boxes); training needs "
                            "at least one non-crowd box")
        self.train_set = CocoDetection(records, self._path(self.train_ann), self.image_size, self.max_size,
                                       flip_prob=self.flip_prob, seed=self.seed)
        self.stats["train"] = counts
        log.info("train %s: %s", self._path(self.train_ann), _fmt(counts))

    def _load(self, ann: str, images: str, cat_ids):
        # Image decode checks come after loading: by the cache fill, or by verify_images (_cache_or_verify).
        return load_split(self._path(ann), self._path(images), bad_boxes=self.bad_boxes,
                          box_tolerance=self.box_tolerance, verify="deferred", cat_ids=cat_ids)

    def _set_categories(self, coco, ann: str) -> None:
        self._cat_ids = sorted(coco.cats)
        self._class_names = [coco.cats[c]["name"] for c in self._cat_ids]
        if not self._cat_ids:
            raise DataError(f"annotation file {self._path(ann)}: 'categories' is empty")

    def _check_same_categories(self, coco, ann: str) -> None:
        names = {c: coco.cats[c]["name"] for c in sorted(coco.cats)}
        if names != dict(zip(self._cat_ids, self._class_names)):
            raise DataError(f"annotation file {self._path(ann)}: categories {names} differ from those of "
                            f"{self._path(self.val_ann)} {dict(zip(self._cat_ids, self._class_names))}")

    def _cache_or_verify(self, ds: CocoDetection, split: str) -> None:
        """Decode every image into the cache (the strongest check), or verify them as configured."""
        mb = sum(r.width * r.height * 3 for r in ds.records) / 2**20
        if self.cache_images and mb <= self.cache_limit_mb:
            ds.fill_cache()
            self.stats[split]["verify"] = "decoded all (cache)"
            return
        if self.cache_images:
            log.warning("%s: not caching images (%.0f MB decoded > cache_limit_mb=%s); decoding on load",
                        ds.ann_file, mb, self.cache_limit_mb)
        if self.stats[split]["verify"] == "deferred":
            self.stats[split]["verify"] = verify_images(Path(ds.ann_file), ds.records, self.verify_images)

    # --- categories ----------------------------------------------------------------------------------
    def _ensure_categories(self) -> None:
        if self._cat_ids is None:
            self.prepare_data()
            self.setup("fit")

    @property
    def num_classes(self) -> int:
        """K, the number of categories (sets the data up on first use)."""
        self._ensure_categories()
        return len(self._cat_ids)

    @property
    def label_to_cat_id(self) -> list[int]:
        """Contiguous label -> COCO category id (the evaluator needs category ids)."""
        self._ensure_categories()
        return list(self._cat_ids)

    @property
    def cat_id_to_label(self) -> dict[int, int]:
        self._ensure_categories()
        return {c: i for i, c in enumerate(self._cat_ids)}

    @property
    def class_names(self) -> list[str]:
        self._ensure_categories()
        return list(self._class_names)

    # --- loaders -------------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        # Seeded shuffle and worker seeds (hence flips); a new stream each time a loader is made.
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self._loaders_made)
        self._loaders_made += 1
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True,
                          num_workers=self.num_workers, collate_fn=Collate(self.size_divisible),
                          generator=generator, drop_last=self.drop_last and len(self.train_set) >= self.batch_size,
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None:
            self.setup("validate")
        return DataLoader(self.val_set, batch_size=self.val_batch_size, shuffle=False,
                          num_workers=self.num_workers, collate_fn=Collate(self.size_divisible),
                          persistent_workers=self.num_workers > 0)

    def test_dataloader(self) -> DataLoader:
        """COCO-format sets have no labelled test split here: the validation split."""
        return self.val_dataloader()


def _fmt(counts: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in counts.items())


def _folder_for(args: dict) -> str:
    """A folder name that says which built set it holds: ``digits_s64_t16_v8``."""
    from focalbench.data.build import generator_options

    options = generator_options(args["name"])
    return f"{args['name']}_s{args['size']}_t{args['train']}_v{args['val']}" + (
        f"_seed{args['seed']}" if args.get("seed") else "") + "".join(
        f"_{k}{args[k]:g}" for k in options if k in args and args[k] != options[k])
