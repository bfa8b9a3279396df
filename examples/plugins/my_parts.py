"""Your own parts for focalbench, plugged in from config files outside the package (conf/ beside this file).

    cd examples/plugins
    python -m focalbench.train --config-dir conf profile=smoke loss=scaled_focal model=tiny_body optim=radam \
        logger=csv_copy

Each config file names its class with ``_target_``; its other keys are the class's parameters.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from focalbench.losses import ClassificationLoss, SigmoidFocalLoss


class ScaledFocalLoss(ClassificationLoss):
    """Focal loss (paper eq. 5) times a constant: the smallest loss of one's own. A criterion is called as
    ``loss_fn(logits (N, A, K), labels (N, A): class, -1 background, -2 ignored, anchors (A, 4))`` and returns
    a scalar; ``ClassificationLoss`` supplies the classifier's prior bias and output count."""

    def __init__(self, gamma: float = 2.0, alpha: float = 0.25, scale: float = 1.0):
        super().__init__()
        self.focal = SigmoidFocalLoss(gamma=gamma, alpha=alpha)
        self.scale = float(scale)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor | None = None):
        return self.scale * self.focal(logits, labels, anchors)

    def per_anchor(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.scale * self.focal.per_anchor(logits, labels)


class TinyBody(nn.Module):
    """A backbone body: C3, C4, C5 maps at strides 8, 16, 32 (an OrderedDict), their channels in
    ``out_channels``; focalbench puts the FPN (P3-P7) and the RetinaNet heads on top."""

    def __init__(self, width: int = 8):
        super().__init__()

        def down(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.stem = down(3, width, 8)
        self.c4 = down(width, 2 * width, 2)
        self.c5 = down(2 * width, 4 * width, 2)
        self.out_channels = [width, 2 * width, 4 * width]

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        c3 = self.stem(x)
        c4 = self.c4(c3)
        return OrderedDict(c3=c3, c4=c4, c5=self.c5(c4))
