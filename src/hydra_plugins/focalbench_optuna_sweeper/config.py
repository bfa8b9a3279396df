"""``hydra/sweeper=optuna``: the options of focalbench's Optuna sweeper (defaults shown by
``python app.py hydra/sweeper=optuna --cfg hydra -p hydra.sweeper``).
"""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.focalbench_optuna_sweeper.optuna_sweeper.OptunaSweeper"

    # tpe | random | grid | cmaes, or a mapping {name: tpe, <sampler kwargs>} (e.g. n_startup_trials).
    # grid: every point of the product of the (discrete) params is enqueued once as a fixed trial.
    sampler: Any = "tpe"
    # minimize | maximize the job's return value (focalbench.train returns validation AP).
    direction: str = "maximize"
    # The study's TOTAL number of trials (complete + pruned + failed + running), over all workers and
    # re-runs; a re-run resumes. grid: at most the number of grid points.
    n_trials: int = 20
    # Trials launched together per launcher call (1 per worker; >1 only with a parallel launcher).
    n_jobs: int = 1
    # SQLAlchemy URL (relative sqlite paths: from the original working dir), journal:///abs/file.log,
    # journal://rel/file.log, a *.log / *.journal path (several workers), or null (in-memory).
    storage: Optional[str] = "sqlite:///results/optuna.db"
    # null: "<job name>-<hash of params, fixed overrides, direction>", stable for the same command.
    study_name: Optional[str] = None
    # Sampler seed; each trial samples with seed + trial number, so workers never repeat each other.
    seed: Optional[int] = None
    # none | median | successive_halving | hyperband, or {name: median, <pruner kwargs>}.
    # Jobs report through focalbench.sweeps.pruning.OptunaPruningCallback.
    pruner: Any = "none"
    # Stop this worker when failed / finished trials (its own) exceeds this fraction.
    max_failure_rate: float = 0.5
    # Seconds between heartbeats of running trials (null: off). A trial whose heartbeat is older than
    # grace_period (null: 2 x heartbeat_interval) belonged to a dead worker: it is failed and
    # re-queued (at most max_retry times) by the next worker that looks.
    heartbeat_interval: Optional[int] = 60
    grace_period: Optional[int] = None
    max_retry: Optional[int] = 3
    # With heartbeats on, a worker with nothing left to ask waits for trials running elsewhere, so
    # it can retry them if their worker dies; the study is complete when the command returns.
    wait_for_running: bool = True
    # Search space, same syntax as hydra-optuna-sweeper: interval(a, b), int(interval(a, b)),
    # tag(log, interval(a, b)), choice(a, b), a,b,c, range(a, b, step), or a fixed value.
    params: Dict[str, str] = field(default_factory=dict)


ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="focalbench")
