"""``python -m focalbench.classify [overrides]``: one classification run (Hydra app on conf_classify/)."""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from focalbench.config_schema import (ConfigError, check_command_line, config_entries, exit_config_error,
                                      group_options, os_error_line)

from .run import CONF_DIR, CONF_ROOT, compose, run
from .schema import CLASSIFY_RULES


@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    try:
        metrics = run(cfg, hc.runtime.output_dir, overrides=list(hc.overrides.task))
    except ConfigError as e:  # a -m job's bad value: one line, as for a single run
        exit_config_error(e)
    except OSError as e:  # unwritable or full run folder: the folder, not runstore's temporary file
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        raise SystemExit(1)
    test = metrics.get("test", {})
    print(f"status={metrics['status']} val AP={metrics['AP']:.4f} test AP={test.get('AP', 0.0):.4f} "
          f"ratio={metrics['data']['ratio_reached']} train {metrics['train_seconds']:.1f}s")
    return float(metrics["AP"])  # val AP: the metric sweepers optimise


def known_keys() -> list[str]:
    """What ``+key=`` may add: every key of conf_classify/ and of the shared conf/loss/ group."""
    groups = {d.name: d for d in sorted(CONF_DIR.iterdir()) if d.is_dir()}
    return list(config_entries(CONF_DIR / "config.yaml", {**groups, "loss": CONF_ROOT / "loss"}))


def cli() -> None:
    """Bad group options, keys and values, and an unwritable run folder, as one line on stderr (exit code 2),
    before Hydra makes a run directory."""
    check_command_line(sys.argv[1:], [CONF_DIR], lambda ov: compose(ov, return_hydra_config=True),
                       rules=CLASSIFY_RULES, extra_groups={"loss": group_options([CONF_ROOT])["loss"]},
                       known_keys=known_keys, compose_base=compose)  # the shared conf/loss/ group
    main()


if __name__ == "__main__":
    cli()
