"""sweeps/search_gamma_alpha.yaml (what `make search` runs), end to end on the smoke profile: the study lands in
the profile's default SQLite storage and the report is written from it. (Its storage default once named the
``${hydra:...}`` resolver, which fails when the sweeper is built: `make search` crashed before any trial.)"""

import os
import subprocess
import sys
from pathlib import Path

import optuna
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]


def test_make_search_path_on_smoke(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1"}
    cmd = [sys.executable, "-m", "focalbench.train", "-m", "--config-dir", str(ROOT / "sweeps"), "--config-name",
           "search_gamma_alpha", "profile=smoke", "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={tmp_path / 'mr'}"]
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    url = f"sqlite:///{tmp_path / 'results' / 'smoke' / 'optuna.db'}"   # the file's default, per profile
    study = optuna.load_study(study_name="search_gamma_alpha", storage=url)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 2 and all(0 <= t.params["loss.gamma"] <= 5 and 0.05 <= t.params["loss.alpha"] <= 0.999
                                  for t in done)
    assert all(t.intermediate_values for t in done)  # val AP reported per epoch (what the pruner reads)
    out = tmp_path / "search"
    r = subprocess.run([sys.executable, "-m", "focalbench.sweeps.report", "--storage", url, "--study",
                        "search_gamma_alpha", "--out", str(out)], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "best.yaml").read_text().count("loss.") == 2 and (out / "trials.csv").exists()
