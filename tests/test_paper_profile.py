"""profile=paper against the paper's recipe (Lin et al. 2017, sections 4, 4.1, 5.1), item by item, and its
ImageNet ResNet-50 with frozen BN: a missing weights file stops the build with one line; a present one (a
randomly initialised torchvision state_dict under the file name torchvision gives it) is loaded. No training.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torchvision.models import ResNet50_Weights, resnet50
from torchvision.ops import FrozenBatchNorm2d

from focalbench.model import build_retinanet
from focalbench.model.anchors import make_anchor_generator
from focalbench.model.backbone import WeightsNotFoundError, check_weights
from focalbench.train import compose, derive_schedule

WEIGHTS_FILE = Path(ResNet50_Weights.IMAGENET1K_V1.url).name  # resnet50-0676ba61.pth
NUM_CLASSES = 80  # COCO

# (what the paper says, config key, value). Items the paper leaves open are Detectron's RetinaNet defaults,
# marked "(Detectron)"; docs/paper_profile.md gives the same table with sources.
PAPER = [
    ("ResNet-50 body (sec. 4, 5.1)", "model.backbone.name", "resnet50"),
    ("ImageNet-1k pretrained body (sec. 4.1)", "model.backbone.weights", "IMAGENET1K_V1"),
    ("frozen BN: affine, statistics fixed (Detectron; the paper: ImageNet pretrained)", "model.backbone.norm",
     "frozen_bn"),
    # Detectron's FREEZE_AT=2 (stem + res2 not trained); the paper does not state it.
    ("stem + res2 frozen (Detectron FREEZE_AT=2)", "model.backbone.freeze_at", 2),
    ("FPN with 256 channels (sec. 4)", "model.fpn_channels", 256),
    ("anchor base 32^2..512^2 on P3..P7 = 4 x stride (sec. 4)", "anchors.size_multiplier", 4.0),
    ("3 anchor scales 2^(k/3) (sec. 4)", "anchors.scales", 3),
    ("3 aspect ratios {1:2, 1:1, 2:1} (sec. 4)", "anchors.ratios", 3),
    ("foreground IoU >= 0.5 (sec. 4)", "model.fg_iou", 0.5),
    ("background IoU < 0.4 (sec. 4)", "model.bg_iou", 0.4),
    ("no low-quality matches: IoU in [0.4, 0.5) ignored (sec. 4)", "model.allow_low_quality_matches", False),
    ("subnets: 4 conv layers (sec. 4)", "model.head.num_convs", 4),
    ("subnets: 256 filters (sec. 4)", "model.head.width", 256),
    ("subnets: ReLU, no normalisation (sec. 4)", "model.head.norm", "none"),
    ("prior pi = 0.01 for the classifier bias (sec. 4.1)", "model.prior_prob", 0.01),
    ("focal loss (sec. 3.2, 4)", "loss.name", "focal"),
    ("FL gamma = 2 (sec. 4, 5.1)", "loss.gamma", 2.0),
    ("FL alpha = 0.25 (sec. 4, 5.1)", "loss.alpha", 0.25),
    ("smooth L1 beta 0.11 (Detectron; the paper: standard smooth L1)", "model.smooth_l1_beta", 0.11),
    ("SGD (sec. 4.1)", "optim.name", "sgd"),
    ("momentum 0.9 (sec. 4.1)", "optim.momentum", 0.9),
    ("weight decay 0.0001 (sec. 4.1)", "optim.weight_decay", 0.0001),
    ("lr 0.01 (sec. 4.1)", "optim.lr", 0.01),
    ("lr given at 16 images per minibatch (sec. 4.1)", "optim.base_batch", 16),
    ("16 images = 2 per GPU (sec. 4.1)", "data.batch_size", 2),
    ("16 images = 8 GPUs (sec. 4.1)", "trainer.devices", 8),
    ("90k iterations (sec. 4.1)", "trainer.max_steps", 90000),
    ("step schedule (sec. 4.1)", "optim.schedule", "step"),
    ("lr / 10 (sec. 4.1)", "optim.gamma", 0.1),
    ("at 60k and 80k iterations (sec. 4.1)", "optim.steps", [60000, 80000]),
    ("warm-up 500 iterations (Detectron WARM_UP_ITERS)", "optim.warmup_iters", 500),
    ("warm-up linear from 1/3 (Detectron WARM_UP_FACTOR)", "optim.warmup_factor", pytest.approx(1 / 3)),
    ("horizontal flip, p = 0.5 (sec. 4.1)", "data.flip_prob", 0.5),
    ("600 px shorter side, train and test (sec. 5.1)", "data.image_size", 600),
    ("max size 1000 px (Detectron MAX_SIZE)", "data.max_size", 1000),
    ("inference: confidence threshold 0.05 (sec. 4)", "model.score_thresh", 0.05),
    ("inference: top 1k per FPN level (sec. 4)", "model.topk_candidates", 1000),
    ("inference: NMS 0.5 (sec. 4)", "model.nms_thresh", 0.5),
    ("inference: 100 detections per image (Detectron DETECTIONS_PER_IM)", "model.detections_per_img", 100),
    ("COCO (sec. 5)", "hydra.runtime.choices.data", "coco"),
]


@pytest.fixture(scope="module")
def cfg():
    return compose(["profile=paper", "data.root=/some/coco"])


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A TORCH_HOME whose hub cache holds a random resnet50 state_dict under torchvision's file name."""
    home = tmp_path_factory.mktemp("torch_home")
    (home / "hub" / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    state = resnet50().state_dict()
    for k, v in state.items():  # BN statistics unlike a fresh BN's 0/1, so loading them shows
        if k.endswith(("running_mean", "running_var")):
            v.uniform_(0.5, 1.5)
    torch.save(state, home / "hub" / "checkpoints" / WEIGHTS_FILE)
    return home, state


@pytest.fixture(scope="module")
def paper_model(cfg, hub):
    from focalbench.builders import build_model

    mp = pytest.MonkeyPatch()
    mp.setenv("TORCH_HOME", str(hub[0]))
    try:
        return build_model(cfg, NUM_CLASSES)  # as a run builds it: each part from its _target_
    finally:
        mp.undo()


@pytest.mark.parametrize("item, key, paper", PAPER, ids=[k for _, k, _ in PAPER])
def test_profile_matches_the_paper(cfg, item, key, paper):
    value = OmegaConf.select(cfg, key)
    if OmegaConf.is_list(value):
        value = list(value)
    assert value == paper, f"{item}: the paper's value is {paper!r}, profile=paper has {key}={value!r}"


def test_schedule_at_16_images_is_the_papers(cfg):
    s = derive_schedule(cfg)
    assert s["effective_batch"] == 16, f"16 images per minibatch, got {s['effective_batch']}"
    assert s["lr"] == pytest.approx(0.01), f"lr 0.01 at 16 images, got {s['lr']}"
    assert (s["max_steps"], s["steps"], s["warmup_iters"]) == (90000, [60000, 80000], 500)


def test_missing_weights_stop_the_build_with_one_line(cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / WEIGHTS_FILE
    with pytest.raises(WeightsNotFoundError) as e:
        check_weights(OmegaConf.to_container(cfg.model.backbone))
    msg = str(e.value)
    assert isinstance(e.value, FileNotFoundError)  # train.main prints OSErrors as "error: <one line>"
    assert "\n" not in msg
    assert str(expected) in msg and "model.backbone.weights=/path/to/" in msg and "never downloaded" in msg
    with pytest.raises(WeightsNotFoundError, match="never downloaded"):  # the builder checks the same
        build_retinanet(NUM_CLASSES, nn.Identity(), anchors={}, **OmegaConf.to_container(cfg.model))
    missing = tmp_path / "nowhere" / "r50.pth"
    with pytest.raises(WeightsNotFoundError, match=r"^model\.backbone\.weights=.*r50\.pth: no such file"):
        check_weights({"name": "resnet50", "weights": str(missing)})
    with pytest.raises(ValueError, match=r"^model\.backbone\.weights=IMAGENET9K: unknown resnet50 weights"):
        check_weights({"name": "resnet50", "weights": "IMAGENET9K"})


def test_present_weights_load_into_frozen_bn(paper_model, hub):
    _, state = hub
    body = paper_model.backbone.body.body
    assert not any(isinstance(m, nn.BatchNorm2d) for m in paper_model.modules()), "BN must be frozen"
    frozen = [m for m in body.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(frozen) == 53, f"every BN of ResNet-50 frozen (53), got {len(frozen)}"
    assert torch.equal(body.conv1.weight, state["conv1.weight"])
    assert torch.equal(body.layer3[0].bn2.running_var, state["layer3.0.bn2.running_var"])
    assert torch.equal(body.layer4[2].bn3.weight, state["layer4.2.bn3.weight"])
    # Detectron's FREEZE_AT=2 (not in the paper): stem and res2 get no gradient, res3-res5 do.
    for name in ("conv1", "bn1", "layer1"):
        assert not any(p.requires_grad for p in getattr(body, name).parameters()), f"{name} must be frozen"
    for name in ("layer2", "layer3", "layer4"):
        params = list(getattr(body, name).parameters())
        assert params and all(p.requires_grad for p in params), f"{name} must be trained"
    assert not any(b.requires_grad for b in body.buffers())


def test_present_weights_from_a_path(hub, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache: the path is what counts
    path = hub[0] / "hub" / "checkpoints" / WEIGHTS_FILE
    assert check_weights({"name": "resnet50", "weights": str(path)}) == path


def test_fpn_levels_and_heads_are_the_papers(paper_model):
    fpn = paper_model.backbone.fpn
    p6, p7 = fpn.extra_blocks.p6, fpn.extra_blocks.p7
    assert fpn.extra_blocks.use_P5 is False, "P6 comes from C5"
    assert (p6.in_channels, p6.out_channels, p6.kernel_size, p6.stride) == (2048, 256, (3, 3), (2, 2))
    assert (p7.in_channels, p7.out_channels, p7.kernel_size, p7.stride) == (256, 256, (3, 3), (2, 2))
    paper_model.eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        c5 = paper_model.backbone.body(x)["c5"]
        feats = paper_model.backbone(x)
        assert len(feats) == 5 and all(f.shape[1] == 256 for f in feats), "P3-P7, 256 channels"
        assert [f.shape[-1] for f in feats] == [16, 8, 4, 2, 1], "strides 8..128"
        assert torch.allclose(feats[3], p6(c5), atol=1e-5), "P6 = 3x3/2 conv on C5"
        assert torch.allclose(feats[4], p7(torch.relu(feats[3])), atol=1e-5), "P7 = 3x3/2 conv on ReLU(P6)"

    head = paper_model.head
    for tower in (head.cls_tower, head.box_tower):
        convs = [m for m in tower if isinstance(m, nn.Conv2d)]
        assert len(convs) == 4 and all(c.out_channels == 256 and c.kernel_size == (3, 3) for c in convs)
        assert sum(isinstance(m, nn.ReLU) for m in tower) == 4
        assert all(isinstance(m, (nn.Conv2d, nn.ReLU, nn.Identity)) for m in tower), "no normalisation"
    assert not {id(p) for p in head.cls_tower.parameters()} & {id(p) for p in head.box_tower.parameters()}, \
        "the two subnets do not share parameters"
    assert head.bbox_pred.out_channels == 9 * 4, "class-agnostic box regression: 4 outputs per anchor"
    assert head.cls_logits.out_channels == 9 * NUM_CLASSES
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    assert all(abs(c.weight.std().item() - 0.01) < 0.002 for c in convs), "Gaussian init, sigma 0.01"
    assert torch.allclose(head.cls_logits.bias, torch.full_like(head.cls_logits.bias, -math.log(0.99 / 0.01)))
    assert all(torch.all(c.bias == 0) for c in convs if c is not head.cls_logits)
    assert paper_model.criterion.normalizer(torch.tensor([[0, 5, -1, -2, -1, 3]])).item() == 3, \
        "FL normalised by the number of foreground anchors"


def test_anchors_are_the_papers(cfg):
    gen = make_anchor_generator(cfg.anchors.scales, cfg.anchors.ratios, cfg.anchors.size_multiplier)
    for base, sizes in zip((32, 64, 128, 256, 512), gen.sizes):
        assert sizes == pytest.approx([base * 2 ** (k / 3) for k in range(3)]), f"{base}^2 x 2^(k/3)"
    assert all(r == (0.5, 1.0, 2.0) for r in gen.aspect_ratios), "ratios {1:2, 1:1, 2:1}"
