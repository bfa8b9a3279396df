"""The imbalance study: ``python -m focalbench.classify.study [--profile cpu] [--seeds 3] [--tables ...]``.

One Optuna study per sub-table (``imbalance-<table>``) in a JournalStorage file (text, committable) at
``results/<profile>/imbalance/study.journal``; trials = ratios x rows x seeds, enqueued with fixed
params. Every finished run is cached by config hash in ``results/<profile>/imbalance/runs/`` and a trial
whose run is cached completes without training, so an interrupted study resumes where it stopped and a
finished one is rebuilt from the cache. The tuned-FL row runs, inside its trial, an inner TPE search over
(gamma, alpha) on the validation split whose runs are cached the same way (a seeded sampler proposes the
same points again on a re-run, so they hit the cache).

Workers: ``--workers N`` processes (one torch thread each) claim trials from the same study with the engine
of every study of cached runs (focalbench.sweeps.engine: claims under the storage's lock, a heartbeat per
running trial, one stale rule), so several drivers may share a study, and a trial whose worker died is
failed and queued again by the next driver.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import sys
import time
import warnings
from pathlib import Path

import optuna
import yaml

from focalbench.paths import SWEEPS_DIR
from focalbench.classify.plan import grid, storage_for, storage_url, study_name
from focalbench.classify.report import write_report
from focalbench.provenance import hardware, record_invocation
from focalbench.runstore import RunStore, config_hash
from focalbench.sweeps.engine import (HEARTBEAT_SECONDS, claim, enqueue_missing, fail_interrupted, fixed_params,
                                      open_points_study, tell_run)

SWEEP = SWEEPS_DIR / "imbalance.yaml"


def load_sweep(path: str | Path = SWEEP, profile: str = "cpu") -> dict:
    with open(path) as f:
        sweep = yaml.safe_load(f)
    if profile not in sweep["profiles"]:
        raise ValueError(f"--profile={profile!r}: allowed {', '.join(sweep['profiles'])} ({path})")
    prof = sweep["profiles"][profile] or {}
    sweep["ratios"] = prof.get("ratios", sweep["ratios"])
    sweep["seeds"] = prof.get("seeds", sweep["seeds"])
    for row in sweep["rows"]:
        if "search" in row and "search_trials" in prof:
            row["search"]["n_trials"] = prof["search_trials"]
    sweep["profile"] = profile
    return sweep


def _quiet() -> None:
    import lightning  # noqa: F401 - sets its loggers' levels on import: import first, then lower them

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


# --- one trial --------------------------------------------------------------------------------------

class Runner:
    """Runs (or fetches from the cache) the runs of one study, in the current process."""

    def __init__(self, sweep: dict, table: str, out_dir: Path):
        self.sweep, self.table, self.store = sweep, table, RunStore(out_dir / "runs")
        self.rows = {r["key"]: r for r in sweep["rows"]}

    def overrides(self, ratio, row_key: str, seed: int) -> list[str]:
        row = self.rows[row_key]
        ov = list(self.sweep["tables"][self.table]["overrides"]) + [
            f"profile={self.sweep['profile']}", f"data.ratio={ratio}", f"seed={seed}",
            "trainer.progress_bar=false", "csv_log=false"] + list(row["overrides"])
        if row.get("alpha_from_frequency"):
            # alpha-CE weights positives by the negative fraction of the train split: n_neg/(n_pos+n_neg),
            # exact here because each split holds ratio negatives per positive.
            ov.append(f"loss.alpha={ratio / (1.0 + ratio)!r}")
        return ov

    def run_cached(self, overrides: list[str]) -> dict:
        from .run import compose, run, run_config_for_hash

        cfg = compose(overrides)
        key = config_hash(run_config_for_hash(cfg))
        hit = self.store.get(key)
        if hit is not None:
            return hit
        metrics = run(cfg, None, overrides=overrides, write=False)
        if metrics["status"] == "failed":  # a crash is not a result: do not cache it, fail the trial
            raise RuntimeError(f"run {overrides} failed: {metrics.get('reason')}")
        self.store.put(key, metrics)
        return metrics

    def tuned(self, ratio, row_key: str, seed: int) -> dict:
        """Inner TPE search of (gamma, alpha) by validation AP; returns the chosen run, annotated."""
        row, base = self.rows[row_key], self.overrides(ratio, row_key, seed)
        spec = row["search"]
        from .run import compose, run_config_for_hash

        outer = {"run": run_config_for_hash(compose(base)), "search": spec}
        key = config_hash(outer)
        hit = self.store.get(key)
        if hit is not None:
            return hit
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec["n_startup_trials"])
        inner = optuna.create_study(direction="maximize", sampler=sampler)
        inner.enqueue_trial(dict(spec["enqueue"]))
        results: dict[int, dict] = {}

        def objective(t: optuna.Trial) -> float:
            g = t.suggest_float("gamma", *spec["gamma"])
            a = t.suggest_float("alpha", *spec["alpha"])
            m = self.run_cached(base + [f"loss.gamma={g!r}", f"loss.alpha={a!r}"])
            results[t.number] = m
            return m["AP"]  # validation AP: the test split is never looked at here

        inner.optimize(objective, n_trials=spec["n_trials"])
        best = inner.best_trial
        chosen = dict(results[best.number])
        chosen["search"] = {
            "chosen": best.params, "val_AP": best.value, "n_trials": len(inner.trials),
            "trials": [{"gamma": t.params["gamma"], "alpha": t.params["alpha"], "val_AP": t.value}
                       for t in inner.trials],
        }
        chosen["config_hash"] = key
        self.store.put(key, chosen)
        return chosen

    def run_point(self, trial, fixed: dict) -> dict:
        """The run of one claimed trial's fixed point (its params are recorded on the trial)."""
        # Wide fixed distributions, so adding seeds or ratios later stays compatible with the stored trials.
        ratio = trial.suggest_int("ratio", 1, 1_000_000, log=True)
        row_key = trial.suggest_categorical("row", sorted(self.rows))
        seed = trial.suggest_int("seed", 0, 100_000)
        if (ratio, row_key, seed) != (fixed.get("ratio"), fixed.get("row"), fixed.get("seed")):
            raise RuntimeError(f"trial {trial.number}: params {ratio, row_key, seed} are not its point {fixed}")
        if "search" in self.rows[row_key]:
            m = self.tuned(ratio, row_key, seed)
        else:
            m = self.run_cached(self.overrides(ratio, row_key, seed))
        trial.set_user_attr("config_hash", m["config_hash"])
        trial.set_user_attr("status", m["status"])
        trial.set_user_attr("test_AP", m.get("test", {}).get("AP", 0.0))
        return m


# --- the study ----------------------------------------------------------------------------------------

def prepare(sweep: dict, table: str, out_dir: Path) -> tuple[optuna.Study, int]:
    """Create/load the study, fail the trials of dead workers, enqueue missing grid points; (study, todo)."""
    url, storage = storage_url(out_dir), storage_for(out_dir)
    study = open_points_study(url, storage, study_name(table))
    todo = enqueue_missing(url, study, storage, grid(sweep), _key)
    return study, todo


def _key(p) -> tuple:
    return p.get("ratio"), p.get("row"), p.get("seed")


def work(sweep: dict, table: str, out_dir: Path, on_done=lambda: None) -> None:
    """Claim and run trials of ``table`` until none is waiting (a worker never samples a point of its own)."""
    from optuna.trial import TrialState

    from focalbench.sweeps.study import TrialHeartbeat

    url, storage = storage_url(out_dir), storage_for(out_dir)
    study = optuna.load_study(study_name=study_name(table), storage=storage)
    runner = Runner(sweep, table, out_dir)
    while (trial := claim(url, study, storage)) is not None:
        with TrialHeartbeat(storage, [trial._trial_id], HEARTBEAT_SECONDS):
            try:
                metrics = runner.run_point(trial, fixed_params(storage, trial))
            except KeyboardInterrupt:
                fail_interrupted(study, trial)
                raise
            except RuntimeError as e:  # a failed run: the trial fails, its point is queued again next time
                trial.set_user_attr("reason", str(e)[:500])
                study.tell(trial, state=TrialState.FAIL)
                continue
        tell_run(study, trial, metrics)
        on_done()


def _worker(sweep: dict, table: str, out_dir: str, threads: int) -> None:
    import torch

    _quiet()
    torch.set_num_threads(threads)
    work(sweep, table, Path(out_dir))


def _count_done(study: optuna.Study, sweep: dict) -> int:
    keys = {_key(t.params) for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))}
    return len(keys & {_key(p) for p in grid(sweep)})


def run_study(sweep: dict, tables: list[str], out_dir: Path, workers: int = 1, progress: bool = True) -> dict:
    """Run every missing trial of ``tables``; returns {table: seconds}."""
    from tqdm import tqdm

    _quiet()
    timings = {}
    for table in tables:
        if table not in sweep["tables"]:
            raise ValueError(f"--tables {table!r}: allowed {', '.join(sweep['tables'])} ({SWEEP.name})")
        t0 = time.perf_counter()
        study, todo = prepare(sweep, table, out_dir)
        total = len(grid(sweep))
        bar = tqdm(total=total, initial=total - todo, desc=f"imbalance {table}", unit="trial",
                   disable=not progress, dynamic_ncols=True)
        if workers <= 1:
            import torch

            torch.set_num_threads(1)
            work(sweep, table, out_dir, on_done=lambda: bar.update(1))
        else:
            ctx = mp.get_context("spawn")
            procs = [ctx.Process(target=_worker, args=(sweep, table, str(out_dir), 1)) for _ in range(workers)]
            for p in procs:
                p.start()
            while any(p.is_alive() for p in procs):
                time.sleep(2.0)
                bar.n = _count_done(study, sweep)
                bar.refresh()
            for p in procs:
                p.join()
            bar.n = _count_done(study, sweep)
            bar.refresh()
        bar.close()
        timings[table] = time.perf_counter() - t0
    return timings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m focalbench.classify.study", description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="cpu", help="smoke | cpu (sweeps/imbalance.yaml profiles)")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the sweep file's)")
    ap.add_argument("--tables", nargs="+", default=None, help="sub-tables: tabular, digits")
    ap.add_argument("--workers", type=int, default=2, help="worker processes, one torch thread each")
    ap.add_argument("--results", default="results", help="results root (default: results/ of the working directory)")
    ap.add_argument("--sweep", default=str(SWEEP), help="sweep file")
    ap.add_argument("--report-only", action="store_true", help="rebuild tables/figures/report from the cache")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    sweep = load_sweep(args.sweep, args.profile)
    if args.seeds is not None:
        if args.seeds < 1:
            raise SystemExit(f"--seeds={args.seeds}: must be >= 1")
        sweep["seeds"] = args.seeds
    tables = args.tables or sweep["default_tables"]
    out_dir = Path(args.results) / args.profile / "imbalance"
    command = "python -m focalbench.classify.study " + " ".join(argv if argv is not None else sys.argv[1:])
    t0, start = time.perf_counter(), time.time()
    n_before = len(RunStore(out_dir / "runs").keys())
    timings = {} if args.report_only else run_study(sweep, tables, out_dir, args.workers, not args.no_progress)
    wall = time.perf_counter() - t0
    if not args.report_only:  # the wall time of a study that was resumed is the sum of its invocations
        record_invocation(out_dir, command.strip(), start, time.time(), n_before,
                          len(RunStore(out_dir / "runs").keys()), workers=args.workers, hardware=hardware())
    verdicts = write_report(sweep, tables, out_dir, command=command.strip(), wall_seconds=wall,
                            timings=timings, hardware=hardware(), workers=args.workers)
    for table, v in verdicts.items():
        print(f"[{table}] {v['headline']}")
    print(f"wrote {out_dir} in {wall:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
