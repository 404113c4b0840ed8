"""Numerical parity with torch.nn.GRU (same state_dict) and with the float64 reference: output,
h_n and the gradients of input, h0 and every parameter."""

import itertools

import pytest
import torch

import gru_native
from gru_native._reference import module_reference

from _util import assert_close, assert_meaningful, devices, make_pair

T, N, C, H = 6, 3, 5, 4

GRID = list(itertools.product(
    [1, 2, 3],          # num_layers
    [False, True],      # bidirectional
    [False, True],      # batch_first
    [True, False],      # bias
    [True, False],      # h0 given
    [False, True],      # unbatched
))


def _grid_id(case):
    layers, bi, bf, bias, h0, unbatched = case
    return (f"L{layers}-{'bi' if bi else 'uni'}-{'bf' if bf else 'tm'}-"
            f"{'bias' if bias else 'nobias'}-{'h0' if h0 else 'noh0'}-"
            f"{'unbatched' if unbatched else 'batched'}")


def _run(module, x, h0, g_out, g_h):
    """Forward, then backward with fixed random cotangents; returns output, h_n and grads."""
    x = x.detach().clone().requires_grad_()
    h0 = None if h0 is None else h0.detach().clone().requires_grad_()
    out, h_n = module(x, h0)
    params = list(module.parameters())
    inputs = [x] + ([h0] if h0 is not None else []) + params
    grads = torch.autograd.grad([out, h_n], inputs, [g_out, g_h])
    return out, h_n, grads


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", GRID, ids=[_grid_id(c) for c in GRID])
def test_parity_with_nn_gru(case, dtype, device):
    layers, bi, batch_first, bias, with_h0, unbatched = case
    D = 2 if bi else 1
    ref, ours = make_pair(C, H, layers, bias=bias, batch_first=batch_first, bidirectional=bi,
                          dtype=dtype, device=device)
    gen = torch.Generator().manual_seed(1)
    shape = (T, C) if unbatched else ((N, T, C) if batch_first else (T, N, C))
    x = torch.randn(shape, generator=gen, dtype=dtype).to(device)
    h_shape = (layers * D, H) if unbatched else (layers * D, N, H)
    h0 = torch.randn(h_shape, generator=gen, dtype=dtype).to(device) if with_h0 else None
    out_shape = shape[:-1] + (D * H,)
    g_out = torch.randn(out_shape, generator=gen, dtype=dtype).to(device)
    g_h = torch.randn(h_shape, generator=gen, dtype=dtype).to(device)

    out_r, h_r, grads_r = _run(ref, x, h0, g_out, g_h)
    out_o, h_o, grads_o = _run(ours, x, h0, g_out, g_h)

    assert out_o.shape == out_r.shape and h_o.shape == h_r.shape
    assert out_o.dtype == dtype and h_o.dtype == dtype
    assert_close(out_o, out_r, "output")
    assert_close(h_o, h_r, "h_n")
    names = ["input"] + (["h0"] if with_h0 else []) + [n for n, _ in ours.named_parameters()]
    assert len(grads_o) == len(grads_r) == len(names)
    for name, g_o, g_r in zip(names, grads_o, grads_r):
        assert_meaningful(g_r, name)
        assert_close(g_o, g_r, f"grad {name}")

    # And against the float64 reference, which shares nothing with either implementation.
    with torch.no_grad():
        out_64, h_64 = module_reference(ours, x, h0, dtype=torch.float64)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert_close(out_o, out_64, "output vs float64 reference", dtype=dtype, atol=tol, rtol=tol)
    assert_close(h_o, h_64, "h_n vs float64 reference", dtype=dtype, atol=tol, rtol=tol)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_gradcheck(bidirectional, bias, device):
    torch.manual_seed(0)
    m = gru_native.GRU(3, 2, num_layers=2, bias=bias, bidirectional=bidirectional,
                       dtype=torch.float64, device=device)
    D = 2 if bidirectional else 1
    x = torch.randn(4, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    h0 = torch.randn(2 * D, 2, 2, dtype=torch.float64, device=device, requires_grad=True)
    params = tuple(m.parameters())

    def f(x, h0, *weights):
        out, h_n = torch.func.functional_call(
            m, dict(zip([n for n, _ in m.named_parameters()], weights)), (x, h0))
        return out, h_n

    assert torch.autograd.gradcheck(f, (x, h0) + params)


@pytest.mark.parametrize("T_, N_", [(1, 1), (1, 4), (7, 1), (40, 2)], ids=str)
def test_shapes_edge(T_, N_):
    ref, ours = make_pair(3, 5, 2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(T_, N_, 3, dtype=torch.float64)
    out_r, h_r = ref(x)
    out_o, h_o = ours(x)
    assert_close(out_o, out_r, "output")
    assert_close(h_o, h_r, "h_n")


def test_large_values_saturate_like_nn_gru():
    # Saturated gates (|pre-activation| ~ 1e3) must not produce NaN or Inf.
    ref, ours = make_pair(4, 6, 1, dtype=torch.float32)
    x = torch.randn(5, 3, 4) * 1e3
    out_r, h_r = ref(x)
    out_o, h_o = ours(x)
    assert torch.isfinite(out_o).all()
    assert_close(out_o, out_r, "output")
    assert_close(h_o, h_r, "h_n")


# Sizes at which the CPU kernels split a layer over threads (directions side by side, hidden
# units in slices, one barrier per step) and hand the larger GEMMs to BLAS.
THREADED = [
    dict(T=10, N=32, C=48, H=96, layers=1, bi=False),   # two slices of one direction
    dict(T=12, N=16, C=40, H=72, layers=2, bi=True),    # directions side by side, H % 16 != 0
    dict(T=7, N=1, C=30, H=200, layers=1, bi=False),    # batch 1
    dict(T=5, N=40, C=8, H=130, layers=3, bi=True),     # tails everywhere
]


@pytest.mark.parametrize("threads", [1, 2], ids=["1thread", "2threads"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", THREADED, ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
def test_parity_threaded_sizes(shape, dtype, threads):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ref, ours = make_pair(shape["C"], shape["H"], shape["layers"], bidirectional=shape["bi"],
                              dtype=dtype)
        D = 2 if shape["bi"] else 1
        gen = torch.Generator().manual_seed(5)
        x = torch.randn(shape["T"], shape["N"], shape["C"], generator=gen, dtype=dtype)
        h0 = torch.randn(shape["layers"] * D, shape["N"], shape["H"], generator=gen, dtype=dtype)
        g_out = torch.randn(shape["T"], shape["N"], D * shape["H"], generator=gen, dtype=dtype)
        g_h = torch.randn(h0.shape, generator=gen, dtype=dtype)
        out_r, h_r, grads_r = _run(ref, x, h0, g_out, g_h)
        out_o, h_o, grads_o = _run(ours, x, h0, g_out, g_h)
        assert_close(out_o, out_r, "output")
        assert_close(h_o, h_r, "h_n")
        names = ["input", "h0"] + [n for n, _ in ours.named_parameters()]
        for name, g_o, g_r in zip(names, grads_o, grads_r):
            assert_close(g_o, g_r, f"grad {name}")
    finally:
        torch.set_num_threads(old)
