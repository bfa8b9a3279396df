"""Correctness of what ``make bench`` compares (same values, same indices, same AP), on small inputs.

Benchmarks are not timed tests: nothing here asserts a speed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `benchmarks/` is a top-level folder of the repository, not part of the package
    sys.path.insert(0, str(REPO))

from benchmarks import coco_eval, focal_loss, ohem  # noqa: E402
from benchmarks.common import Timing, saved_tensor_bytes  # noqa: E402
from benchmarks.report import render_readme  # noqa: E402
from focalbench.losses import sigmoid_focal_loss  # noqa: E402
from focalbench.model.anchors import grid_anchors  # noqa: E402
from torchvision.ops import sigmoid_focal_loss as tv_focal  # noqa: E402


# ------------------------------------------------------------------------------------------- focal loss
@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_focal_loss_same_values_and_gradients_as_torchvision(reduction):
    x, t = focal_loss.make_inputs(num_anchors=2000, num_classes=8, num_pos=40, seed=1)
    weights = torch.rand(x.shape, generator=torch.Generator().manual_seed(1))   # a non-uniform grad_output

    def scalar(fn):
        def call(inp, tgt):
            out = fn(inp, tgt, reduction=reduction)
            return (out * weights).sum() if reduction == "none" else out
        return call

    loss_o, grad_o = focal_loss.loss_and_grad(scalar(sigmoid_focal_loss), x, t)
    loss_t, grad_t = focal_loss.loss_and_grad(scalar(tv_focal), x, t)
    torch.testing.assert_close(loss_o, loss_t, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad_o, grad_t, rtol=1e-4, atol=1e-7)


def test_focal_loss_saves_one_logits_sized_tensor():
    x, t = focal_loss.make_inputs(num_anchors=500, num_classes=8, seed=2)
    logits_bytes = x.numel() * x.element_size()
    leaf = x.clone().requires_grad_()
    ours, n_ours = saved_tensor_bytes(lambda: sigmoid_focal_loss(leaf, t, reduction="sum"))
    theirs, n_theirs = saved_tensor_bytes(lambda: tv_focal(leaf, t, reduction="sum"))
    assert (ours, n_ours) == (logits_bytes, 1)
    assert theirs > 3 * logits_bytes       # the budget (logits + targets + one logits-sized) is exceeded


def test_focal_loss_agreement_against_float64():
    x, t = focal_loss.make_inputs(num_anchors=300, num_classes=5, seed=3)
    err = focal_loss.agreement(x, t, torch.float32)
    assert err["ours_loss_rel_err"] < 1e-5 and err["ours_grad_max_abs_err"] < 1e-5


# ------------------------------------------------------------------------------------------------- OHEM
@pytest.fixture(scope="module")
def small_image():
    anchors = grid_anchors(192, 256)
    scores, labels = ohem.trained_like(anchors, 192, 256, num_objects=4, num_distractors=6, seed=4)
    return anchors, scores, labels


def test_trained_like_scores_are_distinct_ranks(small_image):
    anchors, scores, labels = small_image
    assert scores.unique().numel() == anchors.shape[0]
    assert bool((labels >= 0).any()) and bool((labels == -2).any()) and bool((labels == -1).any())
    s = torch.tensor([0.5, 0.1, 0.5, 0.9])
    assert ohem.distinct_ranks(s).tolist() == [1.0, 0.0, 2.0, 3.0]   # ties: lower index ranks lower


@pytest.mark.parametrize("iou", [0.5, 0.7])
def test_ohem_selects_the_same_indices_as_whole_set_nms(small_image, iou):
    anchors, scores, labels = small_image
    survivors = ohem.reference_nms(anchors, scores, labels, iou)
    assert bool((labels[survivors] != -2).all())
    for b in (16, 64, 256):
        got = ohem.ours_select(anchors, scores, labels, b, iou)
        assert torch.equal(got, ohem.reference_select(survivors, labels, b)), b
    for b in (16, 64):
        got = ohem.ours_select(anchors, scores, labels, b, iou, ohem.NEG_POS_RATIO)
        want = ohem.reference_select(survivors, labels, b, ohem.NEG_POS_RATIO)
        assert want.numel() > 0 and torch.equal(got, want), b


# ------------------------------------------------------------------------------------------ train step
@pytest.fixture(scope="module")
def two_models():
    from benchmarks import train_step

    # One thread: with two OpenMP threads on a machine whose cores are busy, a step of this model was
    # measured at 7 s instead of 0.05 s (threads waiting at barriers for a descheduled peer).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = train_step.cpu_config()
    module = train_step.build_ours(cfg)
    yield train_step, cfg, module, train_step.build_torchvision(module, cfg)
    torch.set_num_threads(threads)


def test_torchvision_reference_has_our_anchors_and_classification_loss(two_models):
    train_step, cfg, module, tv = two_models
    images, targets = train_step.synthetic_batches(1, batch_size=1, size=int(cfg.data.image_size), seed=5)[0]
    assert train_step.anchors_match(module, tv, images)
    model = module.model
    anchors = model.anchors(images)
    g = torch.Generator().manual_seed(6)
    cls = torch.randn(1, anchors.shape[0], train_step.NUM_CLASSES, generator=g) - 3.0
    # one image: our batch normaliser (#fg in the batch) equals torchvision's per-image one
    ours = model.criterion(cls, model.assign(anchors, targets)["labels"], anchors)
    from torchvision.ops import box_iou

    matched = [tv.proposal_matcher(box_iou(targets[0]["boxes"], anchors))]
    theirs = tv.head.classification_head.compute_loss(targets, {"cls_logits": cls}, matched)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_both_steppers_train(two_models):
    train_step, cfg, module, tv = two_models
    batches = train_step.synthetic_batches(1, batch_size=2, size=int(cfg.data.image_size), seed=7)
    before = next(tv.backbone.parameters()).detach().clone()
    for stepper in (train_step.OursStepper(module), train_step.TorchvisionStepper(tv, module)):
        loss = stepper(batches[0])
        assert loss == loss and loss > 0
    assert not torch.equal(before, next(tv.backbone.parameters()))   # the copy trains, separately from ours


# ---------------------------------------------------------------------------------------- COCO evaluation
def test_faster_coco_eval_gives_pycocotools_stats():
    gt = coco_eval.synthetic_gt(40, num_classes=6, seed=8)
    dets = coco_eval.perturbed_detections(gt, seed=8)
    import copy

    faster = coco_eval.evaluate("faster", copy.deepcopy(gt), copy.deepcopy(dets))
    ref = coco_eval.evaluate("pycocotools", copy.deepcopy(gt), copy.deepcopy(dets))
    assert len(faster) == 12 and 0.05 < ref[0] < 0.95      # realistic, neither empty nor perfect
    assert max(abs(a - b) for a, b in zip(faster, ref)) <= coco_eval.TOLERANCE


# ------------------------------------------------------------------------------------------- harness
def test_paired_ratio_is_median_of_pairs_and_report_renders():
    t = Timing([1.0, 2.0, 4.0], [2.0, 2.0, 2.0], paired=True, loadavg_before=[0, 0, 0], loadavg_after=[0, 0, 0])
    assert t.speedup == 1.0                       # ratios 2, 1, 0.5
    u = Timing([1.0, 3.0], [10.0], paired=False, loadavg_before=[0, 0, 0], loadavg_after=[0, 0, 0])
    assert u.speedup == 5.0                       # ratio of medians
    row = {"name": "ohem_b128_iou0.5", "what": "x", "benchmark": "ohem", "target_speedup": 50.0, "met": False,
           "batch_size": 128, "same_indices": True, **t.record()}
    res = {"machine": {"argv": ["python", "benchmarks/run.py"], "date": "d", "git_sha": "s", "cpu": "c",
                       "cpu_count": 2, "affinity_cpus": 2, "torch_threads": 1, "torch_interop_threads": 1,
                       "cpu_capability": "AVX2", "gpu": None, "loadavg": [1, 1, 1], "loadavg_end": [1, 1, 1],
                       "platform": "p", "python": "3", "versions": {"torch": "2"}},
           "quick": False, "seconds": {"ohem": 1.0}, "total_seconds": 1.0, "rows": [row], "errors": {}}
    text = render_readme(res)
    assert "`ohem_b128_iou0.5`" in text and "**not met**" in text and "same indices" in text


@pytest.mark.slow  # compiles the kernels (tests/test_focal_compiled.py covers the compiled path by default)
def test_gpu_kernel_script_runs_on_cpu(tmp_path):
    """The GPU script's kernel part, on the CPU at a small size: every variant timed, the floor row first."""
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "benchmarks/gpu_kernels.py", "--device", "cpu", "--quick",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "kernels.json").read_text())
    variants = [r["variant"] for r in res["rows"]]
    assert variants[0].startswith("floor") and {"torchvision", "ours, eager", "ours, compiled"} <= set(variants)
    assert all(r["median_ms"] > 0 and r["shape"] == [4096, 80] for r in res["rows"])
    assert "4,096 x 80" in (tmp_path / "kernels.md").read_text()


def test_report_renders_the_focal_floor_table():
    t = Timing([0.01] * 7, [0.3] * 7, paired=True, loadavg_before=[0, 0, 0], loadavg_after=[0, 0, 0])
    med = {"floor": 0.004, "compiled": 0.01, "eager": 0.1, "torchvision": 0.3}
    row = {"name": "focal_loss_float32", "what": "x", "benchmark": "focal_loss", "target_speedup": 8.0,
           "met": True, "dtype": "float32", "shape": [100, 80], "path": "compiled", **t.record(),
           **{f"{k}_median_s": v for k, v in med.items()}, **{f"{k}_times_s": [v] * 7 for k, v in med.items()},
           **{f"speedup_{k}_vs_torchvision": 0.3 / v for k, v in med.items() if k != "floor"},
           **{f"{k}_over_floor": v / 0.004 for k, v in med.items() if k != "floor"},
           "compile_cold": {"first_call_s": 20.0}, "compile_warm": {"first_call_s": 3.0, "second_call_s": 0.01},
           "fx_graph_cache": True, "saved_bytes_ours": 1, "saved_bytes_theirs": 8, "saved_budget_bytes": 3,
           "saved_met": True, "saved_tensors_ours": 1, "saved_tensors_theirs": 8, "saved_logits_sized_ours": 1.0,
           "saved_logits_sized_theirs": 8.0, "ours_loss_rel_err": 1e-8, "torchvision_loss_rel_err": 1e-8,
           "ours_grad_max_abs_err": 1e-7, "torchvision_grad_max_abs_err": 1e-7, "grad_max_abs": 0.8}
    res = {"machine": {"argv": ["python", "benchmarks/run.py"], "date": "d", "git_sha": "s", "cpu": "c",
                       "cpu_count": 2, "affinity_cpus": 2, "torch_threads": 2, "torch_interop_threads": 1,
                       "cpu_capability": "AVX512", "gpu": None, "loadavg": [1, 1, 1], "loadavg_end": [1, 1, 1],
                       "platform": "p", "python": "3", "versions": {"torch": "2"}},
           "quick": False, "seconds": {"focal_loss": 1.0}, "total_seconds": 1.0, "rows": [row], "errors": {}}
    text = render_readme(res)
    assert "floor: read logits + targets" in text and "| float32 | ours, compiled (inductor) (default here) | " \
        "10.0 ms | 30x | 2.5x |" in text and "cold inductor cache 20.0 s, warm cache 3.00 s" in text
