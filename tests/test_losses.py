"""focalbench.losses.focal: FL (eq. 5), FL* (Appendix A), softmax FL; against closed forms and torchvision."""

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss as tv_focal

from focalbench.losses import sigmoid_focal_loss, sigmoid_focal_loss_star, softmax_focal_loss

GAMMAS = [0.0, 0.5, 1.0, 2.0, 3.7]
ALPHAS = [0.25, -1.0, 0.9, 0.0, 1.0]


def logit(p):
    return math.log(p / (1 - p))


def _grads(fn, x, t, *args, grad_out=None):
    x = x.clone().requires_grad_(True)
    loss = fn(x, t, *args)
    loss.backward(torch.ones_like(loss) if grad_out is None else grad_out)
    return loss.detach(), x.grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_reference_values(dtype):
    # natural log (docs/losses.md); p=0.9, y=1, gamma=2 -> 0.0010536; p=0.99 -> 1.005e-6 (CE 0.01005)
    x = torch.tensor([logit(0.9), logit(0.99)], dtype=dtype)
    y = torch.ones(2, dtype=dtype)
    fl = sigmoid_focal_loss(x, y, alpha=-1, gamma=2)
    ce = sigmoid_focal_loss(x, y, alpha=-1, gamma=0)
    torch.testing.assert_close(fl, torch.tensor([0.01 * -math.log(0.9), 1e-4 * -math.log(0.99)], dtype=dtype),
                               rtol=1e-5, atol=0)
    assert abs(fl[0].item() - 0.0010536) < 1e-7 and abs(fl[1].item() - 1.005e-6) < 1e-9
    assert abs(ce[1].item() - 0.01005) < 1e-5


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_matches_torchvision_float64(soft, reduction):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 9, generator=g, dtype=torch.float64) * 4
    t = torch.rand(64, 9, generator=g, dtype=torch.float64) if soft else \
        (torch.rand(64, 9, generator=g) < 0.2).double()
    for alpha in ALPHAS:
        for gamma in GAMMAS:
            go = torch.randn(64, 9, generator=g, dtype=torch.float64) if reduction == "none" else None
            ref, ref_grad = _grads(tv_focal, x, t, alpha if alpha >= 0 else -1, gamma, reduction, grad_out=go)
            out, grad = _grads(sigmoid_focal_loss, x, t, alpha, gamma, reduction, grad_out=go)
            torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-300)
            torch.testing.assert_close(grad, ref_grad, rtol=1e-6, atol=1e-300)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_matches_torchvision_float32(reduction):
    # float32: ours is elementwise within 1e-5 of the float64 truth (torchvision's own float32 composite
    # is off by up to ~1e-2 relative on tiny entries), and within 5e-6 of torchvision relative to the norm.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 80, generator=g) * 3
    t = (torch.rand(200, 80, generator=g) < 0.3).float()
    for alpha in (0.25, -1.0):
        for gamma in GAMMAS:
            truth, truth_grad = _grads(tv_focal, x.double(), t.double(), alpha, gamma, reduction)
            ref, ref_grad = _grads(tv_focal, x, t, alpha, gamma, reduction)
            out, grad = _grads(sigmoid_focal_loss, x, t, alpha, gamma, reduction)
            assert out.dtype == grad.dtype == torch.float32
            torch.testing.assert_close(out.double(), truth, rtol=1e-5, atol=0)
            torch.testing.assert_close(grad.double(), truth_grad, rtol=1e-5, atol=0)
            assert (out - ref).abs().max() <= 5e-6 * ref.abs().max()
            assert (grad - ref_grad).abs().max() <= 5e-6 * ref_grad.abs().max()


def test_any_negative_alpha_disables_weighting():
    x, t = torch.randn(10, 3), (torch.rand(10, 3) < 0.5).float()
    torch.testing.assert_close(sigmoid_focal_loss(x, t, -0.5), sigmoid_focal_loss(x, t, -1.0))


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 3.7])
def test_gradcheck(soft, gamma):
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(6, 4, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    t = torch.rand(6, 4, generator=g, dtype=torch.float64) if soft else \
        (torch.rand(6, 4, generator=g) < 0.5).double()
    for reduction in ("none", "mean", "sum"):
        assert torch.autograd.gradcheck(lambda z: sigmoid_focal_loss(z, t, 0.25, gamma, reduction), (x,))


def test_saves_one_tensor_for_backward():
    x = torch.randn(100, 80, requires_grad=True)
    t = (torch.rand(100, 80) < 0.01).float()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda s: saved.append(s) or s, lambda s: s):
        sigmoid_focal_loss(x, t, reduction="sum")
    assert len(saved) == 1 and saved[0].shape == x.shape
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda s: saved.append(s) or s, lambda s: s):
        tv_focal(x, t, reduction="sum")
    assert len(saved) >= 4  # what the fused version avoids


def test_forward_only_path_matches():
    x = torch.randn(30, 8, dtype=torch.float64)
    t = (torch.rand(30, 8) < 0.3).double()
    with torch.no_grad():
        fast = sigmoid_focal_loss(x.clone().requires_grad_(True), t, 0.25, 2.0)
    torch.testing.assert_close(fast, sigmoid_focal_loss(x.clone().requires_grad_(True), t, 0.25, 2.0).detach())


def test_targets_requiring_grad_fall_back_to_composite():
    x = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    t = torch.rand(8, 5, dtype=torch.float64, requires_grad=True)
    sigmoid_focal_loss(x, t, 0.25, 2.0, "sum").backward()
    x2, t2 = x.detach().clone().requires_grad_(), t.detach().clone().requires_grad_()
    tv_focal(x2, t2, 0.25, 2.0, "sum").backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(t.grad, t2.grad)


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0, 5.0])
def test_focal_never_exceeds_ce(gamma):
    x = torch.randn(1000, dtype=torch.float64) * 5
    t = (torch.rand(1000) < 0.5).double()
    fl = sigmoid_focal_loss(x, t, -1, gamma)
    ce = sigmoid_focal_loss(x, t, -1, 0.0)
    assert torch.all(fl <= ce) and torch.all(fl >= 0)
    assert fl.sum() < ce.sum()


def test_gamma_zero_is_ce_and_alpha_ce():
    x = torch.randn(300, 7, dtype=torch.float64) * 3
    t = (torch.rand(300, 7) < 0.3).double()
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    torch.testing.assert_close(sigmoid_focal_loss(x, t, -1, 0.0), bce)
    torch.testing.assert_close(sigmoid_focal_loss(x, t, 0.75, 0.0), bce * torch.where(t > 0, 0.75, 0.25))


def test_alpha_weights_positives_and_negatives():
    x = torch.randn(500, dtype=torch.float64)
    t = (torch.rand(500) < 0.5).double()
    plain = sigmoid_focal_loss(x, t, -1, 2.0)
    weighted = sigmoid_focal_loss(x, t, 0.25, 2.0)
    pos = t > 0
    torch.testing.assert_close(weighted[pos], 0.25 * plain[pos])
    torch.testing.assert_close(weighted[~pos], 0.75 * plain[~pos])


def test_stable_at_extreme_logits():
    x = torch.tensor([100.0, 100.0, -100.0, -100.0, 1000.0, -1000.0], requires_grad=True)
    t = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    loss = sigmoid_focal_loss(x, t, alpha=0.25, gamma=2.0)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(x.grad).all()
    # closed form: confidently wrong -> alpha_t * |x| and gradient +-alpha_t; confidently right -> ~0
    torch.testing.assert_close(loss, torch.tensor([0.0, 75.0, 25.0, 0.0, 750.0, 250.0]))
    torch.testing.assert_close(x.grad, torch.tensor([0.0, 0.75, -0.25, 0.0, 0.75, -0.25]))
    x64 = torch.tensor([100.0, -100.0, 30.0], dtype=torch.float64)
    ce = sigmoid_focal_loss(x64, torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64), -1, 0.0)
    torch.testing.assert_close(ce, torch.tensor([-100.0, -100.0, -30.0], dtype=torch.float64).exp(),
                               rtol=1e-12, atol=0)  # log1p(e^-|x|) to full relative precision
    ce32 = sigmoid_focal_loss(x64.float(), torch.tensor([1.0, 0.0, 1.0]), -1, 0.0)
    assert (ce32[:2] < 1e-37).all() and ce32[2].item() == pytest.approx(math.exp(-30.0), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype):
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(50, 20, generator=g) * 6).to(dtype)
    x[0, :4] = torch.tensor([60.0, -60.0, 100.0, -100.0], dtype=dtype)
    t = (torch.rand(50, 20, generator=g) < 0.3).to(dtype)
    xr = x.clone().requires_grad_(True)
    out = sigmoid_focal_loss(xr, t, 0.25, 2.0)
    out.sum().backward()
    assert out.dtype == dtype and xr.grad.dtype == dtype
    assert torch.isfinite(out).all() and torch.isfinite(xr.grad).all()
    truth, truth_grad = _grads(tv_focal, x.double(), t.double(), 0.25, 2.0, "none")
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    torch.testing.assert_close(out.double(), truth, rtol=tol, atol=1e-6)
    torch.testing.assert_close(xr.grad.double(), truth_grad, rtol=tol, atol=1e-6)


def test_focal_star_hand_formula():
    x = torch.tensor([-3.0, -0.5, 0.0, 0.7, 4.0], dtype=torch.float64)
    t = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    for gamma, beta, alpha in [(2.0, 1.0, 0.25), (4.0, 0.0, -1.0), (1.0, -1.0, 0.5)]:
        out = sigmoid_focal_loss_star(x, t, alpha, gamma, beta)
        for xi, yi, oi in zip(x.tolist(), t.tolist(), out.tolist()):
            xt = xi if yi == 1 else -xi
            pt = 1 / (1 + math.exp(-(gamma * xt + beta)))
            a = 1.0 if alpha < 0 else (alpha if yi == 1 else 1 - alpha)
            assert oi == pytest.approx(-a * math.log(pt) / gamma, rel=1e-12)
    big = sigmoid_focal_loss_star(torch.tensor([-100.0]), torch.tensor([1.0]), -1, 2.0, 1.0)
    assert torch.isfinite(big).all() and big.item() == pytest.approx((200 - 1) / 2, rel=1e-6)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_softmax_focal_gamma0_is_cross_entropy(reduction):
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(40, 6, generator=g, dtype=torch.float64) * 3
    target = torch.randint(0, 6, (40,), generator=g)
    target[::7] = -100
    ours = softmax_focal_loss(logits, target, alpha=-1, gamma=0.0, reduction=reduction)
    torch.testing.assert_close(ours, F.cross_entropy(logits, target, reduction=reduction, ignore_index=-100))


def test_softmax_focal_formula_and_alpha():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-2.0, 3.0, 0.0]], dtype=torch.float64)
    target = torch.tensor([0, 2, 1])
    p = logits.softmax(1)
    pt = p[torch.arange(3), target]
    expected = -(1 - pt) ** 2 * pt.log() * torch.tensor([0.75, 0.25, 0.25], dtype=torch.float64)
    torch.testing.assert_close(softmax_focal_loss(logits, target, 0.25, 2.0), expected)
    # background elsewhere: class 2 is background -> weight 1 - alpha there
    expected_bg2 = -(1 - pt) ** 2 * pt.log() * torch.tensor([0.25, 0.75, 0.25], dtype=torch.float64)
    torch.testing.assert_close(softmax_focal_loss(logits, target, 0.25, 2.0, background_index=2), expected_bg2)
    extreme = torch.tensor([[100.0, -100.0], [-100.0, 100.0]], requires_grad=True)
    out = softmax_focal_loss(extreme, torch.tensor([1, 1]), 0.25, 2.0, "sum")
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(extreme.grad).all()
    assert out.item() == pytest.approx(0.25 * 200, rel=1e-5)


@pytest.mark.parametrize("call, match", [
    (lambda x, t: sigmoid_focal_loss(x, t, gamma=-1.0), "gamma"),
    (lambda x, t: sigmoid_focal_loss(x, t, alpha=1.5), "alpha"),
    (lambda x, t: sigmoid_focal_loss(x, t, alpha=float("nan")), "alpha"),
    (lambda x, t: sigmoid_focal_loss(x, t[:, :2]), "shape"),
    (lambda x, t: sigmoid_focal_loss(x, t, reduction="avg"), "reduction"),
    (lambda x, t: sigmoid_focal_loss_star(x, t, gamma=0.0), "gamma"),
    (lambda x, t: sigmoid_focal_loss_star(x, t, beta=float("inf")), "beta"),
    (lambda x, t: softmax_focal_loss(x, torch.tensor([0, 3, 1, 0])), "target"),
    (lambda x, t: softmax_focal_loss(x, torch.tensor([0, 1])), "target"),
    (lambda x, t: softmax_focal_loss(x, torch.tensor([0, 1, 1, 0]), gamma=-2), "gamma"),
])
def test_bad_arguments(call, match):
    x, t = torch.randn(4, 3), torch.zeros(4, 3)
    with pytest.raises(ValueError, match=match):
        call(x, t)


def test_shared_terms_match_the_matcher_and_the_paper():
    """One definition of the label values, alpha_t and the prior: the matcher's labels pass straight through."""
    import math

    from torchvision.models.detection._utils import Matcher

    from focalbench.losses.terms import BACKGROUND, IGNORE, alpha_coefs, prior_logit

    assert (BACKGROUND, IGNORE) == (Matcher.BELOW_LOW_THRESHOLD, Matcher.BETWEEN_THRESHOLDS)
    a0, a1 = alpha_coefs(0.25)
    assert (a0 + a1 * 1, a0 + a1 * 0) == (0.25, 0.75) and alpha_coefs(-1) == (1.0, 0.0)
    assert 1 / (1 + math.exp(-prior_logit(0.01))) == pytest.approx(0.01)
    with pytest.raises(ValueError, match=r"prior_prob=1\.0: must be in \(0, 1\)"):
        prior_logit(1.0)
