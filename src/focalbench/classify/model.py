"""Classifiers (an MLP for tabular rows, a small CNN for 8x8 digit images) and their LightningModule.

The networks end in a plain ``nn.Linear`` whose bias is the paper's prior initialisation (section 4.1,
"Initialization"): ``b = -log((1 - pi) / pi)`` from the criterion's ``prior_bias``, so the model starts by
predicting ``pi`` for every class and the many easy negatives do not swamp the first updates.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from focalbench.model.lit import lr_factor

from .criterion import sample_losses


class MLP(nn.Module):
    """``(N, in_features)`` -> ``(N, out_features)`` logits."""

    def __init__(self, in_features: int, out_features: int, hidden: tuple[int, ...] = (64, 64),
                 dropout: float = 0.0):
        super().__init__()
        layers, width = [], in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.body = nn.Sequential(*layers)
        self.cls_logits = nn.Linear(width, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls_logits(self.body(x))


class SmallCNN(nn.Module):
    """``(N, 1, 8, 8)`` -> ``(N, out_features)``: two 3x3 conv pairs (8x8 -> 4x4), global average pool."""

    def __init__(self, out_features: int, width: int = 16, in_channels: int = 1):
        super().__init__()

        def conv(i, o):
            return [nn.Conv2d(i, o, 3, padding=1), nn.ReLU(inplace=True)]

        self.body = nn.Sequential(*conv(in_channels, width), *conv(width, width), nn.MaxPool2d(2),
                                  *conv(width, 2 * width), *conv(2 * width, 2 * width),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.cls_logits = nn.Linear(2 * width, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls_logits(self.body(x))


class ClassifierModule(L.LightningModule):
    """Binary / one-vs-rest multi-label training of ``net`` with a ``focalbench.losses`` criterion.

    Batches are ``(x, labels)`` with labels ``(N,)`` long: class index ``0..K-1`` or -1 (negative).
    ``net`` outputs ``criterion.logits_per_anchor(K)`` logits (K for sigmoid losses, K+1 with index 0 =
    background for the softmax focal loss); ``probabilities`` maps them to ``(N, K)``.
    """

    def __init__(self, net: nn.Module, criterion: nn.Module, num_classes: int, lr: float = 3e-3,
                 weight_decay: float = 1e-4, prior_prob: float | None = 0.01, max_steps: int = 1000,
                 warmup_steps: int = 0):
        super().__init__()
        self.net, self.criterion, self.num_classes = net, criterion, num_classes
        self.lr, self.weight_decay, self.max_steps, self.warmup_steps = lr, weight_decay, max_steps, warmup_steps
        self.softmax = criterion.logits_per_anchor(num_classes) == num_classes + 1
        self.nonfinite_loss = False
        if prior_prob is not None:
            with torch.no_grad():
                self.net.cls_logits.bias.fill_(0.0)
                self.net.cls_logits.bias.copy_(torch.as_tensor(
                    criterion.prior_bias(prior_prob, num_classes), dtype=torch.float32).expand_as(
                        self.net.cls_logits.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        if self.softmax:
            return logits.softmax(-1)[:, 1:]
        return logits.sigmoid()

    def training_step(self, batch, batch_idx):
        x, labels = batch
        loss = sample_losses(self.criterion, self(x), labels).mean()
        if not torch.isfinite(loss):  # a diverged run is data: stop and say so (metrics.json status)
            self.nonfinite_loss = True
            self.trainer.should_stop = True
            return None
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        # the detection app's schedule (focalbench.model.lit.lr_factor): linear warm-up from 1/warm of the lr
        # over warmup_steps, then cosine decay to 0 at max_steps
        warm = max(1, self.warmup_steps)
        kw = dict(max_steps=max(warm + 1, self.max_steps), warmup_iters=warm, warmup_factor=1.0 / warm,
                  schedule="cosine")
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, **kw))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    @torch.no_grad()
    def predict_probs(self, x: torch.Tensor, batch_size: int = 65536) -> torch.Tensor:
        """``(N, K)`` probabilities for a whole split, in chunks."""
        was = self.training
        self.eval()
        out = torch.cat([self.probabilities(self(x[i:i + batch_size])) for i in range(0, len(x), batch_size)])
        self.train(was)
        return out
