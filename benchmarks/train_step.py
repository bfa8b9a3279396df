"""Benchmark 3: one training step of the ``cpu`` profile's RetinaNet, ours vs torchvision's ``RetinaNet``.

Ours: the ``RetinaNetModule`` built exactly as ``python -m focalbench.train profile=cpu`` builds it
(``focalbench.builders.build_module``), stepped in a bare loop that does what its ``training_step`` and
Lightning's automatic optimisation do: forward, batched assignment + loss, finiteness check, zero_grad,
backward, AdamW step, lr-scheduler step. Reference: ``torchvision.models.detection.RetinaNet`` with a copy of
the same backbone + FPN (same weights), the same anchors (``make_anchor_generator``), a torchvision
``RetinaNetHead`` of the same width / depth / GroupNorm, the paper's matcher thresholds without low-quality
matches (as ours), its own focal loss (per image, in Python), the same optimiser and schedule, the profile's
memory format (``channels_last`` weights when ``model.channels_last``), in a plain PyTorch loop. Both get
the same synthetic batches (the profile's image size and batch, 5 classes, 1-4 boxes of 10-64 px per image,
like the built-in ``shapes`` set); one step of each in turn, the order swapped every repetition.
torchvision's transform is set to the identity normalisation (the batches are already normalised) and to
the profile's size, so it does no real resizing.

Lightning's own overhead: the same module under ``lightning.Trainer`` (``focalbench.builders.build_trainer``
with the cpu profile's settings, a CSV logger, no progress bar) vs the bare loop, interleaved one step each
inside a single ``fit`` (see ``interleaved_vs_trainer``); both fetch their batch from a ``DataLoader``.

Peak memory: each side runs a few steps in its own subprocess; we report the kernel's peak RSS (VmHWM) over
those steps, reset (``/proc/self/clear_refs``) after the model and batches are built and one warm-up step
ran, and its growth over the RSS just before the steps (activations, gradients, temporaries).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from benchmarks.common import REPO, Timing, loadavg, paired, result

TARGET_SPEEDUP = 1.2
TARGET_LIGHTNING_OVERHEAD = 0.05
NUM_CLASSES = 5
OVERRIDES = ["profile=cpu", "trainer.enable_progress_bar=false"]


# ------------------------------------------------------------------------------------------------- inputs
def synthetic_batches(num_batches: int, batch_size: int = 8, size: int = 128, num_classes: int = NUM_CLASSES,
                      seed: int = 0) -> list[tuple[torch.Tensor, list[dict[str, torch.Tensor]]]]:
    """Normalised images ``(B, 3, size, size)`` and targets like ``CocoDataModule``'s (xyxy input pixels)."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for b in range(num_batches):
        images = torch.randn(batch_size, 3, size, size, generator=g)
        targets = []
        for i in range(batch_size):
            m = int(torch.randint(1, 5, (1,), generator=g))
            wh = 10 + 54 * torch.rand(m, 2, generator=g)
            xy = torch.rand(m, 2, generator=g) * (size - wh)
            targets.append({"boxes": torch.cat([xy, xy + wh], dim=1), "labels": torch.randint(num_classes, (m,),
                            generator=g), "image_id": torch.tensor(b * batch_size + i),
                            "size": torch.tensor([size, size])})
        batches.append((images, targets))
    return batches


class _Batches(Dataset):
    def __init__(self, batches, length):
        self.batches, self.length = batches, length

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        return self.batches[i % len(self.batches)]


def batch_loader(batches, length: int) -> DataLoader:
    """Yields the prepared batches as they are (``batch_size=None``), ``length`` of them."""
    return DataLoader(_Batches(batches, length), batch_size=None, shuffle=False, num_workers=0)


# ------------------------------------------------------------------------------------------------ models
def cpu_config(overrides=()):
    from focalbench.train import compose

    return compose([*OVERRIDES, *overrides])


def build_ours(cfg=None, num_classes: int = NUM_CLASSES):
    """The cpu profile's ``RetinaNetModule`` (as ``focalbench.train.run`` builds it)."""
    from focalbench.builders import build_module, derive_schedule

    cfg = cfg or cpu_config()
    return build_module(cfg, num_classes, derive_schedule(cfg), summary_path=None)


class _DictFeatures(nn.Module):
    """Our ``BackboneFPN`` (a list P3..P7) as torchvision's detectors expect it (an ordered dict)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.body = backbone
        self.out_channels = backbone.out_channels

    def forward(self, x):
        return OrderedDict((f"p{i + 3}", f) for i, f in enumerate(self.body(x)))


def build_torchvision(ours_module, cfg=None, num_classes: int = NUM_CLASSES):
    """torchvision ``RetinaNet`` with a copy of our backbone and the same anchors / head shape / thresholds."""
    import copy

    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection._utils import Matcher
    from torchvision.models.detection.retinanet import RetinaNetHead

    from focalbench.model.anchors import make_anchor_generator, num_anchors_per_location

    cfg = cfg or cpu_config()
    m, a = cfg.model, cfg.anchors
    if (m.head.width or m.fpn_channels) != m.fpn_channels:
        raise ValueError("torchvision's RetinaNetHead has the FPN's width: the cpu profile's head width must equal "
                         f"model.fpn_channels, got {m.head.width} vs {m.fpn_channels}")
    norm = partial(nn.GroupNorm, 16) if m.head.norm == "gn" else None
    head = RetinaNetHead(m.fpn_channels, num_anchors_per_location(a.scales, a.ratios), num_classes, norm_layer=norm)
    size = int(cfg.data.image_size)
    model = RetinaNet(_DictFeatures(copy.deepcopy(ours_module.model.backbone)), num_classes, min_size=size,
                      max_size=int(cfg.data.max_size), image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0],
                      anchor_generator=make_anchor_generator(a.scales, a.ratios, a.size_multiplier),
                      head=head, proposal_matcher=Matcher(m.fg_iou, m.bg_iou, m.allow_low_quality_matches),
                      size_divisible=int(cfg.data.size_divisible))
    if m.get("channels_last", False):  # the profile's memory format, as ``build_retinanet`` applies it
        model = model.to(memory_format=torch.channels_last)
    return model


def _optimizer(module, params):
    """The module's own optimiser + scheduler recipe, on ``params``."""
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    opt_cls = type(opt)
    new = opt_cls(params, **{k: v for k, v in opt.defaults.items() if k in ("lr", "weight_decay", "betas",
                                                                             "momentum")})
    return new, torch.optim.lr_scheduler.LambdaLR(new, sched.lr_lambdas[0])


# ----------------------------------------------------------------------------------------------- stepping
class OursStepper:
    """Bare-loop equivalent of ``RetinaNetModule.training_step`` + Lightning's automatic optimisation."""

    def __init__(self, module):
        self.module = module
        self.model = module.model.train()
        conf = module.configure_optimizers()
        self.opt, self.sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]

    def __call__(self, batch) -> float:
        images, targets = batch
        outputs = self.model(images)
        losses = self.model.compute_loss(outputs, self.model.anchors(images), targets)
        loss = losses["loss"]
        return _step(self.opt, self.sched, loss)


def _step(opt, sched, loss) -> float:
    """Backward and optimizer/scheduler step, the same for both sides."""
    if not bool(torch.isfinite(loss.detach())):
        raise FloatingPointError("non-finite loss in the benchmark")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return float(loss.detach())


class TorchvisionStepper:
    """The plain PyTorch loop of torchvision's detection references (sum of the loss dict)."""

    def __init__(self, model, ours_module):
        self.model = model.train()
        self.opt, self.sched = _optimizer(ours_module, [p for p in model.parameters() if p.requires_grad])

    def __call__(self, batch) -> float:
        images, targets = batch
        losses = self.model(list(images), [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
        loss = sum(losses.values())
        return _step(self.opt, self.sched, loss)


def _paired_steps(ours, theirs, batches, reps: int, warmup: int) -> Timing:
    """One step of each in turn on the same batch, the order swapped every repetition, after warm-up."""
    for i in range(warmup):
        ours(batches[i % len(batches)])
        theirs(batches[i % len(batches)])
    before = loadavg()
    t_ours, t_theirs = [], []
    for i in range(reps):
        batch = batches[i % len(batches)]
        pair = [(t_ours, ours), (t_theirs, theirs)]
        for times, stepper in (pair if i % 2 == 0 else pair[::-1]):
            t0 = time.perf_counter()
            stepper(batch)
            times.append(time.perf_counter() - t0)
    return Timing(t_ours, t_theirs, paired=True, loadavg_before=before, loadavg_after=loadavg())


def _steps_seconds(stepper, batches, steps: int, offset: int = 0) -> float:
    """Mean seconds per step over ``steps`` steps (batches cycled)."""
    t0 = time.perf_counter()
    for i in range(steps):
        stepper(batches[(offset + i) % len(batches)])
    return (time.perf_counter() - t0) / steps


def interleaved_vs_trainer(module, cfg, batches, steps: int, warmup: int) -> tuple[list[float], list[float]]:
    """Per-step seconds of the bare loop and of ``lightning.Trainer`` (the project's ``build_trainer``), one
    step of each in turn inside a single ``fit``: after each Trainer step a callback runs one bare step
    (its own DataLoader iterator and optimiser, same module). A Trainer step's time runs from the end of
    the previous bare step to the end of this Trainer step; a bare step's from its start (fetch included)
    to its end. The first ``warmup`` pairs are dropped."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from focalbench.builders import build_trainer

    total = warmup + steps
    bare = OursStepper(module)
    bare_batches = iter(batch_loader(batches, total))

    class Interleave(L.Callback):
        def __init__(self):
            self.t_trainer: list[float] = []
            self.t_bare: list[float] = []
            self.mark: float | None = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if self.mark is None:  # the first step: from its start (setup before it is not a step)
                self.mark = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            t0 = time.perf_counter()
            self.t_trainer.append(t0 - self.mark)
            bare(next(bare_batches))
            self.mark = time.perf_counter()
            self.t_bare.append(self.mark - t0)

    clock = Interleave()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(cfg, Path(tmp), total, [CSVLogger(tmp, name="bench")], [clock])
        trainer.fit(module, train_dataloaders=batch_loader(batches, total))
    if len(clock.t_trainer) != total:
        raise RuntimeError(f"the Trainer ran {len(clock.t_trainer)} steps, expected {total}")
    return clock.t_bare[warmup:], clock.t_trainer[warmup:]


def anchors_match(module, tv_model, images: torch.Tensor) -> bool:
    """Whether torchvision's anchor generator gives our anchors (same boxes, same order) for these images."""
    from torchvision.models.detection.image_list import ImageList

    with torch.no_grad():
        features = module.model.backbone(images)
    image_list = ImageList(images, [tuple(images.shape[-2:])] * images.shape[0])
    theirs = tv_model.anchor_generator(image_list, features)
    ours = module.model.anchors(images)
    return all(t.shape == ours.shape and torch.allclose(t, ours, atol=1e-4) for t in theirs)


def loss_part(module, tv_model, batch, reps: int, warmup: int) -> Timing:
    """Only what differs between the two steps outside the network: anchors, assignment, classification and
    box losses, forward + backward, on fixed head outputs (leaf tensors), ours batched vs torchvision's
    per-image loop. Shows how much of the step the loss can save at most (Amdahl)."""
    from torchvision.models.detection.image_list import ImageList

    from focalbench.model.retinanet import HeadOutputs

    images, targets = batch
    model = module.model
    with torch.no_grad():
        out = model(images)
        features = model.backbone(images)
    cls, box = out.cls_logits.detach().contiguous(), out.bbox_deltas.detach().contiguous()
    image_list = ImageList(images, [tuple(images.shape[-2:])] * images.shape[0])
    tv_targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]

    def leaves():
        return cls.clone().requires_grad_(), box.clone().requires_grad_()

    def ours(leaf):
        c, b = leaf
        model.compute_loss(HeadOutputs(c, b, out.level_sizes), model.anchors(images), targets)["loss"].backward()

    def theirs(leaf):
        c, b = leaf
        anchors = tv_model.anchor_generator(image_list, features)
        losses = tv_model.compute_loss(tv_targets, {"cls_logits": c, "bbox_regression": b}, anchors)
        sum(losses.values()).backward()

    return paired(ours, theirs, reps=reps, warmup=warmup, setup=leaves)


# -------------------------------------------------------------------------------------------- peak memory
def peak_rss(side: str, steps: int = 5) -> dict[str, float]:
    """Run in a fresh subprocess: build ``side`` ("ours" | "torchvision"), step ``steps`` times, return its
    memory figures (see ``_peak_main``). Same torch thread count as this process."""
    cmd = [sys.executable, "-m", "benchmarks.train_step", "--peak", side, "--steps", str(steps),
           "--threads", str(torch.get_num_threads())]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"peak-memory subprocess for {side} failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _status_mb(key: str) -> float | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux ``clear_refs`` 5); False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_main(side: str, steps: int, threads: int) -> None:
    """Peak RSS of ``steps`` training steps: the kernel's high-water mark, reset after the model and batches
    are built and one warm-up step ran (so imports and construction do not count), read after the steps."""
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    cfg = cpu_config()
    module = build_ours(cfg)
    batches = synthetic_batches(4, int(cfg.data.batch_size), int(cfg.data.image_size))
    stepper = OursStepper(module) if side == "ours" else TorchvisionStepper(build_torchvision(module, cfg), module)
    stepper(batches[0])                       # optimiser state exists from here on, on both sides
    rss_before = _status_mb("VmRSS")
    reset = _reset_peak_rss()
    _steps_seconds(stepper, batches, steps)
    peak = _status_mb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"side": side, "steps": steps, "peak_rss_mb": round(peak, 1),
                      "rss_before_steps_mb": round(rss_before, 1), "step_growth_mb": round(peak - rss_before, 1),
                      "method": "VmHWM after clear_refs" if reset else "ru_maxrss (whole process)"}))


# -------------------------------------------------------------------------------------------------- bench
def run(reps: int = 12, quick: bool = False, warmup: int = 2) -> list[dict[str, Any]]:
    """``reps`` paired single steps for ours vs torchvision and for bare vs Trainer (after ``warmup``), at the
    caller's torch thread count (``benchmarks.run`` sets it for every benchmark alike)."""
    torch.manual_seed(0)
    cfg = cpu_config()
    if quick:
        reps, warmup = 3, 1
    module = build_ours(cfg)
    tv_model = build_torchvision(module, cfg)
    ours, theirs = OursStepper(module), TorchvisionStepper(tv_model, module)
    batches = synthetic_batches(4, int(cfg.data.batch_size), int(cfg.data.image_size))
    anchors = int(module.model.anchors(batches[0][0]).shape[0])

    # ours vs torchvision: one step each in turn (order swapped every repetition), the same batch for both
    vs_tv = _paired_steps(ours, theirs, batches, reps, warmup)
    nchw = None
    if cfg.model.get("channels_last", False):  # also against torchvision as it comes (NCHW), for reference
        tv_nchw = build_torchvision(module, cfg).to(memory_format=torch.contiguous_format)
        nchw = _paired_steps(ours, TorchvisionStepper(tv_nchw, module), batches, reps, warmup)
    loss_only = loss_part(module, tv_model, batches[0], reps, warmup)
    same_anchors = anchors_match(module, tv_model, batches[0][0])
    # Amdahl: the best step speed-up a free loss could give = their step / (their step - their loss part)
    loss_share = loss_only.theirs_median / vs_tv.theirs_median

    # Lightning's overhead: the same module bare vs under the Trainer, interleaved step by step
    before = loadavg()
    t_bare, t_trainer = interleaved_vs_trainer(module, cfg, batches, reps, warmup)
    # here "theirs" is the Trainer: speedup = Trainer time / bare time = 1 + overhead
    lightning = Timing(t_bare, t_trainer, paired=True, loadavg_before=before, loadavg_after=loadavg())
    overhead = lightning.speedup - 1.0
    # the same without the module's per-step self.log / self.log_dict calls: what logging costs
    quiet = build_ours(cfg)
    quiet.load_state_dict(module.state_dict())
    quiet.log = lambda *args, **kwargs: None
    quiet.log_dict = lambda *args, **kwargs: None
    before = loadavg()
    t_bare_q, t_trainer_q = interleaved_vs_trainer(quiet, cfg, batches, reps, warmup)
    no_log = Timing(t_bare_q, t_trainer_q, paired=True, loadavg_before=before, loadavg_after=loadavg())

    mem_ours, mem_tv = peak_rss("ours"), peak_rss("torchvision")
    desc = (f"cpu profile: {cfg.data.image_size} px, batch {cfg.data.batch_size}, backbone "
            f"{cfg.model.backbone.name} {list(cfg.model.backbone.widths)}, FPN {cfg.model.fpn_channels}, head "
            f"{cfg.model.head.num_convs}x{cfg.model.head.width} {cfg.model.head.norm}, {anchors:,} anchors, AdamW")
    common = dict(warmup_steps=warmup, anchors_per_image=anchors, batch_size=int(cfg.data.batch_size),
                  threads=torch.get_num_threads(), config=desc)
    return [
        result("train_step", "training step (fwd+bwd+AdamW), ours bare loop vs torchvision RetinaNet", vs_tv,
               TARGET_SPEEDUP, peak_rss_ours=mem_ours, peak_rss_theirs=mem_tv,
               memory_method="one fresh subprocess per side; kernel peak RSS (VmHWM) over 5 steps, reset after "
                             "building the model and batches and one warm-up step",
               reference_loss_share=loss_share,
               max_speedup_if_ours_had_free_loss=1.0 / max(1e-9, 1.0 - loss_share), **common),
        *([result("train_step_vs_nchw", "training step, ours vs torchvision RetinaNet in its default memory "
                  "format (NCHW; ours uses the profile's channels_last)", nchw, None, **common)] if nchw else []),
        result("train_loss_part", "anchors + assignment + cls/box loss fwd+bwd on fixed head outputs, ours batched "
               "vs torchvision per image", loss_only, None, same_anchors=same_anchors, **common),
        result("lightning_overhead", "our module under lightning.Trainer vs the bare loop (DataLoader fetch "
               "included on both)", lightning, None, overhead=overhead,
               target_overhead=TARGET_LIGHTNING_OVERHEAD, met=bool(overhead <= TARGET_LIGHTNING_OVERHEAD),
               note="ours = bare loop, theirs = Trainer (one step each in turn inside one fit); "
                    "speedup = Trainer time / bare time = 1 + overhead", **common),
        result("lightning_overhead_no_log", "the same with the module's self.log/self.log_dict made no-ops",
               no_log, None, overhead=no_log.speedup - 1.0, target_overhead=TARGET_LIGHTNING_OVERHEAD,
               note="shows how much of the overhead is per-step logging", **common),
    ]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peak", choices=("ours", "torchvision"), required=True)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args(argv)
    _peak_main(args.peak, args.steps, args.threads)


if __name__ == "__main__":
    main()
