"""``python -m focalbench.reproduce``: run paper tables as Optuna studies, write the tables and report, and
compare them with the committed reference.

    python -m focalbench.reproduce --profile cpu --tables 1a 1b 1c 1d --seeds 1   # -> outputs/results/cpu/
    python -m focalbench.reproduce --profile cpu --report-only      # rebuild tables from outputs/results/cpu/runs
    python -m focalbench.reproduce --profile cpu --seeds 3 --update-reference     # -> results/cpu/ (committed)

Results go to <--results>/<profile>/ (default outputs/results/, git-ignored): runs/, studies.journal,
tables, figures, report.md, and comparison.md (every row beside the reference's results/<profile>/runs).
The committed reference is written only with --update-reference. Several invocations on one location share
the work (no run twice); --workers N starts N-1 more worker processes and writes the report once at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from focalbench.config_schema import os_error_line
from focalbench.reproduce.sweeps import DEFAULT_TABLES, TABLE_FILES, SweepFileError, load_tables

PROFILES = ("smoke", "cpu", "gpu", "paper")
DEFAULT_RESULTS = "outputs/results"   # the user's reproductions (git-ignored)
REFERENCE = "results"                 # the committed reference
CHILD_STOP_SECONDS = 10               # after Ctrl-C: how long workers get to stop before SIGTERM, then SIGKILL


class UsageError(ValueError):
    pass


# options that take one value: the token after them is that value, never an override or a table name
_VALUE_OPTIONS = ("--profile", "--seeds", "--results", "--reference", "--work-dir", "--workers", "--_worker",
                  "--in-process")


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the options, the Hydra overrides): a ``key=value`` token (also ``+key=v``, ``++key=v``, ``~key``) is an
    override wherever it stands, also right after ``--tables`` (whose names would otherwise swallow it)."""
    options, overrides, i = [], [], 0
    while i < len(argv):
        tok = argv[i]
        if tok in _VALUE_OPTIONS and i + 1 < len(argv):
            options += [tok, argv[i + 1]]
            i += 2
            continue
        if tok == "--":
            overrides += argv[i + 1:]
            break
        if not tok.startswith("-") and ("=" in tok or tok.startswith("~")):
            overrides.append(tok)
        else:
            options.append(tok)
        i += 1
    return options, overrides


class _State:
    """What the Ctrl-C handler needs to know of the invocation it stops."""

    results_dir: Path | None = None
    command: str | None = None
    start: float = 0.0
    runs_before: int | None = None
    specs: list | None = None
    plan_args: tuple | None = None
    children: list = []
    record: bool = False
    child: bool = False


def main(argv: list[str] | None = None) -> int:
    """The CLI; a Ctrl-C (or SIGTERM to a multi-worker run) anywhere ends in one line and exit code 130."""
    from focalbench.reproduce import runner

    state = _State()
    state.children = []
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.default_int_handler:  # (not when started with SIGINT ignored, e.g. `cmd &` in a script)
        signal.signal(signal.SIGINT, runner.interrupt_handler)
    try:
        return _main(argv, state)
    except KeyboardInterrupt as e:
        return _interrupted(state, e)
    finally:
        signal.signal(signal.SIGINT, previous)
        runner.INTERRUPTED.clear()


def _interrupted(state: _State, exc: KeyboardInterrupt) -> int:
    """Stop the extra workers, record the invocation (``"status": "interrupted"``), say how far it got."""
    from focalbench.reproduce.runner import Interrupted

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
    if state.child:
        return 130  # an extra worker: the main one says it
    _stop_workers(state.children)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    done, total = (exc.done, exc.total) if isinstance(exc, Interrupted) else _progress_counts(state)
    if state.record and state.results_dir is not None:
        try:
            _record_invocation(state.results_dir, state.command, state.start, time.time(), state.runs_before or 0,
                               _count_runs(state.results_dir), status="interrupted")
        except OSError as e:
            print(f"warning: {e.filename or state.results_dir}: could not record the invocation "
                  f"({e.strerror or e})", file=sys.stderr)
    print(f"interrupted: {done} of {total} runs finished; rerun the same command to resume", file=sys.stderr,
          flush=True)
    return 130


def _progress_counts(state: _State) -> tuple:
    """(finished, planned) runs of the interrupted invocation; the plan is made now if the Ctrl-C came first."""
    if state.results_dir is None:
        return 0, "?"
    specs = state.specs
    if specs is None and state.plan_args is not None:
        try:
            from focalbench.reproduce.runner import plan_runs

            specs = plan_runs(*state.plan_args)
        except Exception:  # noqa: BLE001 - only for the count
            specs = None
    if specs is None:
        return _count_runs(state.results_dir), "?"
    unique = {s.config_hash for s in specs}
    runs = state.results_dir / "runs"
    return sum(1 for h in unique if (runs / f"{h}.json").exists()), len(unique)


def _record_invocation(results_dir: Path, command: str, start: float, end: float, runs_before: int,
                       runs_after: int, status: str | None = None) -> None:
    """report.record_invocation's line (O_APPEND, one line), plus ``status`` when given; a damaged line a full
    disk left there is moved out first, so the new line does not join it."""
    from focalbench.reproduce import report
    from focalbench.runstore import drop_damaged_lines

    path = results_dir / report.INVOCATIONS
    drop_damaged_lines(path, "the wall-time table lists the other invocations")
    report.record_invocation(results_dir, command, start, end, runs_before, runs_after, status)


def _main(argv: list[str] | None, state: _State) -> int:
    ap = argparse.ArgumentParser(prog="python -m focalbench.reproduce", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu", help=f"one of {', '.join(PROFILES)} (default cpu)")
    ap.add_argument("--tables", nargs="+", default=None,
                    help=f"tables to run, from {' '.join(TABLE_FILES)} (default: {' '.join(DEFAULT_TABLES)}; "
                         "with --report-only: the tables of the last run, from manifest.json)")
    ap.add_argument("--seeds", type=int, default=None,
                    help="seeds per row: 0..n-1 (default 1; with --report-only: the last run's, from manifest.json)")
    ap.add_argument("--results", default=None,
                    help=f"where this reproduction goes: <RESULTS>/<profile>/ (default {DEFAULT_RESULTS}/, "
                         "git-ignored); resumes there, several workers can share it")
    ap.add_argument("--update-reference", action="store_true",
                    help=f"write the committed reference {REFERENCE}/<profile>/ instead (no comparison)")
    ap.add_argument("--reference", default=REFERENCE,
                    help=f"root of the reference to compare with / update (default {REFERENCE}/)")
    ap.add_argument("--work-dir", default="outputs/reproduce", help="run directories (git-ignored)")
    ap.add_argument("--report-only", action="store_true",
                    help="rebuild tables/figures/report (and comparison.md) of the chosen location from its runs/")
    ap.add_argument("--workers", type=int, default=None,
                    help="worker processes sharing the runs (default: cores // the profile's trainer.num_threads, "
                         "1 if that is null or when training in-process)")
    ap.add_argument("--_worker", type=int, default=None, help=argparse.SUPPRESS)  # an extra worker: no report
    ap.add_argument("--no-progress", action="store_true", help="no progress bar (the per-run lines stay)")
    ap.add_argument("--in-process", choices=("auto", "yes", "no"), default="auto",
                    help="train in the driver's process (auto: only for the smoke profile, whose runs take ~1 s)")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run (e.g. trainer.max_steps=50); "
                                                 "key=value tokens are overrides wherever they stand")
    argv = list(sys.argv[1:] if argv is None else argv)
    options, overrides = split_overrides(argv)
    args = ap.parse_args(options)
    args.overrides = [*args.overrides, *overrides]
    state.child = args._worker is not None
    if args.profile not in PROFILES:
        print(f"error: PROFILE={args.profile!r} is not a profile; allowed: {', '.join(PROFILES)}", file=sys.stderr)
        return 2
    try:
        results_dir, reference_dir = resolve_locations(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    last = _last_selection(results_dir) if args.report_only else None
    if args.tables is None:
        args.tables = last[0] if last else list(DEFAULT_TABLES)
    if args.seeds is None:
        args.seeds = last[1] if last else 1
    tables_arg = [t for item in args.tables for t in item.replace(",", " ").split()]
    unknown = [t for t in tables_arg if t not in TABLE_FILES]
    if unknown:
        print(f"error: TABLES: unknown table {unknown[0]!r}; known tables: {' '.join(TABLE_FILES)}", file=sys.stderr)
        return 2
    if args.seeds < 1:
        print(f"error: SEEDS={args.seeds} must be >= 1", file=sys.stderr)
        return 2
    if args.workers is not None and args.workers < 1:
        print(f"error: WORKERS={args.workers} must be >= 1", file=sys.stderr)
        return 2
    try:
        tables = load_tables(tables_arg)
    except SweepFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from focalbench.runstore import DamagedFileError, RunStore
    from focalbench.reproduce.runner import plan_runs, repair_studies_journal, run_tables, write_manifest

    from focalbench.config_schema import ConfigError

    seeds = list(range(args.seeds))
    in_process = args.in_process == "yes" or (args.in_process == "auto" and args.profile == "smoke")
    work_dir = Path(args.work_dir) / args.profile
    if args._worker is not None:  # an extra worker started by the main one: train, no report
        return _child_worker(args, tables, seeds, results_dir, work_dir, in_process)
    command = " ".join(["python -m focalbench.reproduce", f"--profile {args.profile}",
                        f"--tables {' '.join(tables_arg)}", f"--seeds {args.seeds}",
                        *(["--update-reference"] if args.update_reference else []),
                        *map(shlex.quote, args.overrides)])
    start = time.time()
    children: list[subprocess.Popen] = state.children
    workers, bad = 1, []
    state.results_dir, state.command, state.start = results_dir, command, start
    state.plan_args = (tables, args.profile, seeds, args.overrides)
    try:
        _check_writable(results_dir)
        if args.report_only:
            specs = _report_specs(plan_runs(tables, args.profile, seeds, args.overrides), results_dir)
            state.specs = specs
            # a damaged run file: moved aside with its warning here, so the tables show the row as missing
            reader = RunStore(results_dir / "runs", then="its row is reported as missing (a reproduction without "
                                                          "--report-only runs it again)")
            for s in specs:
                reader.get(s.config_hash)
            from focalbench.reproduce.report import INVOCATIONS
            from focalbench.runstore import drop_damaged_lines

            drop_damaged_lines(results_dir / INVOCATIONS, "the wall-time table lists the other invocations")
        else:
            workers = args.workers or default_workers(args.profile, args.overrides, in_process)
            print(f"reproducing into {results_dir}/ with {workers} worker(s)"
                  + ("" if results_dir == reference_dir else f"; reference: {reference_dir}/"), flush=True)
            state.runs_before = runs_before = _count_runs(results_dir)
            state.record = True
            state.command = command + (f" --workers {workers}" if workers > 1 else "")
            specs = state.specs = plan_runs(tables, args.profile, seeds, args.overrides)
            repair_studies_journal(results_dir)  # before any other worker reads it
            if workers > 1:
                signal.signal(signal.SIGTERM, _raise_interrupt)
                children += _start_workers(argv, workers)
            run_tables(tables, args.profile, seeds, results_dir, work_dir, args.overrides,
                       progress=not args.no_progress, in_process=in_process, workers=workers,
                       worker_tag="w1" if workers > 1 else "", specs=specs)
            bad = _wait_workers(children)
            state.record = False
            # after training: the runs never wait on it
            _record_invocation(results_dir, state.command, start, time.time(), runs_before, _count_runs(results_dir))
            for k, rc in bad:
                print(f"error: worker w{k} exited with code {rc}", file=sys.stderr)
    except ConfigError as e:
        _stop_workers(children)
        print(f"error: {e}", file=sys.stderr)
        return 2
    except DamagedFileError as e:  # a damaged journal line with committed records after it: the user decides
        _stop_workers(children)
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # unwritable or full results disk: every run finished so far is already in runs/
        _stop_workers(children)
        print(f"error: {os_error_line(e) if e.filename else f'{results_dir}: {e.strerror or e}'}", file=sys.stderr)
        return 1
    write_manifest(results_dir, specs)
    from focalbench.reproduce.compare import write_comparison
    from focalbench.reproduce.report import write_results

    summary = write_results(tables, specs, results_dir, command, _profile_summary(args.profile),
                            None if args.report_only else time.time() - start,
                            noise_sd=profile_noise_sd(args.profile, args.overrides), work_dir=work_dir)
    for tid, (ts, v) in summary.items():
        print(f"table {tid}: tau={ts.tau:.2f} (p={ts.p:.2g})  {v.verdict}: {v.detail}")
    print(f"wrote {results_dir}/report.md")
    if results_dir.resolve() == reference_dir.resolve():
        print(f"{results_dir}/ is the reference: no comparison")
    else:
        for line in write_comparison(tables, specs, results_dir, reference_dir):
            print(line)
        print(f"wrote {results_dir}/comparison.md")
    failed = [s for s in specs if RunStore(results_dir / "runs").get(s.config_hash) is None]
    if failed:
        retry = ("run the command without --report-only to run them" if args.report_only
                 else "re-run the same command to retry them")
        print(f"error: {len(failed)} of {len(specs)} runs did not finish (failed or not run; see the tables' status "
              f"column and {results_dir}/runs/failed/); {retry}", file=sys.stderr)
        return 1
    return 1 if bad else 0


def resolve_locations(args) -> tuple[Path, Path]:
    """(where this invocation reads and writes, the reference it is compared with), both <root>/<profile>."""
    reference = Path(args.reference) / args.profile
    if args.update_reference:
        if args.results is not None and _same(Path(args.results) / args.profile, reference) is False:
            raise UsageError(f"--update-reference writes {reference}/; --results {args.results} names another "
                             "location (use one of them)")
        return reference, reference
    location = Path(args.results or DEFAULT_RESULTS) / args.profile
    if _same(location, reference):
        raise UsageError(f"{location}/ is the committed reference: write it only with --update-reference")
    return location, reference


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def default_workers(profile: str, overrides: list[str], in_process: bool) -> int:
    """Enough workers to use every core: cores // trainer.num_threads (1 if null, or when in-process)."""
    if in_process:
        return 1
    from focalbench.train import compose

    threads = compose([f"profile={profile}", *overrides]).trainer.get("num_threads")
    if not threads:
        return 1
    return max(1, _cores() // int(threads))


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what this process may use (containers, taskset)
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _raise_interrupt(signum, frame):
    from focalbench.reproduce.runner import interrupt_handler

    interrupt_handler(signum, frame)  # (marks it, so a run stopped inside Lightning's fit() stops the loop too)


def _start_workers(argv: list[str], workers: int) -> list[subprocess.Popen]:
    """Workers 2..N: this command again (same arguments), marked so they train only."""
    procs = []
    for k in range(2, workers + 1):
        cmd = [sys.executable, "-m", "focalbench.reproduce", "--_worker", str(k), "--workers", str(workers), *argv]
        procs.append(subprocess.Popen(cmd))
    return procs


def _wait_workers(children: list[subprocess.Popen]) -> list[tuple[int, int]]:
    """Wait for every extra worker; (k, exit code) of those that failed."""
    return [(k, rc) for k, p in enumerate(children, 2) if (rc := p.wait()) != 0]


def _stop_workers(children: list[subprocess.Popen]) -> None:
    """Stop the extra workers: a terminal's Ctrl-C reached them too (one process group), so first give them a
    moment, then SIGINT (the main worker alone was interrupted), SIGTERM, SIGKILL, each after a grace period."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
    try:
        for grace, sig in ((3, signal.SIGINT), (CHILD_STOP_SECONDS, signal.SIGTERM),
                           (CHILD_STOP_SECONDS, signal.SIGKILL)):
            deadline = time.monotonic() + grace
            for p in children:
                try:
                    p.wait(timeout=max(0.05, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.send_signal(sig)
        for p in children:
            p.wait()
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _child_worker(args, tables, seeds, results_dir: Path, work_dir: Path, in_process: bool) -> int:
    from focalbench.config_schema import ConfigError
    from focalbench.reproduce.runner import run_tables
    from focalbench.runstore import DamagedFileError

    signal.signal(signal.SIGTERM, _raise_interrupt)
    parent = os.getppid()

    def watch_parent():  # the main worker died (kill -9): stop, do not train on unsupervised
        while os.getppid() == parent:
            time.sleep(2)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch_parent, daemon=True).start()
    try:
        run_tables(tables, args.profile, seeds, results_dir, work_dir, args.overrides, progress=False,
                   in_process=in_process, workers=args.workers or 1, worker_tag=f"w{args._worker}")
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return 130
    except ConfigError as e:
        print(f"error: [w{args._worker}] {e}", file=sys.stderr)
        return 2
    except DamagedFileError as e:
        print(f"error: [w{args._worker}] {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: [w{args._worker}] {os_error_line(e) if e.filename else f'{results_dir}: {e.strerror or e}'}",
              file=sys.stderr)
        return 1
    return 0


def _report_specs(specs, results_dir: Path):
    """For --report-only: a (table, row, seed) whose run is not in runs/ under today's config hash but is under
    the hash manifest.json gives it (same overrides; code or defaults changed since) is shown from that run,
    so that rebuilding a report does not empty its tables."""
    import json

    from focalbench.reproduce.compare import _key_overrides
    from focalbench.reproduce.runner import RunSpec
    from focalbench.runstore import RunStore

    store = RunStore(results_dir / "runs")
    try:
        manifest = json.loads((results_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return specs
    old = {(str(e["table"]), str(e["row"]), int(e["seed"])): e for e in manifest if isinstance(e, dict)}
    out, swapped = [], 0
    for s in specs:
        e = old.get((s.table, s.row, s.seed))
        if (e is not None and not store.path(s.config_hash).exists() and store.path(str(e["config_hash"])).exists()
                and _key_overrides(e.get("overrides", []), False) == _key_overrides(s.overrides, False)):
            out.append(RunSpec(s.table, s.row, s.seed, list(e["overrides"]), str(e["config_hash"])))
            swapped += 1
        else:
            out.append(s)
    if swapped:
        print(f"note: {swapped} of {len(specs)} runs are shown under the config hash of {results_dir}/manifest.json "
              "(today's code composes another hash for them: code or defaults changed since they ran)")
    return out


def _last_selection(results_dir: Path) -> tuple[list[str], int] | None:
    """Tables and seed count of the run that wrote ``manifest.json``: a report-only rebuild (``make dashboard``)
    must not silently turn a committed 3-seed report into a 1-seed one."""
    import json

    from focalbench.runstore import move_aside

    path = results_dir / "manifest.json"
    try:
        rows = json.loads(path.read_text())
    except OSError:
        return None
    except ValueError as e:
        move_aside(path, f"not JSON: {getattr(e, 'msg', e)}", f"the tables and seeds are those of the command line "
                   f"(default --tables {' '.join(DEFAULT_TABLES)} --seeds 1); a reproduction writes it again")
        return None
    if not rows or not isinstance(rows, list):
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


def profile_noise_sd(profile: str, overrides: list[str] = ()) -> float | None:
    """``reproduce.noise_sd`` of the resolved profile config (AP: the sd of a paired difference measured on the
    profile's multi-seed reference run), or None when the profile does not set it. The report uses it only for
    comparisons resting on a single seed, and only when the run set itself has no second seed to measure it."""
    from focalbench.train import compose

    rep = compose([f"profile={profile}", *overrides]).get("reproduce") or {}
    value = rep.get("noise_sd")
    return None if value is None else float(value)


def _profile_summary(profile: str) -> str:
    from omegaconf import OmegaConf

    from focalbench.train import compose

    cfg = compose([f"profile={profile}"])
    keep = {k: cfg[k] for k in ("data", "model", "anchors", "optim", "trainer") if k in cfg}
    return f"`profile={profile}` (resolved defaults of the runs):\n\n```yaml\n{OmegaConf.to_yaml(keep)}```"


if __name__ == "__main__":
    sys.exit(main())
