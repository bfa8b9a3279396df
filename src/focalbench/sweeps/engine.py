"""One engine for "a study of cached runs on an Optuna storage": the paper tables (focalbench.reproduce), the
imbalance study (focalbench.classify.study) and, for its claims and heartbeats, the Hydra sweeper.

A study's trials are fixed points (``enqueue_missing``), claimed one at a time under the storage's lock
(``claim``), each kept alive by a heartbeat while it runs (``focalbench.sweeps.study.TrialHeartbeat``). One
stale rule for all of them (``refresh``): a RUNNING trial whose heartbeat is older than ``STALE_AFTER_SECONDS``
(its worker died on any machine), or whose worker process on this machine no longer exists, is failed, and
its point is queued again by the next ``enqueue_missing``. The truth is the run store (a run file per config
hash): a finished point counts only while its run file is there.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Mapping

import optuna
from optuna.trial import TrialState

from focalbench.sweeps.storage import storage_lock
from focalbench.sweeps.study import fail_stale_trials, open_study, pop_waiting_trial

HEARTBEAT_SECONDS = 20
STALE_AFTER_SECONDS = 120
DIVERGED = "diverged"
CACHED_STATUSES = ("ok", DIVERGED)  # a diverged run is data; a failed one is retried


def open_points_study(url: str, storage, name: str, metric: str = "AP") -> optuna.Study:
    """Create or load a study of fixed points (maximised ``metric``; the sampler never proposes a point)."""
    import warnings

    with storage_lock(url):
        study = open_study(storage, name, "maximize", optuna.samplers.RandomSampler(), optuna.pruners.NopPruner())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([metric])
    return study


def refresh(study: optuna.Study, storage) -> None:
    """The stale rule: fail RUNNING trials of dead workers (stale heartbeat anywhere, or a dead local pid)."""
    fail_stale_trials(study, storage, HEARTBEAT_SECONDS, STALE_AFTER_SECONDS, max_retry=None)
    fail_dead_local_workers(study, storage)


def enqueue_missing(url: str, study: optuna.Study, storage, points: Iterable[Mapping[str, Any]],
                    key_of: Callable[[Mapping[str, Any]], Hashable],
                    still_finished: Callable[[Hashable], bool] = lambda key: True) -> int:
    """Apply the stale rule, then enqueue every point of ``points`` that no trial holds (waiting, running, or
    finished while ``still_finished(key)``: its run file is there). A point whose trials all failed is queued
    again. Returns how many points are not finished."""
    with storage_lock(url):
        refresh(study, storage)
        live, finished = set(), set()
        for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE,
                                                          TrialState.PRUNED)):
            key = key_of(t.system_attrs.get("fixed_params") or t.params)
            if t.state in (TrialState.WAITING, TrialState.RUNNING):
                live.add(key)
            elif t.state == TrialState.COMPLETE or t.user_attrs.get("status") == DIVERGED:
                finished.add(key)
        done = {k for k in finished - live if still_finished(k)}
        todo = 0
        for point in points:
            key = key_of(point)
            if key in done:
                continue
            todo += 1
            if key not in live:
                study.enqueue_trial(dict(point))
                live.add(key)
    return todo


def claim(url: str, study: optuna.Study, storage):
    """The next waiting trial, claimed under the storage's lock (one claimer at a time), or None."""
    with storage_lock(url):
        return pop_waiting_trial(study, storage, user_attrs={"worker": worker_id()})


def fixed_params(storage, trial) -> dict:
    return dict(storage.get_trial(trial._trial_id).system_attrs.get("fixed_params", {}))


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def fail_dead_local_workers(study: optuna.Study, storage) -> None:
    """A RUNNING trial whose worker ran on this machine and no longer exists (kill -9, OOM, reboot) is
    failed at once, without waiting for its heartbeat to go stale (that wait is for other machines)."""
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker", "")
        w_host, _, pid = worker.rpartition(":")
        if w_host != host or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(study.study_name), t.number)
        try:
            storage.set_trial_user_attr(trial_id, "reason", f"worker {worker} died")
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker got there first


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


@contextlib.contextmanager
def run_lock(work_dir: Path, key: str):
    """Exclusive per-config lock (``fcntl``; released by the kernel if the worker dies): a run two studies
    share is trained once, the second worker waits and reads it from the store."""
    work_dir.mkdir(parents=True, exist_ok=True)
    with open(work_dir / f"{key}.lock", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def tell_run(study: optuna.Study, trial, metrics: Mapping[str, Any], metric: str = "AP") -> None:
    """A finished run's trial: COMPLETE with its ``metric``; a diverged run (data, kept in the store) PRUNED
    with the user attr ``status=diverged`` (it has no value: a COMPLETE 0.0 would read as a real 0); a failed
    one FAIL."""
    status = metrics.get("status")
    if status == DIVERGED:
        trial.set_user_attr("status", DIVERGED)
        study.tell(trial, state=TrialState.PRUNED)
    elif status in CACHED_STATUSES:
        study.tell(trial, float(metrics.get(metric, 0.0)))
    else:
        study.tell(trial, state=TrialState.FAIL)


def fail_interrupted(study: optuna.Study, trial, reason: str = "interrupted (Ctrl-C)") -> None:
    """Best effort, with further Ctrl-C ignored: the stopped run's trial FAILs now, so the next invocation
    queues its point again at once (a dead worker's RUNNING trial would be found too, a little later)."""
    previous = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    if previous is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        trial.set_user_attr("reason", reason)
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
    except Exception:  # noqa: BLE001 - the dead-worker check fails it on the next start anyway
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
