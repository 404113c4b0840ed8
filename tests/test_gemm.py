"""The CPU backend's GEMM (csrc/cpu/gemm.h), which runs every product of the ops above the small
ones: results against a float64 product for every operand layout the ops use and the tile and
block edges, beta and bias, and bits that do not depend on the thread count."""

import itertools

import pytest
import torch

import gru_native
from gru_native import _C

from _util import TOLERANCES, assert_close, make_pair, with_threads

# (M, N, K): single elements, tile edges (rows of 6 or 12, columns of two vectors), blocks of K
# (256) and of rows, and the ops' shapes in small.
SHAPES = [(1, 1, 1), (5, 3, 2), (6, 16, 7), (7, 17, 255), (13, 33, 256), (12, 32, 257),
          (25, 70, 600), (241, 40, 20), (250, 1030, 9), (64, 96, 513)]
LAYOUTS = ["nn", "nt", "tn", "tt"]  # A, B: n row-major, t a transposed row-major matrix


def _operand(rows, cols, layout, dtype):
    if layout == "n":
        return torch.randn(rows, cols, dtype=dtype)
    return torch.randn(cols, rows, dtype=dtype).t()


def _reference(a, b, c0, bias):
    r = a.double() @ b.double()
    if c0 is not None:
        r += c0.double()
    if bias is not None:
        r += bias.double()
    return r


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gemm_matches_float64(shape, layout, dtype):
    torch.manual_seed(0)
    M, N, K = shape
    a = _operand(M, K, layout[0], dtype)
    b = _operand(K, N, layout[1], dtype)
    for accumulate, with_bias in itertools.product([False, True], [False, True]):
        c0 = torch.randn(M, N, dtype=dtype)
        bias = torch.randn(N, dtype=dtype) if with_bias else None
        c = c0.clone()
        _C._cpu_gemm(a, b, c, accumulate, bias)
        expected = _reference(a, b, c0 if accumulate else None, bias)
        atol, rtol = TOLERANCES[dtype]
        # Sums of K products: the bound grows with the sum of their magnitudes.
        scale = (a.double().abs() @ b.double().abs()).max().item() + 1
        err = (c.double() - expected).abs().max().item()
        assert err <= atol * scale + rtol * expected.abs().max().item(), (accumulate, with_bias)


def test_gemm_without_k_scales_and_adds_bias():
    c0 = torch.randn(4, 5)
    bias = torch.randn(5)
    a, b = torch.randn(4, 0), torch.randn(0, 5)
    c = c0.clone()
    _C._cpu_gemm(a, b, c, True, bias)
    assert torch.equal(c, c0 + bias)
    _C._cpu_gemm(a, b, c, False, None)
    assert torch.equal(c, torch.zeros(4, 5))


def test_gemm_writes_only_its_columns():
    # C with a leading dimension past N: the columns beyond N are not touched.
    big = torch.randn(30, 50)
    before = big.clone()
    c = big[:, :37]
    a, b = torch.randn(30, 300), torch.randn(300, 37)
    _C._cpu_gemm(a, b, c)
    assert torch.equal(big[:, 37:], before[:, 37:])
    assert torch.allclose(c, a @ b, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(gru_native.build_info()["cuda_emulation"], reason="the CPU kernels' threads")
@pytest.mark.parametrize("threads", [2, 3, 5])
@pytest.mark.parametrize("shape", [(300, 200, 700), (64, 3072 // 8, 1024), (1000, 48, 40)],
                         ids=lambda s: "x".join(map(str, s)))
def test_gemm_bits_do_not_depend_on_threads(shape, threads):
    torch.manual_seed(0)
    M, N, K = shape
    a, b = torch.randn(M, K), torch.randn(N, K).t()

    def run():
        c = torch.empty(M, N)
        _C._cpu_gemm(a, b, c)
        return c

    expected, plan1 = with_threads(1, run)
    got, plan = with_threads(threads, run)
    assert plan1["gemm"] == (1, 1)
    tm, tn = plan["gemm"]
    assert tm * tn == threads  # C was cut into one part per thread
    assert torch.equal(got, expected)


@pytest.mark.skipif(gru_native.build_info()["cuda_emulation"], reason="the CPU kernels")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("accumulate, bias", [(False, False), (False, True), (True, False),
                                              (True, True)], ids=["plain", "bias", "beta", "both"])
@pytest.mark.parametrize("M, N, K", [(16, 45, 64), (24, 64, 300), (33, 100, 300), (40, 45, 513),
                                     (47, 96, 513), (64, 384, 1024), (64, 7, 256)],
                         ids=lambda v: str(v))
def test_rows_read_in_place_give_the_packed_bits(M, N, K, accumulate, bias, dtype):
    """Up to 64 rows times a transposed row-major matrix (x W^T) read W's rows in place
    (wrows_gemm.h) instead of packing them: the same sums in the same order, so the rows of a
    larger product, which packs, bit for bit (tile edges of 6 rows of W, panels of 2 vectors of
    rows of A and a last one of 1 vector where it holds the rest: 16, 33, 40 and 47 rows with
    AVX-512, 24, 33 and 40 with AVX2; one or several blocks of K, beta and bias)."""
    torch.manual_seed(0)
    big = 200
    a, b = torch.randn(big, K, dtype=dtype), torch.randn(N, K, dtype=dtype).t()
    c0 = torch.randn(big, N, dtype=dtype)
    bias_v = torch.randn(N, dtype=dtype) if bias else None

    def run(rows):
        c = c0[:rows].clone()
        _C._cpu_gemm(a[:rows], b, c, accumulate, bias_v)
        return c

    packed, _ = with_threads(1, lambda: run(big))
    in_place, _ = with_threads(1, lambda: run(M))
    expected = _reference(a[:M], b, c0[:M] if accumulate else None, bias_v)
    atol, rtol = TOLERANCES[dtype]
    scale = (a[:M].double().abs() @ b.double().abs()).max().item() + 1  # as above
    err = (in_place.double() - expected).abs().max().item()
    assert err <= atol * scale + rtol * expected.abs().max().item()
    assert torch.equal(in_place, packed[:M])


@pytest.mark.skipif(gru_native.build_info()["cuda_emulation"], reason="the CPU kernels")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("T, N", [(1, 1), (2, 3), (1, 8)])
def test_step_products_of_few_rows_and_long_k(T, N, dtype):
    """The products the backend takes other routes for: d(input) = dG W_ih with T*N <= 8 rows
    (W_ih streamed in place, few_rows_gemm) and the per-step h W_hh^T with K = H > 256 (the
    panels' groups over all of K): output, h_n and every gradient against nn.GRU in float64, and
    the same bits at 1 and 3 threads."""
    C, H = 700, 300
    ref, ours = make_pair(C, H, dtype=torch.float64)
    ours = ours.to(dtype)
    x = torch.randn(T, N, C, dtype=torch.float64)
    h0 = torch.randn(1, N, H, dtype=torch.float64)

    def run(module, dt):
        module.zero_grad()
        xi = x.to(dt).detach().clone().requires_grad_()
        hi = h0.to(dt).detach().clone().requires_grad_()
        out, hn = module(xi, hi)
        (out.square().sum() + hn.sum()).backward()
        return [out, hn, xi.grad, hi.grad] + [p.grad for p in module.parameters()]

    want = run(ref, torch.float64)
    got, _ = with_threads(1, lambda: run(ours, dtype))
    names = ["output", "h_n", "d input", "d h0"] + [n for n, _ in ours.named_parameters()]
    for name, g, w in zip(names, got, want):
        assert_close(g, w, name, dtype=dtype)
    again, _ = with_threads(3, lambda: run(ours, dtype))
    for name, g, a in zip(names, got, again):
        assert torch.equal(g, a), name
