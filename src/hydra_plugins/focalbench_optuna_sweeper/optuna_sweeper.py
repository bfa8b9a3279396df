"""The Hydra ``Sweeper`` plugin class; it defers to :class:`focalbench.sweeps.sweeper.OptunaSweeperImpl`.

Importing Optuna is deferred to construction: Hydra scans this module on every start-up.
"""

from typing import Any, List

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from .config import OptunaSweeperConf  # noqa: F401  (registers hydra/sweeper=optuna)


class OptunaSweeper(Sweeper):
    def __init__(self, **kwargs: Any) -> None:
        from focalbench.sweeps.sweeper import OptunaSweeperImpl

        self.sweeper = OptunaSweeperImpl(**kwargs)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        try:  # a bad storage URL (a password written into it): one line and exit 2, not Hydra's traceback
            self.sweeper._check_no_literal_password()
        except ValueError as e:
            from focalbench.config_schema import ConfigError, exit_config_error

            exit_config_error(ConfigError(str(e).splitlines()[0]))
        return self.sweeper.sweep(arguments)
