"""One Optuna study shared by several workers: creation, fixed points, budget, heartbeats.

Everything here is Optuna's public API except where a comment says otherwise. What Optuna does not
provide and we add:

- ``open_study``: create-or-load under a file lock (SQLite schema race, see DESIGN "Pitfalls").
- ``enqueue_points``: idempotent enqueue of fixed/grid points (``enqueue_trial(skip_if_exists=True)``
  is documented as not safe across processes; under the lock it is).
- ``pop_waiting_trial``: hand out the next enqueued trial and never create a new one (grid mode).
- ``budget_used``: ``n_trials`` as the study's total, not counting stale trials that were re-queued.
- ``TrialHeartbeat`` / ``fail_stale_trials``: Optuna's heartbeat for RDB storages; for journal
  storages (no native heartbeat) a timestamp in the trial's system attrs, same grace rule.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import logging
import threading
import time
import warnings
from typing import Any, Dict, Iterable, List, Mapping, Optional

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, Trial, TrialState

log = logging.getLogger(__name__)

HEARTBEAT_ATTR = "focalbench:heartbeat"  # journal storages: unix time of the last heartbeat
RELEASED_ATTR = "focalbench:released"  # trial handed back unrun (budget race); not counted
PRUNER_ATTR = "pruner"  # study user attr: the pruner spec jobs rebuild (see trial.py)

SAMPLERS = ("tpe", "random", "grid", "cmaes")
PRUNERS = ("none", "median", "successive_halving", "hyperband")


CUSTOM = "_target_"  # a sampler or pruner given as {_target_: optuna.samplers.NSGAIISampler, **kwargs}


def _spec(value: Any, key: str, allowed: Iterable[str]) -> tuple[str, Dict[str, Any]]:
    """``"tpe"`` or ``{name: tpe, **kwargs}`` -> ``("tpe", kwargs)``; ``{_target_: Class, **kwargs}`` (any Optuna
    sampler or pruner, as hydra-optuna-sweeper's config groups and lightning-hydra-template write them) ->
    ``("_target_", {_target_: ..., **kwargs})``."""
    if value is None:
        value = "none"
    if isinstance(value, Mapping) and value.get("_target_"):
        from focalbench.parts import check_part

        spec = {k: v for k, v in dict(value).items() if k != "name"}
        # a bad target raises parts.TargetError, a ValueError as the named specs' errors below
        check_part(spec, f"hydra.sweeper.{key}", runtime=("seed",) if key == "sampler" else ())
        return CUSTOM, spec
    if isinstance(value, str):
        name, kwargs = value, {}
    elif isinstance(value, Mapping) and "name" in value:
        kwargs = dict(value)
        name = str(kwargs.pop("name"))
    else:
        raise ValueError(f"hydra.sweeper.{key}={value!r}: expected a name or a mapping with 'name' and keyword arguments; names: {', '.join(allowed)}")
    name = name.lower()
    if name not in allowed:
        raise ValueError(f"hydra.sweeper.{key}={name!r} is not supported; allowed: {', '.join(allowed)}")
    return name, kwargs


def build_sampler(spec: Any, seed: Optional[int] = None) -> optuna.samplers.BaseSampler:
    """A sampler from a simple name (``tpe``, ``random``, ``grid``, ``cmaes``) plus kwargs.

    ``grid`` returns a seeded RandomSampler: grid points are enqueued as fixed trials (see
    :func:`enqueue_points`), which the sampler never sees; Optuna's GridSampler is not used because
    concurrent workers can draw the same grid point from it.
    """
    name, kwargs = _spec(spec, "sampler", SAMPLERS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == CUSTOM:
            from focalbench.parts import instantiate_part

            kw = {k: v for k, v in kwargs.items() if not (k == "seed" and v is None)}
            # the sweeper's seed (+ trial number), where the class takes one and the config sets none
            return instantiate_part(kw, "hydra.sweeper.sampler", **({} if seed is None else {"seed": seed}))
        if seed is not None:
            kwargs.setdefault("seed", seed)
        if name == "tpe":
            return optuna.samplers.TPESampler(**kwargs)
        if name == "cmaes":
            return optuna.samplers.CmaEsSampler(**kwargs)
        return optuna.samplers.RandomSampler(**kwargs)


def sampler_name(spec: Any) -> str:
    return _spec(spec, "sampler", SAMPLERS)[0]


def pruner_spec(spec: Any) -> Dict[str, Any]:
    """Normalised, JSON-able pruner spec ``{name: ..., **kwargs}`` (stored in the study)."""
    name, kwargs = _spec(spec, "pruner", PRUNERS)
    return dict(kwargs) if name == CUSTOM else {"name": name, **kwargs}


def build_pruner(spec: Any) -> optuna.pruners.BasePruner:
    name, kwargs = _spec(spec, "pruner", PRUNERS)
    if name == CUSTOM:
        from focalbench.parts import instantiate_part

        return instantiate_part(kwargs, "hydra.sweeper.pruner")
    if name == "median":
        return optuna.pruners.MedianPruner(**kwargs)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(**kwargs)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(**kwargs)
    return optuna.pruners.NopPruner()


def study_id_of(study: optuna.Study, storage: BaseStorage) -> int:
    return storage.get_study_id_from_name(study.study_name)


def open_study(
    storage: Optional[BaseStorage],
    study_name: str,
    direction: Any,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
) -> optuna.Study:
    """Create the study or load it; call under :func:`focalbench.sweeps.storage.storage_lock`.

    ``direction``: ``minimize`` / ``maximize``, or a list of them (a multi-objective study)."""
    directions = check_directions(direction)
    kw = {"direction": directions[0]} if isinstance(direction, str) else {"directions": directions}
    study = optuna.create_study(storage=storage, study_name=study_name, sampler=sampler, pruner=pruner,
                                load_if_exists=True, **kw)
    have = [d.name.lower() for d in study.directions]
    if have != directions:
        shown = have[0] if len(have) == 1 else have
        raise ValueError(
            f"hydra.sweeper.direction={direction!r} but study {study_name!r} in the storage was created "
            f"with {shown!r}; allowed: the study's direction, or another study_name"
        )
    return study


def check_directions(direction: Any) -> List[str]:
    """``maximize`` -> ``["maximize"]``; a list of directions (multi-objective) as it is; else ValueError."""
    values = [direction] if isinstance(direction, str) else list(direction or [])
    values = [str(d).lower() for d in values]
    if not values or any(d not in ("minimize", "maximize") for d in values):
        raise ValueError(f"hydra.sweeper.direction={direction!r}; allowed: minimize, maximize, or a list of them "
                         f"(multi-objective, e.g. [maximize, minimize])")
    return values


def enqueue_points(study: optuna.Study, points: Iterable[Mapping[str, Any]]) -> int:
    """Enqueue each point not already in the study (any state); returns how many were added.

    Call under :func:`focalbench.sweeps.storage.storage_lock`. A point already present as an
    enqueued trial, a retried trial or a finished trial is not enqueued again.
    """
    seen = {_point_key(t.system_attrs.get("fixed_params", t.params)) for t in study.get_trials(deepcopy=False)}
    added = 0
    for point in points:
        key = _point_key(point)
        if key in seen:
            continue
        study.enqueue_trial(dict(point))
        seen.add(key)
        added += 1
    return added


def _point_key(point: Mapping[str, Any]) -> str:
    return json.dumps(dict(point), sort_keys=True, default=str)


def pop_waiting_trial(study: optuna.Study, storage: BaseStorage,
                      user_attrs: Optional[dict] = None) -> Optional[Trial]:
    """Claim the oldest WAITING trial (RUNNING) for this process, or None; never creates one.

    The claim is the storage's atomic WAITING -> RUNNING transition, the same one ``Study.ask``
    uses, so two workers never get the same trial. ``user_attrs`` (e.g. the worker's identity) are
    written while the trial is still WAITING, so a worker killed right after the transition never leaves
    a RUNNING trial that does not say whose it is (the winner of a race writes them again).
    """
    study_id = study_id_of(study, storage)
    for frozen in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        try:
            for k, v in (user_attrs or {}).items():
                storage.set_trial_user_attr(trial_id, k, v)
            if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                for k, v in (user_attrs or {}).items():
                    storage.set_trial_user_attr(trial_id, k, v)
                return Trial(study, trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def suggest(trial: Trial, name: str, dist: BaseDistribution) -> Any:
    """``trial.suggest_*`` for a distribution (an enqueued trial returns its fixed value)."""
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, list(dist.choices))
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    raise TypeError(f"unsupported distribution {dist!r}")


def retried_numbers(trials: Iterable[FrozenTrial]) -> set:
    """Numbers of stale trials that were re-queued (RetryHeartbeatStaleTrialCallback)."""
    out = set()
    for t in trials:
        out.update(t.system_attrs.get("retry_history", []))  # written by RetryHeartbeatStaleTrialCallback
    return out


def counted_trials(trials: List[FrozenTrial]) -> List[FrozenTrial]:
    """Trials that use up ``n_trials``: finished or running, minus re-queued and released ones."""
    retried = retried_numbers(trials)
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.FAIL)
    return [
        t
        for t in trials
        if t.state in states and t.number not in retried and not t.system_attrs.get(RELEASED_ATTR)
    ]


def release_trial(study: optuna.Study, storage: BaseStorage, trial: Trial) -> None:
    """Hand back a claimed trial unrun: FAIL it (not counted) and re-enqueue its fixed point."""
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id_of(study, storage), trial.number)
    storage.set_trial_system_attr(trial_id, RELEASED_ATTR, True)
    fixed = trial.system_attrs.get("fixed_params")
    study.tell(trial, state=TrialState.FAIL)
    if fixed is not None:
        study.enqueue_trial(fixed)


def requeue_trial(study: optuna.Study, trial: Trial, max_retry: Optional[int], reason: str) -> None:
    """FAIL a trial this worker cannot finish (Ctrl-C) and re-queue it now, as a stale trial would be."""
    trial.set_user_attr("fail_reason", reason)
    frozen = copy.deepcopy(study.tell(trial, state=TrialState.FAIL, skip_if_finished=True))
    frozen.user_attrs = {k: v for k, v in frozen.user_attrs.items() if k != "fail_reason"}  # not the retry's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(max_retry=max_retry)(study, frozen)


# --- heartbeats ---------------------------------------------------------------------------------


class TrialHeartbeat:
    """Context manager: records a heartbeat for ``trial_ids`` every ``interval`` seconds.

    RDB: ``storage.record_heartbeat`` (Optuna's). Journal: system attr ``focalbench:heartbeat``.
    Runs in a daemon thread of the sweeper process, which waits on the job (in-process or remote).
    """

    def __init__(self, storage: BaseStorage, trial_ids: List[int], interval: Optional[int]):
        self.storage, self.trial_ids, self.interval = storage, list(trial_ids), interval
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def beat(self) -> None:
        for trial_id in self.trial_ids:
            try:
                if isinstance(self.storage, RDBStorage):
                    self.storage.record_heartbeat(trial_id)
                else:
                    self.storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
            except Exception as e:  # a finished trial, a busy database: the next beat retries
                log.debug("heartbeat for trial id %s failed: %s", trial_id, e)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def __enter__(self) -> "TrialHeartbeat":
        if self.interval is not None:
            self.beat()
            self._thread = threading.Thread(target=self._run, name="optuna-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _age_seconds(trial: FrozenTrial) -> float:
    beat = trial.system_attrs.get(HEARTBEAT_ATTR)
    if beat is not None:
        return time.time() - float(beat)
    start = trial.datetime_start
    if start is None:
        return 0.0
    now = _dt.datetime.now(start.tzinfo) if start.tzinfo else _dt.datetime.now()
    return (now - start).total_seconds()


def fail_stale_trials(
    study: optuna.Study,
    storage: BaseStorage,
    heartbeat_interval: Optional[int],
    grace_period: Optional[int],
    max_retry: Optional[int],
) -> List[int]:
    """FAIL running trials whose heartbeat is older than the grace period and re-queue them.

    RDB: Optuna's ``fail_stale_trials`` (callback set on the storage). Journal: same rule on our
    heartbeat attr. Wall clocks of machines sharing a journal must agree within the grace period.
    Returns the numbers of the trials failed here.
    """
    if heartbeat_interval is None:
        return []
    if isinstance(storage, RDBStorage):
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        return sorted(t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if t.number in before)
    grace = grace_period if grace_period is not None else 2 * heartbeat_interval
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
    study_id = study_id_of(study, storage)
    failed = []
    for frozen in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
        if _age_seconds(frozen) <= grace:
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        try:
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker got there first
        failed.append(frozen.number)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry(study, storage.get_trial(trial_id))
    return failed
