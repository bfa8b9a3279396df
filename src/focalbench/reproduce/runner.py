"""Run the paper tables as Optuna studies of cached training runs.

Truth lives in ``<results>/<profile>/runs/<config_hash>.json`` (one finished run each, written atomically;
``<results>`` is the user's ``outputs/results`` by default, the committed ``results`` with --update-reference).
Each table is also an Optuna study (trials = rows x seeds, enqueued once) in the journal file
``<results>/<profile>/studies.journal``, so several workers on one machine or a shared file system split the
work with no duplicate run, and optuna-dashboard shows the tables live. A worker that dies leaves its trial
RUNNING; its heartbeat (focalbench.sweeps.study.TrialHeartbeat) goes stale, and the next worker marks it
failed and re-queues the same row and seed.

Damage that a crash of ours cannot cause but a full disk or a lost write can is repaired on start: a journal
whose last record was cut short loses that record (kept in ``studies.journal.damaged-<time>``, one warning);
a damaged line in the middle stops the job with one line saying how to recover (nothing committed is dropped);
a ``runs/<hash>.json`` that does not parse is moved to ``runs/<hash>.json.damaged`` and its row is run again,
and so is a row whose finished trial has no run file. A diverged run is stored in runs/ (it is data) and its
trial is PRUNED with the user attr ``status=diverged``, never a COMPLETE trial of AP 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState
from tqdm import tqdm

from focalbench.config_schema import ConfigError
from focalbench.reproduce.sweeps import Table
from focalbench.runstore import DamagedFileError, RunStore, atomic_write_json, config_hash, warn
from focalbench.sweeps.storage import journal_path, make_storage, repair_journal, storage_lock
from focalbench.sweeps.engine import (CACHED_STATUSES, DIVERGED, HEARTBEAT_SECONDS, STALE_AFTER_SECONDS,  # noqa: F401
                                      claim, enqueue_missing, fail_interrupted, fixed_params, open_points_study,
                                      refresh, run_lock, tell_run)
from focalbench.sweeps.study import TrialHeartbeat

WAIT_POLL_SECONDS = 10
# Set by interrupt_handler (the CLI's SIGINT handler): Lightning turns a Ctrl-C inside fit() into
# sys.exit(1), which run_one turns back into the KeyboardInterrupt it was.
INTERRUPTED = threading.Event()


def interrupt_handler(signum, frame):
    INTERRUPTED.set()
    raise KeyboardInterrupt


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C (or SIGTERM) that stopped :func:`run_tables`; ``done`` of ``total`` runs are in runs/."""

    def __init__(self, done: int, total: int):
        super().__init__(f"{done} of {total} runs finished")
        self.done, self.total = done, total


@dataclass
class RunSpec:
    table: str
    row: str
    seed: int
    overrides: list[str]
    config_hash: str


def storage_url(results_dir: Path) -> str:
    return f"journal://{results_dir / 'studies.journal'}"


def study_name(profile: str, table: Table) -> str:
    return f"focalbench-{profile}-table{table.id}"


def plan_runs(tables: list[Table], profile: str, seeds: list[int], extra_overrides: list[str] = ()) -> list[RunSpec]:
    """Every (table, row, seed) with its full override list and config hash (composed, not run)."""
    from focalbench.train import compose, run_config_for_hash  # Hydra compose: no training, ~50 ms each

    base = [f"profile={profile}", *extra_overrides]
    deep = _deep_overrides(compose(base))
    specs = []
    for table in tables:
        for row in table.rows:
            for seed in table.seeds_for(seeds):
                ov = [*base, *(deep if table.deep else []), *row.overrides, f"seed={seed}"]
                try:  # every planned config is validated (in compose) before anything runs
                    cfg = compose(ov)
                except ConfigError as e:
                    raise ConfigError(f"table {table.id}, row {row.name!r}: {e}") from None
                specs.append(RunSpec(table.id, row.name, seed, ov, config_hash(run_config_for_hash(cfg))))
    return specs


def _deep_overrides(cfg) -> list[str]:
    rep = cfg.get("reproduce") or {}
    return [str(o) for o in (rep.get("deep_overrides") or [])]


def prepare_study(url: str, storage, profile: str, table: Table, seeds: list[int], store: RunStore | None = None,
                  hashes: dict | None = None) -> optuna.Study:
    """Create/load the table's study, fail (and re-queue) trials of dead workers, enqueue missing points
    (focalbench.sweeps.engine: the one claim, heartbeat and stale rule of every study of cached runs).

    With ``store`` and ``hashes`` ((row, seed) -> config hash): a point whose finished trial has no run file in
    ``store`` (deleted, or moved aside as damaged) is queued again, with one warning line naming the file."""
    study = open_points_study(url, storage, study_name(profile, table))

    def still_finished(key) -> bool:  # runs/ is the truth, the journal coordinates
        h = (hashes or {}).get(key)
        if store is None or h is None or store.path(h).exists():
            return True
        if h not in store.moved:  # (a damaged file moved aside has had its warning)
            warn(f"{store.path(h)} is missing, but table {table.id}'s trial of row {key[0]!r} seed {key[1]} "
                 "finished: that run is run again")
        return False

    enqueue_missing(url, study, storage, [{"row": row.name, "seed": seed} for row in table.rows
                                          for seed in table.seeds_for(seeds)],
                    lambda p: (p.get("row"), p.get("seed")), still_finished)
    return study


def run_one(spec: RunSpec, run_dir: Path, log_path: Path, in_process: bool = False) -> dict:
    """One training run, by default in its own process (a crash or OOM there cannot take the driver down).

    ``in_process`` saves the ~10 s of imports per run (the smoke profile's runs take a second): an
    exception is then recorded as a failed run, but a hard crash would stop the driver (re-run resumes).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / "metrics.json"
    metrics_path.unlink(missing_ok=True)
    row = "'" + spec.row.replace("\\", "\\\\").replace("'", "\\'") + "'"  # Hydra-quoted: names hold spaces, '=' and ':'
    tags = [f"tags.group=table{spec.table}", "tags.job_type=reproduce", f"tags.row={row}", "save_weights=true"]
    if in_process:
        from focalbench.train import compose, run

        try:
            return run(compose([*spec.overrides, *tags]), run_dir)
        except Exception as e:  # noqa: BLE001 - recorded, the sweep goes on
            return {"status": "failed", "reason": f"{type(e).__name__}: {e}"[:300], "AP": 0.0}
        except SystemExit:
            if INTERRUPTED.is_set():  # Lightning's answer to a Ctrl-C inside fit(): sys.exit(1)
                raise KeyboardInterrupt from None
            raise
    cmd = [sys.executable, "-m", "focalbench.train", *spec.overrides, f"hydra.run.dir={run_dir}", *tags]
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if metrics_path.exists():
        with open(metrics_path) as f:
            return json.load(f)
    tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
    return {"status": "failed", "reason": f"exit code {proc.returncode}: {tail[0][:300]}", "AP": 0.0}


def run_tables(tables: list[Table], profile: str, seeds: list[int], results_dir: Path, work_dir: Path,
               extra_overrides: list[str] = (), progress: bool = True, in_process: bool = False,
               workers: int = 1, worker_tag: str = "", specs: list[RunSpec] | None = None) -> list[RunSpec]:
    """Make sure every (row, seed) of ``tables`` has a finished run in ``results_dir/runs``.

    ``specs``: the plan (:func:`plan_runs`), when the caller made it already. A Ctrl-C (KeyboardInterrupt)
    fails the trial of the run it stopped (so the next invocation re-queues it at once) and is raised again as
    :class:`Interrupted`, which says how many runs are finished.

    Prints one line when a run starts (with its log file) and one when it ends (row, seed, AP, wall time,
    runs done/total over all workers, ETA = median run time so far x runs left / ``workers``). The tqdm bar
    is drawn only for a single worker (several processes' bars on one terminal garble each other)."""
    store = RunStore(results_dir / "runs")
    if specs is None:
        specs = plan_runs(tables, profile, seeds, list(extra_overrides))
    by_key = {(s.table, s.row, s.seed): s for s in specs}
    unique = {s.config_hash for s in specs}
    done = {h for h in unique if (m := store.get(h)) is not None and m.get("status") in CACHED_STATUSES}
    url = storage_url(results_dir)
    storage = open_storage(url, store.root)
    try:
        _run_tables(tables, profile, seeds, store, work_dir, url, storage, specs, by_key, unique, done, progress,
                    in_process, workers, worker_tag)
    except KeyboardInterrupt:
        raise Interrupted(sum(1 for h in unique if store.path(h).exists()), len(unique)) from None
    return specs


def repair_studies_journal(results_dir: Path) -> str | None:
    """Repair a damaged tail of ``studies.journal`` (under the storage lock; one warning line, returned); a
    damaged line in the middle is a :class:`DamagedFileError` that says how to recover."""
    url = storage_url(results_dir)
    with storage_lock(url):
        return _repair(url, results_dir / "runs")


def _repair(url: str, runs_dir: Path) -> str | None:
    journal = journal_path(url)
    hint = (f"every finished run is safe in {runs_dir}/: once no worker of this location runs, move the journal "
            f"aside (mv {journal} {journal}.damaged) and rerun the same command; it rebuilds the studies from "
            "runs/ and trains only what is not there")
    try:
        return repair_journal(journal, hint)
    except DamagedFileError as e:
        raise DamagedFileError(e.path, e.line, e.detail, hint) from None


def open_storage(url: str, runs_dir: Path):
    """The studies' journal storage, its damaged tail repaired first (under the storage lock)."""
    with storage_lock(url):
        _repair(url, runs_dir)
        return make_storage(url)


def _run_tables(tables, profile, seeds, store, work_dir, url, storage, specs, by_key, unique, done, progress,
                in_process, workers, worker_tag) -> None:
    hashes = {(s.table, s.row, s.seed): s.config_hash for s in specs}
    bar = tqdm(total=len(unique), initial=len(done), desc=f"reproduce {profile}", unit="run",
               disable=not progress or workers > 1, dynamic_ncols=True)
    say = _Progress(bar, worker_tag, workers, len(unique))
    for table in tables:
        study = prepare_study(url, storage, profile, table, seeds, store,
                              {(r, sd): h for (t, r, sd), h in hashes.items() if t == table.id})
        while (trial := claim(url, study, storage)) is not None:
            fixed = fixed_params(storage, trial)
            spec = by_key.get((table.id, fixed.get("row"), fixed.get("seed")))
            if spec is None:  # a point of a row or seed no longer in the sweep file / this invocation
                study.tell(trial, state=TrialState.FAIL)
                continue
            # record the fixed point as the trial's params (optuna-dashboard shows them per trial)
            trial.suggest_categorical("row", [r.name for r in table.rows])
            trial.suggest_int("seed", 0, max(999, spec.seed))
            trial.set_user_attr("config_hash", spec.config_hash)  # ("worker" was written by the claim)
            try:
                metrics = _run_claimed(spec, table, store, work_dir, storage, trial, in_process, bar, say, unique)
            except KeyboardInterrupt:
                fail_interrupted(study, trial)
                raise
            # the store is shared by every worker: count what all of them finished (rate and ETA stay honest)
            finished = sum(1 for h in unique if store.path(h).exists())
            bar.update(finished - bar.n)
            for key in ("status", "AP50", "AP75", "train_seconds", "reason"):
                if key in metrics:
                    trial.set_user_attr(key, metrics[key])
            tell_run(study, trial, metrics)
    # Nothing left to claim, but other workers may still be training rows of this selection: wait for them,
    # so that every worker's report holds every run (a worker that stopped first used to report without them).
    wait_for_other_workers(tables, profile, url, storage, {(s.table, s.row, s.seed) for s in specs},
                           lambda: bar.update(sum(1 for h in unique if store.path(h).exists()) - bar.n),
                           bar.set_postfix_str)
    bar.close()


def _run_claimed(spec, table, store, work_dir, storage, trial, in_process, bar, say, unique) -> dict:
    with TrialHeartbeat(storage, [trial._trial_id], HEARTBEAT_SECONDS), run_lock(work_dir, spec.config_hash):
        # Under the lock: a run shared by two tables that another worker is training is waited for,
        # then read from the store, never trained twice.
        metrics = store.get(spec.config_hash)
        if metrics is None or metrics.get("status") not in CACHED_STATUSES:
            bar.set_postfix_str(f"table {table.id}: {spec.row} seed {spec.seed}")
            run_dir = work_dir / spec.config_hash
            say.started(spec, f"in this process, run dir {run_dir}" if in_process
                        else f"log {run_dir.with_suffix('.log')}")
            t0 = time.monotonic()
            metrics = run_one(spec, run_dir, run_dir.with_suffix(".log"), in_process)
            seconds = time.monotonic() - t0
            if metrics.get("status") in CACHED_STATUSES:
                store.put(spec.config_hash, metrics)
                RunStore(store.root / "failed").path(spec.config_hash).unlink(missing_ok=True)
            else:  # kept for the report (status and reason), never reused as a finished run
                RunStore(store.root / "failed").put(spec.config_hash, metrics)
            say.finished(spec, metrics, seconds, sum(1 for h in unique if store.path(h).exists()))
    return metrics


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


class _Progress:
    """The per-run lines (through ``tqdm.write`` so that a drawn bar is not broken)."""

    def __init__(self, bar, tag: str, workers: int, total: int):
        self.bar, self.tag, self.workers, self.total = bar, f"[{tag}] " if tag else "", max(1, workers), total
        self.times: list[float] = []

    def _print(self, msg: str) -> None:
        tqdm.write(f"{self.tag}{msg}", file=sys.stdout)
        sys.stdout.flush()

    def started(self, spec: RunSpec, where: str) -> None:
        self._print(f"start {spec.table} | {spec.row} | seed {spec.seed}: {where}")

    def finished(self, spec: RunSpec, metrics: dict, seconds: float, done: int) -> None:
        self.times.append(seconds)
        status = metrics.get("status", "?")
        result = f"AP {float(metrics.get('AP', 0.0)):.2f}" if status in CACHED_STATUSES else \
            f"FAILED ({str(metrics.get('reason', '?'))[:120]})"
        if status == "diverged":
            result += " (diverged)"
        left = max(0, self.total - done)
        median = sorted(self.times)[len(self.times) // 2]
        eta = f"ETA {_duration(median * left / self.workers)}" if left else "last run"
        self._print(f"done  {spec.table} | {spec.row} | seed {spec.seed}: {result} in {_duration(seconds)} | "
                    f"{done}/{self.total} runs | {eta}")


def wait_for_other_workers(tables: list[Table], profile: str, url: str, storage, keys: set, on_poll=lambda: None,
                           say=lambda msg: None, poll: float = WAIT_POLL_SECONDS) -> int:
    """Block while trials of ``keys`` ((table, row, seed)) are RUNNING in other workers; returns how many
    polls it waited. A dead local worker's trial is failed at once, another machine's once its heartbeat is
    stale, so a crashed worker cannot hold this forever (its run is then reported missing, re-run to retry)."""
    studies = {t.id: optuna.load_study(study_name=study_name(profile, t), storage=storage) for t in tables}
    polls = 0
    while True:
        running = 0
        for tid, study in studies.items():
            with storage_lock(url):
                refresh(study, storage)
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                fixed = t.system_attrs.get("fixed_params") or {}
                running += (tid, fixed.get("row"), fixed.get("seed")) in keys
        on_poll()
        if not running:
            return polls
        say(f"waiting for {running} run(s) of other workers")
        polls += 1
        time.sleep(poll)


def write_manifest(results_dir: Path, specs: list[RunSpec]) -> None:
    """Which (table, row, seed) maps to which run file: the tables are rebuilt from this + runs/."""
    atomic_write_json(results_dir / "manifest.json",
                      [{"table": s.table, "row": s.row, "seed": s.seed, "config_hash": s.config_hash,
                        "overrides": s.overrides} for s in specs])
