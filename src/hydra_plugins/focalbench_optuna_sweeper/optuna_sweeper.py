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
        return self.sweeper.sweep(arguments)
