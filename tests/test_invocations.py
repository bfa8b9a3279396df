"""Wall time over several reproduction invocations: concurrent workers count once, gaps do not count."""

from datetime import datetime, timezone

import pytest

from focalbench.reproduce.report import elapsed_seconds, read_invocations, record_invocation

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()


def test_overlapping_workers_count_once_and_gaps_not_at_all(tmp_path):
    record_invocation(tmp_path, "w1", T0, T0 + 600, 0, 10)          # worker 1: 10 min
    record_invocation(tmp_path, "w2", T0 + 20, T0 + 660, 10, 12)    # worker 2, started 20 s later: to 11 min
    record_invocation(tmp_path, "later", T0 + 3600, T0 + 3660, 12, 12)  # an hour later: 1 min
    calls = read_invocations(tmp_path)
    assert [c["command"] for c in calls] == ["w1", "w2", "later"]
    assert calls[1]["runs_finished_meanwhile"] == 2 and calls[0]["wall_seconds"] == 600
    assert elapsed_seconds(calls) == pytest.approx(660 + 60)


def test_no_file_and_bad_line(tmp_path):
    assert read_invocations(tmp_path) == [] and elapsed_seconds([]) == 0
    (tmp_path / "invocations.jsonl").write_text('{"start": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"invocations.jsonl:2: not a JSON line"):
        read_invocations(tmp_path)


def test_report_only_keeps_the_last_runs_tables_and_seeds(tmp_path):
    # `make dashboard` rebuilds with --report-only and no TABLES/SEEDS: it must not turn a 3-seed report into 1 seed
    import json

    from focalbench.reproduce.__main__ import _last_selection

    assert _last_selection(tmp_path) is None
    rows = [{"table": "1a", "row": "r", "seed": s, "config_hash": "h"} for s in (0, 1, 2)]
    (tmp_path / "manifest.json").write_text(json.dumps(rows + [{"table": "3", "row": "r", "seed": 0, "config_hash": "h"}]))
    assert _last_selection(tmp_path) == (["1a", "3"], 3)
