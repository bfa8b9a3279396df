"""Anchors of RetinaNet (paper section 4, Table 1c), built on torchvision's ``AnchorGenerator``.

Levels P3-P7 have strides 8..128. Each level's base size is ``size_multiplier * stride`` (the paper's
32..512 px is ``size_multiplier=4``). ``num_scales`` sub-octave scales 2^(k/num_scales), k < num_scales
(the paper's default 3 gives 2^0, 2^(1/3), 2^(2/3); its 4-scale row of Table 1c is 2^(k/4)) and
``num_ratios`` aspect ratios (1 -> {1:1}; 3 -> {1:2, 1:1, 2:1}; 5 adds {1:3, 3:1}) give
A = num_scales * num_ratios anchors per location.

Anchor order matches the head's output layout ``(N, sum_l H_l*W_l*A, K)``: level-major, then location
(row-major), then anchor (ratio-major, scale-minor, as torchvision orders them).
"""

from __future__ import annotations

import functools

import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator

from focalbench.checks import int_at_least, is_int, num_above, one_of, require

STRIDES = (8, 16, 32, 64, 128)  # P3..P7
ASPECT_RATIOS = {1: (1.0,), 3: (0.5, 1.0, 2.0), 5: (1.0 / 3.0, 0.5, 1.0, 2.0, 3.0)}
# the rules of anchors.* (focalbench.checks; the config check reads the same objects)
SCALES = int_at_least(1)
RATIOS = one_of(tuple(ASPECT_RATIOS))
SIZE_MULTIPLIER = num_above(0)
PADDING_TEXT = (f"must be a multiple of {STRIDES[-1]} (the P7 stride), or a power of two >= data.max_size "
                "({other})")


def padding_ok(size_divisible, max_size) -> bool:
    """The rule of data.size_divisible: the padded input divides by the largest stride (P7, 128), so every
    level's map is exactly H/stride and its anchors line up with it (Detectron's SIZE_DIVISIBILITY). One
    exception, for images smaller than one P7 cell (the smoke profile's 64 px): a power of two >= max_size
    pads every image to one square that each stride halves exactly down to a 1x1 map."""
    if not is_int(size_divisible) or size_divisible < 1:
        return False
    small_square = size_divisible & (size_divisible - 1) == 0 and is_int(max_size) and size_divisible >= max_size
    return size_divisible % STRIDES[-1] == 0 or small_square


def anchor_scales(num_scales: int) -> tuple[float, ...]:
    """Sub-octave scales 2^(k/num_scales) for k = 0..num_scales-1."""
    require(SCALES, num_scales, "anchors.scales")
    return tuple(2.0 ** (k / num_scales) for k in range(num_scales))


def aspect_ratios(num_ratios: int) -> tuple[float, ...]:
    require(RATIOS, num_ratios, "anchors.ratios")
    return ASPECT_RATIOS[num_ratios]


def num_anchors_per_location(num_scales: int, num_ratios: int) -> int:
    return len(anchor_scales(num_scales)) * len(aspect_ratios(num_ratios))


def make_anchor_generator(num_scales: int = 3, num_ratios: int = 3, size_multiplier: float = 4.0,
                          strides: tuple[int, ...] = STRIDES) -> AnchorGenerator:
    """torchvision ``AnchorGenerator`` with one (sizes, ratios) entry per pyramid level."""
    scales = anchor_scales(num_scales)
    ratios = aspect_ratios(num_ratios)
    sizes = tuple(tuple(size_multiplier * s * sc for sc in scales) for s in strides)
    return AnchorGenerator(sizes=sizes, aspect_ratios=(ratios,) * len(strides))


@functools.lru_cache(maxsize=32)
def _grid_anchors(height: int, width: int, num_scales: int, num_ratios: int, size_multiplier: float,
                  strides: tuple[int, ...]) -> torch.Tensor:
    gen = make_anchor_generator(num_scales, num_ratios, size_multiplier, strides)
    shapes = [((height + s - 1) // s, (width + s - 1) // s) for s in strides]
    cell = gen.cell_anchors  # one (A, 4) tensor per level, centred on the origin
    per_level = _shift(cell, shapes, strides)
    return torch.cat(per_level)


def _shift(cell: list[torch.Tensor], shapes, strides) -> list[torch.Tensor]:
    out = []
    for base, (h, w), s in zip(cell, shapes, strides):
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32) * s,
                                torch.arange(w, dtype=torch.float32) * s, indexing="ij")
        shifts = torch.stack([xs, ys, xs, ys], dim=-1).reshape(-1, 1, 4)
        out.append((shifts + base.reshape(1, -1, 4)).reshape(-1, 4))
    return out


def grid_anchors(height: int, width: int, num_scales: int = 3, num_ratios: int = 3,
                 size_multiplier: float = 4.0, strides: tuple[int, ...] = STRIDES,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """All anchors (xyxy, input-pixel coordinates) of an ``height x width`` input: ``(A_total, 4)``.

    Feature map of level l is ceil(H / stride_l) x ceil(W / stride_l) (inputs are padded to a multiple
    of the largest stride, so this is exact division in practice).
    """
    anchors = _grid_anchors(int(height), int(width), int(num_scales), int(num_ratios),
                            float(size_multiplier), tuple(strides))
    return anchors.to(device)


def num_anchors(height: int, width: int, num_scales: int = 3, num_ratios: int = 3,
                strides: tuple[int, ...] = STRIDES) -> int:
    """Closed form: sum over levels of ceil(H/s)*ceil(W/s) * num_scales * num_ratios."""
    locs = sum(((height + s - 1) // s) * ((width + s - 1) // s) for s in strides)
    return locs * num_anchors_per_location(num_scales, num_ratios)
