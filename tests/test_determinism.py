"""A run is what its hash says: the same config at the same thread count trains to the same result, and the
thread count (which changes CPU reductions) is part of the hash."""

from __future__ import annotations

import json

import pytest

from focalbench.train import compose, run, run_config_for_hash
from focalbench.runstore import config_hash


def _train(tmp_path, name, threads):
    cfg = compose(["profile=smoke", f"trainer.num_threads={threads}", "trainer.max_steps=6", "seed=3"])
    m = run(cfg, tmp_path / name)
    return m, json.loads((tmp_path / name / "metrics.json").read_text())


@pytest.mark.parametrize("threads", [1, 2])
def test_rerun_same_threads_is_identical(tmp_path, threads):
    a, _ = _train(tmp_path, "a", threads)
    b, _ = _train(tmp_path, "b", threads)
    assert a["status"] == b["status"] == "ok"
    for k in ("AP", "AP50", "AP75", "APs", "APm"):
        assert a[k] == b[k], (k, a[k], b[k])
    assert a["config_hash"] == b["config_hash"]


def test_threads_are_part_of_the_hash():
    one = config_hash(run_config_for_hash(compose(["profile=smoke", "trainer.num_threads=1"])))
    two = config_hash(run_config_for_hash(compose(["profile=smoke", "trainer.num_threads=2"])))
    bar = config_hash(run_config_for_hash(compose(["profile=smoke", "trainer.num_threads=1",
                                                   "trainer.enable_progress_bar=true"])))
    assert one != two
    assert one == bar  # how a run is shown is not what it computes
