"""``RetinaNetModule``: the Lightning loop around ``RetinaNet`` (training, divergence stop, COCO validation).

Validation under DDP: each rank predicts its shard; the detections are gathered and de-duplicated by image id
(the distributed sampler pads the split with repeated images), rank zero evaluates the whole split once and
broadcasts the stats, so every rank logs the same single-pass numbers.
"""

from __future__ import annotations

import math
import resource
import time
from pathlib import Path
from typing import Any, Mapping

import lightning as L
import numpy as np
import torch
import torch.distributed as dist

from focalbench.checks import one_of, require
from focalbench.evaluation import STAT_NAMES, evaluate_detections, to_coco_detections
from focalbench.model.retinanet import RetinaNet
from focalbench.runstore import atomic_write_json

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")
OPTIMIZER = one_of(OPTIMIZERS, "optimizer")     # optim.name (the config check reads these rules)
SCHEDULE = one_of(SCHEDULES, "schedule")        # optim.schedule


def lr_factor(step: int, max_steps: int, warmup_iters: int, warmup_factor: float, schedule: str,
              steps: tuple[int, ...] = (), gamma: float = 0.1, min_factor: float = 0.0) -> float:
    """Multiplier of the base lr at ``step``: linear warm-up from ``warmup_factor``, then cosine / step decay."""
    if schedule == "step":
        f = gamma ** sum(step >= s for s in steps)
    elif schedule == "cosine":
        t = min(max(step - warmup_iters, 0) / max(1, max_steps - warmup_iters), 1.0)
        f = min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * t))
    else:
        f = 1.0
    if step < warmup_iters:
        f *= warmup_factor + (1 - warmup_factor) * step / warmup_iters
    return f


def build_optimizer(params, name: str = "sgd", lr: float = 0.01, weight_decay: float = 1e-4, momentum: float = 0.9,
                    betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """The optimiser of ``optim`` (its packaged ``_target_``): SGD with momentum (the paper) or AdamW."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    require(OPTIMIZER, name, "optim.name")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas))


def cpu_native_bf16() -> bool:
    """AMX-BF16 or AVX512-BF16 in /proc/cpuinfo (Linux; False elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def peak_memory_mb(device: torch.device | None = None) -> float:
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class RetinaNetModule(L.LightningModule):
    """Plain objects in: a ``RetinaNet`` and the optimiser settings (a dict, see ``conf/optim``).

    ``summary_path``: rank zero writes the run's training facts there (steps, time, divergence), so the
    launching process can read them even when Lightning trained in spawned children.
    """

    def __init__(self, model: RetinaNet, optim: Mapping[str, Any], max_steps: int, batch_size: int = 1,
                 summary_path: str | None = None, eval_backend: str = "faster"):
        super().__init__()
        self.model = model
        self.optim = dict(optim)
        if not self.optim.get("_target_"):
            require(OPTIMIZER, self.optim.get("name"), "optim.name")
        require(SCHEDULE, self.optim.get("schedule", "cosine"), "optim.schedule")
        self.max_steps = int(max_steps)
        self.batch_size = batch_size
        self.summary_path = summary_path
        self.eval_backend = eval_backend
        self.summary: dict[str, Any] = {"diverged": False, "reason": None, "steps": 0, "train_seconds": 0.0,
                                        "num_gt": 0, "gt_no_anchor": 0, "anchors_per_image": None,
                                        "last_eval_step": None, "val": None, "epochs": 0}
        self._val_dets: dict[int, list[dict]] = {}
        self._t_train = None
        self._gt_counts: torch.Tensor | None = None
        self._gt_counts_before = (0, 0)  # counted before the checkpoint this run resumed from
        self.config_hash: str | None = None  # set by focalbench.train; saved in checkpoints

    # ------------------------------------------------------------------------------------------------- train
    def forward(self, images):
        return self.model(images)

    def training_step(self, batch, batch_idx):
        images, targets = batch
        outputs = self.model(images)
        anchors = self.model.anchors(images)
        losses = self.model.compute_loss(outputs, anchors, targets)
        loss = losses["loss"]
        bad = not bool(torch.isfinite(loss.detach()))
        if self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:  # stop here; a zero loss with a graph keeps DDP's gradient all-reduce in step on every rank
            self.summary.update(diverged=True, reason=f"non-finite loss ({loss.item()}) at step {self.global_step}")
            self.trainer.should_stop = True
            return sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0.0
        if self.summary["anchors_per_image"] is None:
            self.summary["anchors_per_image"] = int(anchors.shape[0])
        counts = torch.stack([losses["num_gt"], losses["gt_no_anchor"]]).detach()
        self._gt_counts = counts if self._gt_counts is None else self._gt_counts + counts  # no per-step sync
        bs = images.shape[0]
        self.log("loss", loss.detach(), prog_bar=True, batch_size=bs)
        self.log_dict({"train/loss_cls": losses["loss_cls"].detach(), "train/loss_box": losses["loss_box"].detach(),
                       "train/num_fg": losses["num_fg"].float()}, batch_size=bs)
        return loss

    def on_train_start(self):
        from focalbench.losses import compiled

        compiled.clear_used()  # step_options.loss_kernel says what this run's steps used
        self._t_train = time.perf_counter()

    def on_train_end(self):
        self._add_train_time()
        self.summary["num_gt"], self.summary["gt_no_anchor"] = self._gt_totals()
        self.summary["steps"] = int(self.global_step)
        per_epoch = self.trainer.num_training_batches
        self.summary["epochs"] = round(self.global_step / per_epoch, 3) if per_epoch and per_epoch != float("inf") \
            else int(self.current_epoch)
        removed = getattr(self.model.criterion, "nms_removed_fraction", None)
        if removed is not None:
            self.summary["ohem_nms_removed"] = removed()
        self.summary["step_options"] = self.step_options()
        if not self.summary["diverged"] and not all(torch.isfinite(p).all() for p in self.model.parameters()):
            self.summary.update(diverged=True, reason=f"non-finite weights after step {self.global_step}")
        self._write_summary()

    def step_options(self) -> dict:
        """What the training steps of this run used (metrics.json ``step_options``): the trainer's precision, the
        memory format, the focal loss's kernel (``compiled``: focalbench.losses.compiled, ``eager``), torch's
        threads, and whether this CPU has native bf16 (AMX or AVX512-BF16), where bf16 autocast can pay."""
        from focalbench.losses import compiled

        return {"precision": str(self.trainer.precision), "channels_last": bool(getattr(self.model, "channels_last", False)),
                "loss_kernel": "compiled" if compiled.used() else "eager", "torch_threads": torch.get_num_threads(),
                "device": str(self.device), "cpu_native_bf16": cpu_native_bf16()}

    def _gt_totals(self) -> tuple[int, int]:
        now = self._gt_counts.tolist() if self._gt_counts is not None else (0, 0)
        return tuple(int(a) + int(b) for a, b in zip(self._gt_counts_before, now))

    # ------------------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint):
        """The run's facts so far go into the checkpoint, so a resumed run reports the whole run: steps,
        training time (this process's share up to now included), GT counts, last evaluation."""
        summary = dict(self.summary, steps=int(self.global_step))
        if self._t_train is not None:
            summary["train_seconds"] += time.perf_counter() - self._t_train
        summary["num_gt"], summary["gt_no_anchor"] = self._gt_totals()
        checkpoint["focalbench"] = {"summary": summary, "config_hash": self.config_hash}
        from lightning.pytorch.loggers import CSVLogger

        for lg in self.loggers:  # the CSV log on disk up to this checkpoint (a resumed run appends to it)
            if isinstance(lg, CSVLogger):
                lg.save()

    def on_load_checkpoint(self, checkpoint):
        state = checkpoint.get("focalbench") or {}
        if state.get("summary"):
            self.summary.update(state["summary"])
            self._gt_counts_before = (int(self.summary.get("num_gt") or 0), int(self.summary.get("gt_no_anchor") or 0))
        self.summary["resumed_from_step"] = int(checkpoint.get("global_step", 0))

    def _add_train_time(self):
        if self._t_train is not None:
            self.summary["train_seconds"] += time.perf_counter() - self._t_train
            self._t_train = None

    def configure_optimizers(self):
        o = self.optim
        params = [p for p in self.model.parameters() if p.requires_grad]
        from focalbench.parts import build_part

        opt = build_part(o, "optim", params)  # optim._target_ (build_optimizer): the schedule keys stay ours
        if (o.get("scheduler") or {}).get("_target_"):  # a user's scheduler class, stepped every iteration
            from focalbench.parts import instantiate_part

            sched = instantiate_part(o["scheduler"], "optim.scheduler", opt, total_steps=self.max_steps,
                                     T_max=self.max_steps, total_iters=self.max_steps)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        kw = dict(max_steps=self.max_steps, warmup_iters=int(o.get("warmup_iters", 0)),
                  warmup_factor=float(o.get("warmup_factor", 1.0 / 3)), schedule=o.get("schedule", "cosine"),
                  steps=tuple(int(s) for s in o.get("steps") or ()), gamma=float(o.get("gamma", 0.1)),
                  min_factor=float(o.get("min_factor", 0.0)))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, **kw))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -------------------------------------------------------------------------------------------- validation
    def on_validation_start(self):
        self._add_train_time()  # evaluation time is not training time
        self._val_dets = {}
        self._val_times, self._val_batch_sizes = [], []

    def on_validation_end(self):
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self._t_train = time.perf_counter()

    def validation_step(self, batch, batch_idx):
        images, targets = batch
        if images.device.type == "cuda":
            torch.cuda.synchronize(images.device)
        t0 = time.perf_counter()
        outputs = self.model(images)
        anchors = self.model.anchors(images)
        sizes = torch.stack([_input_size(t, images) for t in targets])
        preds = self.model.postprocess(outputs, anchors, sizes)
        if images.device.type == "cuda":
            torch.cuda.synchronize(images.device)
        # inference time (network + anchors + decoding + NMS; not the COCO evaluation), per image of the batch
        self._val_times.append((time.perf_counter() - t0) * 1000.0 / max(1, len(targets)))
        self._val_batch_sizes.append(len(targets))
        l2c = self.trainer.datamodule.label_to_cat_id
        for p, t in zip(preds, targets):
            self._val_dets[int(t["image_id"])] = to_coco_detections(p, t, l2c)
        return preds  # for callbacks (tracking.WandbValImages draws the first batch's)

    def on_validation_epoch_end(self):
        dets = self._val_dets
        if self.trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            gathered: list = [None] * self.trainer.world_size
            dist.all_gather_object(gathered, dets)
            dets = {}
            for d in gathered:  # padded duplicates carry the same image id and the same detections
                dets.update(d)
        stats = None
        if self.trainer.is_global_zero:
            dm = self.trainer.datamodule
            flat = [d for per_image in dets.values() for d in per_image]
            stats = evaluate_detections(dm.val_coco, flat, backend=self.eval_backend)
            stats["num_images"] = len(dets)
        stats = self.trainer.strategy.broadcast(stats, src=0)
        if self.trainer.sanity_checking:
            return
        # identical on every rank (broadcast above); sync_dist only silences Lightning's DDP warning
        self.log_dict({f"val/{k}": float(stats[k]) for k in STAT_NAMES}, sync_dist=True)
        self.summary["val"] = stats
        self.summary["last_eval_step"] = int(self.global_step)
        if self._val_times:  # rank zero's batches: median ms per image, with the batch size and threads it had
            self.summary["inference"] = {"ms_per_image": round(float(np.median(self._val_times)), 3),
                                         "batch_size": int(np.median(self._val_batch_sizes)),
                                         "torch_threads": torch.get_num_threads(), "device": str(self.device),
                                         "batches": len(self._val_times)}
        self._write_summary()

    def _write_summary(self):
        self.summary.update(peak_memory_mb=max(self.summary.get("peak_memory_mb", 0.0), peak_memory_mb(self.device)),
                            world_size=self.trainer.world_size, batch_size=self.batch_size)
        if self.summary_path and self.trainer.is_global_zero:
            atomic_write_json(Path(self.summary_path), self.summary)


def _input_size(target: Mapping[str, Any], images: torch.Tensor) -> torch.Tensor:
    """(height, width) of the image inside the padded batch, in input pixels (for clipping boxes)."""
    h, w = images.shape[-2:]
    if "size" in target:  # before padding
        h, w = (int(v) for v in target["size"])
    return torch.tensor([h, w], dtype=torch.float32, device=images.device)
