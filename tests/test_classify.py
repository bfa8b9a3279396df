"""focalbench.classify: data with an exact imbalance ratio, metrics equal to scikit-learn's, bad inputs, one run."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from focalbench.classify.data import build_splits
from focalbench.classify.metrics import binary_metrics, classification_metrics
from focalbench.classify.run import compose, run


def _tabular(ratio, **kw):
    cfg = dict(kind="tabular", ratio=ratio, max_ratio=200, positives={"train": 8, "val": 5, "test": 4},
               rows={"train": None, "val": None, "test": None}, n_features=6, n_informative=3,
               n_redundant=1, n_clusters_per_class=1, class_sep=1.0, flip_y=0.0, seed=3)
    cfg.update(kw)
    return cfg


def _digits(ratio, **kw):
    cfg = dict(kind="digits", ratio=ratio, max_ratio=10000, positive=3,
               positives={"train": 6, "val": 4, "test": 4}, rows={"train": None, "val": None, "test": None},
               source_split={"train": 0.5, "val": 0.25, "test": 0.25}, shift=1, noise=0.05, seed=1)
    cfg.update(kw)
    return cfg


@pytest.mark.parametrize("ratio", [1, 7, 100, 200])
def test_tabular_ratio_reached_equals_ratio_asked(ratio):
    s = build_splits(_tabular(ratio))
    for split, npos in {"train": 8, "val": 5, "test": 4}.items():
        assert s.counts(split) == {"pos": npos, "neg": ratio * npos}
        assert s.ratio_reached[split] == ratio
    assert s.x["train"].dtype == np.float32 and s.x["train"].shape[1] == 6


def test_tabular_label_noise_keeps_the_ratio():
    clean, noisy = build_splits(_tabular(50)), build_splits(_tabular(50, flip_y=0.25))
    assert noisy.ratio_reached == clean.ratio_reached == {"train": 50.0, "val": 50.0, "test": 50.0}
    assert not np.array_equal(np.sort(clean.y["train"]), np.sort(noisy.y["train"])) or \
        (noisy.x["train"][noisy.y["train"] >= 0].mean() != clean.x["train"][clean.y["train"] >= 0].mean())


def test_digits_ratio_nested_and_multilabel():
    small, big = build_splits(_digits(20)), build_splits(_digits(2000))
    assert small.ratio_reached == {"train": 20.0, "val": 20.0, "test": 20.0}
    assert big.counts("val") == {"pos": 4, "neg": 8000} and big.x["val"].shape[1:] == (1, 8, 8)
    # the negatives of 1:20 are among those of 1:2000 (more negatives, same task)
    rows = {r.tobytes() for r in big.x["train"][big.y["train"] < 0]}
    assert all(r.tobytes() in rows for r in small.x["train"][small.y["train"] < 0])
    multi = build_splits(_digits(10, positive=[3, 8]))
    assert multi.num_classes == 2 and multi.counts("train") == {"pos": 12, "neg": 60}
    assert sorted(np.unique(multi.y["train"]).tolist()) == [-1, 0, 1]


@pytest.mark.parametrize("bad, key", [
    (dict(ratio=0.5), "data.ratio=0.5"),
    (dict(ratio=0), "data.ratio=0"),
    (dict(ratio=500), "data.ratio=500"),              # above max_ratio
    (dict(positives={"train": 8, "val": 0, "test": 4}), "data.positives.val=0"),
    (dict(ratio=100, rows={"train": None, "val": 60, "test": None}), "data.ratio=100"),  # no val positive
    (dict(flip_y=0.9), "data.flip_y=0.9"),
    (dict(kind="images"), "data.kind='images'"),
])
def test_bad_data_inputs_one_line_error(bad, key):
    with pytest.raises(ValueError) as e:
        build_splits(_tabular(10) | bad)
    msg = str(e.value)
    assert key in msg and "\n" not in msg
    if "rows" in bad:
        assert "no validation positive" in msg


def test_bad_digit_one_line_error():
    with pytest.raises(ValueError, match=r"data.positive=12"):
        build_splits(_digits(10, positive=12))


def _fixed_scores(n=3000, n_pos=40, seed=0):
    rng = np.random.default_rng(seed)
    y = np.zeros(n, int)
    y[rng.choice(n, n_pos, replace=False)] = 1
    p = np.clip(rng.beta(1, 8, n) + 0.35 * y * rng.random(n), 0, 1)
    return np.round(p, 2), y  # rounding makes ties, which the definitions must handle as sklearn does


@pytest.mark.parametrize("seed", [0, 1])
def test_metrics_equal_scikit_learn(seed):
    p, y = _fixed_scores(seed=seed)
    m = binary_metrics(p, y, fpr=0.01, n_bins=15)
    assert m["AP"] == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    assert m["ROC_AUC"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    fpr, tpr, _ = skm.roc_curve(y, p, drop_intermediate=False)
    assert m["recall_at_fpr"] == pytest.approx(tpr[fpr <= 0.01].max(), abs=1e-12)
    prec, rec, _ = skm.precision_recall_curve(y, p)
    with np.errstate(invalid="ignore"):
        f1 = np.nan_to_num(2 * prec * rec / (prec + rec))
    assert m["best_F1"] == pytest.approx(f1.max(), abs=1e-12)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=15, strategy="uniform")
    counts = np.bincount(np.searchsorted(np.linspace(0, 1, 16)[1:-1], p), minlength=15)
    counts = counts[counts > 0]
    assert m["ECE"] == pytest.approx(np.sum(counts / len(p) * np.abs(prob_true - prob_pred)), abs=1e-12)
    assert m["Brier"] == pytest.approx(skm.brier_score_loss(y, p), abs=1e-12)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, p >= 0.5))
    assert m["accuracy_all_negative"] == pytest.approx(1 - y.mean())


def test_multilabel_metrics_are_the_macro_mean():
    p, y = _fixed_scores(seed=2)
    q, z = _fixed_scores(seed=3)
    labels = np.where(y == 1, 0, np.where(z == 1, 1, -1))  # exclusive one-vs-rest labels
    m = classification_metrics(np.stack([p, q], 1), labels, ["a", "b"])
    ap = [skm.average_precision_score(labels == k, s) for k, s in enumerate((p, q))]
    assert m["AP"] == pytest.approx(np.mean(ap)) and set(m["per_class"]) == {"a", "b"}


def test_compose_loss_group_is_the_shared_one():
    cfg = compose(["loss=alpha_ce", "loss.alpha=0.9", "data=digits"])
    assert cfg.loss.name == "alpha_ce" and cfg.loss.alpha == 0.9
    assert cfg.model.arch == "cnn"  # data=digits picks the CNN; model=mlp on the command line still wins
    assert compose(["data=digits", "model=mlp"]).model.arch == "mlp"


@pytest.mark.parametrize("over, key", [(["loss=ohem"], "loss.name=ohem"), (["model.prior_prob=2"], "model.prior_prob=2")])
def test_bad_run_inputs_one_line_error(over, key):
    with pytest.raises(ValueError) as e:
        run(compose(["profile=smoke"] + over), None, write=False)
    assert key in str(e.value) and "\n" not in str(e.value)


def test_smoke_run_writes_metrics_json(tmp_path):
    cfg = compose(["profile=smoke", "data.ratio=20", "loss=focal", "seed=2"])
    m = run(cfg, tmp_path, overrides=["data.ratio=20"])
    disk = json.loads((tmp_path / "metrics.json").read_text())
    assert disk["status"] == "ok" and disk["config_hash"] == m["config_hash"]
    assert disk["data"]["ratio_reached"] == {"train": 20.0, "val": 20.0, "test": 20.0}
    for k in ("seed", "git_sha", "overrides", "train_seconds", "steps", "AP"):
        assert k in disk
    for k in ("AP", "ROC_AUC", "recall_at_fpr", "best_F1", "ECE", "Brier", "accuracy", "accuracy_all_negative"):
        assert 0.0 <= disk["test"][k] <= 1.0
    assert disk["AP"] == disk["val"]["AP"] and disk["seed"] == 2 and disk["steps"] == 20


def test_cli_hydra_app(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "focalbench.classify", "profile=smoke", "loss=ce", "data.ratio=5",
                        f"hydra.run.dir={out}"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "ok" and m["loss"]["name"] == "ce" and "data.ratio=5" in m["overrides"]


def test_cli_default_run_dir(tmp_path):
    # no hydra.run.dir: the default one must resolve in a single run (it once named hydra.job.id, multirun only)
    r = subprocess.run([sys.executable, "-m", "focalbench.classify", "profile=smoke", "trainer.max_steps=2"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(list(tmp_path.glob("outputs/classify/*/*/metrics.json"))) == 1


@pytest.mark.parametrize("over, line", [
    (["loss.gamma=-1"], "loss.gamma=-1: must be a number >= 0"),
    (["optim.lr=0"], "optim.lr=0: must be a number > 0"),
    (["trainer.max_steps=0"], "trainer.max_steps=0: must be an integer >= 1"),
    (["data.ratio=0"], "data.ratio=0: must be a number in [1, data.max_ratio=100]"),
    (["data.ratio=1000"], "data.ratio=1000: must be a number in [1, data.max_ratio=100]"),
    (["loss=alpha_ce", "loss.alpha=1.5"], "loss.alpha=1.5: must be in [0, 1], or -1"),
])
def test_bad_values_are_config_errors(over, line):
    from focalbench.config_schema import ConfigError

    with pytest.raises(ConfigError) as e:
        run(compose(["profile=smoke", *over]), None, write=False)
    assert str(e.value).startswith(line) and "\n" not in str(e.value)


@pytest.mark.parametrize("over, line", [("loss.gamma=-1", "error: loss.gamma=-1: must be a number >= 0"),
                                        ("loss=focl", "error: loss=focl: unknown loss; allowed: alpha_ce, ce")])
def test_cli_bad_input_is_one_line(tmp_path, over, line):
    r = subprocess.run([sys.executable, "-m", "focalbench.classify", "profile=smoke", over],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith(line) and r.stderr.count("\n") == 1, r.stderr[-2000:]
    assert not (tmp_path / "outputs").exists()  # nothing made before the error


def test_classifier_lr_follows_the_detection_schedule():
    """One lr schedule for both apps: the classifier's warm-up + cosine is focalbench.model.lit.lr_factor."""
    from focalbench.classify.model import MLP, ClassifierModule
    from focalbench.losses import build_classification_loss
    from focalbench.model.lit import lr_factor

    crit = build_classification_loss("focal")
    module = ClassifierModule(MLP(4, 1, hidden=(8,)), crit, 1, lr=0.01, max_steps=50, warmup_steps=10)
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    seen = []
    for _ in range(50):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    want = [0.01 * lr_factor(s, max_steps=50, warmup_iters=10, warmup_factor=0.1, schedule="cosine") for s in range(50)]
    assert seen == pytest.approx(want)
    assert seen[0] == pytest.approx(0.001) and max(seen) == pytest.approx(0.01) and seen[-1] < 1e-4


def test_composing_one_app_inside_the_other_keeps_the_callers_hydra():
    """Both apps compose through focalbench.hydra_context: a context over the other app's folder is set aside
    for the block and restored (classify's compose used to clear it)."""
    import hydra
    from hydra.core.global_hydra import GlobalHydra

    from focalbench.hydra_context import main_config_dir
    from focalbench.paths import CLASSIFY_CONF_DIR, CONF_DIR
    from focalbench.train import compose as train_compose

    with hydra.initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="outer"):
        assert main_config_dir() == CONF_DIR.resolve()
        assert compose(["profile=smoke"]).data.kind                   # the classification app's config...
        assert GlobalHydra.instance().is_initialized() and main_config_dir() == CONF_DIR.resolve()  # ...caller's kept
        assert train_compose(["profile=smoke"]).model.backbone.name    # and the running one is used as it is
    with hydra.initialize_config_dir(config_dir=str(CLASSIFY_CONF_DIR), version_base="1.3", job_name="outer"):
        assert train_compose(["profile=smoke"]).anchors.scales
        assert main_config_dir() == CLASSIFY_CONF_DIR.resolve()
    assert not GlobalHydra.instance().is_initialized()
