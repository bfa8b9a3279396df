"""focalbench.losses.compiled: the inductor-compiled focal loss against float64, its fallback, its recompiles.

Small shapes (the kernels are compiled with dynamic shapes, so size does not change the compile time).
The fast tests compile one kernel variant (gamma 2, reduction none) and its backward; with a cold inductor
cache that takes ~20-50 s on 2 busy cores, a few seconds warm. Tests compiling further variants are slow.
"""

import warnings

import pytest
import torch

from focalbench.losses import compiled as C
from focalbench.losses import sigmoid_focal_loss, sigmoid_focal_loss_star
from focalbench.losses.criteria import OHEMLoss, SigmoidFocalLoss

needs_compiler = pytest.mark.skipif(C.unavailable_reason() is not None,
                                    reason=f"no compiled path here: {C.unavailable_reason()}")


@pytest.fixture
def force(monkeypatch):
    """Set the module switch (compiled at any size / never), restored afterwards."""
    def set_(value):
        monkeypatch.setattr(C, "ENABLED", value)
    yield set_
    C.reset()


def _grid():
    """float32 logits over [-30, 30] (the float64 reference is evaluated at exactly these values: rounding a
    float64 x to float32 alone moves e^(-3|x|) by up to ~5e-6 relative at |x| = 30)."""
    x = torch.linspace(-30.0, 30.0, 6001)
    x = torch.cat([x, torch.tensor([-20.0, -9.0, -8.999, 9.0, 9.001, 20.0, 0.0])]).double()
    return x.reshape(-1, 8)        # 2-D like the detector's (anchors, classes): one compiled shape family


def _loss_grad(fn, x, t, *args, **kw):
    x = x.clone().requires_grad_()
    out = fn(x, t, *args, **kw)
    out.sum().backward()
    return out.detach(), x.grad


def _max_rel(a, b):
    """Max relative error of float32 ``a`` against float64 ``b`` where ``b`` is a normal float32 number;
    below that (|x| > ~29: gamma = 2 losses ~ e^(-3|x|)) float32 only has subnormals, so there the absolute
    error must stay below 1e-5 of the smallest normal number (~1e-43, a few dozen subnormal steps)."""
    a, b = a.double(), b.double()
    tiny = torch.finfo(torch.float32).tiny
    normal = b.abs() >= tiny
    assert float(torch.cat([(a - b).abs()[~normal], a.new_zeros(1)]).max()) <= 1e-5 * tiny
    return float(((a - b).abs()[normal] / b.abs()[normal]).max())


def _check_against_float64(alpha, gamma, force):
    x = _grid()
    for tv in (0.0, 1.0):
        t = torch.full_like(x, tv)
        force(False)
        ref, ref_grad = _loss_grad(sigmoid_focal_loss, x, t, alpha, gamma)   # float64 eager Function
        force(True)
        out, grad = _loss_grad(sigmoid_focal_loss, x.float(), t.float(), alpha, gamma)
        assert out.dtype == grad.dtype == torch.float32
        assert _max_rel(out, ref) <= 1e-6, (alpha, gamma, tv)
        assert _max_rel(grad, ref_grad) <= 1e-6, (alpha, gamma, tv)


@needs_compiler
def test_compiled_focal_within_1e6_of_float64(force):
    _check_against_float64(0.25, 2.0, force)


@needs_compiler
@pytest.mark.slow
@pytest.mark.parametrize("alpha, gamma", [(-1.0, 0.0), (0.25, 0.0), (0.25, 1.0), (0.25, 0.5), (0.75, 3.7)])
def test_compiled_ce_alpha_ce_and_other_gammas_within_1e6_of_float64(force, alpha, gamma):
    _check_against_float64(alpha, gamma, force)


@needs_compiler
@pytest.mark.slow
def test_compiled_sum_and_mean_and_bf16(force):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 7, generator=g) * 6
    t = (torch.rand(300, 7, generator=g) < 0.2).float()
    force(False)
    ref = {r: _loss_grad(sigmoid_focal_loss, x.double(), t.double(), reduction=r) for r in ("sum", "mean")}
    force(True)
    for r in ("sum", "mean"):
        out, grad = _loss_grad(sigmoid_focal_loss, x, t, reduction=r)
        torch.testing.assert_close(out.double(), ref[r][0], rtol=1e-6, atol=0)
        torch.testing.assert_close(grad.double(), ref[r][1], rtol=1e-6, atol=0)
    xb, tb = x.bfloat16(), t.bfloat16()
    out, grad = _loss_grad(sigmoid_focal_loss, xb, tb, reduction="sum")
    assert out.dtype == grad.dtype == torch.bfloat16
    again = _loss_grad(sigmoid_focal_loss, xb, tb, reduction="sum")    # into the recycled float32 buffer
    assert torch.equal(again[0], out) and torch.equal(again[1], grad)
    force(False)
    eager, eager_grad = _loss_grad(sigmoid_focal_loss, xb, tb, reduction="sum")
    torch.testing.assert_close(out.float(), eager.float(), rtol=8e-3, atol=0)   # float32 inside, then bf16
    torch.testing.assert_close(grad.float(), eager_grad.float(), rtol=8e-3, atol=0)


@needs_compiler
def test_other_anchor_counts_and_batches_do_not_recompile(force):
    from torch._dynamo.utils import counters

    force(True)
    g = torch.Generator().manual_seed(1)

    def call(*shape):
        x = torch.randn(*shape, generator=g, requires_grad=True)
        t = (torch.rand(*shape, generator=g) < 0.1).float()
        sigmoid_focal_loss(x, t).backward(torch.ones(shape))
        return x.grad

    call(1000, 80)        # the kernels of test_compiled_focal_within_1e6_of_float64: compiled (or loaded) once
    before = counters["stats"]["unique_graphs"]
    x = torch.randn(777, 80, generator=g) * 8
    t = (torch.rand(777, 80, generator=g) < 0.1).float()
    runs = [_loss_grad(sigmoid_focal_loss, x, t) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs))          # deterministic, bit for bit
    for shape in ((1713, 80), (4, 517, 80), (2, 3001, 20), (96, 9)):
        assert call(*shape).shape == shape
    assert counters["stats"]["unique_graphs"] == before


def test_env_var_zero_takes_the_eager_function(monkeypatch):
    monkeypatch.setenv("FOCALBENCH_COMPILE", "0")
    monkeypatch.setattr(C, "MIN_NUMEL", 0)
    x = torch.randn(50, 8)
    assert not C.use_compiled(x)
    monkeypatch.setenv("FOCALBENCH_COMPILE", "auto")
    assert C.use_compiled(x) == (C.unavailable_reason() is None)
    monkeypatch.setattr(C, "MIN_NUMEL", 10 ** 9)
    assert not C.use_compiled(x)                      # auto: small tensors stay eager
    monkeypatch.setenv("FOCALBENCH_COMPILE", "1")
    assert C.use_compiled(x) == (C.unavailable_reason() is None)
    assert not C.use_compiled(x.double())             # float64 (gradcheck, references): always eager


def test_dynamo_disabled_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setenv("TORCHDYNAMO_DISABLE", "1")
    monkeypatch.setattr(C, "ENABLED", True)
    C.reset()
    x = torch.randn(40, 6, requires_grad=True)
    t = (torch.rand(40, 6) < 0.3).float()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = sigmoid_focal_loss(x, t, reduction="sum")
        sigmoid_focal_loss(x, t, reduction="sum")
    msgs = [str(m.message) for m in w if "compiled focal loss" in str(m.message)]
    assert len(msgs) == 1 and "TORCHDYNAMO_DISABLE" in msgs[0]
    monkeypatch.setattr(C, "ENABLED", False)
    torch.testing.assert_close(out, sigmoid_focal_loss(x, t, reduction="sum"), rtol=0, atol=0)
    C.reset()


def test_compile_error_falls_back_to_the_same_numbers(monkeypatch):
    def broken(name, fn):
        raise RuntimeError("simulated: no C++ compiler")

    monkeypatch.setattr(C, "_get", broken)
    monkeypatch.setattr(C, "_check_toolchain", lambda: "")
    C.reset()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 9, generator=g) * 5
    t = (torch.rand(64, 9, generator=g) < 0.3).float()
    monkeypatch.setattr(C, "ENABLED", False)
    ref, ref_grad = _loss_grad(sigmoid_focal_loss, x, t, 0.25, 2.0, "none")
    monkeypatch.setattr(C, "ENABLED", True)
    with pytest.warns(RuntimeWarning, match="compile failed: RuntimeError: simulated"):
        out, grad = _loss_grad(sigmoid_focal_loss, x, t, 0.25, 2.0, "none")
    assert "simulated" in C.unavailable_reason()
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=0)
    C.reset()


def _labels(n, a, k, g):
    labels = torch.randint(-2, k, (n, a), generator=g)
    labels[labels < -2] = -1
    return labels


@needs_compiler
@pytest.mark.slow
def test_compiled_criteria_match_the_eager_ones(force):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 500, 6, generator=g) * 4 - 3
    labels = _labels(2, 500, 6, g)
    crit = SigmoidFocalLoss(gamma=2.0, alpha=0.25)
    results = {}
    for on in (False, True):
        force(on)
        x = logits.clone().requires_grad_()
        loss = crit(x, labels)
        loss.backward()
        x2 = logits.clone().requires_grad_()
        rows = crit.per_anchor(x2, labels)
        (rows * torch.arange(rows.numel()).reshape(rows.shape)).sum().backward()
        results[on] = (loss.detach(), x.grad, rows.detach(), x2.grad, OHEMLoss().scores(logits, labels))
    for a, b in zip(results[False], results[True]):
        torch.testing.assert_close(b, a, rtol=2e-6, atol=1e-7)


@needs_compiler
@pytest.mark.slow
def test_compiled_focal_star_matches_float64(force):
    x = _grid()
    for tv in (0.0, 1.0):
        t = torch.full_like(x, tv)
        force(False)
        ref, ref_grad = _loss_grad(sigmoid_focal_loss_star, x, t, 0.25, 2.0, 1.0)
        force(True)
        out, grad = _loss_grad(sigmoid_focal_loss_star, x.float(), t.float(), 0.25, 2.0, 1.0)
        assert _max_rel(out, ref) <= 1e-6 and _max_rel(grad, ref_grad) <= 1e-6
