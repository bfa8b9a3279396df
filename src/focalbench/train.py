"""One RetinaNet training run: ``python -m focalbench.train [hydra overrides]`` (conf/train.yaml).

In-process drivers use ``compose(overrides)`` and ``run(cfg, output_dir)``; the CLI is a thin Hydra wrapper
around the same ``run``. Every run writes ``metrics.json`` (atomically, rank zero only) into its output
directory, also when it diverges (status "diverged", AP 0, exit code 0), is pruned or fails.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import hydra
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from focalbench.config_schema import (EXTRA_KEYS, trainer_arguments, ConfigError, check_added_keys, check_command_line,
                                      check_data_root, check_group_choices, composition_error_line, group_options, searchpath_dirs,
                                      config_entries, exit_config_error, os_error_line, validate_config)
from focalbench.data.build import GENERATORS
from focalbench.data.errors import DataError
from focalbench.evaluation import STAT_NAMES
from focalbench.checkpoints import (CheckpointError, checkpoint_dir, continue_csv_log,  # noqa: F401
                                    resolve_ckpt_path)
from focalbench.builders import (build_callbacks, build_datamodule, build_module, build_trainer,  # noqa: F401
                                 derive_schedule)
from focalbench.hydra_context import hydra_context
from focalbench.paths import CONF_DIR  # the package's conf/, or $FOCALBENCH_CONF
from focalbench.runstore import atomic_write_json, config_hash, git_sha, hashed_view

log = logging.getLogger(__name__)

# Keys that say where and how a run is recorded, not what it computes: left out of the config hash.
# ``trainer.num_threads`` IS hashed: CPU kernels split their reductions by thread, so the same config at 1
# and 2 threads trains to different weights (measured: AP 6.2 vs 10.7 for one row of the cpu profile);
# at a fixed thread count a rerun is bit-identical (tests/test_determinism.py).
# ``checkpoint`` / ``ckpt_path``: how often a run is saved and where it resumes from (tests/test_checkpoint_resume.py).
NON_HASHED = ("hydra", "logger", "optuna", "tags", "reproduce", "save_weights", "checkpoint", "ckpt_path", "paths")
NON_HASHED_TRAINER = ("enable_progress_bar", "log_every_n_steps", "enable_checkpointing")
SUMMARY_FILE = "train_summary.json"


# ------------------------------------------------------------------------------------------------- config
def compose(overrides: Sequence[str] = (), validate: bool = True) -> DictConfig:
    """The run config for ``overrides`` via Hydra's compose API (no output dir, no chdir).

    The result keeps a ``hydra`` node (``hydra.overrides.task`` is what ``run`` records); nothing in the run
    config interpolates ``${hydra:...}``, so it resolves outside a Hydra app. ``validate``: unknown group
    options and values no run accepts raise ``ConfigError`` (one line, see focalbench.config_schema).
    """
    with hydra_context(CONF_DIR, "train"):  # inside the app (or an initialize() block over conf/): that one
        return _compose(list(overrides), validate)


def _compose(overrides: list[str], validate: bool) -> DictConfig:
    if not validate:
        return hydra.compose(config_name="train", overrides=overrides, return_hydra_config=True)
    loader = GlobalHydra.instance().config_loader()
    groups = {g: loader.get_group_options(g) for g in loader.list_groups("")}
    for g, options in group_options(searchpath_dirs(overrides)).items():  # hydra.searchpath=[file://my_conf]
        groups[g] = sorted({*groups.get(g, []), *options})
    check_group_choices(overrides, groups)
    check_added_keys(overrides, known_keys, groups)  # +foo=1 would change the hash and nothing else
    try:
        cfg = hydra.compose(config_name="train", overrides=overrides, return_hydra_config=True)
    except ConfigCompositionException as e:
        one_line = composition_error_line(
            overrides, e, lambda ov: hydra.compose(config_name="train", overrides=ov))  # unknown key: one line
        if one_line is None:
            raise
        raise one_line from None
    validate_config(cfg)
    check_data_root(cfg, OmegaConf.select(cfg, "hydra.runtime.choices.data"), overrides, builtin_roots)
    return cfg


def known_keys() -> list[str]:
    """What ``+key=`` may add: every key a file of conf/ sets (any group option) and the code's EXTRA_KEYS."""
    groups = {d.name: d for d in sorted(CONF_DIR.iterdir()) if d.is_dir()}
    return [*config_entries(CONF_DIR / "train.yaml", groups), *EXTRA_KEYS,
            *(f"trainer.{a}" for a in trainer_arguments())]  # any lightning.Trainer argument: +trainer.fast_dev_run=2


def builtin_roots() -> list[str]:
    """The ``data.root`` folders conf/ names (built-in sets, profiles): never a COCO root by default."""
    groups = {d.name: d for d in sorted(CONF_DIR.iterdir()) if d.is_dir()}
    values = config_entries(CONF_DIR / "train.yaml", groups).get("data.root", [])
    # a profile's root names the built-in set it holds (data/${data.build}_smoke): every set it can resolve to
    return [v.replace("${data.build}", name) for v in values if isinstance(v, str) and v != "???"
            for name in (*GENERATORS, "None")]


def run_config_for_hash(cfg: DictConfig) -> dict:
    """The resolved config minus output/logging/optuna keys: what decides a run's result."""
    return hashed_view(cfg, NON_HASHED, {"trainer": NON_HASHED_TRAINER})


def _overrides(cfg: DictConfig) -> list[str]:
    if "hydra" in cfg and OmegaConf.select(cfg, "hydra.overrides.task") is not None:
        return list(cfg.hydra.overrides.task)
    if HydraConfig.initialized():
        return list(HydraConfig.get().overrides.task)
    return []


# ------------------------------------------------------------------------------------------------ logging
def _one_line_per_log_record() -> None:
    """``import lightning`` gives the ``lightning`` logger its own stderr handler *and* lets it propagate: where
    the root logger has handlers (Hydra's console and job log file) every Lightning line printed twice. Keep
    the root's only; with no root handlers (a bare script) Lightning's own stay."""
    if not logging.getLogger().handlers:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        lg = logging.getLogger(name)
        for h in [h for h in lg.handlers if type(h) is logging.StreamHandler]:
            lg.removeHandler(h)
        lg.propagate = True


def _wandb_identity(cfg: DictConfig, overrides: list[str]) -> dict:
    """W&B name/group/job_type/tags (``tracking.run_identity``), from the config and Hydra's run mode."""
    from focalbench.tracking import run_identity

    hc = cfg.hydra if "hydra" in cfg else (HydraConfig.get() if HydraConfig.initialized() else None)
    multirun = hc is not None and OmegaConf.select(hc, "mode") == RunMode.MULTIRUN
    sweep_dir = str(OmegaConf.select(hc, "sweep.dir")) if multirun else None
    profile = OmegaConf.select(hc, "runtime.choices.profile") if hc is not None else None
    return run_identity(overrides, OmegaConf.to_container(cfg.tags, resolve=True), int(cfg.seed),
                        study=cfg.optuna.get("study_name"), sweep_dir=sweep_dir, profile=profile,
                        loss=str(cfg.loss.get("name") or cfg.loss.get("_target_")))


# ---------------------------------------------------------------------------------------------------- run
def run(cfg: DictConfig, output_dir: str | os.PathLike) -> dict:
    """Train and evaluate one config; write and return its metrics (the keys: docs/outputs.md)."""
    import lightning as L

    from focalbench.tracking import finish_wandb, make_loggers, read_json, wandb_run_id

    _one_line_per_log_record()

    validate_config(cfg, complete=True)  # before any directory, data or model is made
    from focalbench.model.backbone import check_weights

    check_weights(OmegaConf.to_container(cfg.model.backbone, resolve=True))  # pretrained file present, or one line
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    overrides = _overrides(cfg)
    identity = _wandb_identity(cfg, overrides)  # before the hydra node goes
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"]) if "hydra" in cfg else cfg
    resolved = OmegaConf.to_container(cfg, resolve=True)
    metrics: dict[str, Any] = {"status": "failed", **{k: 0.0 for k in STAT_NAMES}, "seed": int(cfg.seed),
                               "config_hash": config_hash(run_config_for_hash(cfg)), "git_sha": git_sha(),
                               "overrides": overrides, "epochs": 0, "steps": 0, "train_seconds": 0.0,
                               "images_per_second": 0.0, "peak_memory_mb": 0.0, "anchors_per_image": None}
    metrics_path = out / "metrics.json"
    summary_path = out / SUMMARY_FILE
    ckpt_dir = checkpoint_dir(cfg, out)
    resume_from, resume_info = resolve_ckpt_path(cfg, out, metrics["config_hash"])  # or one line (exit 2)
    t_start = time.perf_counter()
    loggers: list = []
    is_zero = env_rank_zero()  # until the Trainer says (an error before it exists is written once)
    try:
        if cfg.trainer.num_threads:
            torch.set_num_threads(int(cfg.trainer.num_threads))
        L.seed_everything(int(cfg.seed), workers=True, verbose=False)
        schedule = derive_schedule(cfg)
        metrics.update(effective_batch=schedule["effective_batch"], lr=schedule["lr"],
                       max_steps=schedule["max_steps"])
        dm = build_datamodule(cfg)
        dm.prepare_data()
        dm.setup("fit")
        module = build_module(cfg, int(dm.num_classes), schedule, str(summary_path))
        module.config_hash = metrics["config_hash"]  # saved in each checkpoint: resume checks it
        run_id = wandb_run_id(out, resume=resume_from is not None) if cfg.logger.name == "wandb" and is_zero else None
        loggers = make_loggers(cfg.logger, out, resolved, cfg.tags, identity=identity, run_id=run_id)
        trainer = build_trainer(cfg, out, schedule["max_steps"], loggers, build_callbacks(cfg, ckpt_dir))
        is_zero = trainer.is_global_zero
        if resume_from is not None:
            log.info("resuming from %s (step %d)", resume_from, resume_info["global_step"])
            if is_zero:
                continue_csv_log(loggers[0], resume_info["global_step"])
        try:
            with warnings.catch_warnings():
                if resume_from is not None:  # the killed run's checkpoints are continued on purpose
                    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
                trainer.fit(module, datamodule=dm, ckpt_path=str(resume_from) if resume_from else None)
        finally:
            # spawn launchers train in children: this process then only sees what rank zero wrote
            trained_here = trainer.global_step > 0
            summary = module.summary if trained_here else (read_json(summary_path) or module.summary)
            module.summary = dict(summary)
            metrics.update(_train_metrics(summary))
        for cb in trainer.callbacks:  # a trial pruned on rank zero under DDP raises here, on every rank
            getattr(cb, "check_pruned", lambda: None)()
        if not summary["diverged"] and summary.get("last_eval_step") != summary["steps"]:
            trainer.validate(module, datamodule=dm, verbose=False)  # the final evaluation always runs
            summary = module.summary if trained_here else (read_json(summary_path) or summary)
        metrics.update(_train_metrics(summary))
        if trained_here and trainer.checkpoint_callback is not None and not summary["diverged"] \
                and trainer.checkpoint_callback.save_last:
            # the finished state, evaluated: rerunning a finished command only rewrites its metrics
            trainer.save_checkpoint(ckpt_dir / "last.ckpt", weights_only=False)
        if summary["diverged"]:
            metrics.update(status="diverged", reason=summary["reason"], **{k: 0.0 for k in STAT_NAMES})
        else:
            metrics.update(status="ok", **{k: float(summary["val"][k]) for k in STAT_NAMES})
    except BaseException as e:
        if _is_pruned(e):
            metrics.update(status="pruned", reason=str(e) or "pruned by the Optuna pruner")
            val = (read_json(summary_path) or {}).get("val") or {}
            metrics.update({k: float(val.get(k, 0.0)) for k in STAT_NAMES})
        elif isinstance(e, (Interrupted, KeyboardInterrupt)):
            metrics.update(status="failed", reason=str(e) if isinstance(e, Interrupted) else "interrupted (SIGINT)")
        else:
            metrics.update(status="failed", reason=f"{type(e).__name__}: {e}".splitlines()[0][:500])
        metrics["wall_seconds"] = round(time.perf_counter() - t_start, 3)
        if is_zero:
            atomic_write_json(metrics_path, metrics)
            finish_wandb(loggers, metrics, metrics_path)
        raise
    metrics["wall_seconds"] = round(time.perf_counter() - t_start, 3)
    if is_zero:
        if cfg.get("save_weights", False) and trained_here and metrics["status"] == "ok":
            # the trained weights (a few MB on the cpu profile): the paper's Figure 4 is computed from them
            torch.save(module.model.state_dict(), out / "model.pt")
        atomic_write_json(metrics_path, metrics)
        finish_wandb(loggers, metrics, metrics_path)
    log.info("%s AP %.2f AP50 %.2f (%s steps, %.1f s training) -> %s", metrics["status"], metrics["AP"],
             metrics["AP50"], metrics["steps"], metrics["train_seconds"], metrics_path)
    return metrics


def env_rank_zero(env: Mapping[str, str] = os.environ) -> bool:
    """Whether this process is global rank zero, from the launchers' variables, before a Trainer exists:
    torchrun sets RANK; Lightning's ddp launcher LOCAL_RANK and NODE_RANK in the processes it starts; srun
    (SLURM, one task per device, as Lightning's SLURM environment expects) SLURM_PROCID in every task."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"):
        if env.get(key, "0").strip() not in ("", "0"):
            return False
    return True


def _train_metrics(s: dict) -> dict:
    secs = float(s.get("train_seconds") or 0.0)
    images = int(s.get("steps") or 0) * int(s.get("batch_size") or 0) * int(s.get("world_size") or 1)
    m = {"epochs": s.get("epochs") or 0, "steps": int(s.get("steps") or 0), "train_seconds": round(secs, 3),
         "images_per_second": round(images / secs, 2) if secs > 0 else 0.0,
         "peak_memory_mb": round(float(s.get("peak_memory_mb") or 0.0), 1),
         "anchors_per_image": s.get("anchors_per_image"), "gt_boxes": int(s.get("num_gt") or 0),
         "gt_boxes_without_anchor": int(s.get("gt_no_anchor") or 0), "world_size": int(s.get("world_size") or 1)}
    # GT boxes (counted once per training batch they appear in) that no anchor overlaps at IoU >= fg_iou
    m["gt_without_anchor_fraction"] = round(m["gt_boxes_without_anchor"] / m["gt_boxes"], 4) if m["gt_boxes"] else 0.0
    if s.get("resumed_from_step") is not None:  # resumed from a checkpoint saved at this step
        m["resumed_from_step"] = int(s["resumed_from_step"])
    if s.get("ohem_nms_removed") is not None:
        m["ohem_nms_removed"] = s["ohem_nms_removed"]
    if s.get("step_options"):
        m["step_options"] = s["step_options"]
    if s.get("inference"):  # the final evaluation's median inference time (Table 1e)
        m["inference_ms_per_image"] = s["inference"]["ms_per_image"]
        m["inference"] = s["inference"]
    if s.get("val"):
        m["val_images"] = s["val"].get("num_images")
    return m


def _is_pruned(e: BaseException) -> bool:
    try:
        import optuna
    except ImportError:
        return False
    return isinstance(e, optuna.TrialPruned)


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Hydra task: returns val AP (the value sweepers optimise)."""
    hc = HydraConfig.get()
    try:
        validate_config(cfg, complete=True)
        check_data_root(cfg, hc.runtime.choices.get("data"), list(hc.overrides.task), builtin_roots)
    except ConfigError as e:
        if hc.mode == RunMode.MULTIRUN:
            raise  # one failed job: the sweeper records it and decides
        exit_config_error(e)
    try:
        metrics = run(cfg, hc.runtime.output_dir)
    except Interrupted as e:  # metrics.json says "interrupted (SIGINT)"; the exit status says it as a shell does
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(128 + e.signum) from None
    except (DataError, OSError) as e:  # bad data, missing dataset, unwritable/full disk: metrics.json says so too
        if hc.mode == RunMode.MULTIRUN:
            raise
        print(f"error: {e if isinstance(e, DataError) else os_error_line(e)}", file=sys.stderr)
        raise SystemExit(2 if isinstance(e, DataError) else 1)
    return float(metrics["AP"])


# Config groups no default selects (so Hydra wants `+group=option`) that hydra-optuna-sweeper users write plainly
OPTIONAL_GROUPS = ("hydra/sweeper/sampler",)


def optional_groups(argv: Sequence[str]) -> list[str]:
    """``hydra/sweeper/sampler=nsgaii`` -> ``+hydra/sweeper/sampler=nsgaii`` (as hydra-optuna-sweeper's configs
    write it; this sweeper's default sampler is the plain ``tpe``, so the group has no default to override)."""
    return [f"+{a}" if a.split("=", 1)[0] in OPTIONAL_GROUPS and "=" in a else a for a in argv]


class Interrupted(BaseException):
    """SIGINT or SIGTERM to ``python -m focalbench.train``: the run records ``interrupted (SIGINT)`` and the
    process exits 128 + the signal's number (130, 143), as a shell reports it. Not a KeyboardInterrupt:
    Lightning turns that, inside ``fit``, into ``exit(1)``; any other exception it re-raises after teardown."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(f"interrupted ({signal.Signals(self.signum).name})")


def _interrupt_handlers() -> None:
    pid = os.getpid()

    def handler(signum, frame):
        if os.getpid() != pid:  # a forked data-loader worker: its parent reports the signal
            raise KeyboardInterrupt
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C: Python's own behaviour
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise Interrupted(signum)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def cli() -> None:
    """``python -m focalbench.train``: config errors (also unknown ``+key``s and an unwritable run folder) as
    one line on stderr (exit code 2), before Hydra makes a run directory (``config_schema.check_command_line``);
    ``-m`` jobs and other config dirs are validated by ``main``, per job. SIGINT / SIGTERM: exit 130 / 143."""
    _interrupt_handlers()
    sys.argv[1:] = optional_groups(sys.argv[1:])
    try:
        check_command_line(sys.argv[1:], [CONF_DIR], compose, complete=True, known_keys=known_keys)
        main()
    except Interrupted as e:  # before or after the run (during a run main says it)
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(128 + e.signum) from None


if __name__ == "__main__":
    cli()
