"""focalbench.losses.ohem: exact top-k NMS selection against brute force (whole-set NMS, then the rule)."""

import pytest
import torch
from torchvision.ops import nms

from focalbench.losses.ohem import nms_topk, nms_topk_1to3, rank_order, select_hard_examples, ssd_quota
from focalbench.model.anchors import grid_anchors


def brute_nms(boxes, scores, thr):
    """All boxes kept by greedy NMS over the whole set, in rank order (ties: lower index first)."""
    order = rank_order(scores)
    keep = nms(boxes[order], torch.arange(order.numel(), 0, -1, dtype=torch.float32), thr)
    return order[keep.sort().values]


def brute_1to3(boxes, scores, positive, batch_size, thr, ratio=3.0):
    kept = brute_nms(boxes, scores, thr)
    pos, neg = kept[positive[kept]], kept[~positive[kept]]
    p, q = ssd_quota(pos.numel(), batch_size, ratio)
    return torch.cat([pos[:p], neg[:q]])


def random_boxes(g, n, span=100.0, size=30.0):
    xy = torch.rand(n, 2, generator=g) * span
    wh = torch.rand(n, 2, generator=g) * size + 1
    return torch.cat([xy, xy + wh], 1)


def brute_select(anchors, scores, labels, batch_size, thr, per_image, ratio=None):
    """Reference selection: drop ignored, whole-set NMS per image, then top-k / SSD rule."""
    n = scores.shape[0]
    quota = batch_size if per_image else batch_size * n
    entries = []  # (image, anchor, score, is_pos), each image's in rank order
    for i in range(n):
        valid = (labels[i] != -2).nonzero().flatten()
        kept = valid[brute_nms(anchors[valid], scores[i, valid], thr)]
        entries.append([(i, int(a), float(scores[i, a]), bool(labels[i, a] >= 0)) for a in kept])
    if per_image:
        out = []
        for e in entries:
            if ratio is None:
                out += e[:quota]
            else:
                pos, neg = [x for x in e if x[3]], [x for x in e if not x[3]]
                p, q = ssd_quota(len(pos), quota, ratio)
                out += pos[:p] + neg[:q]
        return out
    pool = [x for e in entries for x in e]                 # image order, then rank order
    ranked = sorted(pool, key=lambda x: -x[2])             # stable: ties keep image/rank order
    if ratio is None:
        return ranked[:quota]
    pos, neg = [x for x in ranked if x[3]], [x for x in ranked if not x[3]]
    p, q = ssd_quota(len(pos), quota, ratio)
    return pos[:p] + neg[:q]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7, 1.0])
def test_nms_topk_matches_whole_set_nms(seed, thr):
    g = torch.Generator().manual_seed(seed)
    boxes = random_boxes(g, 2000)
    scores = torch.randint(0, 40, (2000,), generator=g).float()   # many ties: lower index first
    ref = brute_nms(boxes, scores, thr)
    for k in (1, 7, 128, 600, 5000):
        assert torch.equal(nms_topk(boxes, scores, k, thr), ref[:k])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("thr", [0.5, 0.7])
def test_nms_topk_on_dense_anchors(seed, thr):
    anchors = grid_anchors(96, 128)                        # the real layout: dense, heavily overlapping
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(anchors.shape[0], generator=g)
    ref = brute_nms(anchors, scores, thr)
    for k in (16, 128, 512):
        assert torch.equal(nms_topk(anchors, scores, k, thr), ref[:k])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("num_pos", [0, 1, 5, 40, 600])
def test_1to3_matches_brute_force(seed, num_pos):
    g = torch.Generator().manual_seed(seed)
    boxes = random_boxes(g, 1500)
    scores = torch.rand(1500, generator=g)
    positive = torch.zeros(1500, dtype=torch.bool)
    positive[torch.randperm(1500, generator=g)[:num_pos]] = True
    for batch_size, thr, ratio in [(128, 0.5, 3.0), (16, 0.7, 3.0), (64, 0.5, 1.0), (9, 0.3, 2.5)]:
        out = nms_topk_1to3(boxes, scores, positive, batch_size, thr, ratio)
        assert torch.equal(out, brute_1to3(boxes, scores, positive, batch_size, thr, ratio))
        n_pos = int(positive[out].sum())
        assert n_pos <= batch_size // 4 and out.numel() - n_pos <= ratio * n_pos and out.numel() <= batch_size
    if num_pos == 0:
        assert nms_topk_1to3(boxes, scores, positive, 128, 0.5).numel() == 0  # no positive, no negative


def test_1to3_positives_deep_in_the_order():
    # positives with the lowest losses: the scan must reach them (finish) and still be exact
    g = torch.Generator().manual_seed(9)
    boxes = random_boxes(g, 3000)
    scores = torch.rand(3000, generator=g)
    positive = scores < 0.02
    out = nms_topk_1to3(boxes, scores, positive, 64, 0.5)
    assert torch.equal(out, brute_1to3(boxes, scores, positive, 64, 0.5))
    assert positive[out].any()


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("ratio", [None, 3.0])
def test_select_hard_examples_matches_brute_force(seed, per_image, ratio):
    g = torch.Generator().manual_seed(seed)
    anchors = grid_anchors(64, 96)
    n, a = 3, anchors.shape[0]
    scores = torch.rand(n, a, generator=g)
    scores[:, ::5] = scores[:, ::5].round(decimals=1)      # ties inside and across images
    labels = torch.full((n, a), -1, dtype=torch.long)
    u = torch.rand(n, a, generator=g)
    labels[u < 0.02] = 2
    labels[(u >= 0.02) & (u < 0.05)] = 0
    labels[(u >= 0.05) & (u < 0.15)] = -2                 # ignored: never selected
    labels[2, :] = torch.where(labels[2] >= 0, -1, labels[2])  # an image without positives
    for batch_size, thr in [(32, 0.5), (128, 0.7)]:
        img, anc = select_hard_examples(anchors, scores, labels, batch_size, thr, per_image, ratio)
        ref = brute_select(anchors, scores, labels, batch_size, thr, per_image, ratio)
        assert [(int(i), int(j)) for i, j in zip(img, anc)] == [(r[0], r[1]) for r in ref]
        assert not (labels[img, anc] == -2).any()
        if per_image and ratio is not None:
            assert not (img == 2).any()                    # no positive -> no negative either


@pytest.mark.parametrize("call, match", [
    (lambda b, s: nms_topk(b, s, 0, 0.5), "k"),
    (lambda b, s: nms_topk(b, s, 10, 0.0), "iou_threshold"),
    (lambda b, s: nms_topk(b, s, 10, 1.5), "iou_threshold"),
    (lambda b, s: nms_topk_1to3(b, s, s > 0.5, 0, 0.5), "batch_size"),
    (lambda b, s: nms_topk_1to3(b, s, s > 0.5, 8, 0.5, -1.0), "neg_pos_ratio"),
    (lambda b, s: select_hard_examples(b, s[None], torch.zeros(1, 50, dtype=torch.long), 8, 0.0), "nms_iou"),
    (lambda b, s: select_hard_examples(b, s[None], torch.zeros(1, 50, dtype=torch.long), 2.5, 0.5),
     "batch_size"),
])
def test_bad_arguments(call, match):
    g = torch.Generator().manual_seed(0)
    boxes, scores = random_boxes(g, 50), torch.rand(50, generator=g)
    with pytest.raises(ValueError, match=match):
        call(boxes, scores)
