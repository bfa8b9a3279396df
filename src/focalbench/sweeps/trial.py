"""The job's side of a trial: rebuild the ``optuna.Trial`` the sweeper started, report to it.

The sweeper passes each job ``optuna.storage=<url> optuna.study_name=<name>
optuna.trial_number=<n>`` (the training config's ``optuna:`` block, null outside an Optuna sweep).
:class:`TrialReporter` turns that block into ``trial.report`` / ``trial.should_prune`` calls; it has
no Lightning dependency (the Lightning callback in :mod:`focalbench.sweeps.pruning` wraps it).

The pruner a job consults is the one of the sweep (``hydra.sweeper.pruner``), which the sweeper
stores in the study's user attr ``pruner``; a study without it never prunes.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import optuna
from optuna.trial import Trial, TrialState

from focalbench.sweeps.storage import make_storage
from focalbench.sweeps.study import PRUNER_ATTR, build_pruner

PRUNED_ATTR = "pruned_at_step"  # trial user attr written when a job decides to prune
_KEYS = ("storage", "study_name", "trial_number")


def _get(cfg: Any, key: str) -> Any:
    if cfg is None:
        return None
    return cfg.get(key) if hasattr(cfg, "get") else getattr(cfg, key, None)


def is_active(optuna_cfg: Any) -> bool:
    """True when the job runs inside an Optuna sweep (all three keys set)."""
    return all(_get(optuna_cfg, k) is not None for k in _KEYS)


def load_trial(optuna_cfg: Any) -> Optional[Trial]:
    """The running trial named by an ``optuna:`` block, or None outside a sweep."""
    if not is_active(optuna_cfg):
        return None
    url, name, number = (_get(optuna_cfg, k) for k in _KEYS)
    storage = make_storage(str(url))
    # RandomSampler: the job never samples; it only needs a cheap sampler for Trial.__init__.
    study = optuna.load_study(study_name=str(name), storage=storage, sampler=optuna.samplers.RandomSampler())
    study.pruner = build_pruner(study.user_attrs.get(PRUNER_ATTR, "none"))
    study_id = storage.get_study_id_from_name(study.study_name)
    try:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, int(number))
    except KeyError:
        raise ValueError(f"optuna.trial_number={number!r}: no such trial in study {name!r} at {url}; allowed: a trial the sweeper started") from None
    trial = Trial(study, trial_id)
    state = storage.get_trial(trial_id).state
    if state != TrialState.RUNNING:
        raise ValueError(f"optuna.trial_number={number!r}: trial is {state.name} in study {name!r}; allowed: a RUNNING trial")
    return trial


class TrialReporter:
    """Reports intermediate values of one job to its trial; inert outside an Optuna sweep.

    Built from the plain ``optuna:`` block so it pickles (``ddp_spawn``); the trial is loaded
    lazily in the process that first reports.
    """

    def __init__(self, optuna_cfg: Optional[Mapping[str, Any]]):
        self.cfg = {k: _get(optuna_cfg, k) for k in _KEYS}
        self._trial: Optional[Trial] = None

    @property
    def active(self) -> bool:
        return is_active(self.cfg)

    @property
    def trial(self) -> Optional[Trial]:
        if self._trial is None and self.active:
            self._trial = load_trial(self.cfg)
        return self._trial

    def __getstate__(self) -> dict:
        return {"cfg": self.cfg, "_trial": None}

    def report(self, value: float, step: int) -> bool:
        """``trial.report(value, step)``; returns ``trial.should_prune()`` (False when inert).

        Non-finite values are not reported (Optuna's pruners compare numbers); they never prune.
        """
        trial = self.trial
        if trial is None:
            return False
        value = float(value)
        if not math.isfinite(value):
            return False
        trial.report(value, int(step))
        return bool(trial.should_prune())

    def mark_pruned(self, step: int) -> None:
        """Record the decision in the trial, so any process can :meth:`check_pruned` later."""
        if self.trial is not None:
            self.trial.set_user_attr(PRUNED_ATTR, int(step))

    def mark_diverged(self, reason: str = "diverged") -> None:
        """Record in the trial that this job diverged (user attrs ``status=diverged`` and ``reason``): the
        sweeper then tells the trial PRUNED instead of COMPLETE with the job's placeholder value."""
        if self.trial is not None:
            self.trial.set_user_attr("status", "diverged")
            self.trial.set_user_attr("reason", str(reason)[:500])

    def report_and_prune(self, value: float, step: int) -> None:
        """Report; raise ``optuna.TrialPruned`` when the pruner says so."""
        if self.report(value, step):
            self.mark_pruned(step)
            raise optuna.TrialPruned(f"trial {self.cfg['trial_number']} pruned at step {step}")

    def check_pruned(self) -> None:
        """Raise ``optuna.TrialPruned`` if some process pruned this trial (e.g. rank zero under DDP)."""
        if not self.active:
            return
        url, name, number = (self.cfg[k] for k in _KEYS)
        storage = make_storage(str(url))
        study_id = storage.get_study_id_from_name(str(name))
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, int(number))
        step = storage.get_trial(trial_id).user_attrs.get(PRUNED_ATTR)
        if step is not None:
            raise optuna.TrialPruned(f"trial {number} pruned at step {step}")
