"""RetinaNet classification and box subnets (paper section 4, Figure 3 (c), (d)), shared across P3-P7."""

from __future__ import annotations

import torch
from torch import nn

from focalbench.losses.terms import prior_logit
from focalbench.model.backbone import norm_layer


def prior_bias(prior_prob: float) -> float:
    """Final classification bias so every anchor starts at p ~= pi (paper section 4.1): ``terms.prior_logit``."""
    return prior_logit(prior_prob, "model.prior_prob")


def _tower(in_channels: int, width: int, num_convs: int, norm: str) -> nn.Sequential:
    layers, c = [], in_channels
    make_norm = norm_layer(norm)
    for _ in range(num_convs):
        layers += [nn.Conv2d(c, width, 3, padding=1), make_norm(width), nn.ReLU(inplace=True)]
        c = width
    return nn.Sequential(*layers)


def _flatten(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(N, A*C, H, W) -> (N, H*W*A, C): location-major, then anchor, as ``anchors.grid_anchors`` orders them."""
    n, _, h, w = x.shape
    return x.view(n, -1, channels, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, channels)


class RetinaNetHead(nn.Module):
    """Two towers of ``num_convs`` 3x3 convs (paper: 4 x 256, ReLU) ending in K*A logits and 4*A box deltas.

    ``num_logits`` is K for sigmoid losses and K+1 for softmax losses (``crit.logits_per_anchor(K)``).
    ``cls_bias`` initialises the final classification bias (the prior; None keeps 0): a float, or a
    ``(num_logits,)`` tensor repeated for every anchor.
    """

    def __init__(self, in_channels: int, num_anchors: int, num_logits: int, num_convs: int = 4,
                 width: int = 256, norm: str = "none", cls_bias: float | torch.Tensor | None = None):
        super().__init__()
        self.num_anchors, self.num_logits = num_anchors, num_logits
        self.cls_tower = _tower(in_channels, width, num_convs, norm)
        self.box_tower = _tower(in_channels, width, num_convs, norm)
        c = width if num_convs > 0 else in_channels
        self.cls_logits = nn.Conv2d(c, num_anchors * num_logits, 3, padding=1)
        self.bbox_pred = nn.Conv2d(c, num_anchors * 4, 3, padding=1)
        for m in self.modules():  # paper: Gaussian sigma=0.01, bias 0
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        if cls_bias is not None:  # a float, or one value per logit (softmax: background differs)
            with torch.no_grad():
                self.cls_logits.bias.view(num_anchors, num_logits).copy_(
                    torch.as_tensor(cls_bias, dtype=torch.float32).expand(num_anchors, num_logits))

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """features [P3..P7] -> logits (N, sum HWA, num_logits), box deltas (N, sum HWA, 4)."""
        cls = [_flatten(self.cls_logits(self.cls_tower(f)), self.num_logits) for f in features]
        box = [_flatten(self.bbox_pred(self.box_tower(f)), 4) for f in features]
        return torch.cat(cls, dim=1), torch.cat(box, dim=1)
