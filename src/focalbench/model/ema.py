"""Exponential moving average of the weights, used for evaluation (``optim.ema_decay``).

Short CPU schedules end while AP is still climbing steeply, so the last iterate carries the noise of the
last few hundred minibatches. An EMA of the weights (Polyak averaging; the YOLO and DETR families evaluate
with one) averages that out at the cost of one extra copy of the parameters. Buffers (BatchNorm running
statistics) are averaged too, so the evaluated network is one consistent average.

The shadow weights are swapped in for every validation pass and swapped back afterwards, so training always
continues from the raw weights.
"""

from __future__ import annotations

import lightning as L
import torch

from focalbench.checks import num_in, or_null, require_number

DECAY_VALUE = num_in(0, 1, open_lo=True, open_hi=True)
DECAY = or_null(DECAY_VALUE)          # optim.ema_decay (null: no EMA); the config check reads this rule


class WeightEMA(L.Callback):
    """``shadow = decay * shadow + (1 - decay) * weights`` after every optimiser step, with the warm-up
    ``decay_t = min(decay, (1 + t) / (10 + t))`` so early steps are not dominated by the initialisation."""

    def __init__(self, decay: float):
        self.decay = float(require_number(DECAY_VALUE, decay, "optim.ema_decay"))
        self.shadow: dict[str, torch.Tensor] | None = None
        self._backup: dict[str, torch.Tensor] | None = None
        self._updates = 0

    @staticmethod
    def _state(pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        return {k: v for k, v in pl_module.state_dict(keep_vars=True).items()}

    def on_train_start(self, trainer, pl_module):
        if self.shadow is None:
            self.shadow = {k: v.detach().clone() for k, v in self._state(pl_module).items()}

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.shadow is None:
            return
        self._updates += 1
        d = min(self.decay, (1 + self._updates) / (10 + self._updates))
        for k, v in self._state(pl_module).items():
            s = self.shadow[k]
            if v.dtype.is_floating_point:
                s.mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                s.copy_(v.detach())

    @torch.no_grad()
    def on_validation_start(self, trainer, pl_module):
        if self.shadow is None or self._updates == 0:
            return
        state = self._state(pl_module)
        self._backup = {k: v.detach().clone() for k, v in state.items()}
        for k, v in state.items():
            v.data.copy_(self.shadow[k])

    @torch.no_grad()
    def on_validation_end(self, trainer, pl_module):
        if self._backup is None:
            return
        for k, v in self._state(pl_module).items():
            v.data.copy_(self._backup[k])
        self._backup = None

    def state_dict(self):
        return {"decay": self.decay, "updates": self._updates, "shadow": self.shadow}

    def load_state_dict(self, state):
        self.decay, self._updates, self.shadow = state["decay"], state["updates"], state["shadow"]
