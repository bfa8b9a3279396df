"""A worker that has nothing left to claim waits for the rows other workers are still training, so its
report holds every run; a dead worker's trial does not hold it."""

import socket
import subprocess
import threading
import time

import optuna
from optuna.trial import TrialState

from focalbench.reproduce.runner import prepare_study, storage_url, wait_for_other_workers
from focalbench.reproduce.sweeps import load_tables
from focalbench.sweeps.storage import make_storage


def _running_trial_of(tmp_path, worker_pid):
    table = load_tables(["1a"])[0]
    url = storage_url(tmp_path)
    storage = make_storage(url)
    study = prepare_study(url, storage, "smoke", table, [0])
    trial = study.ask()                              # the first enqueued point, now RUNNING
    trial.set_user_attr("worker", f"{socket.gethostname()}:{worker_pid}")
    fixed = storage.get_trial(trial._trial_id).system_attrs["fixed_params"]
    return table, url, storage, study, trial, ("1a", fixed["row"], fixed["seed"])


def test_waits_for_another_workers_run_then_returns(tmp_path):
    other = subprocess.Popen(["sleep", "2"])         # "another worker", alive for 2 s
    threading.Thread(target=other.wait, daemon=True).start()   # reaped when it exits (no zombie)
    table, url, storage, study, trial, key = _running_trial_of(tmp_path, other.pid)
    t0 = time.monotonic()
    polls = wait_for_other_workers([table], "smoke", url, storage, {key}, poll=0.2)
    assert polls >= 3 and time.monotonic() - t0 >= 1.5
    # its worker died without finishing: failed, so the report says the run is missing
    assert study.trials[trial.number].state == TrialState.FAIL


def test_does_not_wait_for_rows_outside_the_selection(tmp_path):
    other = subprocess.Popen(["sleep", "30"])
    try:
        table, url, storage, study, trial, key = _running_trial_of(tmp_path, other.pid)
        t0 = time.monotonic()
        assert wait_for_other_workers([table], "smoke", url, storage, {("1a", key[1], 7)}, poll=0.2) == 0
        assert time.monotonic() - t0 < 5 and study.trials[trial.number].state == TrialState.RUNNING
    finally:
        other.kill()
        other.wait()


def test_claim_says_whose_trial_it_is_before_it_runs(tmp_path):
    # a worker killed right after WAITING -> RUNNING used to leave a RUNNING trial with no worker attr: no one
    # could tell it was dead until its heartbeat went stale (120 s), and the resumed job missed that run
    from focalbench.sweeps.engine import claim as _claim, worker_id as _worker_id

    table = load_tables(["1a"])[0]
    url = storage_url(tmp_path)
    storage = make_storage(url)
    study = prepare_study(url, storage, "smoke", table, [0])

    class DiesAtTheTransition:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def set_trial_state_values(self, *a, **kw):
            raise KeyboardInterrupt  # "killed" exactly between the attrs and the claim

    try:
        _claim(url, study, DiesAtTheTransition(storage))
    except KeyboardInterrupt:
        pass
    first = study.get_trials(deepcopy=False)[0]
    assert first.state == TrialState.WAITING and first.user_attrs["worker"] == _worker_id()
    trial = _claim(url, study, storage)
    assert study.trials[trial.number].state == TrialState.RUNNING
    assert study.trials[trial.number].user_attrs["worker"] == _worker_id()
