"""Focal loss (paper eq. 5), its FL* variant (Appendix A) and a softmax (multi-class) form.

Natural log throughout. Notation as in the paper: ``p = sigmoid(x)``; ``p_t = p`` if ``y = 1`` else ``1 - p``
(eq. 2); ``CE(p_t) = -log(p_t)`` (eq. 1); ``alpha_t = alpha`` if ``y = 1`` else ``1 - alpha`` (eq. 3);
``FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t)`` (eq. 5). CE is ``gamma = 0, alpha < 0``; alpha-balanced CE
is ``gamma = 0, alpha = a``.

``sigmoid_focal_loss`` is a drop-in for ``torchvision.ops.sigmoid_focal_loss`` (same signature, values and
gradients; any ``alpha < 0`` disables the weighting, torchvision accepts only -1). It is written by hand
because torchvision's eager composite keeps about six logits-sized tensors alive for backward and runs
~30 elementwise passes: ours is one ``autograd.Function`` whose forward computes the loss and its analytic
gradient together and saves only that gradient (one float32 tensor of the logits' shape).
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from focalbench.checks import FINITE, is_num, num_above, num_at_least, one_of, require, require_number

from . import compiled as _compiled
from .terms import alpha_coefs

REDUCTIONS = ("none", "mean", "sum")

# ---------------------------------------------------------------------------------------------------------
# the rules of the arguments (focalbench.checks; the config check reads the same objects)

GAMMA = num_at_least(0)                                # FL's focusing parameter (eq. 4), any finite >= 0
STAR_GAMMA = num_above(0, "FL* divides by gamma")      # FL* (Appendix A)
BETA = FINITE                                          # FL*'s shift
# the tensor functions keep torchvision's convention: any alpha < 0 disables the weighting (a config allows
# only -1: focalbench.losses.criteria.ALPHA)
ALPHA = ((lambda v: is_num(v) and v <= 1), "must be in [0, 1], or < 0 to disable the alpha weighting")
REDUCTION = one_of(REDUCTIONS)


def check_gamma(gamma: float, name: str = "gamma", rule=GAMMA) -> float:
    return float(require_number(rule, gamma, name))


def check_alpha(alpha: float, name: str = "alpha", rule=ALPHA) -> float:
    return float(require_number(rule, alpha, name))


def check_reduction(reduction: str, name: str = "reduction") -> str:
    return require(REDUCTION, reduction, name)


def _check_same_shape(inputs: torch.Tensor, targets: torch.Tensor) -> None:
    if inputs.shape != targets.shape:
        raise ValueError(f"targets must have the shape of inputs {tuple(inputs.shape)}, "
                         f"got {tuple(targets.shape)}")


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64 (gradcheck); fp16/bf16/float32 are computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


# ---------------------------------------------------------------------------------------------------------
# fused sigmoid focal loss: loss and d loss / d x in one forward

def _focal_loss_and_grad(x: torch.Tensor, t: torch.Tensor, alpha: float, gamma: float,
                         weight: torch.Tensor | None = None,
                         hard: bool | None = None,
                         need_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Elementwise FL and dFL/dx. ``t`` in [0, 1]; ``weight`` broadcastable to ``x`` (e.g. a 0/1 mask of
    ignored anchors). ``hard=None`` checks whether every target is 0 or 1 and then takes the faster
    binary form. float64 stays float64 (gradcheck); every other dtype is computed in float32."""
    dtype = _compute_dtype(x)
    x, t = x.to(dtype), t.to(dtype)
    if hard is None:
        hard = _all_binary(t)
    if hard:
        return _focal_hard(x, t, alpha, gamma, weight, need_grad)
    return _focal_soft(x, t, alpha, gamma, weight)


def _all_binary(t: torch.Tensor) -> bool:
    """Whether every target is exactly 0 or 1 (every nonzero value is a 1); no float temporaries."""
    return bool(torch.count_nonzero(t) == torch.count_nonzero(t == 1))


def _softplus_with_scratch(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """softplus(z) = log(1 + e^z) to a few ulps, plus two free scratch buffers of z's shape.

    Written by hand because torch's CPU softplus/log1p kernels are ~7x slower than log/sigmoid here:
    softplus(z) = relu(z) - log(s) with s = sigmoid(|z|) in [1/2, 1], and -log(s) = -log1p(-tau),
    tau = sigmoid(-|z|), by Kahan's trick log1p(u) = u * log(1 + u) / ((1 + u) - 1) (the ratio is
    evaluated at the rounded 1 + u, where it is smooth), exact to a few ulps even where 1 - tau rounds.
    """
    tau = torch.abs(z)
    s = torch.sigmoid(tau)                        # sigmoid(|z|)
    tau.neg_().sigmoid_()                         # sigmoid(-|z|) = 1 - s, with full relative precision
    out = torch.rsub(s, 1.0)                      # (1 - s) as rounded, exact (Sterbenz)
    s.log_()                                      # log s; 0 where s rounds to 1
    torch.div(s, out, out=out)                    # log(s) / (1 - s) -> -1 as tau -> 0; 0/0 where s = 1
    out.nan_to_num_(nan=-1.0, posinf=-1.0, neginf=-1.0)  # that limit (a NaN input stays NaN via tau)
    out.mul_(tau).neg_()                          # -log1p(-tau)
    torch.clamp_min(z, 0.0, out=tau)
    out.add_(tau)
    return out, tau, s


def sigmoid_ce_from_labels(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Elementwise binary CE ``-log p_t`` for 0/1 targets, forward only (float32; no autograd)."""
    with torch.no_grad():
        x = logits.to(_compute_dtype(logits))
        nxt = torch.addcmul(x, x, targets.to(x.dtype), value=-2.0)
        return _softplus_with_scratch(nxt)[0]


def _focal_hard(x, t, alpha, gamma, weight, need_grad=True):
    # Binary targets y. x_t = x if y = 1 else -x, so p_t = sigmoid(x_t) (eq. 2) and
    #   CE   = -log p_t = softplus(-x_t),           1 - p_t = sigmoid(-x_t)
    #   FL   = alpha_t (1 - p_t)^gamma CE                                                        (eq. 5)
    #   dFL/dx_t = alpha_t (1 - p_t)^gamma (gamma p_t log p_t + p_t - 1)                        (App. B)
    #            = -alpha_t (1 - p_t)^gamma (gamma p_t CE + 1 - p_t),      dx_t/dx = 2y - 1.
    # Written as in-place passes over a few reused buffers: on CPU, allocating fresh logits-sized
    # tensors and torch's (scalar) softplus/log1p kernels dominate the cost, not the arithmetic.
    nxt = torch.addcmul(x, x, t, value=-2.0)      # -x_t = x (1 - 2y), exact for y in {0, 1}
    ce, tau, s = _softplus_with_scratch(nxt)      # CE = -log p_t = softplus(-x_t)
    m = torch.sigmoid(nxt, out=tau)               # 1 - p_t
    w = s                                         # w = alpha_t (1 - p_t)^gamma  (eq. 3 and 5)
    if gamma == 0:
        w.fill_(1.0)
    elif gamma == 1:
        w.copy_(m)
    elif gamma == 2:
        torch.mul(m, m, out=w)
    else:
        torch.pow(m, gamma, out=w)
    if alpha == 1:                                # alpha_t = (1 - alpha) + (2 alpha - 1) y
        w.mul_(t)
    elif alpha >= 0:                              # = (1 - alpha) (1 + y (2 alpha - 1) / (1 - alpha))
        w.mul_(1.0 - alpha)
        torch.addcmul(w, w, t, value=(2.0 * alpha - 1.0) / (1.0 - alpha), out=w)
    if weight is not None:
        w.mul_(weight)
    loss = torch.mul(ce, w, out=nxt)
    if not need_grad:
        return loss, None
    g = ce                                        # gamma p_t CE + (1 - p_t) = gamma CE (1 - m) + m
    if gamma != 0:
        g.mul_(gamma)
        torch.addcmul(g, g, m, value=-1.0, out=g)
        g.add_(m)
    else:
        g.copy_(m)
    g.mul_(w)
    torch.addcmul(g, g, t, value=-2.0, out=g)     # times -(2y - 1)
    return loss, g


def _focal_soft(x, t, alpha, gamma, weight):
    # Soft targets t in [0, 1] (what torchvision's composite computes):
    #   CE = (1 - t) softplus(x) + t softplus(-x),     dCE/dx = p - t
    #   1 - p_t = m = (1 - t) p + t (1 - p),             dm/dx = p (1 - p) (1 - 2t)
    #   FL = alpha_t m^gamma CE,  dFL/dx = alpha_t [m^gamma (p - t) + gamma m^(gamma-1) p (1-p) (1-2t) CE]
    # lerp is exact at t = 0 and t = 1, so hard targets lose nothing here either.
    p = torch.sigmoid(x)
    q = torch.sigmoid(-x)
    ce = torch.lerp(F.softplus(x), F.softplus(-x), t)
    m = torch.lerp(p, q, t)
    m_gamma = m.pow(gamma)
    a0, a1 = alpha_coefs(alpha)
    a = torch.ones_like(m) if a1 == 0 and a0 == 1 else a0 + a1 * t  # alpha_t (eq. 3)
    if weight is not None:
        a = a * weight
    loss = a * m_gamma * ce
    grad = m_gamma * (p - t)
    if gamma != 0:
        dm = p * q * (1.0 - 2.0 * t)
        term = gamma * m.pow(gamma - 1.0) * dm * ce
        if gamma < 1:  # m^(gamma-1) = inf where m = 0; there dm = 0 and the true limit is 0
            term = torch.where(m > 0, term, torch.zeros_like(term))
        grad = grad + term
    return loss, grad * a


class _SigmoidFocalLossFunction(torch.autograd.Function):
    """Forward returns the (reduced) loss; backward is the saved gradient times grad_output."""

    @staticmethod
    def forward(ctx, inputs, targets, alpha, gamma, reduction, weight, out_float32, hard):
        loss, grad = _focal_loss_and_grad(inputs, targets, alpha, gamma, weight, hard)
        scale = 1.0 / max(1, loss.numel()) if reduction == "mean" else 1.0
        loss = _reduce(loss, reduction)
        ctx.save_for_backward(grad)
        ctx.scale, ctx.reduction, ctx.in_dtype = scale, reduction, inputs.dtype
        return loss if out_float32 else loss.to(inputs.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        if ctx.reduction == "none":
            g = grad * grad_output
        else:  # scalar grad_output: scale the saved per-element gradient (mean: 1/numel)
            g = grad * (grad_output.to(grad.dtype) * ctx.scale)
        return g.to(ctx.in_dtype), None, None, None, None, None, None, None


def _composite_focal(inputs, targets, alpha, gamma, weight=None):
    """Plain differentiable composite (used when targets require grad); float32 inside (float64 kept)."""
    dtype = _compute_dtype(inputs)
    x, t = inputs.to(dtype), targets.to(dtype)
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    m = p + t - 2 * p * t  # 1 - p_t
    loss = ce * m.pow(gamma)
    if alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    if weight is not None:
        loss = loss * weight
    return loss


def _sigmoid_focal(inputs, targets, alpha, gamma, reduction, weight=None, out_float32=False, hard=None):
    if targets.requires_grad:
        loss = _reduce(_composite_focal(inputs, targets, alpha, gamma, weight), reduction)
        return loss if out_float32 else loss.to(inputs.dtype)
    if _compiled.use_compiled(inputs):             # one fused inductor kernel (compiled.py); None: it failed
        out = _compiled.sigmoid_focal(inputs, targets, alpha, gamma, reduction, weight, out_float32)
        if out is not None:
            return out
    if not (inputs.requires_grad and torch.is_grad_enabled()):   # forward only (eval, loss CDFs)
        loss = _reduce(_focal_loss_and_grad(inputs, targets, alpha, gamma, weight, hard, False)[0], reduction)
        return loss if out_float32 else loss.to(inputs.dtype)
    return _SigmoidFocalLossFunction.apply(inputs, targets, alpha, gamma, reduction, weight, out_float32,
                                           hard)


def sigmoid_focal_loss(inputs: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0,
                       reduction: str = "none") -> torch.Tensor:
    """Sigmoid focal loss (paper eq. 5); drop-in for ``torchvision.ops.sigmoid_focal_loss``.

    Args:
        inputs: logits of any shape (float32/64, or fp16/bf16: computed in float32, returned in that dtype).
        targets: same shape, in [0, 1] (1 = positive). Soft targets are supported.
        alpha: weight of positives (``1 - alpha`` for negatives); ``alpha < 0`` disables the weighting.
        gamma: focusing parameter, >= 0. ``gamma = 0, alpha < 0`` is CE; ``gamma = 0, alpha = a`` alpha-CE.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
    """
    alpha, gamma, reduction = check_alpha(alpha), check_gamma(gamma), check_reduction(reduction)
    _check_same_shape(inputs, targets)
    return _sigmoid_focal(inputs, targets, alpha, gamma, reduction)


# ---------------------------------------------------------------------------------------------------------
# FL* (Appendix A)

def sigmoid_focal_loss_star(inputs: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                            gamma: float = 2.0, beta: float = 1.0, reduction: str = "none") -> torch.Tensor:
    """FL* (paper Appendix A): ``x_t = x`` if y = 1 else ``-x``; ``p_t* = sigmoid(gamma x_t + beta)``;
    ``FL* = -alpha_t log(p_t*) / gamma``, alpha-balanced like FL (Table 3 uses alpha = .25). Binary targets.
    ``gamma`` must be > 0 (it divides)."""
    alpha, reduction = check_alpha(alpha), check_reduction(reduction)
    gamma, beta = check_gamma(gamma, rule=STAR_GAMMA), float(require_number(BETA, beta, "beta"))
    _check_same_shape(inputs, targets)
    if not targets.requires_grad and _compiled.use_compiled(inputs):
        out = _compiled.sigmoid_focal_star(inputs, targets, alpha, gamma, beta, reduction)
        if out is not None:
            return out
    dtype = _compute_dtype(inputs)
    x, t = inputs.to(dtype), targets.to(dtype)
    xt = x * (2.0 * t - 1.0)
    loss = F.softplus(-(gamma * xt + beta)) / gamma  # -log sigmoid(z) = softplus(-z)
    if alpha >= 0:
        loss = loss * ((1.0 - alpha) + (2.0 * alpha - 1.0) * t)
    return _reduce(loss, reduction).to(inputs.dtype)


# ---------------------------------------------------------------------------------------------------------
# softmax focal loss (multi-class; mentioned in the paper section 3, not in torchvision)

def softmax_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0,
                       reduction: str = "none", ignore_index: int = -100,
                       background_index: int = 0) -> torch.Tensor:
    """Multi-class focal loss over C = K + 1 classes: ``-alpha_t (1 - p_t)^gamma log p_t`` with
    ``p_t = softmax(logits)[target]``. ``alpha_t = 1 - alpha`` for the background class
    (``background_index``), ``alpha`` for every foreground class (as Detectron's SoftmaxFocalLoss);
    ``alpha < 0`` disables the weighting. Targets equal to ``ignore_index`` contribute 0 and are left out of
    the mean, so ``gamma = 0, alpha < 0`` equals ``F.cross_entropy`` for every reduction.

    Args: logits ``(N, C)``; target ``(N,)`` long in ``[0, C)`` or ``ignore_index``.
    """
    alpha, gamma, reduction = check_alpha(alpha), check_gamma(gamma), check_reduction(reduction)
    if logits.dim() != 2 or target.shape != logits.shape[:1]:
        raise ValueError(f"softmax_focal_loss expects logits (N, C) and target (N,), got "
                         f"{tuple(logits.shape)} and {tuple(target.shape)}")
    if target.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ValueError(f"target must be an integer tensor of class indices, got dtype {target.dtype}")
    num_classes = logits.shape[1]
    if not -num_classes <= background_index < num_classes:
        raise ValueError(f"background_index must be in [0, {num_classes}), got {background_index!r}")
    background_index %= num_classes
    target = target.long()
    valid = target != ignore_index
    if bool(((target[valid] < 0) | (target[valid] >= num_classes)).any()):
        raise ValueError(f"target values must be in [0, {num_classes}) or ignore_index={ignore_index}")
    safe = torch.where(valid, target, torch.zeros_like(target))
    log_p = F.log_softmax(logits.to(_compute_dtype(logits)), dim=1)
    log_pt = log_p.gather(1, safe.unsqueeze(1)).squeeze(1)
    loss = -log_pt
    if gamma != 0:
        loss = loss * (-torch.expm1(log_pt)).clamp_min(0).pow(gamma)  # (1 - p_t)^gamma, 1 - p_t = -expm1(log p_t)
    if alpha >= 0:
        loss = loss * torch.where(safe == background_index, 1.0 - alpha, alpha)
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    if reduction == "mean":
        loss = loss.sum() / valid.sum()
    else:
        loss = _reduce(loss, reduction)
    return loss.to(logits.dtype)
