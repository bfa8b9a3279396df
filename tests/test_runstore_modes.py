"""Atomic writes keep the umask's file mode (mkstemp alone makes 0600: other users of a shared results folder
could not read the runs)."""

import stat

from focalbench.runstore import RunStore, atomic_write_text


def test_atomic_write_has_open_mode(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic_write_text(tmp_path / "a.txt", "x")
    RunStore(tmp_path / "runs").put("abc", {"AP": 1.0})
    want = stat.S_IMODE(plain.stat().st_mode)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == want
    assert stat.S_IMODE((tmp_path / "runs" / "abc.json").stat().st_mode) == want
