"""``python -m focalbench.classify [overrides]``: one classification run (Hydra app on conf/classify/)."""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from focalbench.config_schema import ConfigError, check_group_choices, group_options, validate_config

from .run import CONF_DIR, CONF_ROOT, compose, run
from .schema import CLASSIFY_RULES


@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    try:
        metrics = run(cfg, hc.runtime.output_dir, overrides=list(hc.overrides.task))
    except ConfigError as e:  # a -m job's bad value: one line, as for a single run
        _exit(e)
    test = metrics.get("test", {})
    print(f"status={metrics['status']} val AP={metrics['AP']:.4f} test AP={test.get('AP', 0.0):.4f} "
          f"ratio={metrics['data']['ratio_reached']} train {metrics['train_seconds']:.1f}s")
    return float(metrics["AP"])  # val AP: the metric sweepers optimise


def _exit(e: Exception) -> None:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2)


def cli() -> None:
    """Bad group options and values as one line on stderr (exit code 2), before Hydra makes a run directory."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(sys.argv[1:])
    groups = group_options([CONF_DIR])
    groups["loss"] = group_options([CONF_ROOT])["loss"]  # the shared conf/loss/ group (searchpath)
    plain_run = not (args.multirun or args.cfg or args.info or args.help or args.hydra_help
                     or args.shell_completion or args.config_dir or args.config_name or args.config_path)
    try:
        check_group_choices(args.overrides, groups)
        if plain_run:
            validate_config(compose(args.overrides), rules=CLASSIFY_RULES)
    except ConfigError as e:
        _exit(e)
    except Exception:  # noqa: BLE001 - any other composition error: main() reports it as Hydra does
        pass
    main()


if __name__ == "__main__":
    cli()
