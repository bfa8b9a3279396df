"""The Optuna sweeper behind ``hydra/sweeper=optuna`` (registered in ``hydra_plugins``).

One sweeper process is one *worker*: it asks the shared study for a trial, launches the job through
Hydra's launcher, tells the result, and repeats until the study holds ``n_trials`` trials (a total:
re-running the command resumes; several workers on one storage share the budget). See
``hydra_plugins/focalbench_optuna_sweeper/config.py`` for the options.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.trial import Trial, TrialState

from focalbench.runstore import config_hash
from focalbench.sweeps.params import format_value, grid_points, parse_params, trial_overrides
from focalbench.sweeps.storage import (
    PASSWORD_ENV,
    make_storage,
    redact_url,
    resolve_storage_url,
    split_password,
    storage_lock,
    url_password,
)
from focalbench.sweeps.engine import worker_id
from focalbench.sweeps.study import (
    PRUNER_ATTR,
    TrialHeartbeat,
    build_pruner,
    check_directions,
    build_sampler,
    counted_trials,
    enqueue_points,
    fail_stale_trials,
    open_study,
    pop_waiting_trial,
    pruner_spec,
    release_trial,
    requeue_trial,
    sampler_name,
    suggest,
)

log = logging.getLogger(__name__)

FAIL_REASON_ATTR = "fail_reason"
STATUS_ATTR, DIVERGED = "status", "diverged"  # a diverged trial: PRUNED, user attr status=diverged


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


def optuna_overrides(url: Optional[str], study_name: str, number: int) -> List[str]:
    """The trial identity a job needs to report to its trial (``optuna:`` block of the app).

    ``++`` adds the keys when an app has no ``optuna:`` block (it then simply ignores them).
    """
    if url is None:
        return []
    return [
        f"++optuna.storage={format_value(url)}",
        f"++optuna.study_name={format_value(study_name)}",
        f"++optuna.trial_number={number}",
    ]


def job_outcome(ret: JobReturn, objectives: Sequence[str] = (), n_objectives: int = 1
                ) -> Tuple[TrialState, Any, Optional[str]]:
    """(state, value, failure reason) of one finished job. ``objectives``: the values are these keys of the
    ``metrics.json`` the job wrote (focalbench.train: ``AP``, ``images_per_second``...), not its return value;
    with ``n_objectives > 1`` the value is a list (a multi-objective study)."""
    if ret.status != JobStatus.COMPLETED:
        error = ret._return_value  # the job's exception; ``ret.return_value`` would re-raise it
        if isinstance(error, optuna.TrialPruned):
            return TrialState.PRUNED, None, None
        return TrialState.FAIL, None, f"{type(error).__name__}: {error}"
    if objectives:
        try:
            metrics = json.loads((Path(str(ret.hydra_cfg.hydra.runtime.output_dir)) / "metrics.json").read_text())
            raw = [metrics[k] for k in objectives]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            return TrialState.FAIL, None, f"hydra.sweeper.objectives={list(objectives)}: not in the job's metrics.json ({e})"
    else:
        raw = ret.return_value
        raw = list(raw) if isinstance(raw, (list, tuple)) else [raw]
    if len(raw) != n_objectives:
        return TrialState.FAIL, None, (f"job returned {len(raw)} value(s) for {n_objectives} direction(s); set "
                                       f"hydra.sweeper.objectives to metrics.json keys, one per direction")
    values = []
    for value in raw:
        try:
            value = float(value)
        except (TypeError, ValueError):
            return TrialState.FAIL, None, f"job returned {value!r}, not a number"
        if not math.isfinite(value):
            return TrialState.FAIL, None, f"job returned {value!r}, not a finite number"
        values.append(value)
    return TrialState.COMPLETE, values[0] if n_objectives == 1 else values, None


def diverged_reason(ret: JobReturn, user_attrs: Optional[Dict[str, Any]] = None) -> Optional[str]:
    """Why a job that returned a number diverged, or None: the job marked its trial (user attr
    ``status=diverged``, :meth:`focalbench.sweeps.trial.TrialReporter.mark_diverged`), or the ``metrics.json``
    it wrote in its output directory (focalbench.train) says ``status: diverged``. Such a job returns AP 0.0,
    which is no measurement: its trial must not be a COMPLETE 0.0."""
    attrs = user_attrs or {}
    if attrs.get(STATUS_ATTR) == DIVERGED:
        return str(attrs.get("reason") or "diverged")
    try:
        out = Path(str(ret.hydra_cfg.hydra.runtime.output_dir))
        metrics = json.loads((out / "metrics.json").read_text())
    except Exception:  # no output dir, no metrics.json, or not ours: nothing says it diverged
        return None
    if isinstance(metrics, dict) and metrics.get("status") == DIVERGED:
        return str(metrics.get("reason") or "diverged")
    return None


class OptunaSweeperImpl(Sweeper):
    def __init__(
        self,
        sampler: Any = "tpe",
        direction: Any = "maximize",
        n_trials: int = 20,
        n_jobs: int = 1,
        storage: Optional[str] = "sqlite:///results/optuna.db",
        study_name: Optional[str] = None,
        seed: Optional[int] = None,
        pruner: Any = "none",
        max_failure_rate: float = 0.5,
        heartbeat_interval: Optional[int] = 60,
        grace_period: Optional[int] = None,
        max_retry: Optional[int] = 3,
        wait_for_running: bool = True,
        params: Optional[Dict[str, str]] = None,
        objectives: Optional[List[str]] = None,
    ) -> None:
        self.sampler_cfg = _plain(sampler)
        self.pruner_cfg = pruner_spec(_plain(pruner))
        sampler_name(self.sampler_cfg)  # fail early on a bad name
        directions = check_directions(_plain(direction))
        self.direction: Any = directions[0] if isinstance(_plain(direction), str) else directions
        self.objectives = [str(o) for o in (_plain(objectives) or [])]
        if self.objectives and len(self.objectives) != len(directions):
            raise ValueError(f"hydra.sweeper.objectives={self.objectives}: one metrics.json key per direction "
                             f"({len(directions)}: {directions})")
        if len(directions) > 1 and self.pruner_cfg.get("name") != "none":
            raise ValueError("hydra.sweeper.pruner: Optuna prunes single-objective studies only; use pruner=none "
                             f"with direction={directions}")
        if int(n_trials) < 1:
            raise ValueError(f"hydra.sweeper.n_trials={n_trials!r}; allowed: an integer >= 1")
        if int(n_jobs) < 1:
            raise ValueError(f"hydra.sweeper.n_jobs={n_jobs!r}; allowed: an integer >= 1 (1 per worker)")
        if not 0.0 <= float(max_failure_rate) <= 1.0:
            raise ValueError(f"hydra.sweeper.max_failure_rate={max_failure_rate!r}; allowed: 0.0 to 1.0")
        if heartbeat_interval is not None and int(heartbeat_interval) < 1:
            raise ValueError(f"hydra.sweeper.heartbeat_interval={heartbeat_interval!r}; allowed: an integer >= 1 (seconds) or null")
        self.n_trials, self.n_jobs = int(n_trials), int(n_jobs)
        self.storage_cfg, self.study_name, self.seed = storage, study_name, seed
        self.max_failure_rate = float(max_failure_rate)
        self.heartbeat_interval = None if heartbeat_interval is None else int(heartbeat_interval)
        self.grace_period = None if grace_period is None else int(grace_period)
        self.max_retry = max_retry
        self.wait_for_running = bool(wait_for_running)
        self.params = dict(_plain(params) or {})
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    # --- one worker's loop ---------------------------------------------------------------------

    def sweep(self, arguments: List[str]) -> Dict[str, Any]:
        assert self.config is not None and self.launcher is not None
        self._check_no_literal_password()
        params_conf = [f"{k}={v}" for k, v in self.params.items()] + list(arguments)
        space, fixed = parse_params(params_conf)
        grid = sampler_name(self.sampler_cfg) == "grid"
        n_trials = self.n_trials
        points = grid_points(space) if grid else []
        if grid:
            n_trials = min(n_trials, len(points))

        url = resolve_storage_url(self.storage_cfg, self.config.hydra.runtime.cwd)
        study_name = self.study_name or self._default_study_name(space, fixed)
        heartbeat = self.heartbeat_interval if url is not None else None
        # Jobs get the URL without its password and inherit the password from the environment, so
        # job configs, overrides, metrics.json and W&B configs never hold it (make_storage adds it back).
        job_url, password = split_password(url)
        if password is not None:
            os.environ[PASSWORD_ENV] = password
        with storage_lock(url):
            storage = make_storage(url, heartbeat, self.grace_period, self.max_retry)
            if storage is None:
                storage = optuna.storages.InMemoryStorage()
                log.warning("hydra.sweeper.storage is null: in-memory study, no resume, no pruning from jobs")
            study = open_study(storage, study_name, self.direction, build_sampler(self.sampler_cfg, self.seed),
                               build_pruner(self.pruner_cfg))
            if study.user_attrs.get(PRUNER_ATTR) != self.pruner_cfg:
                study.set_user_attr(PRUNER_ATTR, self.pruner_cfg)
            if grid:
                added = enqueue_points(study, points)
                log.info("Grid: %d points, %d newly enqueued", len(points), added)
        log.info("Study %r in %s: sampler %s, pruner %s, direction %s, n_trials %d (total)",
                 study_name, redact_url(url), self.sampler_cfg, self.pruner_cfg.get("name") or self.pruner_cfg.get("_target_"), self.direction, n_trials)

        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        finished = failures = 0
        poll = max(0.2, min(2.0, (heartbeat or 2) / 2))  # waiting on others: a cheap read per poll
        while True:
            fail_stale_trials(study, storage, heartbeat, self.grace_period, self.max_retry)
            trials = study.get_trials(deepcopy=False)
            left = n_trials - len(counted_trials(trials))
            waiting = any(t.state == TrialState.WAITING for t in trials)
            if left <= 0 or (grid and not waiting):
                # Trials running elsewhere may still die and be re-queued: with heartbeats on, wait.
                others_running = any(t.state == TrialState.RUNNING for t in trials)
                if others_running and heartbeat is not None and self.wait_for_running:
                    time.sleep(poll)
                    continue
                break
            # Claims under the storage's lock: SQLite has no row locks (SELECT ... FOR UPDATE is a no-op
            # there), so two workers could both move the same WAITING trial to RUNNING (seen: 7 jobs for a
            # 6-point grid). The lock is a file lock (SQLite, journal) or pg_advisory_lock (PostgreSQL).
            with storage_lock(url):
                batch = self._claim(study, storage, grid, min(self.n_jobs, left), n_trials)
            if not batch:
                continue
            # Heartbeats start before anything that can fail, so a crash here leaves a stale trial.
            with TrialHeartbeat(storage, [self._trial_id(study, storage, t) for t in batch], heartbeat):
                try:
                    params = [{name: suggest(self._reseeded(study, t), name, d) for name, d in space.items()}
                              for t in batch]
                    overrides = [trial_overrides(fixed, p) + optuna_overrides(job_url, study_name, t.number)
                                 for t, p in zip(batch, params)]
                    for t, o in zip(batch, overrides):
                        log.info("Trial %d: %s", t.number, " ".join(o))
                    self.validate_batch_is_legal(overrides)
                    returns = self.launcher.launch(overrides, initial_job_idx=batch[0].number)
                except KeyboardInterrupt:
                    for t in batch:  # Ctrl-C: the next run retries these at once, no grace period
                        requeue_trial(study, t, self.max_retry, "interrupted (KeyboardInterrupt)")
                    raise
                except Exception as e:
                    for t in batch:
                        t.set_user_attr(FAIL_REASON_ATTR, f"{type(e).__name__}: {e}")
                        study.tell(t, state=TrialState.FAIL, skip_if_finished=True)
                    raise
            last_failed: Optional[JobReturn] = None
            for t, ret in zip(batch, returns):
                state, value, reason = job_outcome(ret, self.objectives, self._n_objectives())
                why = None
                if state == TrialState.COMPLETE:
                    why = diverged_reason(ret, storage.get_trial(self._trial_id(study, storage, t)).user_attrs)
                if why is not None:  # data, not a failure (max_failure_rate), and no AP: PRUNED, status=diverged
                    state, value = TrialState.PRUNED, None
                    t.set_user_attr(STATUS_ATTR, DIVERGED)
                    t.set_user_attr("reason", why[:500])
                    log.warning("Trial %d diverged (%s): recorded as PRUNED with status=diverged", t.number, why)
                elif reason is not None:
                    t.set_user_attr(FAIL_REASON_ATTR, reason)
                    log.warning("Trial %d failed: %s", t.number, reason)
                    failures += 1
                    last_failed = ret
                else:
                    log.info("Trial %d %s%s", t.number, state.name, "" if value is None else f": {value}")
                study.tell(t, value, state=state, skip_if_finished=True)
                finished += 1
            if failures and failures / finished > self.max_failure_rate:
                log.error("%d of %d trials failed, above max_failure_rate=%s: stopping", failures, finished,
                          self.max_failure_rate)
                if last_failed is not None and last_failed.status != JobStatus.COMPLETED:
                    last_failed.return_value  # re-raises the job's exception, with Hydra's message
                raise RuntimeError(f"{failures} of {finished} trials failed (max_failure_rate={self.max_failure_rate})")
        return self._write_results(study, study_name, url, sweep_dir)

    # --- helpers --------------------------------------------------------------------------------

    def _check_no_literal_password(self) -> None:
        """Refuse a password written into ``hydra.sweeper.storage`` (command line or config file).

        Hydra saves that text in multirun.yaml and every job's .hydra/hydra.yaml, where no code of ours
        could redact it; an ``${oc.env:...}`` interpolation is saved unresolved, so it is allowed.
        """
        raw = OmegaConf.to_container(self.config.hydra.sweeper, resolve=False).get("storage")
        if isinstance(raw, str) and "${" not in raw and url_password(raw) is not None:
            raise ValueError(
                f"hydra.sweeper.storage={redact_url(raw)!r} holds a password, which Hydra would save in "
                "multirun.yaml and every job's .hydra/; allowed: the URL without it and the password in "
                "PGPASSWORD, ~/.pgpass or FOCALBENCH_OPTUNA_PASSWORD, or "
                "hydra.sweeper.storage='${oc.env:OPTUNA_STORAGE}'"
            )

    def _default_study_name(self, space: Dict[str, Any], fixed: Dict[str, str]) -> str:
        """``<job name>-<hash of search space, fixed overrides, direction>``: same command, same study."""
        key = {"space": {k: repr(v) for k, v in space.items()}, "fixed": sorted(fixed.values()),
               "direction": self.direction}
        return f"{self.config.hydra.job.name}-{config_hash(key, 8)}"

    def _claim(self, study: optuna.Study, storage: Any, grid: bool, n: int, n_trials: int) -> List[Trial]:
        """Up to ``n`` trials for this worker; trials beyond the total (a race) are handed back."""
        batch = []
        for _ in range(n):
            if grid:
                trial = pop_waiting_trial(study, storage, user_attrs={"worker": worker_id()})
            else:
                with warnings.catch_warnings():  # we record heartbeats ourselves (TrialHeartbeat)
                    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
                    trial = study.ask()
                trial.set_user_attr("worker", worker_id())
            if trial is None:
                break
            batch.append(trial)
        counted = sorted(t.number for t in counted_trials(study.get_trials(deepcopy=False)))
        keep = []
        for trial in batch:
            if trial.number in counted and counted.index(trial.number) >= n_trials:
                log.info("Trial %d: budget of %d reached by other workers, handing it back", trial.number, n_trials)
                release_trial(study, storage, trial)
            else:
                keep.append(trial)
        return keep

    def _reseeded(self, study: optuna.Study, trial: Trial) -> Trial:
        # A fixed seed in every worker would make them sample the same points: seed per trial.
        if self.seed is not None:
            study.sampler = build_sampler(self.sampler_cfg, int(self.seed) + trial.number)
        return trial

    @staticmethod
    def _trial_id(study: optuna.Study, storage: Any, trial: Trial) -> int:
        return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name),
                                                              trial.number)

    def _n_objectives(self) -> int:
        return 1 if isinstance(self.direction, str) else len(self.direction)

    def _write_results(self, study: optuna.Study, study_name: str, url: Optional[str], sweep_dir: Path) -> Dict[str, Any]:
        trials = study.get_trials(deepcopy=False)
        counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
        results: Dict[str, Any] = {"name": "optuna", "study_name": study_name, "storage": redact_url(url),
                                   "direction": self.direction, "trials": counts}
        if self._n_objectives() > 1:  # the Pareto front (Optuna's best_trials)
            front = study.best_trials if counts["complete"] else []
            results.update(objectives=self.objectives or None,
                           best_trials=[{"number": t.number, "params": dict(t.params), "values": list(t.values)}
                                        for t in front])
            log.info("Pareto front: %d trial(s): %s", len(front), [t.number for t in front])
        elif counts["complete"]:
            best = study.best_trial
            results.update(best_params=dict(best.params), best_value=best.value, best_trial=best.number)
            log.info("Best trial %d: %s -> %s", best.number, best.params, best.value)
        else:
            results.update(best_params=None, best_value=None, best_trial=None)
            log.warning("No complete trial in study %r", study_name)
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
        return results
