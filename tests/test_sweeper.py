"""The Optuna sweeper plugin (hydra/sweeper=optuna): params syntax, storages, resume, several
workers, pruning. Sweeps run tiny Hydra apps (tests/apps/) in subprocesses, always with a timeout."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from focalbench.sweeps.params import format_value, grid_points, parse_params, trial_overrides
from focalbench.sweeps.storage import make_storage, resolve_storage_url
from focalbench.sweeps.study import HEARTBEAT_ATTR, counted_trials, enqueue_points, fail_stale_trials
from focalbench.sweeps.trial import PRUNED_ATTR, TrialReporter

APPS = Path(__file__).parent / "apps"
TIMEOUT = 120


def sweep_cmd(app: str, tmp_path: Path, storage: str, *args: str, name: str = "t", run: str = "run") -> list:
    return [
        sys.executable, str(APPS / app), "-m", "hydra/sweeper=optuna",
        f"hydra.sweeper.storage={storage}", f"hydra.sweeper.study_name={name}",
        f"hydra.sweep.dir={tmp_path / 'multirun' / run}", "hydra.job.chdir=false", *args,
    ]


def run_sweep(app: str, tmp_path: Path, storage: str, *args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(sweep_cmd(app, tmp_path, storage, *args, **kw), cwd=tmp_path, capture_output=True,
                       text=True, timeout=TIMEOUT, env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def load(tmp_path: Path, storage: str, name: str = "t") -> optuna.Study:
    url = resolve_storage_url(storage, tmp_path)
    return optuna.load_study(study_name=name, storage=make_storage(url))


def states(study: optuna.Study) -> dict:
    out: dict = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def job_records(log_dir: Path) -> list:
    return [json.loads(line) for f in sorted(log_dir.glob("*.jsonl")) for line in f.read_text().splitlines()]


# --- params syntax -----------------------------------------------------------------------------


def test_param_syntax_to_distributions():
    space, fixed = parse_params([
        "a=interval(0, 5)", "b=int(interval(1, 4))", "c=tag(log, interval(1e-4, 1))",
        "d=choice(x, 1, 2.5, true)", "e=range(0, 10, 3)", "f=range(0.0, 1.0, 0.25)", "g=1,2,3",
        "loss=focal", "+extra=7",
    ])
    assert space == {
        "a": FloatDistribution(0.0, 5.0),
        "b": IntDistribution(1, 4),
        "c": FloatDistribution(1e-4, 1.0, log=True),
        "d": CategoricalDistribution(["x", 1, 2.5, True]),
        "e": IntDistribution(0, 9, step=3),  # Hydra's range excludes the stop, like Python's
        "f": FloatDistribution(0.0, 0.75, step=0.25),
        "g": CategoricalDistribution([1, 2, 3]),
    }
    assert fixed == {"loss": "loss=focal", "+extra": "+extra=7"}
    assert grid_points({"e": space["e"], "g": space["g"]})[:2] == [{"e": 0, "g": 1}, {"e": 0, "g": 2}]
    assert len(grid_points({"e": space["e"], "f": space["f"], "g": space["g"]})) == 4 * 4 * 3
    with pytest.raises(ValueError, match="continuous"):
        grid_points({"a": space["a"]})


def test_values_format_back_to_the_same_override():
    assert [format_value(v) for v in (1e-05, 3, True, "focal", "1", "true")] == [
        "1e-05", "3", "true", "focal", "'1'", "'true'"]
    assert trial_overrides({"loss": "loss=focal"}, {"loss.gamma": 2.0}) == ["loss=focal", "loss.gamma=2.0"]


def test_storage_urls_resolve_against_the_original_cwd(tmp_path):
    assert resolve_storage_url("sqlite:///results/optuna.db", tmp_path) == f"sqlite:///{tmp_path}/results/optuna.db"
    assert resolve_storage_url("sqlite:////abs/o.db", tmp_path) == "sqlite:////abs/o.db"
    assert resolve_storage_url("results/s.log", tmp_path) == f"journal://{tmp_path}/results/s.log"
    assert resolve_storage_url("journal:///abs/s.journal", tmp_path) == "journal:///abs/s.journal"
    assert resolve_storage_url("postgresql://u@h/db", tmp_path) == "postgresql://u@h/db"
    assert resolve_storage_url(None, tmp_path) is None
    with pytest.raises(ValueError, match="hydra.sweeper.storage='results/x.txt'"):
        resolve_storage_url("results/x.txt", tmp_path)


# --- study mechanics, in process -----------------------------------------------------------------


def test_journal_stale_trial_is_failed_requeued_and_not_counted(tmp_path):
    storage = make_storage(f"journal://{tmp_path}/s.log")
    study = optuna.create_study(study_name="s", storage=storage)
    assert enqueue_points(study, [{"x": 1}, {"x": 2}]) == 2
    assert enqueue_points(study, [{"x": 1}, {"x": 2}, {"x": 3}]) == 1  # idempotent
    trial = study.ask()  # pops the first enqueued point
    assert trial.suggest_int("x", 0, 5) == 1
    trial.storage.set_trial_system_attr(trial._trial_id, HEARTBEAT_ATTR, time.time() - 100)
    assert fail_stale_trials(study, storage, heartbeat_interval=1, grace_period=2, max_retry=3) == [0]
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING, TrialState.WAITING, TrialState.WAITING]
    assert trials[3].system_attrs["fixed_params"] == {"x": 1}  # the retry of trial 0
    assert counted_trials(trials) == []


def test_reporter_reports_prunes_and_pickles(tmp_path):
    url = f"sqlite:///{tmp_path}/r.db"
    study = optuna.create_study(study_name="r", storage=make_storage(url))
    study.set_user_attr("pruner", {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0})
    first = study.ask()
    first.report(1.0, 0)
    study.tell(first, 1.0)
    second = study.ask()
    keep = TrialReporter({"storage": url, "study_name": "r", "trial_number": second.number})
    assert keep.report(0.5, 0) is False  # better than the median (minimize): keep going
    study.tell(second, 0.5)
    trial = study.ask()
    reporter = TrialReporter({"storage": url, "study_name": "r", "trial_number": trial.number})
    with pytest.raises(optuna.TrialPruned):
        reporter.report_and_prune(5.0, 0)
    assert study.trials[2].intermediate_values == {0: 5.0}
    assert study.trials[2].user_attrs[PRUNED_ATTR] == 0
    clone = pickle.loads(pickle.dumps(reporter))  # what ddp_spawn does to the callback
    with pytest.raises(optuna.TrialPruned):
        clone.check_pruned()
    assert TrialReporter({"storage": None, "study_name": None, "trial_number": None}).report(1.0, 0) is False


# --- sweeps through Hydra ----------------------------------------------------------------------

QUAD = ("hydra.sweeper.direction=minimize", "hydra.sweeper.seed=0", "x=interval(-5, 5)", "y=int(interval(0, 3))")


def test_sqlite_study_completes_then_resumes_without_extra_trials(tmp_path):
    storage = "sqlite:///results/optuna.db"
    run_sweep("quadratic.py", tmp_path, storage, "hydra.sweeper.n_trials=4", *QUAD)
    assert (tmp_path / "results" / "optuna.db").exists()  # relative to the original cwd
    assert states(load(tmp_path, storage)) == {"COMPLETE": 4}
    best = (tmp_path / "multirun" / "run" / "optimization_results.yaml").read_text()
    assert "best_params" in best and "best_value" in best
    run_sweep("quadratic.py", tmp_path, storage, "hydra.sweeper.n_trials=4", *QUAD, run="again")
    assert states(load(tmp_path, storage)) == {"COMPLETE": 4}  # n_trials is the study's total


def test_killed_sweep_resumes_to_exactly_n_trials(tmp_path):
    storage, logs = "sqlite:///results/optuna.db", tmp_path / "logs"
    args = ("hydra.sweeper.n_trials=4", "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=2",
            "sleep=1.5", f"log_dir={logs}", *QUAD)
    proc = subprocess.Popen(sweep_cmd("quadratic.py", tmp_path, storage, *args), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + TIMEOUT
        while len(job_records(logs)) < 2:  # trial 1 is running (sleeping)
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert states(load(tmp_path, storage)).get("RUNNING") == 1
    run_sweep("quadratic.py", tmp_path, storage, *args, run="resume")
    study = load(tmp_path, storage)
    assert states(study) == {"COMPLETE": 4, "FAIL": 1}  # the dead worker's trial, failed and retried
    failed = study.get_trials(states=(TrialState.FAIL,))[0]
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == failed.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == failed.params


@pytest.mark.parametrize("storage", ["journal://results/grid.log", "sqlite:///results/grid.db"])
def test_two_workers_share_a_grid_without_duplicates(tmp_path, storage):
    logs = tmp_path / "logs"
    args = ("hydra.sweeper.sampler=grid", "hydra.sweeper.direction=minimize", "x=choice(0, 1, 2)", "y=range(0, 2)",
            "sleep=0.3", f"log_dir={logs}")
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    workers = [subprocess.Popen(sweep_cmd("quadratic.py", tmp_path, storage, *args, run=f"w{i}"), cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
               for i in range(2)]
    for w in workers:
        try:
            _, err = w.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            w.kill()
            raise
        assert w.returncode == 0, err[-3000:]
    study = load(tmp_path, storage)
    assert states(study) == {"COMPLETE": 6}
    points = sorted((t.params["x"], t.params["y"]) for t in study.trials)
    assert points == [(x, y) for x in (0, 1, 2) for y in (0, 1)]
    jobs = job_records(logs)
    assert len(jobs) == 6 and len({(j["x"], j["y"]) for j in jobs}) == 6  # each point ran once


def test_pruned_trial_is_recorded_as_pruned(tmp_path):
    storage = "sqlite:///results/optuna.db"
    run_sweep("quadratic.py", tmp_path, storage, "hydra.sweeper.sampler=grid", "hydra.sweeper.direction=minimize",
              "hydra.sweeper.pruner={name: median, n_startup_trials: 1, n_warmup_steps: 0}",
              "report_steps=3", "x=choice(2, 12)")
    study = load(tmp_path, storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert study.trials[1].intermediate_values == {0: 100.0}
    assert study.user_attrs["pruner"]["name"] == "median"


def test_failed_jobs_are_failed_with_a_reason_and_stop_the_sweep(tmp_path):
    storage = "sqlite:///results/optuna.db"
    p = run_sweep("quadratic.py", tmp_path, storage, "hydra.sweeper.n_trials=3", "hydra.sweeper.max_failure_rate=0.0",
                  "return_none=true", *QUAD, check=False)
    assert p.returncode != 0
    study = load(tmp_path, storage)
    assert states(study) == {"FAIL": 1}  # stopped after the first failure
    assert "returned None" in study.trials[0].user_attrs["fail_reason"]


def test_lightning_callback_prunes_a_real_run(tmp_path):
    storage = "sqlite:///results/optuna.db"
    run_sweep("lightning_prune.py", tmp_path, storage, "hydra.sweeper.sampler=grid",
              "hydra.sweeper.pruner={name: median, n_startup_trials: 1, n_warmup_steps: 0}", "ap=choice(0.8, 0.1)")
    study = load(tmp_path, storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert study.trials[0].intermediate_values == pytest.approx({0: 0.8, 1: 0.8, 2: 0.8})  # step = epoch
    assert study.trials[1].intermediate_values == {0: pytest.approx(0.1)}
    metrics = json.loads((tmp_path / "multirun" / "run" / "1" / "metrics.json").read_text())
    assert metrics["status"] == "pruned"


# ------------------------------------------------------------------ any Optuna sampler / pruner, multi-objective
def test_sampler_and_pruner_by_target_and_the_sampler_group(tmp_path):
    """{_target_: <any Optuna sampler>} (lightning-hydra-template's form), the hydra/sweeper/sampler group of
    hydra-optuna-sweeper (its options are _target_ nodes, their arguments overridable), a _target_ pruner."""
    storage = "sqlite:///t.db"
    run_sweep("quadratic.py", tmp_path, storage, "+hydra/sweeper/sampler=qmc", "hydra.sweeper.sampler.seed=3",
              "hydra.sweeper.n_trials=3", "x=interval(0, 4)", name="qmc")
    study = load(tmp_path, storage, "qmc")
    assert type(study.sampler).__name__ == "QMCSampler" or states(study) == {"COMPLETE": 3}
    assert states(study) == {"COMPLETE": 3}
    run_sweep("quadratic.py", tmp_path, storage,
              "hydra.sweeper.sampler={_target_: optuna.samplers.RandomSampler, seed: 1}",
              "hydra.sweeper.pruner={_target_: optuna.pruners.PercentilePruner, percentile: 25.0}",
              "hydra.sweeper.n_trials=2", "x=interval(0, 4)", name="rnd")
    study = load(tmp_path, storage, "rnd")
    assert states(study) == {"COMPLETE": 2}
    assert study.user_attrs["pruner"] == {"_target_": "optuna.pruners.PercentilePruner", "percentile": 25.0}
    p = run_sweep("quadratic.py", tmp_path, storage, "hydra.sweeper.sampler={_target_: optuna.samplers.Nope}",
                  "x=interval(0, 4)", name="bad", check=False)
    assert p.returncode != 0 and "hydra.sweeper.sampler._target_=optuna.samplers.Nope" in p.stderr


def test_plain_sampler_group_choice_is_accepted_by_the_train_app():
    from focalbench.train import optional_groups

    assert optional_groups(["-m", "hydra/sweeper=optuna", "hydra/sweeper/sampler=nsgaii", "x=1"]) == \
        ["-m", "hydra/sweeper=optuna", "+hydra/sweeper/sampler=nsgaii", "x=1"]
    assert optional_groups(["+hydra/sweeper/sampler=tpe"]) == ["+hydra/sweeper/sampler=tpe"]


def test_multi_objective_from_return_values_and_from_metrics(tmp_path):
    storage = "sqlite:///t.db"
    run_sweep("quadratic.py", tmp_path, storage, "hydra.sweeper.direction=[minimize,minimize]",
              "hydra.sweeper.sampler=grid", "two_values=true", "x=choice(0, 1, 2, 3)", name="mo")
    study = load(tmp_path, storage, "mo")
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    values = {t.params["x"]: t.values for t in study.trials}
    assert values == {0: [4.0, 0.0], 1: [1.0, 1.0], 2: [0.0, 4.0], 3: [1.0, 9.0]}
    front = sorted(t.params["x"] for t in study.best_trials)
    assert front == [0, 1, 2]  # x=3 is dominated by x=1
    results = (tmp_path / "multirun" / "run" / "optimization_results.yaml").read_text()
    assert "best_trials" in results
    # the values from the jobs' metrics.json keys instead of the return value
    run_sweep("quadratic.py", tmp_path, storage, "hydra.sweeper.direction=[minimize,maximize]",
              "hydra.sweeper.objectives=[value,x2]", "hydra.sweeper.sampler=grid", "write_metrics=true",
              "x=choice(1, 3)", name="mo2", run="run2")
    assert {t.params["x"]: t.values for t in load(tmp_path, storage, "mo2").trials} == {1: [1.0, 1.0], 3: [1.0, 9.0]}
    p = run_sweep("quadratic.py", tmp_path, storage, "hydra.sweeper.direction=[minimize,minimize]",
                  "hydra.sweeper.pruner=median", "x=choice(1, 3)", name="mo3", check=False)
    assert p.returncode != 0 and "prunes single-objective studies only" in p.stderr
