"""Property-based parity with torch.nn.GRU (hypothesis): random sizes, layouts, options and
sequence lengths; output, h_n and every gradient within the dtype's tolerance. 40 examples per
property by default, 600 with --slow."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import gru_native

from _util import assert_close

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@st.composite
def gru_cases(draw):
    case = dict(
        T=draw(st.integers(1, 30)),
        N=draw(st.integers(0, 8)),
        C=draw(st.integers(1, 33)),
        H=draw(st.integers(1, 33)),
        L=draw(st.integers(1, 3)),
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bi=draw(st.booleans()),
        h0=draw(st.booleans()),
        layout=draw(st.sampled_from(["dense", "unbatched", "packed"])),
        dtype=draw(st.sampled_from([torch.float32, torch.float64])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )
    if case["layout"] == "packed":
        case["N"] = max(case["N"], 1)  # a PackedSequence holds at least one sequence
        case["lengths"] = draw(st.lists(st.integers(1, case["T"]), min_size=case["N"],
                                        max_size=case["N"]))
        case["lengths"][draw(st.integers(0, case["N"] - 1))] = case["T"]
        case["sorted"] = draw(st.booleans())
        if case["sorted"]:
            case["lengths"].sort(reverse=True)
    return case


def _run(m, x, h0, packed_args):
    x = x.detach().clone().requires_grad_()
    h0 = None if h0 is None else h0.detach().clone().requires_grad_()
    inp = x if packed_args is None else pack_padded_sequence(x, *packed_args)
    out, h_n = m(inp, h0)
    out_t = out.data if isinstance(out, PackedSequence) else out
    gen = torch.Generator().manual_seed(7)
    g_out = torch.randn(out_t.shape, generator=gen, dtype=out_t.dtype)
    g_h = torch.randn(h_n.shape, generator=gen, dtype=h_n.dtype)
    inputs = [x] + ([h0] if h0 is not None else []) + list(m.parameters())
    grads = torch.autograd.grad([out_t, h_n], inputs, [g_out, g_h], allow_unused=True)
    return out_t, h_n, grads


@hypothesis.given(gru_cases())
def test_parity_property(case):
    torch.manual_seed(case["seed"])
    D = 2 if case["bi"] else 1
    kwargs = dict(num_layers=case["L"], bias=case["bias"], batch_first=case["batch_first"],
                  bidirectional=case["bi"], dtype=case["dtype"])
    ref = nn.GRU(case["C"], case["H"], **kwargs)
    ours = gru_native.GRU(case["C"], case["H"], **kwargs)
    ours.load_state_dict(ref.state_dict())
    T, N, C, H = case["T"], case["N"], case["C"], case["H"]
    packed_args = None
    if case["layout"] == "unbatched":
        shape, h_shape = (T, C), (case["L"] * D, H)
    else:
        shape = (N, T, C) if case["batch_first"] else (T, N, C)
        h_shape = (case["L"] * D, N, H)
        if case["layout"] == "packed":
            packed_args = (case["lengths"], case["batch_first"], case["sorted"])
    gen = torch.Generator().manual_seed(case["seed"] % 1000)
    x = torch.randn(shape, generator=gen, dtype=case["dtype"])
    h0 = torch.randn(h_shape, generator=gen, dtype=case["dtype"]) if case["h0"] else None
    r = _run(ref, x, h0, packed_args)
    o = _run(ours, x, h0, packed_args)
    assert_close(o[0], r[0], "output")
    assert_close(o[1], r[1], "h_n")
    assert len(o[2]) == len(r[2])
    for i, (a, b) in enumerate(zip(o[2], r[2])):
        if b is None:  # e.g. the input of an empty batch
            assert a is None or a.abs().max() == 0
            continue
        assert_close(a, b, f"grad[{i}]")
