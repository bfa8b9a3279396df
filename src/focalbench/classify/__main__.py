"""``python -m focalbench.classify [overrides]``: one classification run (Hydra app on conf/classify/)."""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from focalbench.config_schema import ConfigError, check_command_line, exit_config_error, group_options

from .run import CONF_DIR, CONF_ROOT, compose, run
from .schema import CLASSIFY_RULES


@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    try:
        metrics = run(cfg, hc.runtime.output_dir, overrides=list(hc.overrides.task))
    except ConfigError as e:  # a -m job's bad value: one line, as for a single run
        exit_config_error(e)
    test = metrics.get("test", {})
    print(f"status={metrics['status']} val AP={metrics['AP']:.4f} test AP={test.get('AP', 0.0):.4f} "
          f"ratio={metrics['data']['ratio_reached']} train {metrics['train_seconds']:.1f}s")
    return float(metrics["AP"])  # val AP: the metric sweepers optimise


def cli() -> None:
    """Bad group options and values as one line on stderr (exit code 2), before Hydra makes a run directory."""
    check_command_line(sys.argv[1:], [CONF_DIR], compose, rules=CLASSIFY_RULES,
                       extra_groups={"loss": group_options([CONF_ROOT])["loss"]})  # the shared conf/loss/ group
    main()


if __name__ == "__main__":
    cli()
