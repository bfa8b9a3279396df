"""Run the paper tables as Optuna studies of cached training runs.

Truth lives in ``results/<profile>/runs/<config_hash>.json`` (one finished run each, written atomically).
Each table is also an Optuna study (trials = rows x seeds, enqueued once) in the journal file
``results/<profile>/studies.journal``, so several workers on one machine or a shared file system split the
work with no duplicate run, and optuna-dashboard shows the tables live. A worker that dies leaves its trial
RUNNING; its heartbeat (a user attribute refreshed while the run goes on) goes stale, and the next worker
marks it failed and enqueues the same row and seed again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from tqdm import tqdm

from focalbench.reproduce.sweeps import Row, Table
from focalbench.runstore import RunStore, atomic_write_json, config_hash

HEARTBEAT_SECONDS = 20.0
STALE_AFTER_SECONDS = 120.0
CACHED_STATUSES = ("ok", "diverged")  # a diverged run is data; a failed one is retried


@dataclass
class RunSpec:
    table: str
    row: str
    seed: int
    overrides: list[str]
    config_hash: str


def storage_for(results_dir: Path) -> JournalStorage:
    results_dir.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(results_dir / "studies.journal")))


def study_name(profile: str, table: Table) -> str:
    return f"focalbench-{profile}-table{table.id}"


def plan_runs(tables: list[Table], profile: str, seeds: list[int], extra_overrides: list[str] = ()) -> list[RunSpec]:
    """Every (table, row, seed) with its full override list and config hash (composed, not run)."""
    from focalbench.train import compose, run_config_for_hash  # Hydra compose: no training, ~50 ms each

    def config_hash_of(cfg) -> str:
        return config_hash(run_config_for_hash(cfg))

    base = [f"profile={profile}", *extra_overrides]
    deep = _deep_overrides(compose(base))
    specs = []
    for table in tables:
        for row in table.rows:
            for seed in seeds:
                ov = [*base, *(deep if table.deep else []), *row.overrides, f"seed={seed}"]
                specs.append(RunSpec(table.id, row.name, seed, ov, config_hash_of(compose(ov))))
    return specs


def _deep_overrides(cfg) -> list[str]:
    rep = cfg.get("reproduce") or {}
    return [str(o) for o in (rep.get("deep_overrides") or [])]


class _Heartbeat:
    """Refreshes a trial's ``heartbeat`` user attribute while a run is in flight."""

    def __init__(self, storage, trial_id: int):
        self.storage, self.trial_id = storage, trial_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self.storage.set_trial_user_attr(self.trial_id, "heartbeat", time.time())
            except Exception:  # the trial may already be finished by a reaper; nothing to do
                return

    def __enter__(self):
        self.storage.set_trial_user_attr(self.trial_id, "heartbeat", time.time())
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)


def _distributions(table: Table, seeds: list[int]):
    return {"row": CategoricalDistribution([r.name for r in table.rows]),
            "seed": IntDistribution(0, max(1000, max(seeds)))}


def prepare_study(storage, profile: str, table: Table, seeds: list[int]) -> optuna.Study:
    """Create/load the table's study, fail stale RUNNING trials, enqueue every missing (row, seed) once."""
    study = optuna.create_study(study_name=study_name(profile, table), storage=storage,
                                direction="maximize", load_if_exists=True)
    study.set_metric_names(["AP"])
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = t.user_attrs.get("heartbeat", t.datetime_start.timestamp() if t.datetime_start else 0)
        if now - beat > STALE_AFTER_SECONDS:
            storage.set_trial_user_attr(t._trial_id, "reason", "worker died (stale heartbeat)")
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    live = {(t.params.get("row"), t.params.get("seed"))
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING,
                                                              TrialState.WAITING))}
    for row in table.rows:
        for seed in seeds:
            if (row.name, seed) not in live:
                study.enqueue_trial({"row": row.name, "seed": seed}, user_attrs={"table": table.id})
    return study


def run_one(spec: RunSpec, run_dir: Path, log_path: Path) -> dict:
    """One training run in its own process (a crash or OOM there cannot take the driver down)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / "metrics.json"
    metrics_path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "focalbench.train", *spec.overrides, f"hydra.run.dir={run_dir}",
           f"tags.group=table{spec.table}", "tags.job_type=reproduce"]
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if metrics_path.exists():
        import json
        with open(metrics_path) as f:
            return json.load(f)
    tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
    return {"status": "failed", "reason": f"exit code {proc.returncode}: {tail[0][:300]}", "AP": 0.0}


def run_tables(tables: list[Table], profile: str, seeds: list[int], results_dir: Path, work_dir: Path,
               extra_overrides: list[str] = (), progress: bool = True) -> list[RunSpec]:
    """Make sure every (row, seed) of ``tables`` has a finished run in ``results_dir/runs``."""
    store = RunStore(results_dir / "runs")
    specs = plan_runs(tables, profile, seeds, list(extra_overrides))
    by_key = {(s.table, s.row, s.seed): s for s in specs}
    unique = {s.config_hash for s in specs}
    done = {h for h in unique if (m := store.get(h)) is not None and m.get("status") in CACHED_STATUSES}
    storage = storage_for(results_dir)
    bar = tqdm(total=len(unique), initial=len(done), desc=f"reproduce {profile}", unit="run",
               disable=not progress, dynamic_ncols=True)
    for table in tables:
        study = prepare_study(storage, profile, table, seeds)
        dists = _distributions(table, seeds)
        while study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            trial = study.ask(dists)
            if "fixed_params" not in trial.system_attrs:  # another worker took the last waiting trial
                study.tell(trial, state=TrialState.FAIL)
                continue
            spec = by_key.get((table.id, trial.params["row"], trial.params["seed"]))
            if spec is None:  # a trial of a row or seed no longer in the sweep file
                study.tell(trial, state=TrialState.FAIL)
                continue
            trial.set_user_attr("config_hash", spec.config_hash)
            metrics = store.get(spec.config_hash)
            if metrics is None or metrics.get("status") not in CACHED_STATUSES:
                bar.set_postfix_str(f"table {table.id}: {spec.row} seed {spec.seed}")
                run_dir = work_dir / spec.config_hash
                with _Heartbeat(storage, trial._trial_id):
                    metrics = run_one(spec, run_dir, run_dir.with_suffix(".log"))
                if metrics.get("status") in CACHED_STATUSES:
                    store.put(spec.config_hash, metrics)
                    if spec.config_hash not in done:
                        done.add(spec.config_hash)
                        bar.update(1)
            for key in ("status", "AP50", "AP75", "train_seconds", "reason"):
                if key in metrics:
                    trial.set_user_attr(key, metrics[key])
            if metrics.get("status") in CACHED_STATUSES:
                study.tell(trial, float(metrics.get("AP", 0.0)))
            else:
                study.tell(trial, state=TrialState.FAIL)
    bar.close()
    return specs


def write_manifest(results_dir: Path, specs: list[RunSpec]) -> None:
    """Which (table, row, seed) maps to which run file: the tables are rebuilt from this + runs/."""
    atomic_write_json(results_dir / "manifest.json",
                      [{"table": s.table, "row": s.row, "seed": s.seed, "config_hash": s.config_hash,
                        "overrides": s.overrides} for s in specs])
