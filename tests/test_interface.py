"""gru_native.GRU is nn.GRU to its users: constructor, parameters, init, state_dict, repr,
pickling, dtype moves, weight re-assignment, functional_call."""

import copy
import io
import pickle
import warnings

import pytest
import torch
from torch import nn

import gru_native

from _util import assert_close, make_pair

CONFIGS = [
    dict(input_size=4, hidden_size=3),
    dict(input_size=4, hidden_size=3, num_layers=2, bias=False, batch_first=True,
         bidirectional=True),
    dict(input_size=2, hidden_size=5, num_layers=3, dropout=0.25),
    dict(input_size=1, hidden_size=1, bidirectional=True),
]


def _cid(cfg):
    return ",".join(f"{k}={v}" for k, v in cfg.items())


@pytest.mark.parametrize("cfg", CONFIGS, ids=_cid)
def test_same_parameters_names_shapes_order_and_init(cfg):
    torch.manual_seed(123)
    ref = nn.GRU(**cfg)
    torch.manual_seed(123)
    ours = gru_native.GRU(**cfg)
    assert repr(ours) == repr(ref)
    assert ours._flat_weights_names == ref._flat_weights_names
    assert ours._all_weights == ref._all_weights
    ref_params = list(ref.named_parameters())
    our_params = list(ours.named_parameters())
    assert [n for n, _ in our_params] == [n for n, _ in ref_params]
    for (name, p), (_, q) in zip(our_params, ref_params):
        assert p.shape == q.shape, name
        # Same RNG draws in the same order: the same initial values, bitwise.
        assert torch.equal(p, q), name
        bound = 1 / cfg["hidden_size"] ** 0.5
        assert p.abs().max() <= bound
    assert list(ours.buffers()) == []
    for attr in ("mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first",
                 "dropout", "bidirectional", "proj_size"):
        assert getattr(ours, attr) == getattr(ref, attr), attr
    assert ours.__constants__ == ref.__constants__
    assert [len(ws) for ws in ours.all_weights] == [len(ns) for ns in ref._all_weights]
    assert all(p is getattr(ours, n) for ps, names in zip(ours.all_weights, ours._all_weights)
               for p, n in zip(ps, names))
    assert all(p is q for p, q in zip(ours._flat_weights, [getattr(ours, n) for n in
                                                             ours._flat_weights_names]))


def test_positional_and_keyword_arguments():
    ours = gru_native.GRU(4, 3, 2, False, True, 0.5, True, device="cpu", dtype=torch.float64)
    ref = nn.GRU(4, 3, 2, False, True, 0.5, True, device="cpu", dtype=torch.float64)
    assert repr(ours) == repr(ref)
    assert ours.weight_ih_l0.dtype == torch.float64


def test_not_an_nn_gru():
    # Dynamo graph-breaks on isinstance(m, nn.GRU); gru_native.GRU must not be one.
    m = gru_native.GRU(4, 3)
    assert not isinstance(m, nn.GRU)
    assert isinstance(m, nn.RNNBase) and isinstance(m, nn.Module)


def test_flatten_parameters_exists_and_keeps_parameters():
    m = gru_native.GRU(4, 3, 2)
    before = [p.data_ptr() for p in m.parameters()]
    m.flatten_parameters()
    assert [p.data_ptr() for p in m.parameters()] == before


@pytest.mark.parametrize("direction", ["nn_to_ours", "ours_to_nn"])
def test_state_dict_round_trip(direction):
    cfg = dict(input_size=4, hidden_size=3, num_layers=2, bidirectional=True)
    torch.manual_seed(0)
    ref = nn.GRU(**cfg)
    torch.manual_seed(1)
    ours = gru_native.GRU(**cfg)
    src, dst = (ref, ours) if direction == "nn_to_ours" else (ours, ref)
    result = dst.load_state_dict(src.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    assert list(src.state_dict().keys()) == list(dst.state_dict().keys())
    x = torch.randn(5, 2, 4)
    for a, b in zip(ref(x), ours(x)):
        assert_close(b, a, "after load_state_dict")


def test_state_dict_strict_mismatch_raises_like_nn_gru():
    ours = gru_native.GRU(4, 3, 2)
    ref = nn.GRU(4, 3, 1)
    with pytest.raises(RuntimeError, match="Missing key"):
        ours.load_state_dict(ref.state_dict())


@pytest.mark.parametrize("how", ["pickle", "torch.save", "deepcopy"])
def test_pickle_and_deepcopy(how):
    m = gru_native.GRU(4, 3, 2, bidirectional=True)
    if how == "pickle":
        m2 = pickle.loads(pickle.dumps(m))
    elif how == "torch.save":
        buf = io.BytesIO()
        torch.save(m, buf)
        buf.seek(0)
        m2 = torch.load(buf, weights_only=False)
    else:
        m2 = copy.deepcopy(m)
    assert type(m2) is gru_native.GRU
    x = torch.randn(5, 2, 4)
    for a, b in zip(m(x), m2(x)):
        assert torch.equal(a, b)
    # The copy owns its parameters and its flat-weight list follows them.
    with torch.no_grad():
        m2.weight_hh_l0.add_(1)
    assert not torch.equal(m(x)[0], m2(x)[0])


@pytest.mark.parametrize("move", ["double", "to_float64", "half_then_double"])
def test_dtype_moves(move):
    ref, ours = make_pair(4, 3, 2, bidirectional=True)
    for m in (ref, ours):
        if move == "double":
            m.double()
        elif move == "to_float64":
            m.to(torch.float64)
        else:
            m.half().double()
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    out_r, h_r = ref(x)
    out_o, h_o = ours(x)
    assert out_o.dtype == torch.float64
    assert all(w.dtype == torch.float64 for w in ours._flat_weights)
    assert_close(out_o, out_r, "output")
    assert_close(h_o, h_r, "h_n")


def test_weight_reassignment_is_used():
    ref, ours = make_pair(4, 3, 1)
    w = torch.randn(9, 3)
    ref.weight_hh_l0 = nn.Parameter(w.clone())
    ours.weight_hh_l0 = nn.Parameter(w.clone())
    assert ours._flat_weights[1] is ours.weight_hh_l0
    x = torch.randn(5, 2, 4)
    assert_close(ours(x)[0], ref(x)[0], "output after re-assignment")


def test_weight_tying_shared_parameter():
    ref, ours = make_pair(3, 3, 2)
    for m in (ref, ours):
        m.weight_hh_l1 = m.weight_hh_l0
    x = torch.randn(4, 2, 3, requires_grad=True)
    for m in (ref, ours):
        out, h = m(x)
        (out.sum() + h.pow(2).sum()).backward()
    assert_close(ours.weight_hh_l0.grad, ref.weight_hh_l0.grad, "tied weight grad")


def test_functional_call():
    ref, ours = make_pair(4, 3, 2, bidirectional=True)
    new = {n: torch.randn_like(p) for n, p in ours.named_parameters()}
    x = torch.randn(5, 2, 4)
    out_r, h_r = torch.func.functional_call(ref, new, (x,))
    out_o, h_o = torch.func.functional_call(ours, new, (x,))
    assert_close(out_o, out_r, "output")
    assert_close(h_o, h_r, "h_n")
    # The module's own parameters are untouched and used again afterwards.
    assert_close(ours(x)[0], ref(x)[0], "output after functional_call")


def test_functional_call_gradients_flow_to_the_passed_tensors():
    _, ours = make_pair(4, 3, 1)
    new = {n: torch.randn_like(p, requires_grad=True) for n, p in ours.named_parameters()}
    out, h = torch.func.functional_call(ours, new, (torch.randn(5, 2, 4),))
    (out.sum() + h.sum()).backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in new.values())
    assert all(p.grad is None for p in ours.parameters())


def test_dropout_warning_matches_nn_gru():
    with warnings.catch_warnings(record=True) as ref_w:
        warnings.simplefilter("always")
        nn.GRU(4, 3, 1, dropout=0.5)
    with warnings.catch_warnings(record=True) as our_w:
        warnings.simplefilter("always")
        gru_native.GRU(4, 3, 1, dropout=0.5)
    assert [str(w.message) for w in our_w] == [str(w.message) for w in ref_w]
    assert len(our_w) == 1


def test_output_layout_like_nn_gru():
    # batch_first output is the transposed view ATen returns (same strides), h_n contiguous.
    ref, ours = make_pair(3, 4, 1, batch_first=True, bidirectional=True)
    x = torch.randn(2, 5, 3)
    out_r, h_r = ref(x)
    out_o, h_o = ours(x)
    assert out_o.stride() == out_r.stride()
    assert h_o.is_contiguous() and h_o.stride() == h_r.stride()


def test_train_eval_flags_and_no_grad():
    ref, ours = make_pair(4, 3, 2)
    x = torch.randn(5, 2, 4)
    with torch.no_grad():
        out, h = ours(x)
    assert not out.requires_grad and not h.requires_grad
    out, h = ours(x)
    assert out.requires_grad and h.requires_grad and out.grad_fn is not None


def test_build_info():
    info = gru_native.build_info()
    assert info["torch_version"] == torch.__version__
    assert isinstance(info["cuda"], bool)
    assert info["cpu_vector_isa"] in ("AVX512", "AVX2", "DEFAULT")
    assert "-O" in info["cxx_flags"]
    assert info["version"] == gru_native.__version__


def test_vector_code_paths_are_taken():
    # A build for this machine (the default) must compile the CPU kernels for its SIMD units;
    # a portable build (GRU_NATIVE_PORTABLE=1) uses at::vec's generic code.
    info = gru_native.build_info()
    if info["portable"]:
        assert "-march=native" not in info["cxx_flags"]
        return
    assert "-march=native" in info["cxx_flags"]
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    if "avx2" in flags and "fma" in flags:
        assert info["cpu_vector_isa"] in ("AVX2", "AVX512")


class _Scale(nn.Module):
    def forward(self, w):
        return 2 * w


def test_parametrization_like_nn_gru():
    import torch.nn.utils.parametrize as P
    ref, ours = make_pair(4, 3, 2)
    for m in (ref, ours):
        P.register_parametrization(m, "weight_hh_l1", _Scale())
    x = torch.randn(5, 2, 4, requires_grad=True)
    results = []
    for m in (ref, ours):
        out, h = m(x)
        results.append((out, h, torch.autograd.grad(out.sum() + h.sum(),
                                                     m.parametrizations.weight_hh_l1.original)))
    for a, b in zip(results[1], results[0]):
        assert_close(a if torch.is_tensor(a) else a[0], b if torch.is_tensor(b) else b[0], "")


def test_weight_norm_like_nn_gru():
    ref, ours = make_pair(4, 3, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = torch.nn.utils.weight_norm(ref, "weight_hh_l0")
        ours = torch.nn.utils.weight_norm(ours, "weight_hh_l0")
    with torch.no_grad():
        for m in (ref, ours):
            m.weight_hh_l0_g.mul_(1.5)
    x = torch.randn(5, 2, 4)
    assert_close(ours(x)[0], ref(x)[0], "output with weight_norm")
