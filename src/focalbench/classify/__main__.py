"""``python -m focalbench.classify [overrides]``: one classification run (Hydra app on conf/classify/)."""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .run import CONF_DIR, run


@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    metrics = run(cfg, hc.runtime.output_dir, overrides=list(hc.overrides.task))
    test = metrics.get("test", {})
    print(f"status={metrics['status']} val AP={metrics['AP']:.4f} test AP={test.get('AP', 0.0):.4f} "
          f"ratio={metrics['data']['ratio_reached']} train {metrics['train_seconds']:.1f}s")
    return float(metrics["AP"])  # val AP: the metric sweepers optimise


if __name__ == "__main__":
    main()
