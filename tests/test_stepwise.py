"""Step-wise calls (GRUCell, T=1, short sequences) on the CPU kernels: both ways of reading W_hh
(packed copy, or nn.GRU's layout in place) against nn.GRU, the backward's two forms bit for bit,
and every route by which a weight can change between two calls."""

import pytest
import torch
from torch import nn

import gru_native
from _util import assert_close, with_threads

EMULATED = gru_native.build_info()["cuda_emulation"]
needs_cpu_kernels = pytest.mark.skipif(
    EMULATED, reason="the CUDA emulation's build runs CPU tensors on the CUDA backend")

FORMS = ("packed", "direct")
# (T, N, H): a GRUCell-sized step, few steps, a batch on each side of the direct forward's
# rule (T * N <= 96), hidden sizes with and without a partial vector or panel.
SHAPES = [(1, 1, 64), (1, 3, 37), (2, 8, 50), (4, 1, 130), (3, 40, 33), (16, 7, 20)]


def _pair(C, H, dtype, layers=1, bidirectional=False):
    torch.manual_seed(0)
    ref = nn.GRU(C, H, layers, bidirectional=bidirectional, dtype=dtype)
    ours = gru_native.GRU(C, H, layers, bidirectional=bidirectional, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _run(module, x, h0):
    x = x.detach().clone().requires_grad_()
    h0 = h0.detach().clone().requires_grad_()
    out, hn = module(x, h0)
    (out.square().sum() + 2 * hn.sum()).backward()
    grads = [x.grad, h0.grad] + [p.grad for p in module.parameters()]
    return [out, hn] + grads


@needs_cpu_kernels
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("T,N,H", SHAPES, ids=[f"T{t}-N{n}-H{h}" for t, n, h in SHAPES])
def test_forms_match_nn_gru(monkeypatch, form, dtype, T, N, H):
    monkeypatch.setenv("GRU_NATIVE_CPU_RECURRENCE", form)
    for bidirectional in (False, True):
        D = 2 if bidirectional else 1
        ref, ours = _pair(11, H, dtype, layers=2, bidirectional=bidirectional)
        x = torch.randn(T, N, 11, dtype=dtype)
        h0 = torch.randn(2 * D, N, H, dtype=dtype)
        names = ["output", "h_n", "d input", "d h0"] + [n for n, _ in ours.named_parameters()]
        for name, a, e in zip(names, _run(ours, x, h0), _run(ref, x, h0)):
            assert_close(a, e, f"{form} {name}")


@needs_cpu_kernels
@pytest.mark.parametrize("T,N,H", SHAPES, ids=[f"T{t}-N{n}-H{h}" for t, n, h in SHAPES])
def test_backward_forms_same_bits(monkeypatch, T, N, H):
    """The backward reads W_hh packed or in place with the same arithmetic: the same bits. (The
    forward's direct dot products sum in another order, so the forward is run packed in both.)"""
    ref, ours = _pair(9, H, torch.float32)
    x = torch.randn(T, N, 9)
    h0 = torch.randn(1, N, H)
    monkeypatch.setenv("GRU_NATIVE_CPU_RECURRENCE", "packed")
    out, hn = ours(x, h0)
    grad_out, grad_hn = torch.randn_like(out), torch.randn_like(hn)
    results = []
    for form in FORMS:
        monkeypatch.setenv("GRU_NATIVE_CPU_RECURRENCE", "packed")
        xr, hr = x.clone().requires_grad_(), h0.clone().requires_grad_()
        out, hn = ours(xr, hr)
        monkeypatch.setenv("GRU_NATIVE_CPU_RECURRENCE", form)
        grads = torch.autograd.grad((out, hn), [xr, hr, *ours.parameters()],
                                    (grad_out, grad_hn))
        results.append(grads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@needs_cpu_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("T,N,H", [(1, 16, 20), (2, 21, 100), (1, 64, 300), (3, 40, 7)],
                         ids=lambda v: str(v))
def test_forward_forms_same_bits_from_16_rows(monkeypatch, dtype, T, N, H):
    """From 16 rows a step the forward's direct form reads W_hh's rows in place with the packed
    form's sums (wrows_gemm.h): outputs and h_n bit for bit those of the packed form, at 1 and 3
    threads (below 16 rows its dot products sum in another order)."""
    torch.manual_seed(0)
    _, ours = _pair(11, H, dtype, layers=2, bidirectional=True)
    x = torch.randn(T, N, 11, dtype=dtype)
    h0 = torch.randn(4, N, H, dtype=dtype)
    results = []
    for form, threads in [("packed", 1), ("direct", 1), ("direct", 3)]:
        monkeypatch.setenv("GRU_NATIVE_CPU_RECURRENCE", form)
        with torch.no_grad():
            results.append(with_threads(threads, lambda: ours(x, h0))[0])
    for got in results[1:]:
        assert torch.equal(got[0], results[0][0]) and torch.equal(got[1], results[0][1])


@needs_cpu_kernels
def test_unknown_form_raises(monkeypatch):
    monkeypatch.setenv("GRU_NATIVE_CPU_RECURRENCE", "fast")
    with pytest.raises(RuntimeError, match="GRU_NATIVE_CPU_RECURRENCE must be auto, packed or "
                                           "direct, got 'fast'"):
        gru_native.GRU(3, 4)(torch.randn(2, 1, 3))


@needs_cpu_kernels
@pytest.mark.parametrize("threads", [2, 3])
def test_cell_results_do_not_depend_on_threads(threads):
    # One step, split over the threads by hidden units (asserted), bitwise the serial result.
    torch.manual_seed(0)
    cell = gru_native.GRUCell(70, 300)
    x, h = torch.randn(2, 70), torch.randn(2, 300)
    expected, plan1 = with_threads(1, lambda: cell(x, h))
    got, plan = with_threads(threads, lambda: cell(x, h))
    assert plan1["forward"] == (1, 1)
    assert plan["forward"] == (1, threads)
    assert torch.equal(got, expected)


# The products that read the weights in place: the dot products (csrc/cpu/dot_gemm.h), in blocks
# of K (1024), of rows of W (6) and tiles of rows of A (2 or 4, or one), and the recurrence's
# turned-around microkernel from 16 rows (wrows_gemm.h), in tiles of 6 rows of W and 16 of A:
# each output's sum must not depend on them. (T, N, C, H, parts): both products in place over
# blocks of K, 32 rows and 16 (the projection's 2100 = 8 blocks and a partial one); the same
# with 15 rows and single rows, where both are dot products (three blocks of K with a partial
# vector); the recurrence in place over five blocks of K, 70 rows and 35, W_hh's rows not a
# multiple of 6.
# The batch run whole and in `parts` parts gives the same bits, at 1 and 3 threads.
DOT_SHAPES = [(1, 32, 2100, 40, 2), (1, 15, 2100, 40, 15), (2, 70, 20, 1030, 2)]


@needs_cpu_kernels
@pytest.mark.parametrize("T,N,C,H,parts", DOT_SHAPES,
                         ids=[f"T{t}-N{n}-C{c}-H{h}" for t, n, c, h, _ in DOT_SHAPES])
def test_dot_products_do_not_depend_on_blocks_rows_or_threads(T, N, C, H, parts):
    torch.manual_seed(0)
    ref = nn.GRU(C, H, dtype=torch.float64)
    ours = gru_native.GRU(C, H)
    ours.load_state_dict(ref.state_dict())
    x, h0 = torch.randn(T, N, C), torch.randn(1, N, H)
    with torch.no_grad():
        out, hn = ours(x, h0)
        ref_out, ref_hn = ref(x.double(), h0.double())
        assert_close(out, ref_out, "output")
        assert_close(hn, ref_hn, "h_n")
        step = N // parts
        pieces = [ours(x[:, b:b + step], h0[:, b:b + step])[0] for b in range(0, N, step)]
        assert torch.equal(torch.cat(pieces, dim=1), out)
        threaded, _ = with_threads(3, lambda: ours(x, h0))
        assert torch.equal(threaded[0], out)
        assert torch.equal(threaded[1], hn)


# -- A weight changed between two calls, by every route a program uses -------------------------

def _change_by(route, module):
    """Changes module's weights by route; returns the module to call next (the same or a
    converted one)."""
    params = dict(module.named_parameters())
    if route == "optimizer":
        opt = torch.optim.SGD(module.parameters(), lr=0.5)
        for p in module.parameters():
            p.grad = torch.randn_like(p)
        opt.step()
    elif route == "data_add":  # no version-counter bump (the word-LM example trains so)
        for p in module.parameters():
            p.data.add_(torch.randn_like(p), alpha=-0.3)
    elif route == "load_state_dict":
        state = module.state_dict()
        module.load_state_dict({k: torch.randn_like(v) * 0.2 for k, v in state.items()})
    elif route == "no_grad_copy":
        with torch.no_grad():
            for p in module.parameters():
                p.copy_(torch.randn_like(p) * 0.2)
    elif route == "reassign":
        for name, p in params.items():
            setattr(module, name, nn.Parameter(torch.randn_like(p) * 0.2))
    elif route == "to_double":
        module = module.to(torch.float64)
    else:
        raise AssertionError(route)
    return module


ROUTES = ["optimizer", "data_add", "load_state_dict", "no_grad_copy", "reassign", "to_double"]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("kind", ["cell", "gru-T1", "gru-T3"])
def test_weight_change_is_seen(route, kind):
    torch.manual_seed(1)
    if kind == "cell":
        ours = gru_native.GRUCell(6, 40)
    else:
        ours = gru_native.GRU(6, 40, num_layers=2)
    T = 3 if kind == "gru-T3" else 1

    def call(module):
        dtype = next(module.parameters()).dtype
        x = torch.randn(T, 2, 6, generator=torch.Generator().manual_seed(2)).to(dtype)
        if kind == "cell":
            return module(x[0], torch.ones(2, 40, dtype=dtype))
        return module(x)[0]

    def oracle(module):
        ref = (nn.GRUCell(6, 40) if kind == "cell" else nn.GRU(6, 40, num_layers=2))
        ref = ref.to(next(module.parameters()).dtype)
        ref.load_state_dict(module.state_dict())
        return call(ref)

    with torch.no_grad():
        before = call(ours)  # first call (inference)
    call(ours).sum().backward()  # and a training call
    changed = _change_by(route, ours)
    with torch.no_grad():
        after = call(changed)
    if route == "to_double":  # the same values, in another dtype and storage
        assert after.dtype == torch.float64
    else:
        assert not torch.allclose(after, before)
    assert_close(after, oracle(changed), route)
    after_train = call(changed)
    assert_close(after_train, oracle(changed), route)


def test_empty_cache_between_steps():
    torch.manual_seed(0)
    cell = gru_native.GRUCell(5, 16)
    ref = nn.GRUCell(5, 16)
    ref.load_state_dict(cell.state_dict())
    x, h = torch.randn(3, 5), torch.randn(3, 16)
    expected = ref(x, h)
    for _ in range(3):
        assert_close(cell(x, h), expected)
        gru_native.empty_cache()


def test_generation_loop_matches_nn_gru():
    """A decoding loop (hidden carried, one token per call) gives nn.GRU's tokens and states."""
    torch.manual_seed(0)
    emb, dec = nn.Embedding(50, 16), nn.Linear(24, 50)
    ref = nn.GRU(16, 24, num_layers=2)
    ours = gru_native.GRU(16, 24, num_layers=2)
    ours.load_state_dict(ref.state_dict())
    tokens = {}
    for name, rnn in (("ref", ref), ("ours", ours)):
        gen = torch.Generator().manual_seed(3)
        tok, hidden, seq = torch.tensor([[1]]), None, []
        with torch.no_grad():
            for _ in range(20):
                out, hidden = rnn(emb(tok), hidden)
                probs = dec(out[-1]).softmax(-1)
                tok = torch.multinomial(probs, 1, generator=gen)
                seq.append(int(tok))
        tokens[name] = (seq, hidden)
    assert tokens["ours"][0] == tokens["ref"][0]
    assert_close(tokens["ours"][1], tokens["ref"][1])


def test_cell_with_a_parametrized_weight_matches_nn_grucell():
    """GRUCell reads its parameters from _parameters where they are there; a parametrized weight
    (no longer there) goes through the attribute, as in nn.GRUCell."""
    from torch.nn.utils import parametrize

    class Scale(nn.Module):
        def forward(self, w):
            return 0.5 * w

    torch.manual_seed(0)
    ref, ours = nn.GRUCell(7, 12), gru_native.GRUCell(7, 12)
    ours.load_state_dict(ref.state_dict())
    for m in (ref, ours):
        parametrize.register_parametrization(m, "weight_hh", Scale())
    x, h = torch.randn(3, 7), torch.randn(3, 12)
    assert_close(ours(x, h), ref(x, h))
    ours(x, h).sum().backward()
    ref(x, h).sum().backward()
    assert_close(ours.parametrizations.weight_hh.original.grad,
                 ref.parametrizations.weight_hh.original.grad)


@pytest.mark.parametrize("bias", [True, False])
def test_cell_fast_path_errors_are_nn_grucells(bias):
    torch.manual_seed(0)
    ref, ours = nn.GRUCell(4, 6, bias=bias), gru_native.GRUCell(4, 6, bias=bias)
    cases = [(torch.randn(2, 5), torch.randn(2, 6)),            # wrong input size
             (torch.randn(2, 4), torch.randn(3, 6)),            # batch mismatch
             (torch.randn(2, 4), torch.randn(2, 6).double())]   # hx dtype
    for x, h in cases:
        with pytest.raises(Exception) as expected:
            ref(x, h)
        with pytest.raises(type(expected.value)) as got:
            ours(x, h)
        assert str(got.value) == str(expected.value)
