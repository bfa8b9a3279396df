"""``shapes``: synthetic scenes of five shape classes on cluttered, textured backgrounds.

Per image: 1-4 labelled objects (ellipse, rectangle, triangle, ring, cross) whose size sqrt(w*h) is
log-uniform in [``MIN_SIZE``, size/2] px and whose aspect ratio w/h is log-uniform in a per-class range
(1:3..3:1 for ellipses and rectangles, 1:2..2:1 for the others), so anchors of several scales and
aspect ratios are needed (Table 1c); random colours; a blocky colour-noise background, sometimes with
stripes, plus clutter lines; 0-2 unlabelled distractor shapes (star, crescent, L, diamond: hard
negatives); later objects may partly hide earlier ones (at least 60% of each stays visible).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from focalbench.data.scene import Scene, blocky_noise, contrasting_colour, log_uniform

CATEGORIES = [
    {"id": 1, "name": "ellipse", "supercategory": "shape"},
    {"id": 2, "name": "rectangle", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
    {"id": 4, "name": "ring", "supercategory": "shape"},
    {"id": 5, "name": "cross", "supercategory": "shape"},
]
ASPECT_RANGE = {1: 3.0, 2: 3.0, 3: 2.0, 4: 2.0, 5: 2.0}  # w/h in [1/r, r]
DEFAULTS = {"train": 2000, "val": 300, "size": 128}
MIN_SIZE = 14  # sqrt(w*h) in px; smaller objects mostly get no anchor at IoU >= 0.5 (cpu anchors)
MAX_OBJECTS = 4
MAX_DISTRACTORS = 2
NOISE_SIGMA = 4.0


def _box(rng: np.random.Generator, size: int, aspect_range: float) -> tuple[int, int, int, int]:
    s = log_uniform(rng, MIN_SIZE, size / 2)
    a = log_uniform(rng, 1.0 / aspect_range, aspect_range)
    w = int(round(min(max(s * math.sqrt(a), 6), 0.8 * size)))
    h = int(round(min(max(s / math.sqrt(a), 6), 0.8 * size)))
    x0 = int(rng.integers(0, size - w + 1))
    y0 = int(rng.integers(0, size - h + 1))
    return x0, y0, w, h


def _mask(size: int, category_id: int, x0: int, y0: int, w: int, h: int, rng) -> np.ndarray:
    """Full mask of one labelled shape filling the box (x0, y0, w, h)."""
    im = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(im)
    x1, y1 = x0 + w - 1, y0 + h - 1
    if category_id == 1:  # ellipse
        draw.ellipse([x0, y0, x1, y1], fill=1)
    elif category_id == 2:  # rectangle
        draw.rectangle([x0, y0, x1, y1], fill=1)
    elif category_id == 3:  # isosceles triangle pointing up, down, left or right
        xm, ym = (x0 + x1) / 2, (y0 + y1) / 2
        pts = [[(x0, y1), (x1, y1), (xm, y0)], [(x0, y0), (x1, y0), (xm, y1)],
               [(x1, y0), (x1, y1), (x0, ym)], [(x0, y0), (x0, y1), (x1, ym)]][int(rng.integers(4))]
        draw.polygon(pts, fill=1)
    elif category_id == 4:  # ring
        t = max(2, int(round(rng.uniform(0.15, 0.3) * min(w, h))))
        draw.ellipse([x0, y0, x1, y1], fill=1)
        draw.ellipse([x0 + t, y0 + t, x1 - t, y1 - t], fill=0)
    else:  # cross
        f = rng.uniform(0.25, 0.4)
        th, tw = max(3, int(round(f * h))), max(3, int(round(f * w)))
        yc, xc = y0 + (h - th) // 2, x0 + (w - tw) // 2
        draw.rectangle([x0, yc, x1, yc + th - 1], fill=1)
        draw.rectangle([xc, y0, xc + tw - 1, y1], fill=1)
    return np.asarray(im, dtype=bool)


def _distractor(size: int, rng: np.random.Generator) -> np.ndarray:
    """Mask of an unlabelled shape of no class (star, crescent, L, diamond)."""
    x0, y0, w, h = _box(rng, size, 2.0)
    x1, y1 = x0 + w - 1, y0 + h - 1
    xm, ym = (x0 + x1) / 2, (y0 + y1) / 2
    im = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(im)
    kind = int(rng.integers(4))
    if kind == 0:  # five-pointed star
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.4
            ang = -math.pi / 2 + k * math.pi / 5
            pts.append((xm + r * (w / 2) * math.cos(ang), ym + r * (h / 2) * math.sin(ang)))
        draw.polygon(pts, fill=1)
    elif kind == 1:  # crescent
        draw.ellipse([x0, y0, x1, y1], fill=1)
        dx = int(round(rng.uniform(0.25, 0.45) * w))
        draw.ellipse([x0 + dx, y0, x1 + dx, y1], fill=0)
    elif kind == 2:  # L
        t = max(3, int(round(0.3 * min(w, h))))
        draw.rectangle([x0, y0, x0 + t - 1, y1], fill=1)
        draw.rectangle([x0, y1 - t + 1, x1, y1], fill=1)
    else:  # diamond
        draw.polygon([(xm, y0), (x1, ym), (xm, y1), (x0, ym)], fill=1)
    return np.asarray(im, dtype=bool)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    image = blocky_noise(rng, size, size)
    if rng.random() < 0.4:  # stripes: a texture at a random period and orientation
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        theta, period = rng.uniform(0, math.pi), rng.uniform(6, 24)
        wave = np.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period)
        image += wave[..., None] * rng.uniform(10, 35, 3).astype(np.float32)
    pil = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(2, 7))):  # clutter lines
        pts = [tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(2)]
        draw.line(pts, fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=int(rng.integers(1, 4)))
    return np.asarray(pil, dtype=np.float32)


def render(rng: np.random.Generator, size: int, split: str = "train",
           seed: int = 0) -> tuple[np.ndarray, list[dict]]:
    """One scene: uint8 image ``(size, size, 3)`` and its objects (``bbox`` xywh, ``category_id``, ``area``).

    All randomness comes from ``rng``; ``split`` and ``seed`` are unused here (``digits`` needs them).
    """
    scene = Scene(_background(rng, size))
    for _ in range(int(rng.integers(0, MAX_DISTRACTORS + 1))):
        mask = _distractor(size, rng)
        scene.paint(mask, rng.integers(0, 256, 3))
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        category_id = int(rng.integers(1, len(CATEGORIES) + 1))
        for _attempt in range(20):
            x0, y0, w, h = _box(rng, size, ASPECT_RANGE[category_id])
            mask = _mask(size, category_id, x0, y0, w, h, rng)
            colour = contrasting_colour(rng, scene.mean_colour((x0, y0, x0 + w, y0 + h)))
            if scene.add(mask, colour, category_id):
                break
    return scene.finish(rng, NOISE_SIGMA)
