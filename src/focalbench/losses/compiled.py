"""Inductor-compiled sigmoid focal loss (FL, CE, alpha-CE) and FL*: loss and gradient in one fused pass.

The eager ``autograd.Function`` in ``focal.py`` is a chain of ~15 in-place ATen passes over logits-sized
buffers; here the same numerically careful element-wise formulas are compiled by ``torch.compile``
(inductor, C++/OpenMP on CPU) into one loop that reads the logits and targets once, writes the float32
gradient once and reduces the loss on the fly. Backward multiplies that saved gradient by the incoming
gradient, in place when the result is float32 and the graph is not retained (else a second, trivial
compiled loop into a new buffer, e.g. bf16; the float32 buffer is then recycled by the next forward).
Formulas, with ``e = exp(-|x|)``, ``r = 1 / (1 + e)``:

    p = sigmoid(x) = r if x >= 0 else e r,       q = 1 - p = e r if x >= 0 else r      (no cancellation)
    CE = log1p(e) + (1 - t) relu(x) + t relu(-x)       (= (1 - t) softplus(x) + t softplus(-x))
    m  = 1 - p_t = (1 - t) p + t q,                     alpha_t = (1 - alpha) + (2 alpha - 1) t
    FL = alpha_t m^gamma CE
    dFL/dx = alpha_t [m^gamma ((1 - t) p - t q) + gamma m^(gamma - 1) p q (1 - 2t) CE]

For binary targets both terms of the gradient have the same sign and every factor is computed to a few
ulps, so the float32 result is within ~1e-6 relative of float64 everywhere (logits in [-30, 30] tested,
including |x| ~ 9 and 20 where a naive ``1 - sigmoid`` or ``log(sigmoid)`` loses everything). Soft targets
(t in (0, 1)) use the same formulas (the composite's maths, as torchvision).

When it is used (``use_compiled``): an env var, not a training-config key (so no run's config hash changes):

    FOCALBENCH_COMPILE=0   never (the eager Function; same numbers to float32 rounding)
    FOCALBENCH_COMPILE=1   whenever a compiler works, at any size
    unset / "auto"         whenever a compiler works and the logits have >= MIN_NUMEL elements

or the module-level switch ``focalbench.losses.compiled.ENABLED = True | False | None`` (None: the env var).
Without a working compiler (no C++ compiler, ``TORCHDYNAMO_DISABLE=1``, an unsupported Python, or a compile
that raises) the eager Function is used and one warning line says why.

Compile cost: paid once per process and kernel variant (gamma 0/1/2/other, weight or not, reduction):
every kernel is compiled with ``dynamic=True`` on flattened ``(rows, classes)`` views, so other anchor
counts, batch sizes and class counts reuse it; alpha, gamma and beta enter as 0-d tensors, so other values
reuse it too. Across processes inductor's on-disk FX graph cache (on by default,
``torch._inductor.config.fx_graph_cache``; folder ``TORCHINDUCTOR_CACHE_DIR``, default
``/tmp/torchinductor_<user>``) and AOT-autograd cache turn the compile into a cache load.
"""

from __future__ import annotations

import os
import types
import warnings
from typing import Callable

import torch

from .terms import alpha_coefs

ENV = "FOCALBENCH_COMPILE"
# Break-even against the eager Function, fwd+bwd once compiled (2-core AVX512 EPYC, medians of 31 calls):
# compiled 0.4-0.7x as fast at 1.3e3 elements (its ~1 ms fixed cost: guards, two calls, OpenMP), 1.1x at
# 8e4, 1.3-2.1x at 3e5, 2-2.3x at 1e6 and 5-10x at 9.3e6 (one paper-scale image). The first call of a
# process costs ~3 s with a warm inductor cache and 20-40 s cold, which pays for itself only where each call
# saves milliseconds: the threshold is 1e6 elements, so the cpu/smoke profiles (~1e5) and tests stay eager.
MIN_NUMEL = 1_000_000
ENABLED: bool | None = None          # module-level switch; None: decided by the FOCALBENCH_COMPILE env var

_state: dict[str, object] = {"broken": None, "warned": False, "checked": None}


# ---------------------------------------------------------------------------------------------------------
# when to compile

def _setting() -> str:
    if ENABLED is not None:
        return "1" if ENABLED else "0"
    v = os.environ.get(ENV, "auto").strip().lower()
    if v in ("0", "false", "no", "off", "eager"):
        return "0"
    if v in ("1", "true", "yes", "on", "always"):
        return "1"
    return "auto"


def unavailable_reason() -> str | None:
    """Why the compiled path cannot run in this process (None: it can)."""
    if _state["broken"]:
        return str(_state["broken"])
    if os.environ.get("TORCHDYNAMO_DISABLE", "") not in ("", "0"):
        return "TORCHDYNAMO_DISABLE is set"
    if _state["checked"] is None:
        _state["checked"] = _check_toolchain()
    return _state["checked"] or None


def _check_toolchain() -> str:
    try:
        import torch._dynamo

        if not torch._dynamo.is_dynamo_supported():
            return "torch.compile is not supported on this Python"
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as e:  # noqa: BLE001 - any failure means: no compiler here
        return f"no working C++ compiler for inductor ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    return ""


def _warn_once(reason: str) -> None:
    if not _state["warned"]:
        _state["warned"] = True
        warnings.warn(f"focalbench: compiled focal loss not used ({reason}); using the eager Function",
                      RuntimeWarning, stacklevel=4)


def use_compiled(x: torch.Tensor) -> bool:
    """Whether the loss on logits ``x`` takes the compiled path (see the module docstring)."""
    setting = _setting()
    if setting == "0" or x.device.type not in ("cpu", "cuda") or x.dtype == torch.float64:
        return False          # float64 is for gradcheck / references: keep the eager Function's exact maths
    if setting == "auto" and x.numel() < MIN_NUMEL:
        return False
    if torch.compiler.is_compiling():   # inside someone else's torch.compile: let it trace the eager code
        return False
    reason = unavailable_reason()
    if reason:
        _warn_once(reason)
        return False
    _state["used"] = True
    return True


def used() -> bool:
    """Whether the compiled path was taken since ``clear_used`` (a run's metrics.json records it)."""
    return bool(_state.get("used"))


def clear_used() -> None:
    """Start counting for a new run (the flag is per process; one process may train several runs)."""
    _state["used"] = False


def _mark_broken(e: BaseException) -> None:
    _state["broken"] = f"compile failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    _warn_once(str(_state["broken"]))


def reset() -> None:
    """Forget a recorded failure / toolchain check and the warning (tests)."""
    _state.update(broken=None, warned=False, checked=None)


# ---------------------------------------------------------------------------------------------------------
# the element-wise maths (traced by dynamo; plain torch ops, also runnable eagerly)

GAMMA_KINDS = {0.0: 0, 1.0: 1, 2.0: 2}


def _gamma_kind(gamma: float) -> int:
    return GAMMA_KINDS.get(float(gamma), 3)


def _powers(m, gamma, kind: int):
    """(m^gamma, m^(gamma - 1)); the second is only used multiplied by gamma (0 for kind 0)."""
    if kind == 0:
        one = torch.ones_like(m)
        return one, one
    if kind == 1:
        return m, torch.ones_like(m)
    if kind == 2:
        return m * m, m
    # float64 inside: m^gamma = exp(gamma log m), and in float32 the rounding of gamma log m alone (|.| ~ 50
    # at m ~ 1e-6, gamma ~ 4) costs ~3e-6 relative; the paper's other gammas (0.5, 5, ...) are the rare case
    mg = torch.exp(gamma * torch.log(m.double())).float()
    # m^(gamma-1) = m^gamma / m; at m = 0 the term it multiplies (p q) is 0 too: the limit is 0
    return mg, torch.where(m > 0, mg / m, torch.zeros_like(m))


def _focal_elementwise(x, t, w, a0, a1, gamma, kind: int, need_grad: bool):
    x = x.float()
    t = t.float()
    e = torch.exp(-torch.abs(x))
    r = 1.0 / (1.0 + e)
    er = e * r
    pos = x >= 0
    p = torch.where(pos, r, er)
    q = torch.where(pos, er, r)
    u = 1.0 - t
    ce = torch.log1p(e) + u * torch.relu(x) + t * torch.relu(-x)
    m = u * p + t * q
    mg, mg1 = _powers(m, gamma, kind)
    a = a0 + a1 * t
    if w is not None:
        a = a * w
    loss = a * mg * ce
    if not need_grad:
        return loss, None
    g = mg * (u * p - t * q)
    if kind != 0:
        g = g + gamma * mg1 * (p * q) * (1.0 - 2.0 * t) * ce
    return loss, a * g


def _star_elementwise(x, t, w, a0, a1, gamma, beta, need_grad: bool):
    # FL* (binary targets): z = gamma x_t + beta, x_t = (2t - 1) x; FL* = alpha_t softplus(-z) / gamma,
    # dFL*/dx = -alpha_t sigmoid(-z) (2t - 1)
    # float64 inside: rounding z = gamma x_t + beta to float32 alone moves e^(-z) by |z| * 6e-8 (~4e-6 at
    # |x| = 30, gamma = 2); one float64 exp + log1p per element, then float32 out
    x = x.double()
    t = t.double()
    s = 2.0 * t - 1.0
    z = gamma * (s * x) + beta
    e = torch.exp(-torch.abs(z))
    sp = torch.log1p(e) + torch.relu(-z)          # softplus(-z)
    a = a0 + a1 * t.float()
    if w is not None:
        a = a * w
    loss = a * (sp / gamma).float()
    if not need_grad:
        return loss, None
    sig = (torch.where(z >= 0, e, 1.0) / (1.0 + e)).float()  # sigmoid(-z)
    return loss, -(a * sig) * s.float()


def _reduce_out(loss, reduction: str):
    if reduction == "sum":   # float64 accumulator: float32 partial sums of ~1e7 terms drift by ~1e-5
        return loss.sum(dtype=torch.float64).float()
    if reduction == "rows":          # per anchor: sum over the class dimension
        return loss.sum(-1)
    return loss


def _focal_kernel(x, t, w, a0, a1, gamma, kind: int, reduction: str, need_grad: bool):
    loss, g = _focal_elementwise(x, t, w, a0, a1, gamma, kind, need_grad)
    return _reduce_out(loss, reduction), g


def _star_kernel(x, t, w, a0, a1, gamma, beta, reduction: str, need_grad: bool):
    loss, g = _star_elementwise(x, t, w, a0, a1, gamma, beta, need_grad)
    return _reduce_out(loss, reduction), g


def _focal_labels_kernel(x, labels, a0, a1, gamma, kind: int, reduction: str, need_grad: bool,
                         mask_ignored: bool = True):
    # targets (and the ignore mask) from (rows,) labels: t = [label == class], w = [label != -2]; no one-hot
    cls = torch.arange(x.shape[-1], device=x.device)
    lab = labels.unsqueeze(-1)
    t = (lab == cls).float()
    w = (lab != -2).float() if mask_ignored else None
    return _focal_kernel(x, t, w, a0, a1, gamma, kind, reduction, need_grad)


def _focal_kernel_into(out, x, t, w, a0, a1, gamma, kind: int, reduction: str):
    # as _focal_kernel, the gradient written into the given float32 buffer ``out`` (a recycled one)
    loss, g = _focal_kernel(x, t, w, a0, a1, gamma, kind, reduction, True)
    out.copy_(g)
    return loss


def _focal_labels_kernel_into(out, x, labels, a0, a1, gamma, kind: int, reduction: str):
    loss, g = _focal_labels_kernel(x, labels, a0, a1, gamma, kind, reduction, True)
    out.copy_(g)
    return loss


def _scale_kernel(g, s, dtype: torch.dtype):
    return (g * s).to(dtype)


_compiled: dict[str, Callable] = {}


def _get(name: str, fn: Callable) -> Callable:
    """One compiled function per variant ``name``, each on its own copy of ``fn``'s code object: dynamo
    keeps its compiled entries (and its recompile limit, 8) per code object, so variants do not compete."""
    if name not in _compiled:
        code = fn.__code__.replace(co_name=f"{fn.__name__}__{name}")
        own = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
        _compiled[name] = torch.compile(own, dynamic=True, fullgraph=True)
    return _compiled[name]


# One recycled float32 gradient buffer for 16-bit inputs: there the saved float32 gradient is dead once
# backward has written the 16-bit result, and paging in a fresh logits-sized buffer every step (the kernel
# maps new memory for it) cost as much as the whole fused kernel on the 2-core VM measured.
_spare: dict[str, torch.Tensor] = {}


def _take_buffer(shape, device) -> torch.Tensor | None:
    buf = _spare.pop("grad", None)
    if buf is not None and tuple(buf.shape) == tuple(shape) and buf.device == device:
        return buf
    return None                      # another shape: dropped (at most one spare buffer is kept)


def _run_with_grad(name: str, fn: Callable, fn_into: Callable, inputs: torch.Tensor, need: bool,
                   x: torch.Tensor, *args):
    """``fn(x, *args, need)`` -> (loss, grad), for 16-bit inputs writing grad into the recycled buffer."""
    if need and inputs.dtype != torch.float32:
        buf = _take_buffer(x.shape, x.device)
        if buf is not None:
            loss = _run(name + "_into", fn_into, buf, x, *args)
            return None if loss is None else (loss, buf)
    return _run(name, fn, x, *args, need)


def _run(name: str, fn: Callable, *args):
    """The compiled ``fn(*args)``, or None after recording why it could not be compiled."""
    try:
        return _get(name, fn)(*args)
    except Exception as e:  # noqa: BLE001 - compile errors of any kind: fall back (inputs were validated)
        _mark_broken(e)
        return None


# ---------------------------------------------------------------------------------------------------------
# shapes: every kernel sees 2-D (rows, classes) tensors (plus a (rows, 1) / (rows, classes) weight)

def _rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a contiguous 2-D ``(rows, last dim)`` tensor that is not a view: dynamo guards on a view's
    base, and a view of a 3-D batch would recompile a kernel first traced on 2-D tensors."""
    x = x.detach()
    shape = (1, 1) if x.dim() == 0 else ((x.numel() // x.shape[-1] if x.shape[-1] else 0, x.shape[-1])
                                         if x.dim() >= 2 else (1, x.shape[0]))
    x = x.contiguous()
    with torch.no_grad():
        return torch.empty(0, dtype=x.dtype, device=x.device).set_(
            x.untyped_storage(), x.storage_offset(), shape, (shape[1], 1))


def _flat(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a contiguous 1-D tensor that is not a view (see ``_rows``)."""
    x = x.detach().contiguous()
    with torch.no_grad():
        return torch.empty(0, dtype=x.dtype, device=x.device).set_(
            x.untyped_storage(), x.storage_offset(), (x.numel(),), (1,))


def _weight_rows(weight: torch.Tensor | None, shape: torch.Size) -> torch.Tensor | None:
    if weight is None:
        return None
    if len(shape) >= 2 and weight.dim() == len(shape) and weight.shape[-1] == 1 \
            and tuple(weight.shape[:-1]) == tuple(shape[:-1]):
        return _rows(weight)                            # (rows, 1): one per anchor, broadcast in the kernel
    return _rows(weight.expand(shape).contiguous())


def _alpha_coefs(alpha: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    a0, a1 = alpha_coefs(alpha)
    return _scalar(a0, device), _scalar(a1, device)


def _scalar(v: float, device, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(v, dtype=dtype, device=device)


def _gamma(v: float, device) -> torch.Tensor:
    # float64: a float32 gamma (3.7 -> 3.70000005) would move m^gamma by |log m| * 5e-8 relative
    return _scalar(v, device, torch.float64)


def _kernel_reduction(reduction: str) -> str:
    return "none" if reduction == "none" else "sum"


def _finish(loss: torch.Tensor, reduction: str, numel: int, shape: torch.Size) -> torch.Tensor:
    if reduction == "mean":
        return loss / max(1, numel)
    if reduction == "none":
        return loss.reshape(shape)
    return loss


# ---------------------------------------------------------------------------------------------------------
# autograd

class _CompiledLossFunction(torch.autograd.Function):
    """Forward: the compiled loss + gradient kernel, saving the float32 gradient; backward: scale it."""

    @staticmethod
    def forward(ctx, inputs, loss, grad, reduction, out_float32):
        ctx.save_for_backward(grad)
        ctx.scale = 1.0 / max(1, inputs.numel()) if reduction == "mean" else 1.0
        ctx.reduction, ctx.in_dtype, ctx.shape = reduction, inputs.dtype, inputs.shape
        return loss if out_float32 else loss.to(inputs.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        if ctx.reduction == "none":
            s = _rows(grad_output.expand(ctx.shape))
        else:
            s = (grad_output.to(torch.float32) * ctx.scale).reshape(())
        return _scaled(grad, s, ctx.in_dtype).reshape(ctx.shape), None, None, None, None


def _graph_is_kept() -> bool:
    """Whether the running backward keeps the graph (``retain_graph=True``); True when unknown."""
    try:
        return bool(torch._C._autograd._get_current_graph_task_keep_graph())
    except Exception:  # noqa: BLE001 - private API: assume the graph is kept (never scale in place then)
        return True


def _scaled(grad: torch.Tensor, s: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(grad * s).to(dtype)``. A float32 result is written into the saved gradient itself unless the graph
    is kept for another backward: a fresh logits-sized buffer costs its page faults (on this 2-core machine
    as much as the multiplication), and the saved gradient is released after this backward anyway."""
    kept = _graph_is_kept()
    if dtype == torch.float32 and grad.dtype == torch.float32 and not kept:
        return grad.mul_(s)
    g = _run("scale", _scale_kernel, grad, s, dtype)
    g = (grad * s).to(dtype) if g is None else g
    if not kept and grad.dtype == torch.float32 and grad.dim() == 2:
        _spare["grad"] = grad        # recycled by the next forward (see _take_buffer)
    return g


def _apply(inputs, loss_grad, reduction, out_float32, need_grad):
    loss, grad = loss_grad
    loss = _finish(loss, reduction, inputs.numel(), inputs.shape)
    if not need_grad:
        return loss if out_float32 else loss.to(inputs.dtype)
    return _CompiledLossFunction.apply(inputs, loss.detach(), grad, reduction, out_float32)


def _need_grad(inputs: torch.Tensor) -> bool:
    return inputs.requires_grad and torch.is_grad_enabled()


def sigmoid_focal(inputs, targets, alpha: float, gamma: float, reduction: str, weight=None,
                  out_float32: bool = False):
    """Compiled FL / CE / alpha-CE (``focal._sigmoid_focal``'s contract); None if the compile failed."""
    need = _need_grad(inputs)
    kind = _gamma_kind(gamma)
    a0, a1 = _alpha_coefs(alpha, inputs.device)
    w = _weight_rows(weight, inputs.shape)
    red = _kernel_reduction(reduction)
    name = f"focal_k{kind}_w{int(w is not None)}_{red}_g{int(need)}"
    with torch.no_grad():
        out = _run_with_grad(name, _focal_kernel, _focal_kernel_into, inputs, need, _rows(inputs),
                             _rows(targets), w, a0, a1, _gamma(gamma, inputs.device), kind, red)
    if out is None:
        return None
    return _apply(inputs, out, reduction, out_float32, need)


def sigmoid_focal_from_labels(inputs, labels, alpha: float, gamma: float, reduction: str):
    """Compiled FL from ``(N, A)`` labels (class index, -1 background, -2 ignored) and ``(N, A, K)`` logits,
    without building the one-hot targets. ``reduction``: ``"sum"`` (scalar, float32) or ``"rows"``
    (per-anchor sums ``(N, A)``, float32). None if the compile failed."""
    need = _need_grad(inputs)
    kind = _gamma_kind(gamma)
    a0, a1 = _alpha_coefs(alpha, inputs.device)
    name = f"focal_labels_k{kind}_{reduction}_g{int(need)}"
    with torch.no_grad():
        out = _run_with_grad(name, _focal_labels_kernel, _focal_labels_kernel_into, inputs, need,
                             _rows(inputs), _flat(labels), a0, a1, _gamma(gamma, inputs.device), kind,
                             reduction)
    if out is None:
        return None
    loss, grad = out
    if reduction == "rows":
        loss = loss.reshape(inputs.shape[:-1])
    if not need:
        return loss
    return _CompiledRowsFunction.apply(inputs, loss, grad) if reduction == "rows" else \
        _CompiledLossFunction.apply(inputs, loss, grad, "sum", True)


class _CompiledRowsFunction(torch.autograd.Function):
    """Per-anchor sums ``(N, A)``; backward: the saved gradient times grad_output broadcast over classes."""

    @staticmethod
    def forward(ctx, inputs, loss, grad):
        ctx.save_for_backward(grad)
        ctx.in_dtype, ctx.shape = inputs.dtype, inputs.shape
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        s = _rows(grad_output.to(torch.float32).reshape(-1, 1))     # (rows, 1), broadcast in the kernel
        return _scaled(grad, s, ctx.in_dtype).reshape(ctx.shape), None, None


def sigmoid_focal_star(inputs, targets, alpha: float, gamma: float, beta: float, reduction: str,
                       weight=None, out_float32: bool = False):
    """Compiled FL* (binary targets); None if the compile failed."""
    need = _need_grad(inputs)
    a0, a1 = _alpha_coefs(alpha, inputs.device)
    w = _weight_rows(weight, inputs.shape)
    red = _kernel_reduction(reduction)
    name = f"star_w{int(w is not None)}_{red}_g{int(need)}"
    with torch.no_grad():
        out = _run(name, _star_kernel, _rows(inputs), _rows(targets), w, a0, a1,
                   _gamma(gamma, inputs.device), _scalar(beta, inputs.device, torch.float64), red, need)
    if out is None:
        return None
    return _apply(inputs, out, reduction, out_float32, need)


def sigmoid_ce_from_labels(logits, labels):
    """Compiled forward-only per-anchor CE summed over classes (OHEM's score); None if that failed."""
    a0, a1 = _alpha_coefs(-1.0, logits.device)
    with torch.no_grad():
        out = _run("ce_labels_rows", _focal_labels_kernel, _rows(logits), _flat(labels), a0, a1,
                   _gamma(0.0, logits.device), 0, "rows", False, False)
    return None if out is None else out[0].reshape(logits.shape[:-1])
