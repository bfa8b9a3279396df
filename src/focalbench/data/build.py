"""Deterministic builds of the built-in datasets into COCO format.

``build_dataset("shapes", "data/shapes")`` writes ``annotations/instances_{train,val}.json``, ``images/``
(``{split}_{index:06d}.png``) and ``build.json`` (the build arguments and statistics). Each image draws
from its own ``numpy.random.default_rng([seed, split, index])``, so the files are byte-identical for a
seed whatever the number of worker processes. The dataset is written to a temporary folder next to
``root`` and renamed into place when complete, so a crash or a concurrent build never leaves half a
dataset behind.
"""

from __future__ import annotations

import importlib
import json
import logging
import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from focalbench.checks import int_at_least, num_at_least
from focalbench.data.errors import DataError

log = logging.getLogger(__name__)

GENERATORS = {"shapes": "focalbench.data.shapes", "digits": "focalbench.data.digits"}
SPLITS = ("train", "val")
# the rules of data.build_args.* (the config check reads these objects)
SPLIT_SIZE = int_at_least(1)          # train, val: images per split
IMAGE_SIDE = int_at_least(32)         # size: px
SEED = int_at_least(0)
OPTION = num_at_least(1)              # a generator's own option (digits' stretch)
FORMAT_VERSION = 1


def _generator(name: str):
    if name not in GENERATORS:
        raise DataError(f"dataset name {name!r} is not built in; choose one of {sorted(GENERATORS)}")
    return importlib.import_module(GENERATORS[name])


def build_defaults(name: str) -> dict:
    """Default build arguments of a built-in dataset: seed, train, val, size and its generator's options."""
    return {"seed": 0, **_generator(name).DEFAULTS, **generator_options(name)}


def generator_options(name: str) -> dict:
    """A generator's own options (e.g. digits' ``stretch``) with their defaults; {} for none."""
    return dict(getattr(_generator(name), "OPTIONS", {}))


def _check_options(name: str, options: dict) -> dict:
    """``options`` over the generator's defaults; an unknown name or a non-number is one DataError."""
    known = generator_options(name)
    for key, value in options.items():
        if key not in known:
            raise DataError(f"build {name}: unknown build argument {key!r}; its arguments: seed, train, val, "
                            f"size{''.join(', ' + k for k in known)}")
        value = float(value) if isinstance(value, (np.integer, np.floating)) else value
        if not OPTION[0](value):
            raise DataError(f"build {name}: {key}={value!r} {OPTION[1]}")
    return {**known, **{k: float(v) for k, v in options.items()}}


def _render_one(task: tuple) -> list[dict]:
    """Render and write one image (runs in a worker process); returns its objects."""
    name, seed, split, index, size, image_dir, options = task
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    image, objects = _generator(name).render(rng, size, split, seed, **options)
    # PNG through PIL with fixed settings: the bytes depend only on the pixels.
    Image.fromarray(image).save(os.path.join(image_dir, f"{split}_{index:06d}.png"), format="PNG",
                                compress_level=1)
    return objects


def _coco(name: str, split: str, seed: int, size: int, objects_per_image: list[list[dict]],
          categories: list[dict]) -> dict:
    images, annotations = [], []
    for index, objects in enumerate(objects_per_image):
        image_id = index + 1
        images.append({"id": image_id, "file_name": f"{split}_{index:06d}.png", "width": size,
                       "height": size})
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": obj["category_id"], "iscrowd": 0,
                                "bbox": [round(float(v), 2) for v in obj["bbox"]],
                                "area": round(float(obj["area"]), 2)})
    info = {"description": f"focalbench built-in dataset '{name}' ({split})", "version": str(FORMAT_VERSION),
            "seed": seed, "size": size, "generator": GENERATORS[name]}
    return {"info": info, "licenses": [], "images": images, "annotations": annotations,
            "categories": categories}


def _write_json(path: Path, obj) -> None:
    # Sorted keys, no whitespace, floats already rounded: byte-identical output for identical content.
    path.write_text(json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n")


def _xyxy(objects: list[dict]) -> np.ndarray:
    return np.array([[x, y, x + w, y + h] for x, y, w, h in (o["bbox"] for o in objects)],
                    np.float32).reshape(-1, 4)


def split_stats(objects_per_image: list[list[dict]], size: int, num_categories: int) -> dict:
    """Objects per image, sizes, aspect ratios, classes, and the fg:bg anchor ratio at the cpu anchors."""
    from focalbench.data.stats import CPU_ANCHORS, anchor_stats

    counts = np.array([len(o) for o in objects_per_image])
    boxes = np.concatenate([_xyxy(o) for o in objects_per_image]) if objects_per_image else np.zeros((0, 4))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cats = np.bincount([o["category_id"] for objs in objects_per_image for o in objs],
                       minlength=num_categories + 1)[1:]

    def q(x):
        return [round(float(v), 2) for v in np.quantile(x, [0.0, 0.5, 1.0])] if len(x) else []

    anchors = anchor_stats((_xyxy(o) for o in objects_per_image), size, size, **CPU_ANCHORS)
    return {"images": len(objects_per_image), "objects": int(counts.sum()),
            "objects_per_image": {"min": int(counts.min()) if len(counts) else 0,
                                  "mean": round(float(counts.mean()), 3) if len(counts) else 0.0,
                                  "max": int(counts.max()) if len(counts) else 0},
            "box_size_sqrt_area_min_median_max": q(np.sqrt(w * h)),
            "aspect_w_over_h_min_median_max": q(w / h),
            "objects_per_category": [int(c) for c in cats],
            "anchors_cpu_profile": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in anchors.items()}}


def build_dataset(name: str, root: str | os.PathLike, seed: int = 0, train: int | None = None,
                  val: int | None = None, size: int | None = None, workers: int | None = None,
                  progress: bool = True, overwrite: bool = True, **options) -> dict:
    """Generate built-in dataset ``name`` into the folder ``root`` (e.g. ``data/shapes``); return its stats.

    ``train``/``val``/``size`` default to the generator's ``DEFAULTS`` (2000/300/128 px); ``options`` are
    the generator's own (``OPTIONS``, e.g. digits' ``stretch``), recorded in build.json when not default. ``workers``
    processes render in parallel (default: up to 2). With ``overwrite=False`` an existing complete
    dataset at ``root`` is kept (for concurrent "build if missing" callers) and its stats returned.
    """
    gen = _generator(name)
    args = {**gen.DEFAULTS}
    for key, value in (("train", train), ("val", val), ("size", size)):
        if value is not None:
            args[key] = value
    for key, value, rule in (("train", args["train"], SPLIT_SIZE), ("val", args["val"], SPLIT_SIZE),
                             ("size", args["size"], IMAGE_SIDE), ("seed", seed, SEED)):
        value = int(value) if isinstance(value, np.integer) else value
        if not rule[0](value):
            raise DataError(f"build {name}: {key}={value!r} {rule[1]}")
    seed, size = int(seed), int(args["size"])
    options = _check_options(name, options)
    root = Path(root)
    if root.exists() and not (root / "build.json").is_file():
        raise DataError(f"{root}: exists and is not a focalbench build (no build.json); "
                        "remove it or choose another root")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        return _build_into(tmp, root, name, gen, args, seed, size, workers, progress, overwrite, options)
    except BaseException:  # a full disk, Ctrl-C...: no half-written set is left next to root
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _build_into(tmp: Path, root: Path, name: str, gen, args: dict, seed: int, size: int, workers: int | None,
                progress: bool, overwrite: bool, options: dict) -> dict:
    (tmp / "images").mkdir(parents=True)
    (tmp / "annotations").mkdir()

    tasks = [(name, seed, split, i, size, str(tmp / "images"), options)
             for split in SPLITS for i in range(args[split])]
    if workers is None:  # default: up to 2 processes, one for small builds (pool start-up dominates)
        workers = min(2, os.cpu_count() or 1, len(tasks) // 64 or 1)
    workers = max(1, int(workers))
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), desc=f"build {name}", unit="img", disable=not progress)
    try:
        if workers == 1:
            results = []
            for t in tasks:
                results.append(_render_one(t))
                bar.update()
        else:
            with multiprocessing.get_context().Pool(workers) as pool:
                results = []
                for r in pool.imap(_render_one, tasks, chunksize=32):  # ordered: deterministic assembly
                    results.append(r)
                    bar.update()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()

    stats = {"name": name, "seed": seed, "train": args["train"], "val": args["val"], "size": size,
             "format_version": FORMAT_VERSION, "splits": {}}
    changed = {k: v for k, v in options.items() if v != generator_options(name)[k]}
    if changed:  # a default build's build.json stays what it was before generators had options
        stats["options"] = changed
    start = 0
    for split in SPLITS:
        objects = results[start:start + args[split]]
        start += args[split]
        _write_json(tmp / "annotations" / f"instances_{split}.json",
                    _coco(name, split, seed, size, objects, gen.CATEGORIES))
        stats["splits"][split] = split_stats(objects, size, len(gen.CATEGORIES))
    _write_json(tmp / "build.json", stats)

    if root.exists():
        if not (root / "build.json").is_file():
            shutil.rmtree(tmp, ignore_errors=True)
            raise DataError(f"{root}: exists and is not a focalbench build (no build.json); "
                            "remove it or choose another root")
        if not overwrite and is_built(root):
            shutil.rmtree(tmp, ignore_errors=True)
            log.info("%s already built by another process; keeping it", root)
            return json.loads((root / "build.json").read_text())
        shutil.rmtree(root)
    os.replace(tmp, root)
    return stats


def is_built(root: str | os.PathLike) -> bool:
    """A finished build has ``build.json`` (written last, inside the temporary folder)."""
    root = Path(root)
    return (root / "build.json").is_file() and all(
        (root / "annotations" / f"instances_{s}.json").is_file() for s in SPLITS)


def build_args_of(root: str | os.PathLike) -> dict:
    """The arguments an existing build was made with (name, seed, train, val, size, the generator's options)."""
    stats = json.loads((Path(root) / "build.json").read_text())
    options = {**generator_options(stats["name"]), **stats.get("options", {})}
    return {**{k: stats[k] for k in ("name", "seed", "train", "val", "size")}, **options}


def summary(stats: dict) -> list[str]:
    """Human-readable lines: per split, objects and the fg:bg anchor ratio at the cpu profile's anchors."""
    from focalbench.data.stats import describe

    options = "".join(f", {k}={v:g}" for k, v in stats.get("options", {}).items())
    lines = [f"{stats['name']} (seed {stats['seed']}, {stats['size']} px{options}): "
             f"{stats['train']} train / {stats['val']} val images"]
    from focalbench.data.stats import CPU_ANCHORS as a

    m = a["size_multiplier"]
    for split, s in stats["splits"].items():
        opi = s["objects_per_image"]
        lines.append(f"  {split}: {s['objects']} objects ({opi['min']}-{opi['max']} per image, mean "
                     f"{opi['mean']}), sqrt(area) {s['box_size_sqrt_area_min_median_max']} px, "
                     f"w/h {s['aspect_w_over_h_min_median_max']}, per class {s['objects_per_category']}")
        lines.append(f"  {split} anchors (cpu profile: {a['num_scales']} scales x {a['num_ratios']} ratios, "
                     f"{8 * m:g}-{128 * m:g} px base): " + describe(s["anchors_cpu_profile"]))
    return lines
