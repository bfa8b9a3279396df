"""``results/bench/README.md`` from the results of ``benchmarks.run.run_all`` (pure formatting, no timing)."""

from __future__ import annotations

from typing import Any

MB = 2 ** 20


def _s(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 10:
        return f"{x:.1f} s"
    if x >= 1:
        return f"{x:.2f} s"
    if x >= 1e-3:
        return f"{x * 1e3:.1f} ms"
    return f"{x * 1e6:.0f} us"


def _met(v: bool | None) -> str:
    return "-" if v is None else ("**met**" if v else "**not met**")


def _reps(r: dict) -> str:
    n_o, n_t = r.get("reps_ours"), r.get("reps_theirs")
    return f"{n_o}" if n_o == n_t else f"{n_o} / {n_t}"


def _rows_by(res: dict, bench: str) -> list[dict]:
    return [r for r in res["rows"] if r.get("benchmark") == bench]


def _limits(r: dict) -> str | None:
    """Why a target is not met, from what the row measured (None when met or no target)."""
    name = r["name"]
    if r.get("met") is not False:
        return None
    if name.startswith("focal_loss"):
        text = (f"{r['speedup']:.2f}x on the {r.get('path', 'eager')} path. Both sides are chains of "
                f"elementwise passes over {r['shape'][0]:,} x {r['shape'][1]} values.")
        if r.get("path") == "eager":
            reason = r.get("compile_unavailable") or "the tensor is below the compiled path's size threshold"
            text += (f" The compiled path (one fused pass) was not used: {reason}; the eager Function runs "
                     "~15 in-place passes over logits-sized buffers.")
        if "compiled_over_floor" in r:
            text += (f" The compiled kernel takes {r['compiled_over_floor']:.1f}x the read-plus-write floor: it is "
                     "bound by the exp/log1p/division arithmetic per element, not by memory traffic.")
        return text
    if name.startswith("ohem"):
        return (f"{r['speedup']:.0f}x. Ours stops the NMS once {r['batch_size']} anchors are kept, so its cost "
                "grows with how deep in the score order it must scan (heavier suppression at IoU .5, larger "
                "batches); the reference's whole-set NMS cost is fixed.")
    if name == "train_step":
        share = r.get("reference_loss_share")
        cap = r.get("max_speedup_if_ours_had_free_loss")
        if share is None:
            return None
        return (f"{r['speedup']:.2f}x. Amdahl: both steps run the same backbone, FPN and head convolutions "
                f"forward and backward; the part that differs (anchors, assignment, losses: the "
                f"`train_loss_part` row) is {100 * share:.0f}% of torchvision's step here, so even a free "
                f"loss would make ours at most {cap:.2f}x faster per step.")
    if name == "lightning_overhead":
        return (f"{100 * r['overhead']:.1f}% per step. Lightning's per-step work is fixed per step, so it weighs "
                "more when a step is short; the `lightning_overhead_no_log` row shows what is left when the "
                "module's per-step `self.log`/`self.log_dict` calls (4 calls, 4 values) are skipped: most of "
                "the overhead is that logging bookkeeping, done every step although the CSV/W&B loggers only "
                "write every `log_every_n_steps`.")
    return None


def _summary_table(res: dict) -> list[str]:
    out = ["| benchmark | ours (median) | reference (median) | ratio ref/ours | target | met | reps ours / ref | "
           "checks |", "|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        name = r["name"]
        if "speedup" not in r:
            continue
        target = r.get("target_speedup")
        checks = []
        if "same_indices" in r:
            checks.append("same indices" if r["same_indices"] else "**indices differ**")
        if "same_stats" in r:
            checks.append(f"same 12 stats (max diff {r['max_abs_stat_diff']:.1e})" if r["same_stats"]
                          else f"**stats differ by {r['max_abs_stat_diff']:.1e}**")
        if "saved_met" in r:
            checks.append(f"saved for backward {r['saved_bytes_ours'] / MB:.0f} MB vs {r['saved_bytes_theirs'] / MB:.0f} MB "
                          f"({_met(r['saved_met'])}: <= inputs + 1 logits-sized = {r['saved_budget_bytes'] / MB:.0f} MB)")
        if "same_anchors" in r:
            checks.append("same anchors" if r["same_anchors"] else "**anchors differ**")
        if name.startswith("lightning_overhead"):
            ratio = f"overhead {100 * r['overhead']:+.1f}%"
            target_s = f"<= {100 * r['target_overhead']:.0f}%"
            ours, ref = _s(r["ours_median_s"]) + " (bare)", _s(r["theirs_median_s"]) + " (Trainer)"
        else:
            ratio = f"{r['speedup']:,.0f}x" if r["speedup"] >= 100 else f"{r['speedup']:.3g}x"
            target_s = f">= {target:g}x" if target else "-"
            ours, ref = _s(r["ours_median_s"]), _s(r["theirs_median_s"])
        out.append(f"| `{name}`: {r['what']} | {ours} | {ref} | {ratio} | {target_s} | {_met(r.get('met'))} | "
                   f"{_reps(r)} | {'; '.join(checks) or '-'} |")
    return out


def _memory(res: dict) -> list[str]:
    rows = [r for r in res["rows"] if r["name"] == "train_step"]
    out = []
    for r in rows:
        o, t = r["peak_rss_ours"], r["peak_rss_theirs"]
        out += ["| side | peak RSS during the steps | RSS before the steps | growth |", "|---|---|---|---|",
                f"| ours | {o['peak_rss_mb']:.0f} MB | {o['rss_before_steps_mb']:.0f} MB | {o['step_growth_mb']:.0f} MB |",
                f"| torchvision | {t['peak_rss_mb']:.0f} MB | {t['rss_before_steps_mb']:.0f} MB | "
                f"{t['step_growth_mb']:.0f} MB |", "", f"Method: {r['memory_method']} ({o['method']})."]
    for r in res["rows"]:
        if r["name"].startswith("focal_loss"):
            out.append(f"- Focal loss {r['dtype']}: autograd saves {r['saved_tensors_ours']} tensor(s) = "
                       f"{r['saved_logits_sized_ours']:.1f} logits-sized for ours, {r['saved_tensors_theirs']} = "
                       f"{r['saved_logits_sized_theirs']:.1f} logits-sized for torchvision (unique storages, "
                       f"inputs included, via `torch.autograd.graph.saved_tensors_hooks`). Accuracy against "
                       f"float64: summed-loss relative error ours {r['ours_loss_rel_err']:.1e} / torchvision "
                       f"{r['torchvision_loss_rel_err']:.1e}; max gradient error ours "
                       f"{r['ours_grad_max_abs_err']:.1e} / torchvision {r['torchvision_grad_max_abs_err']:.1e} "
                       f"(largest gradient {r['grad_max_abs']:.2f}).")
    return out


def _focal_table(res: dict) -> list[str]:
    """Floor / compiled / eager / torchvision side by side (round-robin in one process, medians)."""
    rows = [r for r in res["rows"] if r["name"].startswith("focal_loss") and "floor_median_s" in r]
    if not rows:
        return []
    out = ["| dtype | alternative | median | torchvision / it | it / floor |", "|---|---|---|---|---|"]
    for r in rows:
        for k, label in (("floor", "floor: read logits + targets, write one logits-sized (`torch.add`)"),
                         ("compiled", "ours, compiled (inductor)"), ("eager", "ours, eager Function"),
                         ("torchvision", "torchvision")):
            if f"{k}_median_s" not in r:
                continue
            vs_tv = "-" if k == "floor" else f"{r[f'speedup_{k}_vs_torchvision']:.3g}x"
            vs_floor = "1x" if k == "floor" else f"{r[f'{k}_over_floor']:.3g}x"
            default = " (default here)" if k == r.get("path") else ""
            out.append(f"| {r['dtype']} | {label}{default} | {_s(r[f'{k}_median_s'])} | {vs_tv} | {vs_floor} |")
    out.append("")
    r = rows[0]
    n = min(len(r.get("floor_times_s", [])), len(r.get("torchvision_times_s", [])))
    out.append(f"Medians of {n} repetitions, the alternatives called round-robin (order rotated every "
               "repetition) in one process after a warm-up call each.")
    cold, warm = r.get("compile_cold"), r.get("compile_warm")
    if cold and warm and "first_call_s" in cold and "first_call_s" in warm:
        out.append(f"Compile cost, first fwd+bwd call in a fresh process (float32, {r['shape'][0]:,} x "
                   f"{r['shape'][1]}): cold inductor cache {_s(cold['first_call_s'])}, warm cache "
                   f"{_s(warm['first_call_s'])} (then {_s(warm['second_call_s'])} per call); inductor FX graph "
                   f"cache {'on' if r.get('fx_graph_cache') else 'off'}.")
    if r.get("first_call_in_process_s") is not None:
        out.append(f"First compiled call in this process: {_s(r['first_call_in_process_s'])}.")
    if r.get("compiled_grad_max_rel_err_elementwise") is not None:
        out.append(f"Element-wise gradient accuracy of the compiled path (float32, logits in [-30, 30]) against "
                   f"float64: max relative error {r['compiled_grad_max_rel_err_elementwise']:.1e}.")
    if r.get("compile_unavailable"):
        out.append(f"Compiled path unavailable here: {r['compile_unavailable']}.")
    return out + [""]


def render_readme(res: dict[str, Any]) -> str:
    m = res["machine"]
    v = m["versions"]
    lines = ["# Performance benchmarks (`make bench`)", ""]
    if res.get("quick"):
        lines += ["**QUICK RUN (`--quick`): tiny inputs to check the harness; the figures mean nothing.**", ""]
    lines += [
        f"Produced by `{' '.join(m['argv'])}` (what `make bench` runs) on {m['date']}, commit `{m['git_sha']}`, "
        f"in {res['total_seconds']:.0f} s ({', '.join(f'{k} {s:.0f} s' for k, s in res['seconds'].items())}).",
        "Raw timings of every repetition: [`results.json`](results.json).", "",
        "Every ratio is reference time / our time measured in the same process and run: the two sides are "
        "called alternately (order swapped every repetition) after warm-up, and the ratio is the median of "
        "the per-repetition ratios. Where the reference is too slow for as many repetitions as ours "
        "(whole-set NMS, pycocotools on 5,000 images) it runs fewer times (the `reps` column) and the ratio "
        "is the ratio of the medians.", "",
        "## Results", "", *_summary_table(res), ""]
    focal = _focal_table(res)
    if focal:
        lines += ["### Focal loss: floor, compiled, eager, torchvision", "", *focal]
    limits = [(r["name"], _limits(r)) for r in res["rows"]]
    limits = [(n, t) for n, t in limits if t]
    if limits:
        lines += ["## Where a target is not met, and what limits it", ""]
        lines += [f"- `{n}`: {t}" for n, t in limits] + [""]
    if res.get("errors"):
        lines += ["## Benchmarks that failed", ""] + [f"- `{k}`: {e}" for k, e in res["errors"].items()] + [""]
    lines += ["## Memory", "", *_memory(res), ""]
    lines += [
        "## Machine", "",
        f"- CPU: {m['cpu']}, {m['cpu_count']} logical CPUs ({m['affinity_cpus']} usable), "
        f"torch threads {m['torch_threads']} (interop {m['torch_interop_threads']}; "
        f"{m.get('threads_reason', 'torch default')}), kernels `{m['cpu_capability']}`.",
        f"- GPU: {m['gpu'] or 'none in this environment: the GPU figures the issue asks for were not measured'}.",
        f"- Load average (1/5/15 min) at start {m['loadavg']}, at end {m['loadavg_end']}; per benchmark in "
        "`results.json` (`loadavg_before`/`loadavg_after`). The machine was shared with other jobs while this "
        "ran, so absolute times are noisy; the paired ratios are what to read.",
        f"- {m['platform']}, Python {m['python']}; " + ", ".join(f"{k} {val}" for k, val in v.items() if val) + ".",
        "",
        "## What each benchmark measures", "",
        "1. **Focal loss** (`benchmarks/focal_loss.py`): `focalbench.losses.sigmoid_focal_loss` vs "
        "`torchvision.ops.sigmoid_focal_loss`, forward + backward, reduction `sum`, at the paper's 116,712 "
        "anchors (608 x 1024 input, 9 anchors per location on P3-P7) x 80 classes, float32 and bfloat16 "
        "(our function computes in float32 and returns bfloat16; torchvision computes in bfloat16). "
        "Trained-like logits (background near the prior's -log 99), 200 positive anchors.",
        "2. **OHEM selection** (`benchmarks/ohem.py`): `select_hard_examples` on one image (exact, early-"
        "stopping NMS) vs torchvision `nms` over every non-ignored anchor then the first B (plain) or SSD's "
        "1:3 rule (`ohem_1to3`). Anchors of a 608 x 1024 input; a trained-like loss map (hard negatives around "
        "objects and distractors), replaced by its ranks so that ties cannot let torchvision's unstable sort "
        "differ from our tie rule (greedy NMS depends only on the order). The reference NMS runs once per "
        "repetition and serves all batch sizes.",
        "3. **Training step** (`benchmarks/train_step.py`): the cpu profile's `RetinaNetModule` "
        "(`focalbench.builders.build_module`) in a bare loop vs torchvision's `RetinaNet` with a copy of the "
        "same backbone + FPN, the same anchors, a torchvision head of the same shape, the same matcher "
        "thresholds, optimiser and schedule, in a plain PyTorch loop; same synthetic batches. "
        "`train_loss_part` isolates what differs (anchors, assignment, losses). `lightning_overhead`: the "
        "same module under `lightning.Trainer` (the project's `build_trainer`) vs the bare loop, one step of "
        "each in turn inside one `fit`, both fetching from a `DataLoader`.",
        "4. **COCO evaluation** (`benchmarks/coco_eval.py`): faster-coco-eval vs pycocotools from the "
        "ground-truth dict and detection list to the 12 stats (index, loadRes, evaluate, accumulate, "
        "summarize), on the built-in shapes validation split (or a synthetic one) and on a synthetic "
        "5,000-image set, with detections from perturbed ground truth (no trained model's detections are "
        "stored, and training one does not fit the 10-minute budget).",
        "",
        "Correctness of the same comparisons on small inputs, in seconds: `tests/test_bench_correctness.py`.",
        ""]
    return "\n".join(lines)
