"""Pruning from inside the Lightning run: validation AP per epoch -> the job's Optuna trial.

Usage in the training app (``cfg.optuna`` is the ``optuna:`` block the sweeper fills)::

    pruning = OptunaPruningCallback(cfg.optuna, monitor="val/AP")
    trainer = L.Trainer(callbacks=[..., pruning])
    try:
        trainer.fit(model, datamodule)
        pruning.check_pruned()          # needed under DDP, harmless otherwise
    except optuna.TrialPruned:
        write metrics.json with status "pruned"; raise   # the sweeper tells the trial PRUNED

Outside a sweep (``optuna.*`` null) the callback does nothing.

DDP: only rank zero talks to the storage (reports, asks the pruner); its decision is broadcast so
every rank stops at the same epoch. A single process raises ``optuna.TrialPruned`` from the hook
(Lightning re-raises it out of ``fit``); with several processes the callback instead sets
``trainer.should_stop`` (an exception on one rank would leave the others hanging in a collective,
and ``ddp_spawn`` re-wraps child exceptions), records the decision in the trial, and
:meth:`check_pruned` raises it after ``fit`` returns. Works with every storage (RDB or journal).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Optional

import lightning.pytorch as pl
import optuna
from lightning.pytorch.trainer.states import TrainerFn

from focalbench.sweeps.trial import TrialReporter

log = logging.getLogger(__name__)


class OptunaPruningCallback(pl.Callback):
    """Report ``trainer.callback_metrics[monitor]`` at step = epoch; prune when the pruner says so."""

    def __init__(self, optuna_cfg: Optional[Mapping[str, Any]], monitor: str = "val/AP"):
        super().__init__()
        self.monitor = monitor
        self.reporter = TrialReporter(optuna_cfg)
        self._warned = False

    @property
    def active(self) -> bool:
        return self.reporter.active

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Only while fitting: a final trainer.validate() after fit must not prune a finished run.
        if not self.active or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        epoch = trainer.current_epoch
        should_prune = False
        if trainer.is_global_zero:
            value = trainer.callback_metrics.get(self.monitor)
            if value is None:
                if not self._warned:
                    log.warning("OptunaPruningCallback: metric %r not logged; available: %s; not pruning",
                                self.monitor, sorted(trainer.callback_metrics))
                    self._warned = True
            else:
                should_prune = self.reporter.report(float(value), epoch)
                if should_prune:
                    self.reporter.mark_pruned(epoch)
        if trainer.world_size > 1:
            should_prune = trainer.strategy.broadcast(should_prune, src=0)
        if not should_prune:
            return
        message = f"trial {self.reporter.cfg['trial_number']} pruned at epoch {epoch} ({self.monitor})"
        if trainer.world_size > 1:
            trainer.should_stop = True
            log.info("%s: stopping all ranks", message)
            return
        raise optuna.TrialPruned(message)

    def check_pruned(self) -> None:
        """Raise ``optuna.TrialPruned`` after ``fit`` if any rank pruned this trial."""
        self.reporter.check_pruned()
