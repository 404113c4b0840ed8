"""bfloat16 and float16 on the CPU kernels: outputs and gradients within k times the error
nn.GRU makes in the same dtype (both against float64), float32 gates saved, the half GEMM, the
dtype rules, thread independence, and which instruction-set paths this machine ran."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import gru_native
from gru_native import _C, _route
from _util import with_threads

EMULATED = gru_native.build_info()["cuda_emulation"]
needs_cpu_kernels = pytest.mark.skipif(
    EMULATED, reason="the CUDA emulation's build runs CPU tensors on the CUDA backend")

HALVES = [torch.bfloat16, torch.float16]
HALF_IDS = ["bf16", "f16"]
# Each of our errors against float64 is at most K_ERROR times nn.GRU's in the same dtype (plus a
# floor for errors that are both at the dtype's resolution).
K_ERROR = 2.0


def _floor(dtype):
    return 4 * torch.finfo(dtype).eps * 1e-2


# (layers, bidirectional, bias, batch_first, h0, packed): every branch of the module's call.
CONFIGS = [(1, False, True, False, False, False), (2, True, True, False, True, False),
           (2, False, False, True, True, False), (1, True, True, False, True, True),
           (3, True, True, True, False, False)]
CONFIG_IDS = ["1L", "2L-bi-h0", "2L-nobias-bf", "1L-bi-packed", "3L-bi-bf"]


def _trio(C, H, layers, bidirectional, bias, batch_first, dtype, seed=0):
    torch.manual_seed(seed)
    ref64 = nn.GRU(C, H, layers, bias=bias, batch_first=batch_first,
                   bidirectional=bidirectional, dtype=torch.float64)
    ref = nn.GRU(C, H, layers, bias=bias, batch_first=batch_first,
                 bidirectional=bidirectional).to(dtype)
    ours = gru_native.GRU(C, H, layers, bias=bias, batch_first=batch_first,
                          bidirectional=bidirectional).to(dtype)
    ref.load_state_dict(ref64.state_dict())
    ours.load_state_dict(ref64.state_dict())
    return ref64, ref, ours


def _run(module, x, h0, lengths, dtype, grad_out):
    """(outputs, gradients) of module on x (cast to dtype), as float64 tensors."""
    x = x.to(dtype).requires_grad_()
    h = None if h0 is None else h0.to(dtype).requires_grad_()
    inp = x if lengths is None else pack_padded_sequence(x, lengths, enforce_sorted=False,
                                                         batch_first=module.batch_first)
    out, hn = module(inp) if h is None else module(inp, h)
    out = out if lengths is None else out.data
    loss = (out * grad_out.to(dtype)[: out.numel()].view_as(out)).sum() + hn.sum()
    wanted = [x] + ([h] if h is not None else []) + list(module.parameters())
    grads = torch.autograd.grad(loss, wanted)
    return [out.double(), hn.double()], [g.double() for g in grads]


@needs_cpu_kernels
@pytest.mark.parametrize("dtype", HALVES, ids=HALF_IDS)
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_half_types_within_k_of_nn_gru(config, dtype):
    layers, bi, bias, bf, with_h0, packed = config
    C, H, T, N = 12, 37, 9, 5  # H: a partial vector in every slice
    ref64, ref, ours = _trio(C, H, layers, bi, bias, bf, dtype)
    torch.manual_seed(1)
    x = torch.randn((N, T, C) if bf else (T, N, C), dtype=torch.float64)
    D = 2 if bi else 1
    h0 = torch.randn(layers * D, N, H, dtype=torch.float64) * 0.5 if with_h0 else None
    lengths = [T, 3, 1, T - 2, 5] if packed else None
    grad_out = torch.randn(T * N * D * H, dtype=torch.float64)
    truth = _run(ref64, x, h0, lengths, torch.float64, grad_out)
    theirs = _run(ref, x, h0, lengths, dtype, grad_out)
    mine = _run(ours, x, h0, lengths, dtype, grad_out)
    names = ["output", "h_n"] + ["d input"] + (["d h0"] if with_h0 else []) + [
        n for n, _ in ours.named_parameters()]
    for name, t, r, o in zip(names, truth[0] + truth[1], theirs[0] + theirs[1],
                             mine[0] + mine[1]):
        err_ref = (r - t).abs().max().item()
        err_ours = (o - t).abs().max().item()
        assert err_ours <= K_ERROR * err_ref + _floor(dtype), (name, err_ours, err_ref)
    assert mine[0][0].abs().max() > 0.1 and mine[1][-1].abs().max() > 1e-3


@needs_cpu_kernels
@pytest.mark.parametrize("dtype", HALVES, ids=HALF_IDS)
def test_half_types_take_the_kernels_and_keep_nn_grus_dtypes(dtype):
    # The CPU backend serves the half types directly (no fallback to torch's GRU); outputs and
    # gradients in the dtype, as nn.GRU's; the saved gates in float32.
    assert _route.route((torch.empty(0, dtype=dtype),), "cpu", dtype) == _route.DIRECT
    assert _route.workspace_dtype("cpu", dtype) == torch.float32
    _, ref, ours = _trio(4, 6, 2, True, True, False, dtype)
    x = torch.randn(5, 3, 4, dtype=dtype, requires_grad=True)
    out, h = ours(x)
    assert "GRUNativeBackward" in out.grad_fn.name()
    out_r, h_r = ref(x)
    assert out.dtype == out_r.dtype == dtype and h.dtype == h_r.dtype == dtype
    out.sum().backward()
    assert x.grad.dtype == dtype and all(p.grad.dtype == dtype for p in ours.parameters())
    weights = [w.detach() for w in ours._flat_weights]
    _, _, workspace, lower = torch.ops.gru_native.gru_forward(
        x.detach(), None, weights, None, None, True, 2, True, True)
    assert workspace.dtype == torch.float32 and lower.dtype == dtype


@needs_cpu_kernels
@pytest.mark.parametrize("dtype", HALVES, ids=HALF_IDS)
def test_half_types_opcheck(dtype):
    _, _, ours = _trio(3, 5, 2, True, True, False, dtype)
    weights = [w.detach() for w in ours._flat_weights]
    x = torch.randn(4, 2, 3, dtype=dtype)
    torch.library.opcheck(torch.ops.gru_native.gru_forward.default,
                          (x, None, weights, None, None, True, 2, True, True))
    out, hy, ws, lower = torch.ops.gru_native.gru_forward(x, None, weights, None, None, True, 2,
                                                         True, True)
    torch.library.opcheck(torch.ops.gru_native.gru_backward.default,
                          (torch.randn_like(out), None, x, None, weights, None, None, out, ws,
                           lower, True, 2, True, True, True, False))


@needs_cpu_kernels
@pytest.mark.parametrize("dtype", HALVES, ids=HALF_IDS)
@pytest.mark.parametrize("form", ["packed", "direct"])
def test_half_types_both_forward_forms(monkeypatch, dtype, form):
    # The forward reads W_hh packed (converted into float panels) or in place (converted as each
    # vector is loaded): both within k of nn.GRU's error.
    monkeypatch.setenv("GRU_NATIVE_CPU_RECURRENCE", form)
    ref64, ref, ours = _trio(20, 40, 1, True, True, False, dtype)
    x = torch.randn(6, 4, 20, dtype=torch.float64)
    with torch.no_grad():
        truth = ref64(x)[0]
        err_ref = (ref(x.to(dtype))[0].double() - truth).abs().max().item()
        err_ours = (ours(x.to(dtype))[0].double() - truth).abs().max().item()
    assert err_ours <= K_ERROR * err_ref + _floor(dtype), (err_ours, err_ref)


@needs_cpu_kernels
@pytest.mark.parametrize("form", ["packed", "direct"])
@pytest.mark.parametrize("H", [301, 256, 33], ids=lambda h: f"H{h}")
def test_bf16_recurrence_blocks_and_tails(monkeypatch, form, H):
    # bfloat16 recurrence at sizes that exercise every edge of its products: K blocks of 256 with
    # an odd last one (301: the pair path's last k alone), rows past a tile of 12 (13, 25) and
    # every tile height of the dot products (1-4 rows: N 2, 3, 13), a partial last vector of k
    # (45, 301, 33), an odd input width (the input projection's pairs), both directions; within
    # k of nn.GRU bfloat16's error against float64, output and h_n.
    monkeypatch.setenv("GRU_NATIVE_CPU_RECURRENCE", form)
    ref64, ref, ours = _trio(45, H, 1, True, True, False, torch.bfloat16, seed=3)
    torch.manual_seed(4)
    for N in (2, 3, 13, 25):
        x = torch.randn(7, N, 45, dtype=torch.float64)
        h0 = torch.randn(2, N, H, dtype=torch.float64) * 0.5
        with torch.no_grad():
            truth = ref64(x, h0)
            theirs = ref(x.bfloat16(), h0.bfloat16())
            mine = ours(x.bfloat16(), h0.bfloat16())
        for t, r, o in zip(truth, theirs, mine):
            err_ref = (r.double() - t).abs().max().item()
            err_ours = (o.double() - t).abs().max().item()
            assert err_ours <= K_ERROR * err_ref + _floor(torch.bfloat16), (N, err_ours, err_ref)


@needs_cpu_kernels
@pytest.mark.parametrize("dtype", HALVES, ids=HALF_IDS)
def test_half_types_bits_do_not_depend_on_threads(dtype):
    _, _, ours = _trio(64, 96, 2, True, True, False, dtype)
    x = torch.randn(7, 9, 64).to(dtype)

    def run():
        xr = x.clone().requires_grad_()
        out, h = ours(xr)
        grads = torch.autograd.grad(out.float().square().sum() + h.sum(),
                                    [xr] + list(ours.parameters()))
        return [out, h, *grads]

    expected, _ = with_threads(1, run)
    for threads in (2, 3):
        got, plans = with_threads(threads, run)
        assert plans["forward"][0] * plans["forward"][1] > 1  # the layer was split
        for a, b in zip(got, expected):
            assert torch.equal(a, b)


@needs_cpu_kernels
@pytest.mark.parametrize("dtype", HALVES, ids=HALF_IDS)
@pytest.mark.parametrize("shape", [(7, 17, 255), (64, 96, 513), (250, 70, 9)],
                         ids=lambda s: "x".join(map(str, s)))
def test_half_gemm_rounds_once(dtype, shape):
    # The half GEMM sums in float and rounds once: within half an ulp of the dtype (plus the
    # float sum's rounding) of the float64 product of the same half values.
    torch.manual_seed(0)
    M, N, K = shape
    a, b = torch.randn(M, K).to(dtype), torch.randn(N, K).to(dtype).t()
    c0 = torch.randn(M, N).to(dtype)
    bias = torch.randn(N).to(dtype)
    for accumulate in (False, True):
        c = c0.clone()
        _C._cpu_gemm(a, b, c, accumulate, bias)
        exact = a.double() @ b.double() + bias.double() + (c0.double() if accumulate else 0)
        scale = (a.double().abs() @ b.double().abs()).max().item() + 1
        err = (c.double() - exact).abs()
        bound = exact.abs() * torch.finfo(dtype).eps / 2 + 1e-6 * scale
        assert (err <= bound).all(), (accumulate, (err - bound).max().item())


@needs_cpu_kernels
def test_float32_unchanged_by_the_half_paths():
    # The float32 kernels' results are the float32 kernels' own: the same bits as a GRU whose
    # weights went through bfloat16 and back would not give (a guard that float32 does not take
    # the converting path).
    torch.manual_seed(0)
    ours = gru_native.GRU(16, 24, 2, bidirectional=True)
    ref = nn.GRU(16, 24, 2, bidirectional=True)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(5, 3, 16)
    torch.testing.assert_close(ours(x)[0], ref(x)[0], atol=1e-5, rtol=1e-5)


# -- which instruction-set paths ran here -----------------------------------------------------

_CPU_FLAGS = set()
try:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                _CPU_FLAGS = set(line.split(":", 1)[1].split())
                break
except OSError:
    pass

# path -> (what selects it in this build, or None when no such path is built here)
PATHS = {
    "bf16/f16 converted to float on AVX2": "AVX2",
    "bf16/f16 converted to float on AVX512": "AVX512",
    "int8 products on AVX2 vpmaddubsw + vpmaddwd": "AVX2 vpmaddubsw + vpmaddwd",
    "int8 products on AVX512-VNNI vpdpbusd": "AVX512-VNNI vpdpbusd",
    "int8 products on AVX-VNNI vpdpbusd": "AVX-VNNI vpdpbusd",
    "bf16 dot products on AVX512-BF16 vdpbf16ps": "AVX512-BF16 vdpbf16ps",
    "bf16 products on AMX tiles": None,
    "f16 arithmetic on AVX512-FP16": None,
}


@pytest.mark.parametrize("path", list(PATHS))
def test_instruction_set_path(path):
    """Each low-precision path this build can take runs here (its tests are the others in this
    file and test_quantized.py) or is skipped with the reason: this machine or build lacks the
    instructions, or no such path is built."""
    marker = PATHS[path]
    info = gru_native.build_info()
    if marker is None:
        pytest.skip(f"not built: {path} (this CPU has "
                    f"{', '.join(sorted(_CPU_FLAGS & {'avx512_bf16', 'amx_bf16', 'avx512_fp16'}))or 'none of avx512_bf16, amx_bf16, avx512_fp16'}); "
                    f"the converting path serves these dtypes")
    lowp = info["cpu_lowp_paths"]
    if path.startswith("int8"):
        ran = lowp["int8"] == marker
    elif "vdpbf16ps" in marker:
        ran = lowp["bfloat16"].startswith(marker) and not EMULATED
    else:
        ran = info["cpu_vector_isa"] == marker and not EMULATED
    if not ran:
        pytest.skip(f"not run on this machine: this build's paths are {lowp} "
                    f"(vector ISA {info['cpu_vector_isa']}, -march=native)")
    assert marker in (lowp["int8"] if path.startswith("int8") else lowp["bfloat16"])
