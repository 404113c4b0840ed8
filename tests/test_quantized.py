"""gru_native.quantize: QuantizedGRU / QuantizedGRUCell (int8 and bfloat16 weights, float32
activations) against a plain-PyTorch reference of the same arithmetic, every input form of
nn.GRU, conversion from torch.nn, gru_native and torch.ao modules, state_dict, pickling,
torch.compile and torch.export, the inference-only errors, and quantization_error."""

import copy
import io
import pickle
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import gru_native
from gru_native import QuantizedGRU, QuantizedGRUCell, quantization_error, quantize
from _util import cpu_kernels_build, with_threads

DTYPES = [torch.qint8, torch.bfloat16]
DTYPE_IDS = ["int8", "bf16"]
ACT_MAX = 64  # csrc/cpu/qdot.h: activations quantized per row to |q| <= 64


# -- the reference: the quantized arithmetic in plain PyTorch --------------------------------


def _quantize_rows(x):
    """x float32 [M, K] -> (q float64 integers, scale float32 [M]) as csrc/cpu/qdot.h does."""
    amax = x.abs().amax(1)
    inv = torch.full_like(amax, ACT_MAX) / amax
    q = torch.round(x * inv[:, None]).double()
    scale = amax / ACT_MAX
    zero = amax == 0
    return torch.where(zero[:, None], torch.zeros_like(q), q), torch.where(zero, 0.0, scale)


def _project(x, w, scale):
    """x [M, K] float32 times W^T: int8 w [N, K] with scale [N] (the exact integer sums, then
    float32 scaling, as the kernels), or bfloat16 w (in float64)."""
    if w.dtype == torch.bfloat16:
        return (x.double() @ w.double().t()).float()
    q, s = _quantize_rows(x)
    sums = (q @ w.double().t()).float()  # exact integers, rounded to float32 once
    return sums * (s[:, None] * scale[None, :])


def _reference(module, x, h0):
    """QuantizedGRU's math on dense time-major x [T, N, C] with h0 [L*D, N, H] (float32)."""
    T, N, _ = x.shape
    H, L = module.hidden_size, module.num_layers
    D = 2 if module.bidirectional else 1
    layer_in, h_n = x, []
    for layer in range(L):
        outs = []
        for d, sfx in enumerate(["", "_reverse"][:D]):
            get = lambda n: getattr(module, f"{n}_l{layer}{sfx}", None)  # noqa: E731
            scale = lambda n: getattr(module, f"{n}_l{layer}{sfx}_scale", None)  # noqa: E731
            zeros = torch.zeros(3 * H)
            b_ih = get("bias_ih") if module.bias else zeros
            b_hh = get("bias_hh") if module.bias else zeros
            gi = _project(layer_in.reshape(T * N, -1), get("weight_ih"),
                          scale("weight_ih")).view(T, N, 3 * H) + b_ih
            h = h0[layer * D + d]
            out = [None] * T
            for t in (range(T) if d == 0 else reversed(range(T))):
                gh = _project(h, get("weight_hh"), scale("weight_hh")) + b_hh
                r = torch.sigmoid(gi[t, :, :H] + gh[:, :H])
                z = torch.sigmoid(gi[t, :, H:2 * H] + gh[:, H:2 * H])
                n = torch.tanh(gi[t, :, 2 * H:] + r * gh[:, 2 * H:])
                h = (h - n) * z + n
                out[t] = h
            outs.append(torch.stack(out))
            h_n.append(h)
        layer_in = torch.cat(outs, 2)
    return layer_in, torch.stack(h_n)


def _float_gru(C, H, layers=1, bidirectional=False, bias=True, batch_first=False, seed=0):
    torch.manual_seed(seed)
    return gru_native.GRU(C, H, layers, bias=bias, batch_first=batch_first,
                          bidirectional=bidirectional)


# -- the arithmetic ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("T,N,C,H", [(1, 1, 7, 20), (1, 5, 33, 50), (12, 3, 16, 64)],
                         ids=["T1-N1", "T1-N5", "T12-N3"])
def test_one_step_matches_reference(dtype, T, N, C, H):
    # From a given h0 the first step's products are exact sums in both: only the gates' float
    # rounding differs.
    q = QuantizedGRU.from_float(_float_gru(C, H), dtype)
    torch.manual_seed(1)
    x, h0 = torch.randn(1, N, C), torch.randn(1, N, H) * 0.5
    out, hn = q(x, h0)
    ref_out, ref_hn = _reference(q, x, h0)
    torch.testing.assert_close(out, ref_out, atol=2e-6, rtol=2e-6)
    torch.testing.assert_close(hn, ref_hn, atol=2e-6, rtol=2e-6)


def _first_step_matches_reference(q, x, h0):
    """One step of the one-layer int8 GRU q from h0: the reference's exact sums, from the
    panels (eager) and from the rows (dispatched); only the gates' float rounding differs."""
    ref_out, ref_hn = _reference(q, x, h0)
    weights, scales = q._flat()
    for out, hn in (q(x, h0), torch.ops.gru_native.quantized_gru(x, h0, weights, scales, None,
                                                                   True, 1, False)):
        torch.testing.assert_close(out, ref_out, atol=2e-6, rtol=2e-6)
        torch.testing.assert_close(hn, ref_hn, atol=2e-6, rtol=2e-6)


def test_int8_rows_longer_than_a_block():
    # 8200 input features: the int8 sums run over two blocks of k (kQuantBlockK, 8192) added in
    # double, the offset taken off there; still the exact sums of the reference, from panels
    # (eager) and from the rows (dispatched, with a partial last chunk).
    q = quantize(_float_gru(8200, 24))
    torch.manual_seed(1)
    x, h0 = torch.randn(1, 6, 8200), torch.randn(1, 6, 24) * 0.5
    _first_step_matches_reference(q, x, h0)


def test_extreme_values_sum_exactly():
    # The largest products the int8 arithmetic meets (csrc/cpu/qdot.h): activations at +-64
    # levels against weights 127 and -128 (torch.ao's int8 range), pairs of them at the int16
    # limit of AVX2's vpmaddubsw (2 * 255 * 64), summed exactly: the first step equals the
    # reference's exact sums, read from panels (eager) and from the rows (dispatched).
    C, H, N = 64, 16, 4
    q = quantize(_float_gru(C, H))
    gen = torch.Generator().manual_seed(3)
    sign = lambda *shape: torch.where(torch.rand(shape, generator=gen) < 0.5, 1, -1)  # noqa: E731
    with torch.no_grad():
        for name in ("weight_ih_l0", "weight_hh_l0"):
            w = getattr(q, name)
            w.copy_(torch.where(sign(*w.shape) > 0, 127, -128).to(torch.int8))
            getattr(q, name + "_scale").fill_(1 / (128 * w.shape[1]))
    x, h0 = sign(1, N, C).float(), sign(1, N, H).float() * 0.5
    _first_step_matches_reference(q, x, h0)


CONFIGS = [(1, False, True), (2, True, True), (3, False, False), (2, True, False)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layers,bi,bias", CONFIGS, ids=["1L", "2L-bi", "3L-nobias",
                                                          "2L-bi-nobias"])
def test_sequences_match_reference(dtype, layers, bi, bias):
    # Over many steps a rounding of the gates can move an activation across a quantization
    # boundary (one level, 1/64 of its row's largest value): the bound allows a few.
    q = QuantizedGRU.from_float(_float_gru(13, 37, layers, bi, bias), dtype)
    D = 2 if bi else 1
    torch.manual_seed(2)
    x, h0 = torch.randn(15, 4, 13), torch.randn(layers * D, 4, 37) * 0.5
    out, hn = q(x, h0)
    ref_out, ref_hn = _reference(q, x, h0)
    tol = 2e-3 if dtype == torch.qint8 else 1e-5
    torch.testing.assert_close(out, ref_out, atol=tol, rtol=0)
    torch.testing.assert_close(hn, ref_hn, atol=tol, rtol=0)
    assert (out - ref_out).abs().mean() < tol / 20


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_close_to_the_float_model(dtype):
    # The quantized module is the float one within the weights' rounding.
    ref = _float_gru(24, 64, 2, True)
    q = QuantizedGRU.from_float(ref, dtype)
    x = torch.randn(20, 6, 24)
    with torch.no_grad():
        err = (q(x)[0] - ref(x)[0]).abs().max().item()
    assert err < (2e-2 if dtype == torch.qint8 else 1e-2), err


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_input_forms_like_nn_gru(dtype):
    # batch_first, unbatched, no h0, PackedSequence (unsorted): each equals the dense
    # time-major call on the same sequences. Rows are independent (quantized per row, exact
    # sums): the packed and the dense results have the same bits for int8.
    ref = _float_gru(9, 21, 2, True)
    q = QuantizedGRU.from_float(ref, dtype)
    qb = QuantizedGRU.from_float(_float_gru(9, 21, 2, True, batch_first=True), dtype)
    qb.load_state_dict(q.state_dict())
    torch.manual_seed(3)
    x = torch.randn(8, 3, 9)
    h0 = torch.randn(4, 3, 21) * 0.3
    out, hn = q(x, h0)
    out_b, hn_b = qb(x.transpose(0, 1), h0)
    assert torch.equal(out_b.transpose(0, 1), out) and torch.equal(hn_b, hn)
    out_u, hn_u = q(x[:, 1], h0[:, 1])
    torch.testing.assert_close(out_u, out[:, 1], atol=1e-6, rtol=0)
    torch.testing.assert_close(hn_u, hn[:, 1], atol=1e-6, rtol=0)
    out0, _ = q(x)
    torch.testing.assert_close(out0, q(x, torch.zeros_like(h0))[0], atol=0, rtol=0)
    lengths = [5, 8, 2]
    packed_out, packed_hn = q(pack_padded_sequence(x, lengths, enforce_sorted=False), h0)
    padded, _ = pad_packed_sequence(packed_out)
    for b, n in enumerate(lengths):
        alone, alone_hn = q(x[:n, b:b + 1], h0[:, b:b + 1])
        exact = dict(atol=0, rtol=0) if dtype == torch.qint8 else dict(atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(padded[:n, b], alone[:, 0], **exact)
        torch.testing.assert_close(packed_hn[:, b], alone_hn[:, 0], **exact)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_cell_matches_the_one_step_gru(dtype):
    torch.manual_seed(0)
    cell = gru_native.GRUCell(10, 30)
    gru = gru_native.GRU(10, 30)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(gru, name + "_l0").copy_(getattr(cell, name))
    qc, qg = QuantizedGRUCell.from_float(cell, dtype), QuantizedGRU.from_float(gru, dtype)
    x, h = torch.randn(4, 10), torch.randn(4, 30)
    assert torch.equal(qc(x, h), qg(x[None], h[None])[1][0])
    assert torch.equal(qc(x[0], h[0]), qc(x, h)[0])
    assert torch.equal(qc(x), qc(x, torch.zeros(4, 30)))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_bits_do_not_depend_on_threads(dtype):
    q = QuantizedGRU.from_float(_float_gru(64, 96, 2, True), dtype)
    x = torch.randn(50, 9, 64)
    expected, _ = with_threads(1, lambda: q(x))
    for threads in (2, 3):
        got, plans = with_threads(threads, lambda: q(x))
        assert plans["forward"][0] * plans["forward"][1] > 1
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


@pytest.mark.parametrize("C,H,layers,bi,N", [(7, 20, 1, False, 1), (33, 50, 2, True, 5),
                                            (16, 64, 1, False, 9), (40, 200, 2, False, 3)]
                         + [(70, 40, 1, False, n) for n in (2, 4, 7, 11, 12, 13, 25)],
                         ids=["H20", "H50-2L-bi", "H64-N9", "H200-2L"]
                         + [f"H40-N{n}" for n in (2, 4, 7, 11, 12, 13, 25)])
def test_panels_and_rows_give_the_same_bits(C, H, layers, bi, N):
    # Eager calls read the int8 weights in panels (csrc/cpu/qdot.h), traced and dispatched ones
    # read the buffers' rows in place: the same exact sums, the same bits. (H40: panels with
    # padded rows; N and the projection's 6 N rows: every tile height of either form.)
    q = quantize(_float_gru(C, H, layers, bi))
    x = torch.randn(6, N, C)
    weights, scales, panels = q._direct_args()
    assert len(panels) == len(scales) == layers * (2 if bi else 1) * 2
    args = (x, None, weights, scales, None, True, layers, bi)
    with_panels = gru_native._C.quantized_gru(*args, panels)
    rows = gru_native._C.quantized_gru(*args, [])
    dispatched = torch.ops.gru_native.quantized_gru(*args)
    for a, b, c in zip(with_panels, rows, dispatched):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert torch.equal(q(x)[0], with_panels[0])


# The panels' form: broadcast (rows interleaved per 4 k, 16 a panel) where the int8 products run
# on AVX512-VNNI, dot (per 32 k, 8 a panel) elsewhere.
BROADCAST_PANELS = gru_native.build_info()["cpu_lowp_paths"]["int8"] == "AVX512-VNNI vpdpbusd"


@pytest.mark.parametrize("H,K", [(1, 1), (8, 32), (20, 7), (24, 33), (13, 70)])
def test_int8_panels_are_the_documented_layout(H, K):
    # csrc/cpu/qdot.h: per gate, H rows padded with zero rows to a multiple of R (rows a panel)
    # and K with zeros to a multiple of 32, element k of row c at
    # (c // R) * R * Kp + (k // G) * R * G + (c % R) * G + k % G, each byte w XOR 0x80 (w + 128
    # as an unsigned byte; a padding zero is 0x80); R, G = 16, 4 (broadcast form), 8, 32 (dot).
    R, G = (16, 4) if BROADCAST_PANELS else (8, 32)
    w = torch.randint(-128, 128, (3 * H, K), dtype=torch.int8)
    Hp, Kp = -(-H // R) * R, -(-K // 32) * 32
    want = torch.zeros((3, Hp, Kp), dtype=torch.int8)
    want[:, :H, :K] = w.view(3, H, K)
    want = want.view(3, Hp // R, R, Kp // G, G).permute(0, 1, 3, 2, 4).reshape(-1)
    want = want.bitwise_xor(torch.tensor(-128, dtype=torch.int8))
    assert torch.equal(gru_native._C.int8_panels(w), want)
    assert torch.equal(gru_native._C.int8_panels(w.t().contiguous().t()), want)  # any strides
    with pytest.raises(RuntimeError, match="int8 CPU matrix of 3 \\* H rows"):
        gru_native._C.int8_panels(w[1:])
    with pytest.raises(RuntimeError, match="int8 CPU matrix"):
        gru_native._C.int8_panels(w.float())


def test_panels_follow_the_weight_buffers():
    q = quantize(_float_gru(9, 24))
    x = torch.randn(3, 2, 9)

    def from_the_buffers():  # the rows as stored now, no panels
        weights, scales = q._flat()
        return torch.ops.gru_native.quantized_gru(x, None, weights, scales, None, True, 1,
                                                  False)[0]

    before = q(x)[0]
    with torch.no_grad():
        q.weight_hh_l0.neg_()  # in place: its version counter moves
    after = q(x)[0]
    assert not torch.equal(after, before) and torch.equal(after, from_the_buffers())
    q.weight_ih_l0 = q.weight_ih_l0.flip(0).contiguous()  # another tensor
    assert torch.equal(q(x)[0], from_the_buffers())
    q.load_state_dict(quantize(_float_gru(9, 24, seed=1)).state_dict())
    assert torch.equal(q(x)[0], from_the_buffers())
    q.weight_hh_l0.data.copy_(q.weight_hh_l0.flip(1))  # bypasses the version counter
    q.repack()
    assert torch.equal(q(x)[0], from_the_buffers())


def _python_path(module, *args, monkeypatch):
    """The module's call with its direct C++ entries declined (None): the Python path."""
    with monkeypatch.context() as m:
        m.setattr(gru_native._C, "quantized_cell_direct", lambda *a: None)
        m.setattr(gru_native._C, "quantized_gru_direct", lambda *a: None)
        return module(*args)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_direct_entries_match_the_python_path(dtype, monkeypatch):
    # Plain eager calls go through _C.quantized_cell_direct / _C.quantized_gru_direct: the same
    # results (views of the same shapes) as the Python path, for every form they take.
    calls = []
    for name in ("quantized_cell_direct", "quantized_gru_direct"):
        entry = getattr(gru_native._C, name)
        monkeypatch.setattr(gru_native._C, name,
                            lambda *a, _entry=entry, _name=name: calls.append(_name) or _entry(*a))
    cell = quantize(nn.GRUCell(7, 20), dtype)
    x, h = torch.randn(5, 7), torch.randn(5, 20)
    for args in [(x, h), (x,), (x[0], h[0]), (x[0],), (x.t().contiguous().t(), h[:, ::1]),
                 (x[::2], h[::2])]:
        got, want = cell(*args), _python_path(cell, *args, monkeypatch=monkeypatch)
        assert torch.equal(got, want) and got.shape == want.shape
    assert calls.count("quantized_cell_direct") == 6
    for bf, layers, bi in [(False, 1, False), (True, 2, True), (False, 2, False)]:
        q = quantize(_float_gru(6, 12, layers, bi, batch_first=bf), dtype)
        x = torch.randn(4, 3, 6)  # [T, N, C]
        h0 = torch.randn(layers * (2 if bi else 1), 3, 12)
        forms = [x, x[:1], x.transpose(0, 1).contiguous().transpose(0, 1)]
        if bf:
            forms = [f.transpose(0, 1) for f in forms]
        for args in [(forms[0],), (forms[0], h0), (forms[1], h0), (forms[2],)]:
            got, want = q(*args), _python_path(q, *args, monkeypatch=monkeypatch)
            for a, b in zip(got, want):
                assert torch.equal(a, b) and a.shape == b.shape and a.stride() == b.stride()
    assert calls.count("quantized_gru_direct") == 12


def test_overridden_checks_are_called(monkeypatch):
    # A subclass's (or an instance's) check_input / check_forward_args / _run are what the
    # Python path calls; the direct entries do the class's own checks in C++, so a module with
    # replacements takes the Python path and its replacements run.
    monkeypatch.setattr(gru_native._C, "quantized_gru_direct", lambda *a: pytest.fail("direct"))
    monkeypatch.setattr(gru_native._C, "quantized_cell_direct", lambda *a: pytest.fail("direct"))
    seen = []

    class Checked(QuantizedGRU):
        def check_input(self, input, batch_sizes):
            seen.append("check_input")
            super().check_input(input, batch_sizes)

    q = Checked.from_float(_float_gru(6, 12)).eval()
    x = torch.randn(4, 3, 6)
    assert torch.equal(q(x)[0], _python_path(quantize(_float_gru(6, 12)), x,
                                             monkeypatch=monkeypatch)[0])
    assert seen == ["check_input"]
    plain = quantize(_float_gru(6, 12))
    plain.check_forward_args = lambda *a: seen.append("instance")
    plain(x, torch.zeros(1, 3, 12))  # with h_0: check_forward_args
    assert seen == ["check_input", "instance"]

    class Cell(QuantizedGRUCell):
        def _run(self, input, hx):
            seen.append("_run")
            return super()._run(input, hx)

    Cell.from_float(nn.GRUCell(6, 12)).eval()(torch.randn(2, 6))
    assert seen[-1] == "_run"


def test_direct_entries_follow_every_buffer():
    # The direct entries' arguments are kept between calls: a replaced bias or scale, a weight
    # written in place, load_state_dict, .to() and repack() are all seen.
    cell = quantize(nn.GRUCell(5, 16))
    x, h = torch.randn(3, 5), torch.randn(3, 16)

    def from_the_buffers():
        weights, scales = cell._flat()
        return torch.ops.gru_native.quantized_gru(x[None], h[None], weights, scales, None, True,
                                                  1, False)[1][0]

    assert torch.equal(cell(x, h), from_the_buffers())
    cell.bias_hh = cell.bias_hh + 1
    assert torch.equal(cell(x, h), from_the_buffers())
    cell.weight_hh_scale = cell.weight_hh_scale * 2
    assert torch.equal(cell(x, h), from_the_buffers())
    with torch.no_grad():
        cell.weight_ih.neg_()
    assert torch.equal(cell(x, h), from_the_buffers())
    cell.load_state_dict(quantize(nn.GRUCell(5, 16)).state_dict())
    assert torch.equal(cell(x, h), from_the_buffers())
    cell.to(torch.float32)  # buffers replaced by .to(): the same values
    assert torch.equal(cell(x, h), from_the_buffers())
    cell.weight_hh.data.copy_(cell.weight_hh.flip(1))  # bypasses the version counter
    cell.repack()
    assert torch.equal(cell(x, h), from_the_buffers())
    assert torch.equal(pickle.loads(pickle.dumps(cell))(x, h), cell(x, h))


@pytest.mark.skipif(not cpu_kernels_build(),
                    reason="the CUDA emulation's build runs the float module's CPU tensors on the "
                           "CUDA backend, whose sums are not the CPU kernels' dot products")
@pytest.mark.parametrize("C,H", [(24, 40), (4, 8)], ids=["24x40", "tiny"])
@pytest.mark.parametrize("N", [1, 2, 3, 4, 5, 8, 9, 15, 16, 32, 33, 64, 80])
def test_bf16_weights_give_the_float_modules_bits(N, C, H):
    # bfloat16 weights are converted to float exactly, and the bfloat16-weight modules take the
    # float backend's route for each product: up to 64 rows W's rows in place (dot products
    # below 16 rows or for a small product, the packed GEMM's sums from 16; W converted as
    # loaded, or a block of it once for 4 rows or more), beyond the GEMM on W converted whole.
    # So: the float32 module on the rounded weights, bit for bit.
    torch.manual_seed(N)
    cell = nn.GRUCell(C, H)
    with torch.no_grad():
        for p in cell.parameters():
            p.copy_(p.bfloat16().float())
    q = quantize(copy.deepcopy(cell), torch.bfloat16)
    ours = gru_native.GRUCell(C, H)
    ours.load_state_dict(cell.state_dict())
    x, h = torch.randn(N, C), torch.randn(N, H)
    with torch.no_grad():
        assert torch.equal(q(x, h), ours(x, h))


def test_nan_reaches_its_row_only():
    q = quantize(_float_gru(6, 20))
    x = torch.randn(3, 4, 6)
    x[1, 2, 3] = float("nan")
    out, _ = q(x)
    assert torch.isnan(out[1:, 2]).all() and not torch.isnan(out[:, [0, 1, 3]]).any()
    assert not torch.isnan(out[0]).any()


# -- conversion ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_quantize_replaces_every_gru_in_place(dtype):
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.GRU(5, 8, 2, bidirectional=True)
            self.dec = gru_native.GRUCell(16, 8)
            self.cells = nn.ModuleList([nn.GRUCell(8, 8)])
            self.head = nn.Linear(8, 3)

    model = Model()
    head = model.head
    assert quantize(model, dtype) is model
    assert type(model.enc) is QuantizedGRU and type(model.dec) is QuantizedGRUCell
    assert type(model.cells[0]) is QuantizedGRUCell and model.head is head
    assert model.enc.weight_ih_l1_reverse.dtype == (torch.int8 if dtype == torch.qint8
                                                     else torch.bfloat16)
    assert type(quantize(nn.GRU(3, 4), dtype)) is QuantizedGRU
    with pytest.raises(ValueError, match="torch.qint8 or torch.bfloat16"):
        quantize(nn.GRU(3, 4), torch.float16)


def test_int8_weights_per_output_channel():
    ref = _float_gru(6, 10)
    q = quantize(copy.deepcopy(ref))
    w = ref.weight_hh_l0.detach()
    scale = q.weight_hh_l0_scale
    torch.testing.assert_close(scale, w.abs().amax(1) / 127)
    assert q.weight_hh_l0.abs().amax(1).eq(127).all()
    err = (q.weight_hh_l0.float() * scale[:, None] - w).abs()
    assert (err <= scale[:, None] / 2 + 1e-7).all()


def _torch_ao_quantize(model, per_channel):
    """torch.ao's dynamic int8 quantization of the GRUs (weights per tensor or per output
    channel), or a skip where this torch has none."""
    ao = getattr(getattr(torch, "ao", None), "quantization", None)
    if ao is None or not hasattr(ao, "quantize_dynamic"):
        pytest.skip("this torch has no torch.ao.quantization.quantize_dynamic")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qconfig = ao.per_channel_dynamic_qconfig if per_channel else ao.default_dynamic_qconfig
        return ao.quantize_dynamic(model, {nn.GRU: qconfig, nn.GRUCell: qconfig})


def _ao_float_weights(module):
    return {k: (v.dequantize() if v.is_quantized else v)
            for k, v in {**module.get_weight(), **module.get_bias()}.items()}


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
def test_from_torch_ao_keeps_its_int8_values(per_channel):
    torch.manual_seed(0)
    model = nn.Sequential(nn.GRU(6, 12, 2, bidirectional=True), nn.GRUCell(6, 12))
    ao = _torch_ao_quantize(model, per_channel)
    ours = quantize(copy.deepcopy(ao))
    assert [type(m) for m in ours] == [QuantizedGRU, QuantizedGRUCell]
    for ao_mod, our_mod in zip(ao, ours):
        for name, w in _ao_float_weights(ao_mod).items():
            if name.startswith("weight"):
                scale = getattr(our_mod, name + "_scale")[:, None]
                torch.testing.assert_close(getattr(our_mod, name).float() * scale, w, atol=0,
                                           rtol=0)
            else:
                assert torch.equal(getattr(our_mod, name), w)


# -- the module's contract ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_state_dict_and_pickle(dtype):
    q = quantize(_float_gru(7, 12, 2, True), dtype)
    x = torch.randn(4, 2, 7)
    expected = q(x)
    fresh = QuantizedGRU(7, 12, 2, bidirectional=True, dtype=dtype)
    fresh.load_state_dict(q.state_dict())
    assert torch.equal(fresh(x)[0], expected[0])
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf))
    assert torch.equal(fresh(x)[1], expected[1])
    for clone in (pickle.loads(pickle.dumps(q)), copy.deepcopy(q)):
        assert torch.equal(clone(x)[0], expected[0])
    with pytest.raises(RuntimeError, match="load a float state_dict into the float module"):
        fresh.load_state_dict(_float_gru(7, 12, 2, True).state_dict())


def test_training_raises_naming_the_float_module():
    q = quantize(_float_gru(3, 4))
    x = torch.randn(2, 1, 3)
    q.train()
    with pytest.raises(RuntimeError, match=r"train the float32 gru_native\.GRU"):
        q(x)
    q.eval()
    with pytest.raises(RuntimeError, match="inference"):
        q(x.requires_grad_())
    with torch.no_grad():
        q(x)
    cell = quantize(nn.GRUCell(3, 4))
    with pytest.raises(RuntimeError, match=r"gru_native\.GRUCell"):
        cell.train()(torch.randn(3))


def test_bad_input_raises_nn_grus_errors():
    q = quantize(_float_gru(3, 4))
    ref = nn.GRU(3, 4)
    for args in [(torch.randn(2, 1, 5),), (torch.randn(2, 3, 1, 3),),
                 (torch.randn(2, 1, 3), torch.randn(1, 2, 4)),
                 (torch.randn(2, 1, 3), torch.randn(1, 4))]:
        with pytest.raises(Exception) as theirs:
            ref(*args)
        with pytest.raises(theirs.type) as ours:
            q(*args)
        assert str(ours.value) == str(theirs.value)
    cell, ref_cell = quantize(nn.GRUCell(3, 4)), nn.GRUCell(3, 4)
    for args in [(torch.randn(2, 5),), (torch.randn(2, 3), torch.randn(3, 4)),
                 (torch.randn(2, 3), torch.randn(2, 5))]:
        with pytest.raises(Exception) as theirs:
            ref_cell(*args)
        with pytest.raises(theirs.type) as ours:
            cell(*args)
        assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_torch_compile_fullgraph(dtype):
    q = quantize(_float_gru(5, 16, 2, True), dtype)
    cell = quantize(nn.GRUCell(5, 16), dtype)
    x = torch.randn(6, 3, 5)
    compiled = torch.compile(q, fullgraph=True)
    out, hn = compiled(x)
    assert torch.equal(out, q(x)[0]) and torch.equal(hn, q(x)[1])
    compiled_cell = torch.compile(cell, fullgraph=True)
    assert torch.equal(compiled_cell(x[0]), cell(x[0]))


def test_torch_export_one_node():
    q = quantize(_float_gru(5, 16, 2, True))
    x = torch.randn(6, 3, 5)
    exported = torch.export.export(q, (x,))
    targets = [n.target for n in exported.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.gru_native.quantized_gru.default) == 1
    assert torch.equal(exported.module()(x)[0], q(x)[0])


def test_opcheck():
    q = quantize(_float_gru(5, 16, 2, True))
    weights, scales = q._flat()
    x = torch.randn(4, 2, 5)
    torch.library.opcheck(torch.ops.gru_native.quantized_gru.default,
                          (x, None, weights, scales, None, True, 2, True),
                          test_utils=("test_schema", "test_faketensor"))


def test_quantization_error_reports_against_the_reference():
    ref = _float_gru(8, 32)
    q = quantize(copy.deepcopy(ref))
    data = [torch.randn(10, 4, 8) for _ in range(3)]
    report = quantization_error(q, ref, data)
    assert 0 < report["mean_abs"] <= report["max_abs"] < 0.05
    assert report["rel_rms"] == pytest.approx(report["rms"] / report["ref_rms"])
    same = quantization_error(ref, ref, data[0])
    assert same["max_abs"] == 0
