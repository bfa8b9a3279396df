"""RetinaNet parts: prior init, anchor counts, batched matching and post-processing against per-image references."""

import math

import pytest
import torch
from torchvision.models.detection._utils import Matcher
from torchvision.ops import box_iou, nms

from focalbench.model import BatchedMatcher, build_retinanet, num_anchors
from focalbench.model.retinanet import HeadOutputs


class BCE(torch.nn.Module):
    """Minimal sigmoid CE with the criterion interface (labels -1 bg, -2 ignored), normalised by #fg."""

    def forward(self, logits, labels, anchors):
        target = torch.zeros_like(logits)
        fg = labels >= 0
        target[fg, labels[fg]] = 1.0
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return loss[labels >= -1].sum() / fg.sum().clamp(min=1)


def tiny(num_classes=3, criterion=None, prior_prob=0.01, scales=3, ratios=3, **kw):
    return build_retinanet(num_classes, criterion or BCE(), backbone={"name": "small", "widths": [8, 8, 16, 16]},
                           anchors={"scales": scales, "ratios": ratios, "size_multiplier": 1.0}, fpn_channels=8,
                           head={"num_convs": 1, "width": 8}, prior_prob=prior_prob, **kw)


def test_prior_bias_init():
    model = tiny(prior_prob=0.01)
    expected = -math.log((1 - 0.01) / 0.01)
    assert torch.allclose(model.head.cls_logits.bias, torch.full_like(model.head.cls_logits.bias, expected))
    out = model(torch.randn(2, 3, 64, 64))
    assert abs(out.cls_logits.sigmoid().mean().item() - 0.01) < 0.003  # every anchor starts near pi
    assert torch.all(tiny(prior_prob=None).head.cls_logits.bias == 0)
    with pytest.raises(ValueError, match="prior_prob"):
        tiny(prior_prob=1.5)


def test_prior_bias_with_real_losses():
    losses = pytest.importorskip("focalbench.losses")
    if not hasattr(losses, "build_classification_loss"):
        pytest.skip("focalbench.losses.build_classification_loss not there yet")
    crit = losses.build_classification_loss(name="focal", gamma=2.0, alpha=0.25)
    model = tiny(criterion=crit)
    assert torch.allclose(model.head.cls_logits.bias, torch.tensor(-math.log(99.0)), atol=1e-5)


@pytest.mark.parametrize("scales,ratios", [(1, 1), (2, 1), (3, 1), (1, 3), (2, 3), (3, 3), (4, 3)])
def test_anchor_count_matches_formula(scales, ratios):
    model = tiny(scales=scales, ratios=ratios)
    images = torch.zeros(1, 3, 128, 128)
    out = model(images)
    per_loc = scales * ratios
    formula = sum(math.ceil(128 / s) ** 2 for s in (8, 16, 32, 64, 128)) * per_loc
    assert out.cls_logits.shape[1] == model.anchors(images).shape[0] == num_anchors(128, 128, scales, ratios) == formula
    assert sum(out.level_sizes) == formula


def test_p6_comes_from_c5():
    model = tiny()
    assert model.backbone.fpn.extra_blocks.use_P5 is False
    assert model.backbone.fpn.extra_blocks.p6.in_channels == model.backbone.body.out_channels[-1]


def _random_boxes(n, size=128, gen=None):
    xy = torch.rand(n, 2, generator=gen) * size * 0.8
    wh = 4 + torch.rand(n, 2, generator=gen) * size * 0.4
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("low_quality", [False, True])
def test_batched_matcher_equals_torchvision_per_image(low_quality):
    gen = torch.Generator().manual_seed(0)
    anchors = tiny().anchors(torch.zeros(1, 3, 128, 128))
    counts = [3, 0, 7, 1]
    m = max(counts)
    boxes = torch.zeros(len(counts), m, 4)
    valid = torch.zeros(len(counts), m, dtype=torch.bool)
    for i, c in enumerate(counts):
        boxes[i, :c] = _random_boxes(c, gen=gen)
        valid[i, :c] = True
    matches, best = BatchedMatcher(0.5, 0.4, low_quality).match(boxes, valid, anchors)
    ref = Matcher(0.5, 0.4, low_quality)
    for i, c in enumerate(counts):
        if c == 0:
            assert torch.all(matches[i] == -1)
            continue
        iou = box_iou(boxes[i, :c], anchors)
        assert torch.equal(matches[i], ref(iou))
        assert torch.allclose(best[i, :c], iou.max(dim=1).values)


def test_loss_counts_foreground_and_box_loss_vanishes_on_exact_deltas():
    model = tiny()
    images = torch.zeros(2, 3, 128, 128)
    anchors = model.anchors(images)
    targets = [{"boxes": anchors[[100, 2000]].clone(), "labels": torch.tensor([0, 2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    out = model(images)
    a = model.assign(anchors, targets)
    assert a["labels"][0, 100] == 0 and a["labels"][0, 2000] == 2
    assert torch.all(a["labels"][1] == -1)
    fg = a["labels"] >= 0
    deltas = torch.zeros_like(out.bbox_deltas)
    n, i = fg.nonzero(as_tuple=True)
    deltas[n, i] = model.box_coder.encode_single(a["matched_boxes"][n, i], anchors[i])
    losses = model.compute_loss(HeadOutputs(out.cls_logits, deltas, out.level_sizes), anchors, targets)
    assert losses["num_fg"] == fg.sum() >= 2
    assert losses["loss_box"].item() < 1e-6
    assert losses["gt_no_anchor"] == 0 and losses["num_gt"] == 2
    assert torch.isfinite(losses["loss_cls"])


def _reference_postprocess(model, out, anchors, size):
    """Per image, per level top-k, per class NMS in a Python loop: what the batched version must equal."""
    scores = model.scores(out.cls_logits)
    k = scores.shape[-1]
    results = []
    for img in range(scores.shape[0]):
        cand = []
        start = 0
        for sz in out.level_sizes:
            s = scores[img, start:start + sz].flatten()
            v, idx = s.topk(min(model.topk_candidates, len(s)))
            keep = v > model.score_thresh
            cand.append((v[keep], start + idx[keep] // k, idx[keep] % k))
            start += sz
        v = torch.cat([c[0] for c in cand]); a = torch.cat([c[1] for c in cand]); lab = torch.cat([c[2] for c in cand])
        boxes = model.box_coder.decode_single(out.bbox_deltas[img, a], anchors[a]).clamp(0, size)
        keep_all = []
        for c in lab.unique():
            idx = (lab == c).nonzero().flatten()
            keep_all.append(idx[nms(boxes[idx], v[idx], model.nms_thresh)])
        keep = torch.cat(keep_all) if keep_all else torch.zeros(0, dtype=torch.long)
        keep = keep[v[keep].argsort(descending=True)][:model.detections_per_img]
        results.append((boxes[keep], v[keep], lab[keep]))
    return results


def test_batched_postprocess_equals_per_image_loop():
    torch.manual_seed(0)
    model = tiny(num_classes=4, detections_per_img=20, topk_candidates=50).eval()
    images = torch.randn(3, 3, 128, 128)
    with torch.no_grad():
        out = model(images)
        out = HeadOutputs(out.cls_logits + torch.randn_like(out.cls_logits) * 3, out.bbox_deltas * 50, out.level_sizes)
    anchors = model.anchors(images)
    got = model.postprocess(out, anchors, torch.tensor([[128, 128]] * 3))
    ref = _reference_postprocess(model, out, anchors, 128)
    for g, (b, s, l) in zip(got, ref):
        assert len(g["scores"]) == len(s) <= 20
        assert len(s) > 0
        order_g, order_r = g["scores"].argsort(descending=True), s.argsort(descending=True)
        assert torch.allclose(g["scores"][order_g], s[order_r])
        assert torch.allclose(g["boxes"][order_g], b[order_r], atol=1e-4)
        assert torch.equal(g["labels"][order_g], l[order_r])


def test_softmax_criterion_gets_k_plus_one_logits():
    class SoftmaxCrit(BCE):
        def logits_per_anchor(self, k):
            return k + 1

    model = tiny(num_classes=3, criterion=SoftmaxCrit())
    out = model(torch.zeros(1, 3, 64, 64))
    assert out.cls_logits.shape[-1] == 4 and model.softmax
    assert model.scores(out.cls_logits).shape[-1] == 3


def test_bad_values_raise_one_line():
    with pytest.raises(ValueError, match="model.backbone.name"):
        build_retinanet(3, BCE(), backbone={"name": "vgg"}, anchors={})
    with pytest.raises(ValueError, match="anchors.ratios"):
        tiny(ratios=2)
    with pytest.raises(ValueError, match="model: unknown keys"):
        tiny(bogus=1)


def test_softmax_prior_starts_background_at_one_minus_pi():
    losses = pytest.importorskip("focalbench.losses")
    crit = losses.build_classification_loss(name="softmax_focal", gamma=2.0, alpha=0.25)
    model = tiny(num_classes=3, criterion=crit, prior_prob=0.01)
    out = model(torch.zeros(1, 3, 64, 64))
    p = out.cls_logits.softmax(-1)
    assert out.cls_logits.shape[-1] == 4
    assert abs(p[..., 0].mean().item() - 0.99) < 0.003
