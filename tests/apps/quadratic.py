"""Tiny Hydra app for the sweeper tests: returns (x - 2)^2 + y.

Options: ``sleep`` (seconds per job), ``fail`` (raise), ``return_none``, ``report_steps`` (report
``(x - 2)^2 + y`` at steps 0..n-1 through focalbench.sweeps.trial.TrialReporter, so a pruner can
prune the job), ``log_dir`` (append one line per job: trial number and overrides, for the tests),
``diverge`` (``metrics``: write metrics.json with status "diverged" into the job's output dir and return
0.0, as focalbench.train does; ``attr``: mark the trial diverged through TrialReporter.mark_diverged).
"""

import json
import os
import time

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig

ConfigStore.instance().store(
    name="quadratic",
    node={
        "x": 0.0,
        "y": 0.0,
        "sleep": 0.0,
        "fail": False,
        "return_none": False,
        "report_steps": 0,
        "log_dir": None,
        "diverge": None,
        "two_values": False,     # return ((x - 2)^2 + y, x^2): a multi-objective job
        "write_metrics": False,  # write metrics.json {status: ok, value, x2} into the job's output dir
        # Filled by the Optuna sweeper; null outside a sweep (as in conf/train.yaml).
        "optuna": {"storage": None, "study_name": None, "trial_number": None},
    },
)


@hydra.main(version_base=None, config_path=None, config_name="quadratic")
def main(cfg) -> object:
    value = (cfg.x - 2.0) ** 2 + cfg.y
    if cfg.log_dir:
        os.makedirs(cfg.log_dir, exist_ok=True)
        record = {"pid": os.getpid(), "trial": cfg.optuna.trial_number, "x": cfg.x, "y": cfg.y,
                  "overrides": list(HydraConfig.get().overrides.task)}
        with open(os.path.join(cfg.log_dir, f"{os.getpid()}.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
    if cfg.report_steps:
        from focalbench.sweeps.trial import TrialReporter

        reporter = TrialReporter(cfg.optuna)
        for step in range(cfg.report_steps):
            reporter.report_and_prune(value, step)
    if cfg.diverge == "metrics":
        out = HydraConfig.get().runtime.output_dir
        with open(os.path.join(out, "metrics.json"), "w") as f:
            json.dump({"status": "diverged", "reason": "non-finite loss at step 3", "AP": 0.0}, f)
        return 0.0
    if cfg.diverge == "attr":
        from focalbench.sweeps.trial import TrialReporter

        TrialReporter(cfg.optuna).mark_diverged("non-finite loss at step 3")
        return 0.0
    if cfg.write_metrics:
        with open(os.path.join(HydraConfig.get().runtime.output_dir, "metrics.json"), "w") as f:
            json.dump({"status": "ok", "value": value, "x2": cfg.x ** 2}, f)
    if cfg.two_values:
        return value, cfg.x ** 2
    time.sleep(cfg.sleep)
    if cfg.fail:
        raise RuntimeError("failing on purpose")
    if cfg.return_none:
        return None
    return value


if __name__ == "__main__":
    main()
