"""Backbone + FPN of RetinaNet (paper section 4): C3-C5 from a ResNet body, P3-P5 top-down, P6 from C5, P7.

Two bodies:
- ``SmallResNet``: a 4-stage ResNet-style body (torchvision ``BasicBlock``s) with configurable widths, for
  CPU profiles.
- torchvision ResNet-18/34/50/101 (``weights=None`` by default; ImageNet weights only when asked for).

Pretrained weights are never downloaded: ``weights`` names a torchvision weights entry (``IMAGENET1K_V1``),
looked up where torchvision would have cached it (``$TORCH_HOME/hub/checkpoints/<file name of its url>``,
``torch.hub.get_dir()``), or is a path to such a state_dict file. A missing file raises
``WeightsNotFoundError`` (a ``FileNotFoundError``) with one line saying where to put it; ``check_weights``
does only that check, without building anything, so a run can fail before it loads any data.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torchvision.models import get_model
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import BasicBlock
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from focalbench.checks import int_at_least, one_of, require

BODIES = ("small", "resnet18", "resnet34", "resnet50", "resnet101")
NORMS = ("bn", "frozen_bn", "gn", "none")
# the rules of model.backbone.* and model.head.norm (focalbench.checks; the config check reads these objects)
BODY = one_of(BODIES, "backbone")
NORM = one_of(NORMS, "norm")
FREEZE_AT = int_at_least(0)
PRETRAINED_NORMS = ("bn", "frozen_bn")  # the norms whose parameters/buffers a torchvision checkpoint holds


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained backbone weights that are not on this machine (never downloaded). The message is one line
    naming the file to provide and the config key that points elsewhere."""


def _is_path(weights: str) -> bool:
    return "/" in weights or "\\" in weights or weights.endswith((".pth", ".pt"))


def weights_file(name: str, weights: str | None) -> Path | None:
    """The local file holding ``weights`` for body ``name`` (None: no pretrained weights); never downloads.

    ``weights``: a torchvision weights name of ``name`` (``IMAGENET1K_V1``), found in torch hub's cache as
    torchvision names it, or a path to a state_dict file. Raises ``WeightsNotFoundError`` (one line) when the
    file is missing, ``ValueError`` for an unknown weights name or a body without pretrained weights.
    """
    if not weights:
        return None
    weights = str(weights)
    if name not in BODIES or name == "small":
        raise ValueError(f"model.backbone.weights={weights}: pretrained weights exist only for the torchvision "
                         f"bodies {BODIES[1:]}, not {name!r}")
    if _is_path(weights):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"model.backbone.weights={weights}: no such file (a torchvision {name} "
                                       f"state_dict, e.g. resnet50-0676ba61.pth for resnet50 IMAGENET1K_V1)")
        return path
    import torch.hub
    from torchvision.models import get_model_weights

    enum = get_model_weights(name)
    if weights not in enum.__members__:
        raise ValueError(f"model.backbone.weights={weights}: unknown {name} weights; allowed: "
                         f"{', '.join(enum.__members__)}, a path to a state_dict file, or null")
    url = enum[weights].url
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not path.is_file():
        raise WeightsNotFoundError(
            f"model.backbone.weights={weights}: {path} not found (weights are never downloaded); copy torchvision's "
            f"{name} {weights} file ({url}) there, set TORCH_HOME to the folder whose hub/checkpoints/ holds it, "
            f"or give its path: model.backbone.weights=/path/to/{path.name}")
    return path


def check_weights(backbone: Mapping[str, Any]) -> Path | None:
    """``weights_file`` for a ``model.backbone`` config (a mapping): the pretrained weights are on this machine,
    or ``WeightsNotFoundError`` / ``ValueError`` in one line. Builds nothing."""
    return weights_file(str(backbone.get("name", "small")), backbone.get("weights"))


def norm_layer(kind: str, groups: int = 16) -> Callable[[int], nn.Module]:
    """``norm_layer(num_channels)`` factory for ``kind`` in ``NORMS``."""
    require(NORM, kind, "model.backbone.norm")
    if kind == "bn":
        return nn.BatchNorm2d
    if kind == "frozen_bn":
        return FrozenBatchNorm2d
    if kind == "gn":
        return lambda c: nn.GroupNorm(min(groups, c), c)
    return lambda c: nn.Identity()  # "none"


class SmallResNet(nn.Module):
    """Stem (3x3 conv, stride 2) + 4 stages of ``BasicBlock``s at strides 4, 8, 16, 32.

    Returns ``OrderedDict(c3=..., c4=..., c5=...)``; ``out_channels = widths[1:]``.
    """

    def __init__(self, widths: Sequence[int] = (32, 64, 128, 256), blocks: Sequence[int] = (1, 1, 1, 1),
                 norm: str = "bn"):
        super().__init__()
        if len(widths) != 4 or len(blocks) != 4 or min(widths) < 1 or min(blocks) < 1:
            raise ValueError(f"model.backbone.widths/blocks need 4 positive entries each, got {list(widths)} / "
                             f"{list(blocks)}")
        make_norm = norm_layer(norm)
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), make_norm(widths[0]),
                                  nn.ReLU(inplace=True))
        stages, cin = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            stride = 2  # stem stride 2, then every stage halves: strides 4, 8, 16, 32
            layers = []
            for b in range(n):
                s = stride if b == 0 else 1
                down = None
                if s != 1 or cin != w:
                    down = nn.Sequential(nn.Conv2d(cin, w, 1, s, bias=False), make_norm(w))
                layers.append(BasicBlock(cin, w, stride=s, downsample=down, norm_layer=make_norm))
                cin = w
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels = list(widths[1:])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        x = self.layer1(self.stem(x))
        c3 = self.layer2(x)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return OrderedDict(c3=c3, c4=c4, c5=c5)


class TorchvisionResNet(nn.Module):
    """torchvision ResNet body returning C3-C5. ``freeze_at`` freezes the stem (1) and res2 (2) as Detectron.

    ``weights`` (see ``weights_file``) loads a local torchvision checkpoint into the body, after it is built
    with ``norm`` (``frozen_bn``: the checkpoint's BN statistics and affine parameters become fixed buffers,
    Detectron's frozen "affine channel" BN).
    """

    def __init__(self, name: str = "resnet50", weights: str | None = None, norm: str = "bn", freeze_at: int = 0):
        super().__init__()
        path = weights_file(name, weights)
        if path is not None and norm not in PRETRAINED_NORMS:
            raise ValueError(f"model.backbone.norm={norm}: pretrained weights (model.backbone.weights={weights}) "
                             f"need a norm the checkpoint holds: {', '.join(PRETRAINED_NORMS)}")
        body = get_model(name, weights=None, norm_layer=norm_layer(norm))
        if path is not None:
            state = torch.load(path, map_location="cpu", weights_only=True)
            try:
                body.load_state_dict(state)
            except (RuntimeError, TypeError, AttributeError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ValueError(f"model.backbone.weights={weights}: {path} is not a torchvision {name} "
                                 f"state_dict ({first})") from None
        self.body = IntermediateLayerGetter(body, {"layer2": "c3", "layer3": "c4", "layer4": "c5"})
        expansion = 4 if name in ("resnet50", "resnet101") else 1
        self.out_channels = [128 * expansion, 256 * expansion, 512 * expansion]
        frozen = [["conv1", "bn1"], ["layer1"]][:max(0, min(2, freeze_at))]
        for prefix in (p for group in frozen for p in group):
            for p in getattr(self.body, prefix).parameters():
                p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.body(x)


class BackboneFPN(nn.Module):
    """Body + ``FeaturePyramidNetwork`` + ``LastLevelP6P7``: a list [P3, P4, P5, P6, P7] of ``out_channels`` maps."""

    def __init__(self, body: nn.Module, out_channels: int = 256):
        super().__init__()
        self.body = body
        c5 = body.out_channels[-1]
        extra = LastLevelP6P7(c5, out_channels)
        extra.use_P5 = False  # paper: P6 is a 3x3/2 conv on C5 (torchvision switches to P5 when widths match)
        self.fpn = FeaturePyramidNetwork(body.out_channels, out_channels, extra_blocks=extra)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.fpn(self.body(x)).values())


def build_body(name: str = "small", widths: Sequence[int] = (32, 64, 128, 256), blocks: Sequence[int] = (1, 1, 1, 1),
               weights: str | None = None, norm: str = "bn", freeze_at: int = 0) -> nn.Module:
    """The body of ``model.backbone`` (its packaged ``_target_``): C3-C5 maps at strides 8, 16, 32 as an
    OrderedDict, their channels in ``out_channels``. A user's own body keeps that contract."""
    if name == "small":
        if weights:
            raise ValueError(f"model.backbone.weights must be null for the small body, got {weights!r}")
        return SmallResNet(widths, blocks, norm)
    require(BODY, name, "model.backbone.name")
    return TorchvisionResNet(name, weights, norm, freeze_at)


def check_body(body: nn.Module, target: str = "model.backbone") -> nn.Module:
    """A body FPN can sit on: an ``nn.Module`` with ``out_channels``, three positive channel counts (C3-C5)."""
    ch = getattr(body, "out_channels", None)
    if not isinstance(body, nn.Module) or not isinstance(ch, (list, tuple)) or len(ch) != 3 \
            or not all(isinstance(c, int) and c > 0 for c in ch):
        raise ValueError(f"{target}: the body must be an nn.Module with out_channels = [C3, C4, C5] channels "
                         f"(3 positive integers) returning those maps at strides 8, 16, 32; got "
                         f"{type(body).__name__} with out_channels={ch!r}")
    return body


def build_backbone(name: str = "small", widths: Sequence[int] = (32, 64, 128, 256),
                   blocks: Sequence[int] = (1, 1, 1, 1), weights: str | None = None, norm: str = "bn",
                   freeze_at: int = 0, fpn_channels: int = 256, body: nn.Module | None = None) -> BackboneFPN:
    """Body (``build_body``, or ``body`` when given) + FPN."""
    body = check_body(body) if body is not None else build_body(name, widths, blocks, weights, norm, freeze_at)
    return BackboneFPN(body, fpn_channels)
