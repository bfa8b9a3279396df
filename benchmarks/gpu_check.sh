#!/usr/bin/env bash
# The GPU figures in one script of under 8 minutes (results/bench/gpu/): run it on a machine with one CUDA GPU
# from the repository root, in an environment that has the project's dependencies (make install, or the
# wheels of requirements listed in pyproject.toml). OUT=<folder> (default results/bench/gpu).
#   1. the focal loss kernel: ours (eager, compiled) against torchvision and the bandwidth floor, fp32 and bf16
#   2. the gpu profile's training step: images per second, train seconds, peak memory (300 steps)
#   3. Table 1a at one seed on the gpu profile with a short schedule (300 steps per row)
set -uo pipefail
OUT=${OUT:-results/bench/gpu}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 WANDB_MODE=offline
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/device.csv" 2>&1 || true
start=$(date +%s)
status=0

echo "== 1. focal loss kernels"
timeout 120 $PY benchmarks/gpu_kernels.py --out "$OUT" || status=1

echo "== 2. gpu profile train step"
timeout 180 $PY -m focalbench.train profile=gpu trainer.max_steps=300 \
  hydra.run.dir="$OUT/train_step" > "$OUT/train_step.log" 2>&1 || status=1
cp "$OUT/train_step/metrics.json" "$OUT/train_step_metrics.json" 2>/dev/null || true

echo "== 3. Table 1a, 1 seed, 300 steps per row"
timeout 240 $PY -m focalbench.reproduce --profile gpu --tables 1a --seeds 1 --workers 1 --no-progress \
  --results "$OUT/reproduce" trainer.max_steps=300 > "$OUT/table1a.log" 2>&1 || status=1
cp "$OUT/reproduce/gpu/table1a.md" "$OUT/table1a.md" 2>/dev/null || true

echo "gpu_check: $(( $(date +%s) - start )) s, status $status; figures in $OUT"
exit $status
