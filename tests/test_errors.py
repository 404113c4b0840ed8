"""Bad arguments raise what torch.nn.GRU raises: same exception type, same message, checked
against nn.GRU in the test itself (the constructor's validation, then forward's checks in
nn.GRU's order)."""

import logging
import warnings

import pytest
import torch
from torch import nn

import gru_native

from _util import assert_same_error


CONSTRUCTOR_CASES = {
    "dropout-str": lambda c: c(4, 3, 2, dropout="a"),
    "dropout-negative": lambda c: c(4, 3, 2, dropout=-0.1),
    "dropout-above-one": lambda c: c(4, 3, 2, dropout=1.5),
    "dropout-bool": lambda c: c(4, 3, 2, dropout=True),
    "bias-int": lambda c: c(4, 3, bias=1),
    "batch_first-str": lambda c: c(4, 3, batch_first="yes"),
    "input_size-float": lambda c: c(4.0, 3),
    "input_size-zero": lambda c: c(0, 3),
    "input_size-negative": lambda c: c(-2, 3),
    "hidden_size-float": lambda c: c(4, 3.0),
    "hidden_size-zero": lambda c: c(4, 0),
    "num_layers-zero": lambda c: c(4, 3, 0),
    "num_layers-float": lambda c: c(4, 3, 2.0),
    "proj_size-kwarg": lambda c: c(4, 3, proj_size=2),
    "unknown-kwarg": lambda c: c(4, 3, foo=1),
    "too-many-positional": lambda c: c(4, 3, 1, True, False, 0.0, False, 0, None, None, 1),
}


@pytest.mark.parametrize("case", list(CONSTRUCTOR_CASES), ids=str)
def test_constructor_errors(case):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_same_error(lambda cls: lambda: CONSTRUCTOR_CASES[case](cls))


def _forward(cls_kwargs, x_fn, h_fn=None, **module_kwargs):
    def make(cls):
        def call():
            torch.manual_seed(0)
            m = cls(*cls_kwargs, **module_kwargs)
            x = x_fn()
            h = h_fn() if h_fn else None
            return m(x) if h is None else m(x, h)
        return call
    return make


FORWARD_CASES = {
    "input-1d": _forward((4, 3), lambda: torch.randn(4)),
    "input-4d": _forward((4, 3), lambda: torch.randn(1, 5, 2, 4)),
    "input-0d": _forward((4, 3), lambda: torch.tensor(1.0)),
    "unbatched-hx-3d": _forward((4, 3), lambda: torch.randn(5, 4), lambda: torch.randn(1, 1, 3)),
    "batched-hx-2d": _forward((4, 3), lambda: torch.randn(5, 2, 4), lambda: torch.randn(1, 3)),
    "batched-hx-1d": _forward((4, 3), lambda: torch.randn(5, 2, 4), lambda: torch.randn(3)),
    "input-double": _forward((4, 3), lambda: torch.randn(5, 2, 4, dtype=torch.float64)),
    "input-int": _forward((4, 3), lambda: torch.zeros(5, 2, 4, dtype=torch.long)),
    "input-bool": _forward((4, 3), lambda: torch.zeros(5, 2, 4, dtype=torch.bool)),
    "input-features": _forward((4, 3), lambda: torch.randn(5, 2, 5)),
    "unbatched-features": _forward((4, 3), lambda: torch.randn(5, 3)),
    "hx-batch": _forward((4, 3), lambda: torch.randn(5, 2, 4), lambda: torch.randn(1, 3, 3)),
    "hx-layers": _forward((4, 3, 2), lambda: torch.randn(5, 2, 4), lambda: torch.randn(1, 2, 3)),
    "hx-hidden": _forward((4, 3), lambda: torch.randn(5, 2, 4), lambda: torch.randn(1, 2, 4)),
    "hx-bidirectional": _forward((4, 3), lambda: torch.randn(5, 2, 4),
                                 lambda: torch.randn(1, 2, 3), bidirectional=True),
    "unbatched-hx-shape": _forward((4, 3), lambda: torch.randn(5, 4), lambda: torch.randn(2, 3)),
    "batch-first-hx-batch": _forward((4, 3), lambda: torch.randn(2, 5, 4),
                                     lambda: torch.randn(1, 5, 3), batch_first=True),
    "hx-double-bias": _forward((4, 3), lambda: torch.randn(5, 2, 4),
                               lambda: torch.randn(1, 2, 3, dtype=torch.float64)),
    "hx-double-nobias": _forward((4, 3), lambda: torch.randn(5, 2, 4),
                                 lambda: torch.randn(1, 2, 3, dtype=torch.float64), bias=False),
    "hx-int-bias-bi": _forward((4, 3, 2), lambda: torch.randn(5, 2, 4),
                               lambda: torch.zeros(4, 2, 3, dtype=torch.long),
                               bidirectional=True),
    "hx-int-nobias": _forward((4, 3), lambda: torch.randn(5, 2, 4),
                              lambda: torch.zeros(1, 2, 3, dtype=torch.long), bias=False),
    "hx-meta": _forward((4, 3), lambda: torch.randn(5, 2, 4),
                        lambda: torch.zeros(1, 2, 3, device="meta")),
    "input-meta": _forward((4, 3), lambda: torch.randn(5, 2, 4, device="meta")),
    "seq-len-0": _forward((4, 3), lambda: torch.randn(0, 2, 4)),
    "seq-len-0-bi": _forward((4, 3, 2), lambda: torch.randn(0, 2, 4), bidirectional=True),
    "seq-len-0-batch-0": _forward((4, 3), lambda: torch.randn(0, 0, 4)),
    "seq-len-0-batch-first": _forward((4, 3), lambda: torch.randn(2, 0, 4), batch_first=True),
    "seq-len-0-unbatched": _forward((4, 3), lambda: torch.randn(0, 4)),
    "seq-len-0-hx-double": _forward((4, 3), lambda: torch.randn(0, 2, 4),
                                    lambda: torch.randn(1, 2, 3, dtype=torch.float64)),
    "bidirectional-int": _forward((4, 3), lambda: torch.randn(5, 2, 4), bidirectional=1),
    "proj-size-positional": _forward((4, 3, 1, True, False, 0.0, False, 2),
                                     lambda: torch.randn(5, 2, 4)),
}


@pytest.mark.parametrize("case", list(FORWARD_CASES), ids=str)
def test_forward_errors(case):
    assert_same_error(FORWARD_CASES[case])


def _reassigned(name, shape, layers=1, grad=False, packed=False, **kwargs):
    """A module whose parameter `name` was re-assigned with another shape, then called."""
    def make(cls):
        def call():
            torch.manual_seed(0)
            m = cls(4, 3, layers, **kwargs)
            setattr(m, name, nn.Parameter(torch.randn(*shape)))
            x = torch.randn(5, 2, 4, requires_grad=grad)
            if packed:
                x = nn.utils.rnn.pack_padded_sequence(x, [5, 3])
            return m(x)
        return call
    return make


REASSIGNED_CASES = {
    "weight_hh-wide": _reassigned("weight_hh_l0", (9, 5)),
    "weight_hh-tall": _reassigned("weight_hh_l0", (12, 3)),
    "weight_ih-in-features": _reassigned("weight_ih_l0", (9, 5)),
    "weight_ih-rows": _reassigned("weight_ih_l0", (6, 4), grad=True),
    "bias_hh-length": _reassigned("bias_hh_l0", (6,)),
    "bias_ih-2d": _reassigned("bias_ih_l0", (9, 1), grad=True),
    "layer1-weight_ih": _reassigned("weight_ih_l1", (9, 4), layers=2),
    "reverse-weight_hh": _reassigned("weight_hh_l0_reverse", (9, 4), bidirectional=True),
    "packed-weight_hh": _reassigned("weight_hh_l0", (9, 5), packed=True),
}


@pytest.mark.parametrize("case", list(REASSIGNED_CASES), ids=str)
def test_reassigned_weight_shapes_fail_like_nn_gru(case):
    # Weights of shapes the fused kernels do not take run torch's implementation, so the
    # error is nn.GRU's own (often from deep inside ATen).
    assert_same_error(REASSIGNED_CASES[case])


def test_forward_error_with_list_input():
    assert_same_error(lambda cls: lambda: cls(4, 3)([1.0, 2.0]))


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
def test_empty_batch_works_like_nn_gru(bidirectional, batch_first):
    D = 2 if bidirectional else 1
    torch.manual_seed(0)
    ref = nn.GRU(4, 3, 2, batch_first=batch_first, bidirectional=bidirectional)
    ours = gru_native.GRU(4, 3, 2, batch_first=batch_first, bidirectional=bidirectional)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn((0, 5, 4) if batch_first else (5, 0, 4), requires_grad=True)
    out_r, h_r = ref(x)
    out_o, h_o = ours(x)
    assert out_o.shape == out_r.shape == ((0, 5, 3 * D) if batch_first else (5, 0, 3 * D))
    assert h_o.shape == h_r.shape == (2 * D, 0, 3)
    (out_o.sum() + h_o.sum()).backward()
    assert x.grad.shape == x.shape
    assert all(p.grad is not None and torch.count_nonzero(p.grad) == 0 for p in ours.parameters())


# A dtype nn.GRU runs on the CPU for which no backend has kernels (the CPU's take float32,
# float64, float16 and bfloat16, as do the CUDA emulation's): complex64.
NO_KERNEL = torch.complex64


def test_unsupported_cpu_dtype_op_names_it():
    ws = [w.to(NO_KERNEL) for w in nn.GRU(4, 3)._flat_weights]
    with pytest.raises(RuntimeError, match=f"do not support dtype {NO_KERNEL}"):
        torch.ops.gru_native.gru_forward(torch.randn(5, 2, 4, dtype=NO_KERNEL), None, ws, None,
                                         None, True, 1, False, False)


def test_unsupported_cpu_dtype_module_runs_like_nn_gru(caplog):
    # For a dtype without kernels the module runs torch's own implementation, so that what
    # nn.GRU runs still runs, with its results, and warns about nothing nn.GRU does not warn
    # about (a log record on the "gru_native" logger says so).
    dtype = NO_KERNEL
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nn.Module's note that complex modules are new
        ref = nn.GRU(4, 3, 2, bidirectional=True).to(dtype)
        ours = gru_native.GRU(4, 3, 2, bidirectional=True).to(dtype)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 4, dtype=dtype)
    gru_native.ops._noted_fallback.clear()
    with warnings.catch_warnings(), caplog.at_level(logging.INFO, logger="gru_native"):
        warnings.simplefilter("error")
        out, h = ours(x)
    assert any("no cpu kernels" in r.getMessage() for r in caplog.records)
    out_r, h_r = ref(x)
    assert out.dtype == dtype and torch.equal(out, out_r) and torch.equal(h, h_r)
