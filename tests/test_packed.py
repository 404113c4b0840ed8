"""PackedSequence input: nn.GRU's exact semantics on the fused path (output data, batch_sizes,
indices, h_n in the original order, every gradient)."""

import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import (PackedSequence, pack_padded_sequence, pack_sequence,
                                pad_packed_sequence)

import gru_native
from gru_native._reference import module_reference

from _util import assert_close, assert_meaningful, assert_same_error, devices, make_pair

C, H = 3, 4

LENGTHS = {
    "mixed": [7, 1, 4, 7, 2],          # includes 1 and the maximum twice
    "all-equal": [5, 5, 5],
    "batch1": [6],
    "one-long": [12, 1, 2, 1, 2, 1],   # a single long sequence among short ones
}


def _packed_input(lengths, sort, batch_first, dtype, device, gen):
    lengths = sorted(lengths, reverse=True) if sort else list(lengths)
    T, N = max(lengths), len(lengths)
    x = torch.randn((N, T, C) if batch_first else (T, N, C), generator=gen, dtype=dtype)
    x = x.to(device).requires_grad_()
    return x, lengths


def _run_packed(module, x, lengths, h0, batch_first, enforce_sorted, gen_seed):
    packed = pack_padded_sequence(x, lengths, batch_first=batch_first,
                                  enforce_sorted=enforce_sorted)
    out, h_n = module(packed, h0)
    assert isinstance(out, PackedSequence)
    gen = torch.Generator().manual_seed(gen_seed)
    g_out = torch.randn(out.data.shape, generator=gen, dtype=out.data.dtype).to(out.data.device)
    g_h = torch.randn(h_n.shape, generator=gen, dtype=h_n.dtype).to(h_n.device)
    inputs = [x] + ([h0] if h0 is not None else []) + list(module.parameters())
    grads = torch.autograd.grad([out.data, h_n], inputs, [g_out, g_h])
    return packed, out, h_n, grads


def _check_case(layers, bi, bias, with_h0, batch_first, sort, pattern, dtype, device):
    D = 2 if bi else 1
    gen = torch.Generator().manual_seed(3)
    ref, ours = make_pair(C, H, layers, bias=bias, batch_first=batch_first, bidirectional=bi,
                          dtype=dtype, device=device)
    x, lengths = _packed_input(LENGTHS[pattern], sort, batch_first, dtype, device, gen)
    h0 = None
    if with_h0:
        h0 = torch.randn(layers * D, len(lengths), H, generator=gen, dtype=dtype).to(device)
        h0.requires_grad_()
    results = []
    for m in (ref, ours):
        xi = x.detach().clone().requires_grad_()
        hi = None if h0 is None else h0.detach().clone().requires_grad_()
        results.append(_run_packed(m, xi, lengths, hi, batch_first, enforce_sorted=sort,
                                   gen_seed=11))
    (_, out_r, h_r, g_r), (packed, out_o, h_o, g_o) = results
    assert torch.equal(out_o.batch_sizes, out_r.batch_sizes)
    for name in ("sorted_indices", "unsorted_indices"):
        a, b = getattr(out_o, name), getattr(out_r, name)
        assert (a is None and b is None) or torch.equal(a, b), name
    assert_close(out_o.data, out_r.data, "output.data")
    assert_close(h_o, h_r, "h_n")
    names = ["padded input"] + (["h0"] if with_h0 else []) + [n for n, _ in ours.named_parameters()]
    for name, a, b in zip(names, g_o, g_r):
        assert_meaningful(b, name)
        assert_close(a, b, f"grad {name}")
    # The unpacked output too, and against the float64 reference.
    padded_o, len_o = pad_packed_sequence(out_o, batch_first=batch_first)
    padded_r, len_r = pad_packed_sequence(out_r, batch_first=batch_first)
    assert torch.equal(len_o, len_r)
    assert_close(padded_o, padded_r, "pad_packed_sequence(output)")
    with torch.no_grad():
        out_64, h_64 = module_reference(ours, packed, h0, dtype=torch.float64)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert_close(out_o.data, out_64.data, "output vs float64 reference", dtype, tol, tol)
    assert_close(h_o, h_64, "h_n vs float64 reference", dtype, tol, tol)


GRID_A = list(itertools.product([True, False], list(LENGTHS), [1, 2, 3], [False, True]))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("sort, pattern, layers, bi", GRID_A, ids=[
    f"{'sorted' if s else 'unsorted'}-{p}-L{l}-{'bi' if b else 'uni'}" for s, p, l, b in GRID_A])
def test_packed_parity_lengths_layers(sort, pattern, layers, bi, dtype, device):
    _check_case(layers, bi, bias=True, with_h0=True, batch_first=False, sort=sort,
                pattern=pattern, dtype=dtype, device=device)


GRID_B = list(itertools.product([True, False], [True, False], [False, True], [False, True]))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("bias, with_h0, batch_first, bi", GRID_B, ids=[
    f"{'bias' if b else 'nobias'}-{'h0' if h else 'noh0'}-{'bf' if f else 'tm'}-"
    f"{'bi' if d else 'uni'}" for b, h, f, d in GRID_B])
def test_packed_parity_options(bias, with_h0, batch_first, bi, dtype, device):
    _check_case(2, bi, bias=bias, with_h0=with_h0, batch_first=batch_first, sort=False,
                pattern="mixed", dtype=dtype, device=device)


@pytest.mark.parametrize("device", devices())
def test_packed_gradcheck(device):
    torch.manual_seed(0)
    m = gru_native.GRU(3, 2, num_layers=2, bidirectional=True, dtype=torch.float64,
                       device=device)
    lengths = [4, 1, 3]
    data = torch.randn(sum(lengths), 3, dtype=torch.float64, device=device, requires_grad=True)
    proto = pack_sequence([torch.zeros(n, 3) for n in lengths], enforce_sorted=False)
    h0 = torch.randn(4, 3, 2, dtype=torch.float64, device=device, requires_grad=True)
    names = [n for n, _ in m.named_parameters()]

    def f(data, h0, *weights):
        packed = PackedSequence(data, proto.batch_sizes, proto.sorted_indices.to(device),
                                proto.unsorted_indices.to(device))
        out, h_n = torch.func.functional_call(m, dict(zip(names, weights)), (packed, h0))
        return out.data, h_n

    assert torch.autograd.gradcheck(f, (data, h0) + tuple(m.parameters()))


def test_pack_sequence_and_sequence_state_semantics():
    # h_n of each sequence is its state at its own last step; the reverse direction starts at
    # each sequence's own last element: compare with running every sequence alone.
    ref, ours = make_pair(C, H, 1, bidirectional=True, dtype=torch.float64)
    seqs = [torch.randn(n, C, dtype=torch.float64) for n in (5, 2, 7, 1)]
    out, h_n = ours(pack_sequence(seqs, enforce_sorted=False))
    padded, _ = pad_packed_sequence(out)
    for i, s in enumerate(seqs):
        o_alone, h_alone = ours(s)
        assert_close(padded[:len(s), i], o_alone, f"sequence {i} output")
        assert_close(h_n[:, i], h_alone, f"sequence {i} h_n")


def test_packed_dropout_matches_nn_gru_under_the_same_seed():
    torch.manual_seed(0)
    ref = nn.GRU(C, H, 3, dropout=0.4, bidirectional=True, dtype=torch.float64).train()
    ours = gru_native.GRU(C, H, 3, dropout=0.4, bidirectional=True, dtype=torch.float64).train()
    ours.load_state_dict(ref.state_dict())
    packed = pack_sequence([torch.randn(n, C, dtype=torch.float64) for n in (6, 3, 4)],
                           enforce_sorted=False)
    outs = []
    for m in (ref, ours):
        torch.manual_seed(5)
        outs.append(m(packed))
    assert_close(outs[1][0].data, outs[0][0].data, "output.data")
    assert_close(outs[1][1], outs[0][1], "h_n")


def _packed(lengths=(3, 2), features=C, enforce_sorted=True, dtype=torch.float32):
    seqs = [torch.randn(n, features, dtype=dtype) for n in lengths]
    return pack_sequence(seqs, enforce_sorted=enforce_sorted)


PACKED_ERRORS = {
    "h0-batch": lambda cls: lambda: cls(C, H)(_packed(), torch.randn(1, 3, H)),
    "h0-batch-unsorted": lambda cls: lambda: cls(C, H)(_packed((2, 3), enforce_sorted=False),
                                                       torch.randn(1, 1, H)),
    "h0-layers": lambda cls: lambda: cls(C, H, 2)(_packed(), torch.randn(1, 2, H)),
    "h0-hidden": lambda cls: lambda: cls(C, H)(_packed(), torch.randn(1, 2, H + 1)),
    "h0-2d": lambda cls: lambda: cls(C, H)(_packed(), torch.randn(1, H)),
    "features": lambda cls: lambda: cls(C, H)(_packed(features=C + 1)),
    "dtype": lambda cls: lambda: cls(C, H)(_packed(dtype=torch.float64)),
    "data-3d": lambda cls: lambda: cls(C, H)(PackedSequence(torch.randn(5, 1, C),
                                                            torch.tensor([2, 2, 1]))),
    "h0-double": lambda cls: lambda: cls(C, H)(_packed(), torch.randn(1, 2, H,
                                                                      dtype=torch.float64)),
}


@pytest.mark.parametrize("case", list(PACKED_ERRORS), ids=str)
def test_packed_errors_match_nn_gru(case):
    assert_same_error(PACKED_ERRORS[case])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("bi", [False, True], ids=["uni", "bi"])
def test_packed_parity_at_threaded_sizes(bi, dtype):
    # Large enough for the CPU kernels to split layers over threads.
    ref, ours = make_pair(40, 96, 2, bidirectional=bi, dtype=dtype)
    gen = torch.Generator().manual_seed(2)
    lengths = torch.randint(1, 16, (24,), generator=gen).tolist()
    x = torch.randn(max(lengths), 24, 40, generator=gen, dtype=dtype)
    results = []
    for m in (ref, ours):
        xi = x.clone().requires_grad_()
        out, h = m(pack_padded_sequence(xi, lengths, enforce_sorted=False))
        grads = torch.autograd.grad(out.data.pow(2).sum() + h.sum(), [xi] + list(m.parameters()))
        results.append((out.data, h, grads))
    (o_r, h_r, g_r), (o_o, h_o, g_o) = results
    assert_close(o_o, o_r, "output.data")
    assert_close(h_o, h_r, "h_n")
    for a, b in zip(g_o, g_r):
        assert_close(a, b, "grad")
