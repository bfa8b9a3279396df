"""``python -m focalbench.reproduce``: run paper tables as Optuna studies and write results/<profile>/.

    python -m focalbench.reproduce --profile cpu --tables 1a 1b 1c 1d --seeds 1
    python -m focalbench.reproduce --profile cpu --report-only      # rebuild tables from results/cpu/runs
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from focalbench.reproduce.sweeps import DEFAULT_TABLES, TABLE_FILES, SweepFileError, load_tables

PROFILES = ("smoke", "cpu", "gpu", "paper")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m focalbench.reproduce", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu", help=f"one of {', '.join(PROFILES)} (default cpu)")
    ap.add_argument("--tables", nargs="+", default=None,
                    help=f"tables to run, from {' '.join(TABLE_FILES)} (default: {' '.join(DEFAULT_TABLES)}; "
                         "with --report-only: the tables of the last run, from manifest.json)")
    ap.add_argument("--seeds", type=int, default=None,
                    help="seeds per row: 0..n-1 (default 1; with --report-only: the last run's, from manifest.json)")
    ap.add_argument("--results", default="results", help="results root (default results/)")
    ap.add_argument("--work-dir", default="outputs/reproduce", help="run directories (git-ignored)")
    ap.add_argument("--report-only", action="store_true", help="rebuild tables/figures/report from runs/ only")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--in-process", choices=("auto", "yes", "no"), default="auto",
                    help="train in the driver's process (auto: only for the smoke profile, whose runs take ~1 s)")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run (e.g. trainer.max_steps=50)")
    args = ap.parse_args(argv)
    last = _last_selection(Path(args.results) / args.profile) if args.report_only else None
    if args.tables is None:
        args.tables = last[0] if last else list(DEFAULT_TABLES)
    if args.seeds is None:
        args.seeds = last[1] if last else 1
    tables_arg = [t for item in args.tables for t in item.replace(",", " ").split()]
    if args.profile not in PROFILES:
        print(f"error: PROFILE={args.profile!r} is not a profile; allowed: {', '.join(PROFILES)}", file=sys.stderr)
        return 2
    if args.seeds < 1:
        print(f"error: SEEDS={args.seeds} must be >= 1", file=sys.stderr)
        return 2
    try:
        tables = load_tables(tables_arg)
    except SweepFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from focalbench.reproduce.report import record_invocation, write_results
    from focalbench.runstore import RunStore
    from focalbench.reproduce.runner import plan_runs, run_tables, write_manifest

    from focalbench.config_schema import ConfigError

    results_dir = Path(args.results) / args.profile
    seeds = list(range(args.seeds))
    command = " ".join(["python -m focalbench.reproduce", f"--profile {args.profile}",
                        f"--tables {' '.join(tables_arg)}", f"--seeds {args.seeds}",
                        *map(shlex.quote, args.overrides)])
    start = time.time()
    try:
        _check_writable(results_dir)
        if args.report_only:
            specs = plan_runs(tables, args.profile, seeds, args.overrides)
        else:
            runs_before = _count_runs(results_dir)
            specs = run_tables(tables, args.profile, seeds, results_dir, Path(args.work_dir) / args.profile,
                               args.overrides, progress=not args.no_progress,
                               in_process=args.in_process == "yes" or (args.in_process == "auto" and args.profile == "smoke"))
            record_invocation(results_dir, command, start, time.time(), runs_before, _count_runs(results_dir))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # unwritable or full results disk: every run finished so far is already in runs/
        print(f"error: {e.filename or results_dir}: {e.strerror or e}", file=sys.stderr)
        return 1
    write_manifest(results_dir, specs)
    summary = write_results(tables, specs, results_dir, command, _profile_summary(args.profile),
                            None if args.report_only else time.time() - start,
                            work_dir=Path(args.work_dir) / args.profile)
    for tid, (tau, v) in summary.items():
        print(f"table {tid}: tau={tau:.2f}  {v.verdict}: {v.detail}")
    print(f"wrote {results_dir}/report.md")
    failed = [s for s in specs if RunStore(results_dir / "runs").get(s.config_hash) is None]
    if failed:
        print(f"error: {len(failed)} of {len(specs)} runs did not finish (failed or not run; see the tables' status "
              f"column and {results_dir}/runs/failed/); re-run the same command to retry them", file=sys.stderr)
        return 1
    return 0


def _last_selection(results_dir: Path) -> tuple[list[str], int] | None:
    """Tables and seed count of the run that wrote ``manifest.json``: a report-only rebuild (``make dashboard``)
    must not silently turn a committed 3-seed report into a 1-seed one."""
    import json

    path = results_dir / "manifest.json"
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not rows:
        return None
    tables = list(dict.fromkeys(str(r["table"]) for r in rows))
    return tables, max(int(r["seed"]) for r in rows) + 1


def _count_runs(results_dir: Path) -> int:
    return sum(1 for _ in (results_dir / "runs").glob("*.json"))


def _check_writable(results_dir: Path) -> None:
    """Fail before any training when the results folder cannot be written (one line, non-zero exit)."""
    from focalbench.runstore import atomic_write_text

    results_dir.mkdir(parents=True, exist_ok=True)
    probe = results_dir / ".write-test"
    atomic_write_text(probe, "ok\n")
    probe.unlink()


def _profile_summary(profile: str) -> str:
    from omegaconf import OmegaConf

    from focalbench.train import compose

    cfg = compose([f"profile={profile}"])
    keep = {k: cfg[k] for k in ("data", "model", "anchors", "optim", "trainer") if k in cfg}
    return f"`profile={profile}` (resolved defaults of the runs):\n\n```yaml\n{OmegaConf.to_yaml(keep)}```"


if __name__ == "__main__":
    sys.exit(main())
