"""One classification run: compose the config, build data / model / loss, train, evaluate, write metrics.json.

``run(cfg, output_dir)`` does everything the Hydra app does except Hydra's own directory handling, so
the imbalance study calls it in-process (no interpreter start-up per trial).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from focalbench.config_schema import validate_config
from focalbench.paths import CLASSIFY_CONF_DIR, PACKAGE_DIR
from focalbench.runstore import atomic_write_json, config_hash, git_sha, hashed_view

from .criterion import build_criterion
from .data import build_splits
from .metrics import classification_metrics
from .schema import CLASSIFY_RULES

CONF_ROOT = PACKAGE_DIR / "conf"  # the package's conf/ (shipped in the wheel; a link to the repo's conf/ in the source tree)
CONF_DIR = CLASSIFY_CONF_DIR  # the app's own groups; conf/loss/ comes from CONF_ROOT
# conf_classify/config.yaml adds conf/ to Hydra's search path through this resolver, so `loss=` selects
# from the shared conf/loss/ group exactly as detection runs do, whatever the working directory.
if not OmegaConf.has_resolver("focalbench_conf_root"):
    OmegaConf.register_new_resolver("focalbench_conf_root", lambda: str(CONF_ROOT))

# Keys that do not change what is trained or measured (left out of the config hash).
_NOT_HASHED = ("optuna", "tags", "csv_log", "hydra")
_NOT_HASHED_TRAINER = ("progress_bar", "threads")


def compose(overrides: list[str] | tuple[str, ...] = (), return_hydra_config: bool = False) -> DictConfig:
    """The run config for ``overrides`` (Hydra compose API), as ``python -m focalbench.classify`` sees it
    (``return_hydra_config``: with its ``hydra`` node, e.g. ``hydra.run.dir``)."""
    from hydra import compose as hydra_compose

    from focalbench.hydra_context import hydra_context

    with hydra_context(CONF_DIR, "classify"):  # the detection app's rule: the running context, or a fresh one
        return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=return_hydra_config)


def run_config_for_hash(cfg: DictConfig | dict) -> dict:
    """The resolved config minus output/logging/optuna keys: what ``config_hash`` is taken over (the same
    rule as the detection app's, runstore.hashed_view, with this app's own non-hashed keys)."""
    return hashed_view(cfg, _NOT_HASHED, {"trainer": _NOT_HASHED_TRAINER})


class _Batches(torch.utils.data.IterableDataset):
    """Shuffled minibatches of in-memory tensors (no per-sample ``__getitem__``: 2,048 rows per index op)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int):
        self.x, self.y, self.seed, self.epoch = x, y, seed, 0
        self.batch_size = min(batch_size, len(y))

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self.epoch += 1
        perm = torch.randperm(len(self.y), generator=g)
        for i in range(0, len(perm) - self.batch_size + 1, self.batch_size):  # equal-size batches
            idx = perm[i:i + self.batch_size]
            yield self.x[idx], self.y[idx]


def _prior_prob(value: Any, splits) -> float | None:
    """``model.prior_prob``: a probability in (0, 1), ``freq`` (the train split's class frequency) or null."""
    if value is None:
        return None
    if value == "freq":
        return splits.class_frequency("train")
    if isinstance(value, str) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"model.prior_prob={value!r}: allowed a number in (0, 1), 'freq' or null")
    return float(value)


def _build_net(cfg: DictConfig, splits, out_features: int) -> torch.nn.Module:
    from .model import MLP, SmallCNN

    arch = cfg.model.arch
    if arch == "mlp":
        in_features = int(np.prod(splits.x["train"].shape[1:]))
        net = MLP(in_features, out_features, tuple(cfg.model.hidden), float(cfg.model.dropout))
        return torch.nn.Sequential(torch.nn.Flatten(), net) if splits.x["train"].ndim > 2 else net
    if arch == "cnn":
        if splits.x["train"].ndim != 4:
            raise ValueError(f"model.arch=cnn: needs image data (data=digits), got data.kind={cfg.data.kind}")
        return SmallCNN(out_features, int(cfg.model.width), splits.x["train"].shape[1])
    raise ValueError(f"model.arch={arch!r}: allowed mlp, cnn")


def run(cfg: DictConfig, output_dir: str | os.PathLike | None = None, overrides: list[str] | None = None,
        write: bool = True) -> dict:
    """Train and evaluate one config; returns the metrics dict (also written to ``output_dir/metrics.json``)."""
    import lightning as L

    from .model import ClassifierModule

    validate_config(cfg, rules=CLASSIFY_RULES)  # one-line ConfigError before any data is built
    if cfg.get("trainer", {}).get("threads"):
        torch.set_num_threads(int(cfg.trainer.threads))
    loss_cfg = OmegaConf.to_container(cfg.loss, resolve=True)
    criterion = build_criterion(**loss_cfg)  # bad loss= fails before any data is built
    splits = build_splits(OmegaConf.to_container(cfg.data, resolve=True))
    K = splits.num_classes
    prior = _prior_prob(cfg.model.prior_prob, splits)
    L.seed_everything(int(cfg.seed), workers=False, verbose=False)
    net = _build_net(cfg, splits, criterion.logits_per_anchor(K))
    if not hasattr(net, "cls_logits"):  # the Flatten wrapper: expose the classifier for the prior init
        net.cls_logits = net[1].cls_logits
    t = cfg.trainer
    module = ClassifierModule(net, criterion, K, lr=float(cfg.optim.lr), weight_decay=float(cfg.optim.weight_decay),
                              prior_prob=prior, max_steps=int(t.max_steps), warmup_steps=int(t.warmup_steps))
    x = {s: torch.from_numpy(splits.x[s]) for s in splits.x}
    y = {s: torch.from_numpy(splits.y[s]) for s in splits.y}
    loader = torch.utils.data.DataLoader(_Batches(x["train"], y["train"], int(t.batch_size), int(cfg.seed)),
                                         batch_size=None)
    logger = False
    if output_dir is not None and cfg.get("csv_log"):
        logger = L.pytorch.loggers.CSVLogger(str(output_dir), name="csv", version="")
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=int(t.max_steps), logger=logger,
                        enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=bool(t.progress_bar), num_sanity_val_steps=0,
                        limit_val_batches=0, log_every_n_steps=50, deterministic=bool(t.deterministic))
    t0 = time.perf_counter()
    status, reason = "ok", None
    try:
        trainer.fit(module, loader)
    except Exception as e:  # noqa: BLE001 - a failed run is recorded, not lost
        status, reason = "failed", f"{type(e).__name__}: {e}"
    train_seconds = time.perf_counter() - t0
    if status == "ok" and module.nonfinite_loss:
        status, reason = "diverged", f"non-finite training loss at step {trainer.global_step}"
    steps = int(trainer.global_step)
    counts = {s: splits.counts(s) for s in splits.y}
    metrics: dict[str, Any] = {
        "status": status,
        "task": "classify",
        "seed": int(cfg.seed),
        "config_hash": config_hash(run_config_for_hash(cfg)),
        "git_sha": git_sha(),
        "overrides": list(overrides or []),
        "train_seconds": round(train_seconds, 3),
        "steps": steps,
        "epochs": round(steps * loader.dataset.batch_size / max(1, len(y["train"])), 3),
        "samples_per_second": round(steps * loader.dataset.batch_size / max(train_seconds, 1e-9), 1),
        "peak_memory_mb": _peak_rss_mb(),
        "data": {"kind": splits.info["kind"], "ratio": cfg.data.ratio, "ratio_reached": splits.ratio_reached,
                 "counts": counts, "classes": splits.class_names},
        "loss": loss_cfg,
        "prior_prob": prior,
        "monitor": "val/AP",
    }
    if status == "ok":
        for s in ("val", "test"):
            t1 = time.perf_counter()
            probs = module.predict_probs(x[s], int(t.eval_batch_size)).numpy()
            if not np.isfinite(probs).all():
                status, reason = "diverged", f"non-finite {s} predictions"
                break
            metrics[s] = classification_metrics(probs, splits.y[s], splits.class_names,
                                                fpr=float(cfg.metrics.fpr), n_bins=int(cfg.metrics.ece_bins))
            metrics[f"{s}_eval_seconds"] = round(time.perf_counter() - t1, 3)
        metrics["status"] = status
    if status != "ok":
        metrics["reason"] = reason
        metrics.pop("val", None), metrics.pop("test", None)
    metrics["AP"] = metrics["val"]["AP"] if "val" in metrics else 0.0  # what sweepers optimise
    if write and output_dir is not None:
        atomic_write_json(Path(output_dir) / "metrics.json", metrics)
    return metrics


def _peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)  # Linux: KiB

