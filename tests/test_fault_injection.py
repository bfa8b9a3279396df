"""Fault injection on a real (smoke, Table 3: four runs) reproduction, in the manner of SQLite's crash tests:
damage each kind of file the reproduction writes, or kill it (-9) at random points, then run the same command
again and check that it recovers (or refuses in one documented line), that no finished run is lost and that
none is trained twice. Runs trained are counted from the per-run "start"/"done" lines every worker prints.

The tally ("cases tried, cases recovered, runs lost, runs duplicated") is printed at the end of the session and
written to $FOCALBENCH_FAULT_TALLY (a JSON file) when that is set. ``python tests/test_fault_injection.py``
runs every case (slow ones included) and prints it. The kill cases are slow (``make test-all``):
FOCALBENCH_KILL_POINTS (default 5) kill points, FOCALBENCH_KILL_SEED (default 0) for the random times.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from focalbench.reproduce.__main__ import split_overrides
from focalbench.runstore import DamagedFileError, RunStore, drop_damaged_lines, repair_jsonl_tail

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
TABLE = "3"
N_RUNS = 4  # Table 3's rows, one seed
STUDY = f"focalbench-smoke-table{TABLE}"
LINE = re.compile(r"^(?:\[w\d+\] )?(start|done) +(\S+) \| (.+?) \| seed (\d+):", re.M)
TALLY = {"cases tried": 0, "cases recovered": 0, "runs lost": 0, "runs duplicated": 0, "cases": {}}


@pytest.fixture(scope="module", autouse=True)
def _tally(request):
    yield
    if not TALLY["cases tried"]:
        return
    line = ", ".join(f"{k} {TALLY[k]}" for k in ("cases tried", "cases recovered", "runs lost", "runs duplicated"))
    out = os.environ.get("FOCALBENCH_FAULT_TALLY")
    if out:
        Path(out).write_text(json.dumps(TALLY, indent=2) + "\n")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print(f"\nfault injection: {line}", flush=True)


def _record(case: str, recovered: bool, lost: int = 0, duplicated: int = 0) -> None:
    if case in TALLY["cases"]:
        case += " (alone)"
    TALLY["cases tried"] += 1
    TALLY["cases recovered"] += int(recovered)
    TALLY["runs lost"] += lost
    TALLY["runs duplicated"] += duplicated
    TALLY["cases"][case] = {"recovered": recovered, "lost": lost, "duplicated": duplicated}


# --- a reproduction and what it did ----------------------------------------------------------------------


def _cmd(base: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "focalbench.reproduce", "--profile", "smoke", "--tables", TABLE, "--no-progress",
            "--results", str(base / "results"), "--work-dir", str(base / "work"), *extra]


def _reproduce(base: Path, *extra: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(base, *extra), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def _out(base: Path) -> Path:
    return base / "results" / "smoke"


def _runs(base: Path) -> dict[str, dict]:
    """The run files that parse (a damaged one, injected by a case, is not a finished run)."""
    out = {}
    for p in (_out(base) / "runs").glob("*.json"):
        try:
            out[p.stem] = json.loads(p.read_text())
        except ValueError:
            pass
    return out


def _inodes(base: Path) -> dict[str, int]:
    return {p.stem: p.stat().st_ino for p in (_out(base) / "runs").glob("*.json")}


def _trained(stdout: str) -> list[tuple[str, int]]:
    """(row, seed) of every run a worker finished training (its "done" line)."""
    return [(m[3], int(m[4])) for m in LINE.finditer(stdout) if m[1] == "done"]


def _started(stdout: str) -> list[tuple[str, int]]:
    return [(m[3], int(m[4])) for m in LINE.finditer(stdout) if m[1] == "start"]


def _warnings(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("warning: ")]


def _errors(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error: ")]


def _study(base: Path) -> optuna.Study:
    storage = JournalStorage(JournalFileBackend(str(_out(base) / "studies.journal")))
    return optuna.load_study(study_name=STUDY, storage=storage)


def _journal_whole(base: Path) -> bool:
    lines = (_out(base) / "studies.journal").read_bytes().splitlines(keepends=True)
    try:
        return all(line.endswith(b"\n") and "op_code" in json.loads(line) for line in lines)
    except ValueError:
        return False


def _lost_and_duplicated(before: dict[str, dict], before_ino: dict[str, int], base: Path,
                         trained: list[tuple[str, int]]) -> tuple[int, int]:
    """Finished runs (``before``) that are gone or changed after the recovery; runs trained more than once."""
    after, ino = _runs(base), _inodes(base)
    lost = sum(1 for h, m in before.items() if after.get(h) != m)
    rewritten = sum(1 for h in before if h in ino and ino[h] != before_ino[h])
    twice = sum(n - 1 for n in {k: trained.count(k) for k in trained}.values() if n > 1)
    return lost, rewritten + twice


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """One uninterrupted reproduction: the tree every damage case starts from."""
    base = tmp_path_factory.mktemp("clean")
    proc = _reproduce(base)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(_trained(proc.stdout)) == N_RUNS and len(_runs(base)) == N_RUNS
    return base


def _copy(clean: Path, tmp_path: Path) -> Path:
    base = tmp_path / "case"
    shutil.copytree(clean / "results", base / "results")
    return base


def _check_recovered(case: str, base: Path, before: dict, before_ino: dict, proc, retrain: set[str]) -> None:
    """The rerun ended well: exit 0, no traceback, every run there, only ``retrain`` (hashes) trained again."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    trained = _trained(proc.stdout)
    lost, dup = _lost_and_duplicated({h: m for h, m in before.items() if h not in retrain},
                                     {h: i for h, i in before_ino.items() if h not in retrain}, base, trained)
    recovered = len(_runs(base)) == N_RUNS and len(trained) == len(retrain) and _journal_whole(base)
    _record(case, recovered and not lost, lost, dup + max(0, len(trained) - len(retrain)))
    assert recovered and not lost and not dup, (case, trained, proc.stderr[-2000:])


# --- damage cases ----------------------------------------------------------------------------------------
# The default set damages every kind of file at once and reruns once (defects 1-3); the slow set repeats each
# kind alone. A garbage line in the middle of the journal is refused, so it always has a case of its own.


def test_every_kind_of_damage_at_once_then_report_only(clean, tmp_path):
    """Defects 1-3 in one rerun: the journal's last record cut (a full disk), one run file cut, one deleted
    though its trial finished, invocations.jsonl and manifest.json cut. The rerun repairs each with one
    warning, trains exactly the two lost runs and nothing else; then a run file cut before --report-only is
    reported missing with its warning, no traceback (old code: JSONDecodeError tracebacks, or exit 1 forever)."""
    base = _copy(clean, tmp_path)
    out = _out(base)
    journal, log, manifest = out / "studies.journal", out / "invocations.jsonl", out / "manifest.json"
    data = journal.read_bytes()
    last = data.rstrip(b"\n").rfind(b"\n") + 1
    journal.write_bytes(data[: last + (len(data) - last) // 2])
    cut_run, gone_run, report_run = sorted(_runs(base))[:3]
    text = (out / "runs" / f"{cut_run}.json").read_text()
    (out / "runs" / f"{cut_run}.json").write_text(text[: len(text) // 2])
    (out / "runs" / f"{gone_run}.json").unlink()
    good_log, good_manifest = log.read_text(), json.loads(manifest.read_text())
    log.write_text(good_log + good_log[:30])
    manifest.write_text(manifest.read_text()[:100])
    before, ino = _runs(base), _inodes(base)

    proc = _reproduce(base)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    warned = _warnings(proc.stderr)
    trained = _trained(proc.stdout)
    lost, dup = _lost_and_duplicated(before, ino, base, trained)
    checks = {
        "journal tail cut": [w for w in warned if "studies.journal: dropped its damaged last record" in w]
        and len(list(out.glob("studies.journal.damaged-*"))) == 1 and _journal_whole(base),
        "run json truncated": [w for w in warned if f"{cut_run}.json is damaged" in w]
        and (out / "runs" / f"{cut_run}.json.damaged").exists() and (out / "runs" / f"{cut_run}.json").exists(),
        "run json missing": [w for w in warned if f"{gone_run}.json is missing" in w]
        and (out / "runs" / f"{gone_run}.json").exists(),
        "invocations.jsonl truncated": [w for w in warned if "invocations.jsonl" in w]
        and len(log.read_text().splitlines()) == 2,
        "manifest.json truncated": json.loads(manifest.read_text()) == good_manifest,
    }
    for case, ok in checks.items():
        _record(case, bool(ok) and not lost, 0, 0)
    TALLY["runs lost"] += lost
    TALLY["runs duplicated"] += dup + max(0, len(trained) - 2)
    assert len(warned) == 4, warned  # one line each (the manifest is rewritten, nothing to warn about)
    assert all(checks.values()), (checks, proc.stderr[-2000:])
    assert not lost and not dup and len(trained) == 2 and len(_runs(base)) == N_RUNS, (trained, proc.stderr[-2000:])
    study = _study(base)
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))

    path = out / "runs" / f"{report_run}.json"
    path.write_text(path.read_text()[:40])
    proc = _reproduce(base, "--report-only")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and not _trained(proc.stdout), proc.stderr[-3000:]
    warned = _warnings(proc.stderr)
    assert len(warned) == 1 and f"{report_run}.json is damaged" in warned[0] and "reported as missing" in warned[0]
    assert (path.parent / f"{report_run}.json.damaged").exists() and not path.exists()
    assert "1 of 4 runs did not finish" in _errors(proc.stderr)[-1]
    _record("run json truncated (--report-only)", True)



@pytest.mark.slow
def test_journal_tail_cut_is_repaired_with_one_warning(clean, tmp_path):
    """Defect 1: a full disk cut the journal's last record; the rerun drops it (a copy kept), warns once, and
    the journal is whole again (old code: the next append was glued to the partial line, and every later
    rerun failed with a JSONDecodeError traceback from Optuna's reader)."""
    base = _copy(clean, tmp_path)
    journal = _out(base) / "studies.journal"
    data = journal.read_bytes()
    last = data.rstrip(b"\n").rfind(b"\n") + 1
    cut = last + (len(data) - last) // 2
    journal.write_bytes(data[:cut])
    before, ino = _runs(base), _inodes(base)
    proc = _reproduce(base)
    _check_recovered("journal tail cut", base, before, ino, proc, set())
    warned = [w for w in _warnings(proc.stderr) if "studies.journal" in w]
    assert len(warned) == 1 and "dropped its damaged last record" in warned[0], proc.stderr[-2000:]
    n_line = data[:last].count(b"\n") + 1
    assert f"line {n_line}, {cut - last} bytes" in warned[0]
    kept = list(_out(base).glob("studies.journal.damaged-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == data[last:cut]
    study = _study(base)
    assert len({t.params["row"] for t in study.get_trials(states=(TrialState.COMPLETE,))}) == N_RUNS
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))


def test_journal_garbage_line_in_the_middle_is_refused_then_rebuilt(clean, tmp_path):
    """A damaged line with committed records after it: one line naming the file, the line number and the fix,
    exit 2, nothing touched; following the fix (move the journal aside) recovers without training anything."""
    base = _copy(clean, tmp_path)
    journal = _out(base) / "studies.journal"
    lines = journal.read_bytes().splitlines(keepends=True)
    k = len(lines) // 2
    lines[k] = b'{"op_code": 5, "trial_id": garbage\n'
    journal.write_bytes(b"".join(lines))
    damaged = journal.read_bytes()
    before, ino = _runs(base), _inodes(base)
    proc = _reproduce(base)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = _errors(proc.stderr)
    assert len(errors) == 1, proc.stderr[-2000:]
    assert f"{journal}: line {k + 1} is damaged" in errors[0] and f"mv {journal} {journal}.damaged" in errors[0]
    assert journal.read_bytes() == damaged and not _trained(proc.stdout)  # refused: nothing dropped, no run
    shutil.move(journal, f"{journal}.damaged")  # what the line says to do
    proc = _reproduce(base)
    _check_recovered("journal garbage line", base, before, ino, proc, set())


@pytest.mark.slow
def test_truncated_run_file_is_moved_aside_and_rerun(clean, tmp_path):
    """Defect 3: a cut runs/<hash>.json (old code: a JSONDecodeError traceback on every rerun)."""
    base = _copy(clean, tmp_path)
    h = sorted(_runs(base))[1]
    path = _out(base) / "runs" / f"{h}.json"
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    before, ino = _runs(base), _inodes(base)  # (without the damaged one)
    proc = _reproduce(base)
    _check_recovered("run json truncated", base, before, ino, proc, {h})
    warned = [w for w in _warnings(proc.stderr) if f"{h}.json" in w]
    assert len(warned) == 1 and "damaged" in warned[0] and "run again" in warned[0], proc.stderr[-2000:]
    assert (path.parent / f"{h}.json.damaged").read_text() == text[: len(text) // 2]
    assert json.loads(path.read_text())["status"] == "ok"


@pytest.mark.slow
def test_truncated_run_file_on_report_only_is_a_missing_row(clean, tmp_path):
    """Defect 3, --report-only: one warning, the file moved aside, the row reported missing, no traceback."""
    base = _copy(clean, tmp_path)
    h = sorted(_runs(base))[0]
    path = _out(base) / "runs" / f"{h}.json"
    path.write_text(path.read_text()[:40])
    proc = _reproduce(base, "--report-only")
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 1 and not _trained(proc.stdout)
    warned = [w for w in _warnings(proc.stderr) if f"{h}.json" in w]
    assert len(warned) == 1 and "reported as missing" in warned[0], proc.stderr[-2000:]
    assert (path.parent / f"{h}.json.damaged").exists() and not path.exists()
    assert "1 of 4 runs did not finish" in _errors(proc.stderr)[-1]
    assert "without --report-only" in _errors(proc.stderr)[-1]
    manifest = {m["config_hash"]: m["row"] for m in json.loads((_out(base) / "manifest.json").read_text())}
    table = (_out(base) / f"table{TABLE}.md").read_text()
    assert manifest[h] in table


@pytest.mark.slow
def test_missing_run_file_of_a_finished_trial_is_rerun(clean, tmp_path):
    """Defect 2: a COMPLETE trial whose runs/<hash>.json is gone (old code: never re-run, exit 1 forever)."""
    base = _copy(clean, tmp_path)
    h = sorted(_runs(base))[2]
    (_out(base) / "runs" / f"{h}.json").unlink()
    before, ino = _runs(base), _inodes(base)
    proc = _reproduce(base)
    _check_recovered("run json missing", base, before, ino, proc, {h})
    warned = [w for w in _warnings(proc.stderr) if f"{h}.json" in w]
    assert len(warned) == 1 and "is missing" in warned[0], proc.stderr[-2000:]


@pytest.mark.slow
def test_invocations_log_truncated_last_line(clean, tmp_path):
    base = _copy(clean, tmp_path)
    log = _out(base) / "invocations.jsonl"
    good = log.read_text()
    log.write_text(good + good[: len(good) // 2])  # a second line, cut short
    before, ino = _runs(base), _inodes(base)
    proc = _reproduce(base)
    _check_recovered("invocations.jsonl truncated", base, before, ino, proc, set())
    assert len([w for w in _warnings(proc.stderr) if "invocations.jsonl" in w]) == 1, proc.stderr[-2000:]
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(calls) == 2 and calls[0] == json.loads(good)
    assert "elapsed over 2 invocations" in (_out(base) / "report.md").read_text()


@pytest.mark.slow
def test_manifest_truncated(clean, tmp_path):
    base = _copy(clean, tmp_path)
    manifest = _out(base) / "manifest.json"
    good = json.loads(manifest.read_text())
    manifest.write_text(manifest.read_text()[:100])
    before, ino = _runs(base), _inodes(base)
    proc = _reproduce(base)
    _check_recovered("manifest.json truncated", base, before, ino, proc, set())
    assert json.loads(manifest.read_text()) == good


# --- Ctrl-C, overrides, diverged trials --------------------------------------------------------------------


def test_ctrl_c_is_one_line_exit_130_and_recorded(tmp_path):
    """Defect 5: SIGINT (a terminal's Ctrl-C reaches the whole process group) during the runs."""
    log = tmp_path / "out.txt"
    with open(log, "w") as f:
        proc = subprocess.Popen(_cmd(tmp_path), cwd=ROOT, env=ENV, stdout=f, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not _started(log.read_text()) and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    m = re.fullmatch(r"interrupted: (\d) of 4 runs finished; rerun the same command to resume", last)
    assert m, err[-2000:]
    assert int(m[1]) == len(_runs(tmp_path))
    calls = [json.loads(line) for line in (_out(tmp_path) / "invocations.jsonl").read_text().splitlines()]
    assert len(calls) == 1 and calls[0]["status"] == "interrupted"
    before, ino, first = _runs(tmp_path), _inodes(tmp_path), _trained(log.read_text())
    again = _reproduce(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    lost, dup = _lost_and_duplicated(before, ino, tmp_path, first + _trained(again.stdout))
    _record("ctrl-c", len(_runs(tmp_path)) == N_RUNS and not lost, lost, dup)
    assert not lost and not dup and len(_runs(tmp_path)) == N_RUNS


def test_overrides_after_tables_are_overrides():
    """Defect 6: ``--tables 1a trainer.max_steps=5`` used to read the override as a table name."""
    assert split_overrides(["--tables", "1a", "trainer.max_steps=5", "--seeds", "2"]) == (
        ["--tables", "1a", "--seeds", "2"], ["trainer.max_steps=5"])
    assert split_overrides(["--results", "out=1", "+x=1", "~y", "--tables", "3"]) == (
        ["--results", "out=1", "--tables", "3"], ["+x=1", "~y"])


def test_override_after_tables_reaches_the_config_and_unknown_table_lists_known(tmp_path):
    proc = _reproduce(tmp_path, "--tables", TABLE, "trainer.max_steps=abc", timeout=120)
    assert proc.returncode == 2 and _errors(proc.stderr) == ["error: trainer.max_steps=abc: must be an integer >= 1"]
    proc = _reproduce(tmp_path, "--tables", TABLE, "1z", timeout=120)
    assert proc.returncode == 2
    assert _errors(proc.stderr) == ["error: TABLES: unknown table '1z'; known tables: 1a 1b 1c 1d 1e 3"]


def test_diverged_run_trial_is_pruned_with_status_and_stays_done(tmp_path):
    """Defect 4 (reproduction): a diverged run's trial is PRUNED with status=diverged, never COMPLETE 0.0,
    and a rerun neither re-queues nor re-runs it (its run is in runs/)."""
    from focalbench.reproduce.runner import prepare_study, tell_run
    from focalbench.reproduce.sweeps import load_table
    from focalbench.sweeps.storage import make_storage

    url = f"journal://{tmp_path / 'studies.journal'}"
    storage = make_storage(url)
    table = load_table(TABLE)
    study = prepare_study(url, storage, "smoke", table, [0])
    trial = study.ask()
    row = study.trials[trial.number].system_attrs["fixed_params"]["row"]
    tell_run(study, trial, {"status": "diverged", "AP": 0.0, "reason": "non-finite loss"})
    t = study.trials[trial.number]
    assert t.state == TrialState.PRUNED and t.user_attrs["status"] == "diverged" and t.value is None
    store = RunStore(tmp_path / "runs")
    store.put("h0", {"status": "diverged", "AP": 0.0})
    n = len(study.trials)
    prepare_study(url, storage, "smoke", table, [0], store, {(row, 0): "h0"})
    assert len(study.trials) == n  # not queued again


def test_diverged_sweeper_trial_is_pruned_with_status(tmp_path):
    """Defect 4 (Hydra sweeper): a job that diverged (metrics.json says so, or it marked its trial) returns AP
    0.0; its trial is PRUNED with user attr status=diverged, not a COMPLETE 0.0 (nor a failure)."""
    from focalbench.sweeps.storage import make_storage

    for how in ("metrics", "attr"):
        journal = tmp_path / f"{how}.journal"
        cmd = [sys.executable, str(ROOT / "tests" / "apps" / "quadratic.py"), "-m", "hydra/sweeper=optuna",
               f"hydra.sweeper.storage=journal://{journal}", "hydra.sweeper.study_name=t",
               f"hydra.sweep.dir={tmp_path / how}", "hydra.job.chdir=false", "x=interval(0,4)",
               "hydra.sweeper.n_trials=2", f"diverge={how}"]
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=ENV)
        assert proc.returncode == 0, proc.stderr[-3000:]
        study = optuna.load_study(study_name="t", storage=make_storage(f"journal://{journal}"))
        assert [(t.state, t.user_attrs.get("status")) for t in study.trials] == [(TrialState.PRUNED, "diverged")] * 2


# --- the repair helpers themselves -----------------------------------------------------------------------


def test_repair_helpers(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"op_code": 1}\n{"op_code": 2}\n{"op_co')
    msg = repair_jsonl_tail(p, lambda o: "op_code" in o)
    assert "line 3, 7 bytes" in msg and p.read_bytes() == b'{"op_code": 1}\n{"op_code": 2}\n'
    assert repair_jsonl_tail(p) is None  # whole: untouched
    p.write_bytes(b'{"op_code": 1}\nxx\n{"op_code": 2}\n')
    with pytest.raises(DamagedFileError, match=r"x.jsonl: line 2 is damaged"):
        repair_jsonl_tail(p, hint="do this")
    assert p.read_bytes() == b'{"op_code": 1}\nxx\n{"op_code": 2}\n'
    assert drop_damaged_lines(p, "ok") == 1 and p.read_bytes() == b'{"op_code": 1}\n{"op_code": 2}\n'
    store = RunStore(tmp_path / "runs")
    store.root.mkdir()
    store.path("a").write_text("[1, 2]")
    store.path("b").write_text('{"AP": 1')
    assert store.get("a") is None and store.get("b") is None and store.get("c") is None
    assert store.moved == {"a", "b"} and not store.keys()
    assert (store.root / "b.json.damaged").read_text() == '{"AP": 1'


# --- kill -9 at random points, two workers -------------------------------------------------------------------


def _kill_case(base: Path, delay: float) -> tuple[bool, int, int, str]:
    """Start a two-worker reproduction, kill -9 its process group after ``delay`` s, run it again; returns
    (recovered, runs lost, runs duplicated, what happened)."""
    base.mkdir(parents=True)
    log = base / "first.txt"
    with open(log, "w") as f:
        proc = subprocess.Popen(_cmd(base, "--workers", "2"), cwd=ROOT, env=ENV, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    time.sleep(delay)
    finished_first = proc.poll() is not None
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)
    runs_dir = _out(base) / "runs"
    before = _runs(base) if runs_dir.exists() else {}  # every file there parses: writes are atomic
    before_ino = _inodes(base) if runs_dir.exists() else {}
    first = _trained(log.read_text())
    again = _reproduce(base, "--workers", "2", timeout=400)
    trained = first + _trained(again.stdout)
    lost, dup = _lost_and_duplicated(before, before_ino, base, trained)
    ok = again.returncode == 0 and "Traceback" not in again.stderr and len(_runs(base)) == N_RUNS
    if ok:
        study = _study(base)
        ok = (not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
              and len({t.params["row"] for t in study.get_trials(states=(TrialState.COMPLETE,))}) == N_RUNS)
    what = (f"killed after {delay:.1f} s ({'after the end' if finished_first else f'{len(before)} runs done'}): "
            f"rc {again.returncode}, {len(_trained(again.stdout))} trained on resume; {again.stderr[-1500:]}")
    return ok and not lost, lost, dup, what


@pytest.mark.slow
def test_kill_9_at_random_points_two_workers(tmp_path):
    points = int(os.environ.get("FOCALBENCH_KILL_POINTS", "5"))
    rng = random.Random(int(os.environ.get("FOCALBENCH_KILL_SEED", "0")))
    failures = []
    for i in range(points):
        delay = rng.uniform(1.0, 14.0)  # a two-worker smoke Table 3 takes ~10-15 s from start to report
        ok, lost, dup, what = _kill_case(tmp_path / f"k{i}", delay)
        _record(f"kill -9 #{i} at {delay:.1f} s", ok, lost, dup)
        if not (ok and not dup):
            failures.append(what)
    assert not failures, failures


if __name__ == "__main__":  # every case, slow ones included, and the tally
    sys.exit(pytest.main([__file__, "-m", "", "-q", "-p", "no:cacheprovider", *sys.argv[1:]]))
