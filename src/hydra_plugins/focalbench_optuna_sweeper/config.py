"""``hydra/sweeper=optuna``: the options of focalbench's Optuna sweeper (defaults shown by
``python app.py hydra/sweeper=optuna --cfg hydra -p hydra.sweeper``).
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.focalbench_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    # the sampler and pruner nodes reach the sweeper as configs (it builds them per trial, and stores the
    # pruner's spec in the study for the jobs), not as objects Hydra made
    _recursive_: bool = False

    # tpe | random | grid | cmaes, or a mapping {name: tpe, <sampler kwargs>} (e.g. n_startup_trials), or any
    # Optuna sampler as {_target_: optuna.samplers.NSGAIISampler, <its arguments>}, also picked from the
    # group: +hydra/sweeper/sampler=tpe|random|cmaes|nsgaii|qmc|gp|grid (then hydra.sweeper.sampler.seed=...).
    # grid: every point of the product of the (discrete) params is enqueued once as a fixed trial.
    sampler: Any = "tpe"
    # minimize | maximize the job's return value (focalbench.train returns validation AP), or a list of them:
    # a multi-objective study (e.g. [maximize, maximize] with objectives [AP, images_per_second]; no pruning).
    direction: Any = "maximize"
    # null: the job's return value (one number per direction); or metrics.json keys, one per direction.
    objectives: Optional[List[str]] = None
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
    # none | median | successive_halving | hyperband, or {name: median, <pruner kwargs>}, or any Optuna pruner
    # as {_target_: optuna.pruners.PercentilePruner, percentile: 25.0}.
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


# Samplers as a config group, as in hydra-optuna-sweeper (hydra/sweeper/sampler=nsgaii, then
# hydra.sweeper.sampler.seed=1, hydra.sweeper.sampler.population_size=20 ...): each option is
# {_target_: <any Optuna sampler class>, **its arguments}; grid is focalbench's (points enqueued once each).
SAMPLER_OPTIONS = {
    "tpe": {"_target_": "optuna.samplers.TPESampler", "seed": None, "n_startup_trials": 10, "multivariate": False},
    "random": {"_target_": "optuna.samplers.RandomSampler", "seed": None},
    "cmaes": {"_target_": "optuna.samplers.CmaEsSampler", "seed": None},
    "nsgaii": {"_target_": "optuna.samplers.NSGAIISampler", "seed": None, "population_size": 50},
    "qmc": {"_target_": "optuna.samplers.QMCSampler", "seed": None, "qmc_type": "sobol"},
    "gp": {"_target_": "optuna.samplers.GPSampler", "seed": None},
    "grid": {"name": "grid"},
}

cs = ConfigStore.instance()
cs.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="focalbench")
for _name, _node in SAMPLER_OPTIONS.items():
    cs.store(group="hydra/sweeper/sampler", name=_name, node=_node, provider="focalbench")
