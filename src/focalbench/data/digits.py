"""``digits``: real handwritten digits composited onto random crops of real photographs.

The digits are scikit-learn's ``load_digits`` (1,797 scans of 8x8 px, 10 classes), upscaled to 12-64 px
tall, thresholded into a mask, coloured (sometimes with a 1 px outline) and pasted onto a random crop of
one of the photographs shipped with scikit-image (``skimage.data``). Train and val images use disjoint
sets of digit scans (80/20, split by the build seed), so validation handwriting is unseen in training.
Both sources are installed with the packages: nothing is downloaded.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from focalbench.data.scene import Scene, contrasting_colour, log_uniform

CATEGORIES = [{"id": d + 1, "name": str(d), "supercategory": "digit"} for d in range(10)]
DEFAULTS = {"train": 2000, "val": 300, "size": 128}
# Generator options (``data.build_args.<name>``), with the value that reproduces the sets built before they
# existed. ``stretch`` s >= 1: each digit is drawn wider by a log-uniform factor in [c/s, c*s], c = 1.6
# (STRETCH_CENTRE: a digit's strokes fill ~60% of its scan's width, so c centres the tight boxes' w/h near
# 1). By default the tight boxes are tall (w/h 10-90%: 0.47-0.74, median 0.60); s=2.5 spreads them the way
# COCO's are spread (0.46-1.85, median 0.91), so anchors of several aspect ratios have something to match
# (Table 1c). At s=1 no extra number is drawn: the set is byte-identical to one built before the option.
OPTIONS = {"stretch": 1.0}
STRETCH_CENTRE = 1.6
# Real photographs bundled in scikit-image's wheel (no download needed).
PHOTOS = ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel",
          "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "text")
MIN_HEIGHT, MAX_HEIGHT = 14, 64
MIN_BOX_AREA = 12 * 12  # px^2 of the tight box
MAX_OBJECTS = 4
NOISE_SIGMA = 3.0
TRAIN_FRACTION = 0.8


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    import skimage.data

    out = []
    for name in PHOTOS:
        im = np.asarray(getattr(skimage.data, name)())
        if im.ndim == 2:
            im = np.repeat(im[..., None], 3, axis=2)
        out.append(np.ascontiguousarray(im[..., :3], dtype=np.uint8))
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32), d.target.astype(np.int64)


@functools.lru_cache(maxsize=8)
def _split_indices(seed: int, split: str) -> np.ndarray:
    n = len(_digits()[1])
    order = np.random.default_rng([seed, 7919]).permutation(n)
    cut = int(round(TRAIN_FRACTION * n))
    return np.sort(order[:cut] if split == "train" else order[cut:])


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    photo = _photos()[int(rng.integers(len(PHOTOS)))]
    ph, pw = photo.shape[:2]
    side = int(round(log_uniform(rng, min(size, ph, pw), min(ph, pw))))
    y0, x0 = int(rng.integers(0, ph - side + 1)), int(rng.integers(0, pw - side + 1))
    crop = Image.fromarray(photo[y0:y0 + side, x0:x0 + side]).resize((size, size), Image.BILINEAR)
    image = np.asarray(crop, dtype=np.float32)
    return image[:, ::-1] if rng.random() < 0.5 else image


def _digit_mask(rng: np.random.Generator, scan: np.ndarray, size: int, stretch: float = 1.0) -> np.ndarray:
    """Upscale one 8x8 scan to a random size and place it; the mask is the thresholded stroke."""
    h = int(round(log_uniform(rng, MIN_HEIGHT, min(MAX_HEIGHT, size / 2))))
    aspect = rng.uniform(0.75, 1.1)
    if stretch != 1.0:
        aspect *= STRETCH_CENTRE * log_uniform(rng, 1.0 / stretch, stretch)
    w = min(size, max(8, int(round(h * aspect))))
    big = np.asarray(Image.fromarray(scan).resize((w, h), Image.BILINEAR))
    stroke = big > rng.uniform(5.0, 8.0)  # scan values are 0..16
    x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
    mask = np.zeros((size, size), bool)
    mask[y0:y0 + h, x0:x0 + w] = stroke
    return mask


def _outline(mask: np.ndarray) -> np.ndarray:
    """1 px ring around a mask (4-neighbour dilation minus the mask)."""
    d = mask.copy()
    d[1:] |= mask[:-1]
    d[:-1] |= mask[1:]
    d[:, 1:] |= mask[:, :-1]
    d[:, :-1] |= mask[:, 1:]
    return d & ~mask


def render(rng: np.random.Generator, size: int, split: str = "train", seed: int = 0,
           stretch: float = OPTIONS["stretch"]) -> tuple[np.ndarray, list[dict]]:
    """One scene: uint8 image ``(size, size, 3)`` and its digits (``bbox`` xywh, ``category_id``, ``area``)."""
    images, targets = _digits()
    pool = _split_indices(seed, split)
    scene = Scene(_background(rng, size))
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        k = int(pool[rng.integers(len(pool))])
        for _attempt in range(20):
            mask = _digit_mask(rng, images[k], size, stretch)
            if not mask.any():
                continue
            ys, xs = np.nonzero(mask)
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            bw, bh = box[2] - box[0], box[3] - box[1]
            if min(bw, bh) < 4 or bw * bh < MIN_BOX_AREA:  # thin "1"s: too small for any anchor
                continue
            colour = contrasting_colour(rng, scene.mean_colour(box), min_distance=150.0)
            full = mask
            texture = None
            if rng.random() < 0.5:  # outline in a second contrasting colour: part of the object
                ring = _outline(mask)
                full = mask | ring
                texture = np.empty_like(scene.image)
                texture[mask] = colour
                texture[ring] = contrasting_colour(rng, colour, min_distance=150.0)
            if scene.add(full, colour if texture is None else texture, int(targets[k]) + 1):
                break
    return scene.finish(rng, NOISE_SIGMA)
