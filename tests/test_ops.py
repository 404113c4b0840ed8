"""The ops themselves: torch.library.opcheck, dropout semantics, bitwise determinism."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import gru_native
from gru_native import ops

from _util import assert_close, make_pair


def _weights(C, H, L, D, bias, dtype=torch.float64, requires_grad=True):
    ws = []
    for layer in range(L):
        for _ in range(D):
            cin = C if layer == 0 else D * H
            shapes = [(3 * H, cin), (3 * H, H)] + ([(3 * H,), (3 * H,)] if bias else [])
            ws += [torch.randn(s, dtype=dtype, requires_grad=requires_grad) for s in shapes]
    return ws


OPCHECK_CASES = [
    dict(L=1, D=1, bias=True, mask=False, need_ws=True),
    dict(L=2, D=2, bias=True, mask=True, need_ws=True),
    dict(L=3, D=1, bias=False, mask=False, need_ws=False),
]


@pytest.mark.parametrize("case", OPCHECK_CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_opcheck_forward(case):
    torch.manual_seed(0)
    T, N, C, H = 4, 2, 3, 5
    L, D = case["L"], case["D"]
    x = torch.randn(T, N, C, dtype=torch.float64, requires_grad=True)
    hx = torch.randn(L * D, N, H, dtype=torch.float64, requires_grad=True)
    ws = _weights(C, H, L, D, case["bias"])
    mask = (torch.rand(L - 1, T * N, D * H, dtype=torch.float64) > 0.3).double() / 0.7 \
        if case["mask"] and L > 1 else None
    torch.library.opcheck(
        torch.ops.gru_native.gru_forward.default,
        (x, hx, ws, None, mask, case["bias"], L, D == 2, case["need_ws"]),
    )


def test_opcheck_backward():
    torch.manual_seed(0)
    T, N, C, H, L, D = 3, 2, 3, 4, 2, 2
    x = torch.randn(T, N, C, dtype=torch.float64)
    hx = torch.randn(L * D, N, H, dtype=torch.float64)
    ws = _weights(C, H, L, D, True, requires_grad=False)
    out, hy, work, lower = torch.ops.gru_native.gru_forward(x, hx, ws, None, None, True, L, True,
                                                            True)
    g_out, g_h = torch.randn_like(out), torch.randn_like(hy)
    torch.library.opcheck(
        torch.ops.gru_native.gru_backward.default,
        (g_out, g_h, x, hx, ws, None, None, out, work, lower, True, L, True, True, True),
    )


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("T", [1, 3])
def test_backward_op_without_hx_grad(T, packed):
    # need_hx_grad=False: grad_hx is [0] and the last step's product with W_hh is skipped; the
    # other gradients are the same bits as with it, and (opcheck) the fake agrees.
    torch.manual_seed(0)
    N, C, H, L, D = 3, 3, 4, 2, 2
    x = torch.randn(T, N, C, dtype=torch.float64)
    hx = torch.randn(L * D, N, H, dtype=torch.float64)
    batch_sizes = None
    if packed:
        lengths = [T, max(T - 1, 1), 1]
        seq = pack_padded_sequence(x, lengths, enforce_sorted=True)
        x, batch_sizes = seq.data, seq.batch_sizes
    ws = _weights(C, H, L, D, True, requires_grad=False)
    out, hy, work, lower = torch.ops.gru_native.gru_forward(x, hx, ws, batch_sizes, None, True,
                                                            L, True, True)
    g_out, g_h = torch.randn_like(out), torch.randn_like(hy)
    args = (g_out, g_h, x, hx, ws, batch_sizes, None, out, work, lower, True, L, True, True,
            True)
    with_hx = torch.ops.gru_native.gru_backward(*args)
    without = torch.ops.gru_native.gru_backward(*args, need_hx_grad=False)
    assert with_hx[1].shape == (L * D, N, H) and without[1].numel() == 0
    assert torch.equal(with_hx[0], without[0])
    for a, b in zip(with_hx[2], without[2]):
        assert torch.equal(a, b)
    torch.library.opcheck(torch.ops.gru_native.gru_backward.default, args + (False,))


@pytest.mark.parametrize("T", [1, 4])
def test_gradients_do_not_depend_on_whether_h0_requires_grad(T):
    # With h0 not requiring grad the backward skips dL/dh0's product; every other gradient is
    # bitwise the one computed with it, and both equal nn.GRU's.
    torch.manual_seed(0)
    ref, ours = make_pair(5, 6, 2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(T, 3, 5, dtype=torch.float64)
    h0 = torch.randn(4, 3, 6, dtype=torch.float64)
    results = {}
    for name, m in (("ref", ref), ("ours", ours)):
        for h0_grad in (False, True):
            xi, hi = x.clone().requires_grad_(), h0.clone().requires_grad_(h0_grad)
            out, h = m(xi, hi)
            wanted = [xi] + list(m.parameters()) + ([hi] if h0_grad else [])
            results[name, h0_grad] = torch.autograd.grad(out.pow(2).sum() + h.sum(), wanted)
    for a, b in zip(results["ours", False], results["ours", True]):
        assert torch.equal(a, b)
    for a, b in zip(results["ours", True], results["ref", True]):
        assert_close(a, b, "grad vs nn.GRU")


def test_backward_op_with_missing_output_gradients():
    # Only h_n used: grad_output is None; only output used: grad_hy is None.
    torch.manual_seed(0)
    ref, ours = make_pair(3, 4, 2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    for pick in (0, 1):
        grads = []
        for m in (ref, ours):
            xi = x.clone().requires_grad_()
            res = m(xi)[pick]
            grads.append(torch.autograd.grad(res.pow(2).sum(), [xi] + list(m.parameters())))
        for g_o, g_r in zip(grads[1], grads[0]):
            assert_close(g_o, g_r, f"grad (output {pick} only)")


# -- dropout -------------------------------------------------------------------------------


def test_dropout_eval_is_deterministic_and_equals_no_dropout():
    torch.manual_seed(0)
    m = gru_native.GRU(4, 5, 3, dropout=0.5).eval()
    plain = gru_native.GRU(4, 5, 3).eval()
    plain.load_state_dict(m.state_dict())
    x = torch.randn(6, 2, 4)
    a, b = m(x), m(x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(a[0], plain(x)[0])


def test_dropout_training_reproducible_with_seed_and_fresh_each_call():
    torch.manual_seed(0)
    m = gru_native.GRU(4, 5, 3, dropout=0.5).train()
    x = torch.randn(6, 2, 4)
    torch.manual_seed(7)
    a = m(x)
    torch.manual_seed(7)
    b = m(x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = m(x)  # a new mask
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], m.eval()(x)[0])


def test_dropout_zero_in_training_equals_eval():
    torch.manual_seed(0)
    m = gru_native.GRU(4, 5, 3, dropout=0.0)
    x = torch.randn(6, 2, 4)
    a = m.train()(x)
    b = m.eval()(x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_dropout_single_layer_has_no_effect():
    torch.manual_seed(0)
    with pytest.warns(UserWarning):
        m = gru_native.GRU(4, 5, 1, dropout=0.9)
    x = torch.randn(6, 2, 4)
    assert torch.equal(m.train()(x)[0], m.eval()(x)[0])


@pytest.mark.parametrize("p", [0.3, 1.0], ids=["p0.3", "p1"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
def test_dropout_training_matches_nn_gru_under_the_same_seed(p, bidirectional, batch_first):
    # gru_native draws its masks from torch's generator exactly as ATen's CPU path does, so the
    # same seed gives nn.GRU's masks: outputs and gradients agree.
    torch.manual_seed(0)
    ref = nn.GRU(4, 5, 3, dropout=p, bidirectional=bidirectional, batch_first=batch_first,
                 dtype=torch.float64).train()
    ours = gru_native.GRU(4, 5, 3, dropout=p, bidirectional=bidirectional,
                          batch_first=batch_first, dtype=torch.float64).train()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(6, 2, 4, dtype=torch.float64)
    results = []
    for m in (ref, ours):
        xi = x.clone().requires_grad_()
        torch.manual_seed(1234)
        out, h = m(xi)
        grads = torch.autograd.grad(out.pow(2).sum() + h.sum(), [xi] + list(m.parameters()))
        results.append((out, h, grads))
    (out_r, h_r, g_r), (out_o, h_o, g_o) = results
    assert_close(out_o, out_r, "output")
    assert_close(h_o, h_r, "h_n")
    for a, b in zip(g_o, g_r):
        assert_close(a, b, "grad")


def test_dropout_mask_distribution():
    torch.manual_seed(0)
    mask = ops._dropout_mask(0.25, 3, 1000, 40, torch.empty(0, dtype=torch.float64))
    assert mask.shape == (2, 1000, 40)
    values = set(mask.unique().tolist())
    assert values == {0.0, 1 / 0.75}
    kept = (mask != 0).double().mean().item()
    assert abs(kept - 0.75) < 0.01


# -- determinism ---------------------------------------------------------------------------


def test_bitwise_deterministic_forward_and_backward():
    torch.manual_seed(0)
    m = gru_native.GRU(16, 32, 2, bidirectional=True)
    x = torch.randn(20, 8, 16)
    runs = []
    for _ in range(2):
        xi = x.clone().requires_grad_()
        out, h = m(xi)
        grads = torch.autograd.grad(out.sum() + h.pow(2).sum(), [xi] + list(m.parameters()))
        runs.append([out, h, *grads])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


# -- the CPU kernels' activation functions -------------------------------------------------

def _ulp_error(actual, expected, dtype):
    """|actual - expected| in units of the dtype's eps times |expected| (about ulps)."""
    scale = torch.finfo(dtype).eps * expected.abs().clamp_min(torch.finfo(dtype).tiny)
    return ((actual.double() - expected).abs() / scale).max().item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_cpu_activation_accuracy(dtype):
    # float32 tanh is the kernels' own (Taylor series below 0.5, exp-based above); sigmoid is
    # 1 / (1 + exp(-x)) on Sleef's exp. Both within 2 ulp of the float64 truth, on the vector
    # path (whole vectors) and on the scalar path (the tail of a row shorter than a vector).
    from gru_native import _C
    x = torch.cat([torch.linspace(-30, 30, 300001, dtype=torch.float64),
                   torch.logspace(-30, 1.5, 20001, dtype=torch.float64),
                   -torch.logspace(-30, 1.5, 20001, dtype=torch.float64)]).to(dtype)
    truth_s, truth_t = torch.sigmoid(x.double()), torch.tanh(x.double())
    sig, tanh = _C._cpu_activations(x)
    assert _ulp_error(sig, truth_s, dtype) <= 2
    assert _ulp_error(tanh, truth_t, dtype) <= 2
    # The scalar path: chunks shorter than any vector.
    sub = x[::37]
    parts = [_C._cpu_activations(c) for c in torch.split(sub, 3)]
    sig_s = torch.cat([p[0] for p in parts])
    tanh_s = torch.cat([p[1] for p in parts])
    assert _ulp_error(sig_s, torch.sigmoid(sub.double()), dtype) <= 2
    assert _ulp_error(tanh_s, torch.tanh(sub.double()), dtype) <= 2


@pytest.mark.parametrize("n", [8, 3], ids=["vector", "scalar"])
def test_cpu_activation_special_values(n):
    from gru_native import _C
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-38, 88.0,
                            -88.0, 100.0, -100.0])
    for chunk in torch.split(special, n):
        sig, tanh = _C._cpu_activations(chunk)
        ref_s, ref_t = torch.sigmoid(chunk), torch.tanh(chunk)
        assert torch.equal(torch.isnan(sig), torch.isnan(ref_s))
        assert torch.equal(torch.isnan(tanh), torch.isnan(ref_t))
        ok = ~torch.isnan(chunk)
        assert torch.allclose(sig[ok], ref_s[ok], rtol=2e-7, atol=0)
        assert torch.allclose(tanh[ok], ref_t[ok], rtol=2e-7, atol=0)
        assert torch.equal(torch.signbit(tanh[ok]), torch.signbit(ref_t[ok]))


@pytest.mark.skipif(gru_native.build_info()["cuda_emulation"],
                    reason="the CPU backend's phases (the emulated CUDA backend has no timing)")
def test_phase_timing_counts_each_phase_and_its_products():
    # The benchmarks' per-phase rates: every phase of a training step is timed once per layer
    # and direction, with the multiply-adds of its products; nothing is recorded when off.
    from gru_native import _C

    T, N, C, H = 7, 3, 5, 4
    m = gru_native.GRU(C, H, 2, bidirectional=True, dropout=0.5)
    x = torch.randn(T, N, C, requires_grad=True)
    R, G = T * N, 3 * H
    try:
        _C._set_phase_timing(True)
        out, h = m(x)
        (out.sum() + h.sum()).backward()
        totals = _C._phase_totals()
    finally:
        _C._set_phase_timing(False)
    assert _C._phase_totals() == {}
    calls = {k: v[0] for k, v in totals.items()}
    madds = {k: v[2] for k, v in totals.items()}
    assert calls == {"input projection": 4, "forward recurrence": 2, "backward recurrence": 2,
                     "dW_hh": 4, "dW_ih": 4, "d(input)": 4, "bias gradients": 4,
                     "dropout": 3}  # the mask on layer 0's output; the backward's two
    assert madds["input projection"] == 2 * R * G * C + 2 * R * G * 2 * H
    assert madds["dW_ih"] == madds["input projection"] == madds["d(input)"]
    assert madds["forward recurrence"] == 2 * 2 * R * G * H  # two layers of two directions
    assert madds["dW_hh"] == 4 * G * H * R
    assert madds["backward recurrence"] == 2 * 2 * (R - N) * G * H  # h0 needs no gradient
    assert all(v[1] > 0 for v in totals.values())
