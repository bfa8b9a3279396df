"""Tiny Hydra + Lightning app for the pruning test: a linear model on random data whose logged
``val/AP`` is the config value ``ap`` at every epoch, pruned through OptunaPruningCallback.

Mirrors what the training app does: catch ``optuna.TrialPruned``, write ``metrics.json`` with
``status: pruned``, re-raise (the sweeper then tells the trial PRUNED).
"""

import json

import hydra
import lightning.pytorch as pl
import optuna
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig

from focalbench.sweeps.pruning import OptunaPruningCallback

ConfigStore.instance().store(
    name="lightning_prune",
    node={"ap": 0.5, "epochs": 3, "devices": 1, "strategy": "auto", "optuna": {"storage": None, "study_name": None, "trial_number": None}},
)


class Tiny(pl.LightningModule):
    def __init__(self, ap: float):
        super().__init__()
        self.ap = ap
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return self.layer(x).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/AP", self.ap)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@hydra.main(version_base=None, config_path=None, config_name="lightning_prune")
def main(cfg) -> float:
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(8, 4))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    pruning = OptunaPruningCallback(cfg.optuna, monitor="val/AP")
    trainer = pl.Trainer(max_epochs=cfg.epochs, accelerator="cpu", devices=cfg.devices, strategy=cfg.strategy, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, callbacks=[pruning])
    out = HydraConfig.get().runtime.output_dir + "/metrics.json"
    try:
        trainer.fit(Tiny(cfg.ap), loader, loader)
        pruning.check_pruned()
    except optuna.TrialPruned:
        with open(out, "w") as f:
            json.dump({"status": "pruned", "epochs": trainer.current_epoch + 1}, f)
        raise
    with open(out, "w") as f:
        json.dump({"status": "ok", "epochs": trainer.current_epoch, "AP": cfg.ap}, f)
    return float(cfg.ap)


if __name__ == "__main__":
    main()
