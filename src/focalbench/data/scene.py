"""Composition of a synthetic scene: objects painted on a background, occlusion tracked per pixel.

Shared by the ``shapes`` and ``digits`` generators. Each labelled object is given by its full (amodal)
mask; later objects may cover earlier ones, but never so much that less than ``min_visible`` of an
earlier object stays visible. The box is the tight box of the full mask, the COCO ``area`` the number of
visible pixels at the end (COCO's area is the segmentation area, which decides small/medium/large).
"""

from __future__ import annotations

import numpy as np


class Scene:
    """An RGB canvas ``(H, W, 3)`` plus an owner map: 0 = background, i >= 1 = labelled object i."""

    def __init__(self, background: np.ndarray, min_visible: float = 0.6):
        self.image = background.astype(np.float32)
        self.height, self.width = background.shape[:2]
        self.owner = np.zeros((self.height, self.width), np.int32)
        self.min_visible = min_visible
        self.full_area: list[int] = []
        self.boxes: list[tuple[int, int, int, int]] = []  # x0, y0, x1, y1 (exclusive), full mask
        self.category_ids: list[int] = []

    def paint(self, mask: np.ndarray, colour) -> None:
        """Paint without labelling (distractors, clutter): it may hide objects, so only call it first."""
        self.image[mask] = np.asarray(colour, np.float32)

    def mean_colour(self, box: tuple[int, int, int, int]) -> np.ndarray:
        x0, y0, x1, y1 = box
        return self.image[y0:y1, x0:x1].reshape(-1, 3).mean(axis=0)

    def add(self, mask: np.ndarray, colour, category_id: int) -> bool:
        """Paint a labelled object on top if no earlier object would drop below ``min_visible``."""
        area = int(mask.sum())
        if area == 0:
            return False
        n = len(self.full_area)
        if n:
            lost = np.bincount(self.owner[mask], minlength=n + 1)[1:]
            visible = np.bincount(self.owner.ravel(), minlength=n + 1)[1:]
            if np.any(visible - lost < self.min_visible * np.asarray(self.full_area)):
                return False
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        self.boxes.append((int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1))
        self.full_area.append(area)
        self.category_ids.append(int(category_id))
        if np.ndim(colour) == 3:  # per-pixel colours (a texture) of the whole canvas
            self.image[mask] = colour[mask]
        else:
            self.image[mask] = np.asarray(colour, np.float32)
        self.owner[mask] = n + 1
        return True

    def finish(self, rng: np.random.Generator, noise_sigma: float) -> tuple[np.ndarray, list[dict]]:
        """uint8 image (sensor noise added) and COCO-style ``bbox`` [x, y, w, h], ``category_id``, ``area``."""
        image = self.image
        if noise_sigma > 0:
            image = image + rng.standard_normal(image.shape, dtype=np.float32) * np.float32(noise_sigma)
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        visible = np.bincount(self.owner.ravel(), minlength=len(self.boxes) + 1)[1:]
        objects = []
        for (x0, y0, x1, y1), cat, vis in zip(self.boxes, self.category_ids, visible):
            objects.append({"bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                            "category_id": cat, "area": float(vis)})
        return image, objects


def contrasting_colour(rng: np.random.Generator, against: np.ndarray, min_distance: float = 90.0,
                       tries: int = 12) -> np.ndarray:
    """A random RGB colour at least ``min_distance`` (L1 over channels) from ``against``, if one is found."""
    best, best_d = None, -1.0
    for _ in range(tries):
        c = rng.integers(0, 256, 3).astype(np.float32)
        d = float(np.abs(c - against).sum())
        if d >= min_distance:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


def log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def blocky_noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Cluttered background: a random base colour plus blocky colour noise at a random cell size."""
    cell = int(rng.choice([4, 8, 16]))
    gh, gw = -(-height // cell), -(-width // cell)
    base = rng.uniform(40, 215, 3)
    spread = rng.uniform(20, 70)
    grid = base + rng.uniform(-spread, spread, (gh, gw, 3))
    image = np.repeat(np.repeat(grid, cell, axis=0), cell, axis=1)[:height, :width]
    return np.clip(image, 0, 255).astype(np.float32)
