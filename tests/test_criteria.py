"""focalbench.losses.criteria: what the model calls (build from conf/loss, normalisation, OHEM mean)."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torchvision.ops import sigmoid_focal_loss as tv_focal

from focalbench.parts import build_part
from focalbench.losses import build_classification_loss, one_hot_targets, select_hard_examples
from focalbench.model.anchors import grid_anchors

CONF = Path(__file__).resolve().parents[1] / "conf" / "loss"
K = 4


def batch(seed=0, n=2, h=64, w=64, dtype=torch.float64, fg_rate=0.03):
    g = torch.Generator().manual_seed(seed)
    anchors = grid_anchors(h, w)
    a = anchors.shape[0]
    logits = (torch.randn(n, a, K, generator=g) * 2 - 3).to(dtype)
    u = torch.rand(n, a, generator=g)
    labels = torch.full((n, a), -1, dtype=torch.long)
    fg = u < fg_rate
    labels[fg] = torch.randint(0, K, (int(fg.sum()),), generator=g)
    labels[(u >= fg_rate) & (u < fg_rate + 0.05)] = -2
    return logits, labels, anchors


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.stem)
def test_builds_every_config(path):
    cfg = OmegaConf.to_container(OmegaConf.load(path))
    assert cfg["_target_"] == "focalbench.losses.build_classification_loss"
    loss_fn = build_part(cfg, "loss")  # as a run builds it, from the file's _target_
    logits, labels, anchors = batch(dtype=torch.float32)
    if loss_fn.logits_per_anchor(K) == K + 1:
        logits = torch.cat([logits[..., :1], logits], dim=-1)
    logits.requires_grad_(True)
    loss = loss_fn(logits, labels, anchors)
    assert loss.dim() == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert loss_fn.per_anchor(logits.detach(), labels).shape == labels.shape


@pytest.mark.parametrize("name, params, gamma, alpha", [
    ("ce", {}, 0.0, -1),
    ("alpha_ce", {"alpha": 0.75}, 0.0, 0.75),
    ("focal", {"gamma": 2.0, "alpha": 0.25}, 2.0, 0.25),
    ("focal", {"gamma": 0.5, "alpha": -1.0}, 0.5, -1),
])
def test_dense_sum_over_non_ignored_divided_by_num_foreground(name, params, gamma, alpha):
    logits, labels, anchors = batch()
    loss_fn = build_classification_loss(name, **params)
    x = logits.clone().requires_grad_(True)
    loss = loss_fn(x, labels, anchors)
    valid = labels != -2
    t = F.one_hot(labels.clamp_min(-1) + 1, K + 1)[..., 1:].double()
    ref = tv_focal(logits, t, alpha, gamma)[valid].sum() / (labels >= 0).sum()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(loss_fn.per_anchor(logits, labels).sum() / (labels >= 0).sum(), ref)
    loss.backward()
    assert (x.grad[~valid] == 0).all() and (x.grad[valid].abs().sum(-1) > 0).all()


def test_no_foreground_divides_by_one():
    logits, labels, anchors = batch()
    labels[labels >= 0] = -1
    loss_fn = build_classification_loss("focal", gamma=2.0, alpha=0.25)
    ref = tv_focal(logits, torch.zeros_like(logits), 0.25, 2.0)[labels != -2].sum()
    torch.testing.assert_close(loss_fn(logits, labels, anchors), ref)


def test_one_hot_targets():
    labels = torch.tensor([[0, -1, 2, -2]])
    t = one_hot_targets(labels, 3)
    assert t.shape == (1, 4, 3) and t.sum() == 2 and t[0, 0, 0] == 1 and t[0, 2, 2] == 1


def test_half_logits_give_float32_loss():
    logits, labels, anchors = batch(dtype=torch.float16)
    logits.requires_grad_(True)
    loss = build_classification_loss("focal", gamma=2.0, alpha=0.25)(logits, labels, anchors)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert logits.grad.dtype == torch.float16 and torch.isfinite(logits.grad).all()
    ref = build_classification_loss("focal", gamma=2.0, alpha=0.25)(logits.detach().double(), labels, anchors)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-4, atol=0)


def test_focal_star_normalisation():
    logits, labels, anchors = batch()
    loss_fn = build_classification_loss("focal_star", gamma=2.0, beta=1.0, alpha=0.25)
    t = one_hot_targets(labels, K, torch.float64)
    xt = logits * (2 * t - 1)
    per = -torch.log(torch.sigmoid(2.0 * xt + 1.0)) / 2.0 * torch.where(t > 0, 0.25, 0.75)
    ref = per[labels != -2].sum() / (labels >= 0).sum()
    torch.testing.assert_close(loss_fn(logits, labels, anchors), ref)


def test_softmax_focal_normalisation_and_prior():
    logits, labels, anchors = batch()
    logits = torch.cat([torch.randn(*labels.shape, 1, dtype=torch.float64), logits], dim=-1)
    loss_fn = build_classification_loss("softmax_focal", gamma=2.0, alpha=0.25)
    assert loss_fn.logits_per_anchor(K) == K + 1
    target = (labels + 1)[labels != -2]
    p = logits[labels != -2].softmax(-1)
    pt = p[torch.arange(target.numel()), target]
    per = -(1 - pt) ** 2 * pt.log() * torch.where(target == 0, 0.75, 0.25)
    torch.testing.assert_close(loss_fn(logits, labels, anchors), per.sum() / (labels >= 0).sum())
    bias = loss_fn.prior_bias(0.01, K)
    probs = bias.softmax(0)
    assert bias.shape == (K + 1,) and probs[0].item() == pytest.approx(0.99)
    assert probs[1:].sum().item() == pytest.approx(0.01)


def test_sigmoid_prior_bias():
    b = build_classification_loss("focal").prior_bias(0.01, 80)
    assert b == pytest.approx(-math.log(99)) and 1 / (1 + math.exp(-b)) == pytest.approx(0.01)
    assert build_classification_loss("ce").logits_per_anchor(80) == 80


@pytest.mark.parametrize("name, params", [
    ("ohem", {"batch_size": 32, "nms_iou": 0.7, "per_image": True, "alpha": -1.0}),
    ("ohem", {"batch_size": 32, "nms_iou": 0.5, "per_image": False, "alpha": 0.25}),
    ("ohem_1to3", {"batch_size": 32, "nms_iou": 0.5, "per_image": True, "neg_pos_ratio": 3, "alpha": -1.0}),
    ("ohem_1to3", {"batch_size": 64, "nms_iou": 0.7, "per_image": False, "neg_pos_ratio": 3, "alpha": -1.0}),
])
def test_ohem_is_mean_ce_over_selected(name, params):
    logits, labels, anchors = batch(n=3)
    loss_fn = build_classification_loss(name, **params)
    t = one_hot_targets(labels, K, torch.float64)
    ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    scores = ce.sum(-1)
    img, anc = select_hard_examples(anchors, scores, labels, params["batch_size"], params["nms_iou"],
                                    params["per_image"], params.get("neg_pos_ratio"))
    assert img.numel() > 0
    s_img, s_anc = loss_fn.select(logits, labels, anchors)
    assert torch.equal(s_img, img) and torch.equal(s_anc, anc)
    alpha = params["alpha"]
    w = torch.where(t > 0, alpha, 1 - alpha) if alpha >= 0 else torch.ones_like(t)
    ref = (ce * w)[img, anc].sum() / img.numel()
    x = logits.clone().requires_grad_(True)
    loss = loss_fn(x, labels, anchors)
    torch.testing.assert_close(loss, ref)
    loss.backward()
    selected = torch.zeros_like(labels, dtype=torch.bool)
    selected[img, anc] = True
    assert (x.grad[~selected] == 0).all() and (x.grad[selected].abs().sum(-1) > 0).all()


def test_ohem_1to3_takes_fewer_negatives():
    logits, labels, anchors = batch(n=2, fg_rate=0.002)
    plain = build_classification_loss("ohem", batch_size=64, nms_iou=0.5, per_image=True, alpha=-1.0)
    ssd = build_classification_loss("ohem_1to3", batch_size=64, nms_iou=0.5, per_image=True,
                                    neg_pos_ratio=3, alpha=-1.0)
    img_p, anc_p = plain.select(logits, labels, anchors)
    img_s, anc_s = ssd.select(logits, labels, anchors)
    pos = (labels[img_s, anc_s] >= 0).sum()
    assert img_p.numel() == 128 and 0 < pos and img_s.numel() <= 4 * pos < img_p.numel()


@pytest.mark.parametrize("name, params, match", [
    ("focal_loss", {}, "loss.name"),
    ("focal", {"gama": 2.0}, "loss.gama"),
    ("ce", {"alpha": 0.25}, "loss.alpha"),
    ("focal", {"gamma": -1.0}, "loss.gamma"),
    ("alpha_ce", {"alpha": 1.5}, "loss.alpha"),
    ("focal_star", {"gamma": 0.0}, "loss.gamma"),
    ("ohem", {"batch_size": 0}, "loss.batch_size"),
    ("ohem", {"nms_iou": 0.0}, "loss.nms_iou"),
    ("ohem", {"nms_iou": 1.2}, "loss.nms_iou"),
    ("ohem", {"per_image": "yes"}, "loss.per_image"),
    ("ohem_1to3", {"neg_pos_ratio": -3}, "loss.neg_pos_ratio"),
])
def test_bad_config(name, params, match):
    with pytest.raises(ValueError, match=match.replace(".", r"\.")):
        build_classification_loss(name, **params)


def test_bad_inputs():
    logits, labels, anchors = batch()
    loss_fn = build_classification_loss("focal")
    with pytest.raises(ValueError, match="labels"):
        loss_fn(logits, labels[:, :-1], anchors)
    with pytest.raises(ValueError, match="labels"):
        loss_fn(logits, torch.where(labels == 0, K, labels), anchors)     # class index out of range
    with pytest.raises(ValueError, match="anchors"):
        build_classification_loss("ohem")(logits, labels, anchors[:-1])
