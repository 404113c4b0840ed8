"""gru_native.GRU in the ways nn.GRU is used: torch.compile (fullgraph), convert/to_torch,
GRUCell, autocast, double backward, DistributedDataParallel, torch.export and ONNX."""

import gc
import socket
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import gru_native

from _util import assert_close, assert_same_error, make_pair


class Tagger(nn.Module):
    """Linear -> GRU -> Linear, the shape of most GRU models."""

    def __init__(self, gru_cls=gru_native.GRU, batch_first=True):
        super().__init__()
        self.embed = nn.Linear(6, 4)
        self.gru = gru_cls(4, 5, 2, bidirectional=True, batch_first=batch_first)
        self.head = nn.Linear(10, 3)

    def forward(self, x):
        out, h = self.gru(torch.relu(self.embed(x)))
        return self.head(out).relu(), h


# -- torch.compile -------------------------------------------------------------------------


def _grads(model, x):
    model.zero_grad()
    y, h = model(x)
    (y.pow(2).sum() + h.sum()).backward()
    return y, h, [p.grad.clone() for p in model.parameters()]


def _assert_same_run(model, expected_model, x, what):
    """model(x) and expected_model(x): same output, h_n and parameter gradients."""
    y, h, g = _grads(model, x)
    y_e, h_e, g_e = _grads(expected_model, x)
    assert_close(y, y_e, f"{what} output")
    assert_close(h, h_e, f"{what} h_n")
    for a, b in zip(g, g_e):
        assert_close(a, b, f"{what} gradient")


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_compile_fullgraph_forward_backward(dynamic):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Tagger()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager", dynamic=dynamic)
    for T in (7, 11, 4):  # varying sequence lengths: recompiles, or one dynamic graph
        x = torch.randn(3, T, 6)
        _assert_same_run(compiled, model, x, "compiled")


def test_compile_packed_with_inductor():
    # pack_padded_sequence itself is not traceable by Dynamo (torch marks it skipped), so this
    # one compiles with graph breaks, and must still give the eager results.
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = gru_native.GRU(4, 5, bidirectional=True)

    def f(x, lengths):
        out, h = m(pack_padded_sequence(x, lengths, enforce_sorted=False))
        return out.data.sum() + h.sum()

    compiled = torch.compile(f)
    x = torch.randn(6, 3, 4)
    lengths = torch.tensor([6, 2, 4])
    assert_close(compiled(x, lengths), f(x, lengths), "packed, compiled")


def test_nn_gru_graph_breaks_where_gru_native_does_not():
    torch._dynamo.reset()
    with pytest.raises(Exception, match="RNN, GRU, or LSTM"):
        torch.compile(Tagger(nn.GRU), fullgraph=True, backend="eager")(torch.randn(2, 5, 6))


# -- convert / to_torch --------------------------------------------------------------------


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.ModuleDict({
            "rnn": nn.GRU(4, 6, 2, batch_first=True, dropout=0.2),
            "stack": nn.Sequential(nn.Linear(6, 6), nn.GRU(6, 3, bidirectional=True)),
        })
        self.cell = nn.GRUCell(6, 6)

    def forward(self, x):
        out, _ = self.encoder["rnn"](x)
        out2, h = self.encoder["stack"][1](self.encoder["stack"][0](out).transpose(0, 1))
        return out2, h, self.cell(out[:, -1])


def test_convert_and_back_keeps_everything():
    torch.manual_seed(0)
    model = Nested().double().eval()
    params_before = dict(model.named_parameters())
    calls = []
    model.encoder["rnn"].register_forward_hook(lambda mod, inp, out: calls.append(type(mod)))
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    expected = model(x)
    converted = gru_native.convert(model)
    assert converted is model
    assert type(model.encoder["rnn"]) is gru_native.GRU
    assert type(model.encoder["stack"][1]) is gru_native.GRU
    assert type(model.cell) is gru_native.GRUCell
    assert not model.encoder["rnn"].training
    # The very same Parameter objects: optimizers and tied weights keep working.
    assert all(p is params_before[n] for n, p in model.named_parameters())
    assert model.encoder["rnn"].weight_ih_l0.dtype == torch.float64
    got = model(x)
    for a, b in zip(got, expected):
        assert_close(a, b, "converted output")
    assert calls == [nn.GRU, gru_native.GRU]  # the hook came along
    back = gru_native.to_torch(model)
    assert type(back.encoder["rnn"]) is nn.GRU and type(back.cell) is nn.GRUCell
    for a, b in zip(back(x), expected):
        assert torch.equal(a, b)


def test_convert_a_bare_gru_and_train_with_an_existing_optimizer():
    torch.manual_seed(0)
    ref = nn.GRU(3, 4)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    ours = gru_native.convert(ref)
    assert type(ours) is gru_native.GRU
    out, h = ours(torch.randn(5, 2, 3))
    (out.sum() + h.sum()).backward()
    before = ours.weight_hh_l0.detach().clone()
    opt.step()
    assert not torch.equal(before, ours.weight_hh_l0)


# -- GRUCell ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "1d"])
@pytest.mark.parametrize("with_h", [True, False], ids=["h", "noh"])
def test_gru_cell_parity(dtype, bias, batched, with_h):
    torch.manual_seed(0)
    ref = nn.GRUCell(5, 7, bias=bias, dtype=dtype)
    ours = gru_native.GRUCell(5, 7, bias=bias, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    assert repr(ours) == repr(ref)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    x = torch.randn((3, 5) if batched else (5,), dtype=dtype)
    h = torch.randn((3, 7) if batched else (7,), dtype=dtype) if with_h else None
    results = []
    for m in (ref, ours):
        xi = x.clone().requires_grad_()
        hi = None if h is None else h.clone().requires_grad_()
        y = m(xi, hi)
        inputs = [xi] + ([hi] if hi is not None else []) + list(m.parameters())
        results.append([y] + list(torch.autograd.grad(y.pow(2).sum(), inputs)))
    for a, b in zip(results[1], results[0]):
        assert_close(a, b, "GRUCell")


def test_gru_cell_init_matches_nn():
    torch.manual_seed(3)
    ref = nn.GRUCell(4, 6)
    torch.manual_seed(3)
    ours = gru_native.GRUCell(4, 6)
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), ref.parameters()))


CELL_ERRORS = {
    "input-3d": lambda c: lambda: c(4, 3)(torch.randn(1, 2, 4)),
    "hidden-3d": lambda c: lambda: c(4, 3)(torch.randn(2, 4), torch.randn(1, 2, 3)),
    "features": lambda c: lambda: c(4, 3)(torch.randn(2, 5)),
    "batch": lambda c: lambda: c(4, 3)(torch.randn(2, 4), torch.randn(3, 3)),
    "hidden-size": lambda c: lambda: c(4, 3)(torch.randn(2, 4), torch.randn(2, 5)),
    "1d-input-2d-hidden": lambda c: lambda: c(4, 3)(torch.randn(4), torch.randn(2, 3)),
    "input-dtype": lambda c: lambda: c(4, 3)(torch.randn(2, 4, dtype=torch.float64)),
    "hidden-dtype": lambda c: lambda: c(4, 3)(torch.randn(2, 4),
                                              torch.randn(2, 3, dtype=torch.float64)),
    "hidden-dtype-nobias": lambda c: lambda: c(4, 3, bias=False)(
        torch.randn(2, 4), torch.randn(2, 3, dtype=torch.float64)),
    "int-input": lambda c: lambda: c(4, 3)(torch.ones(2, 4, dtype=torch.long)),
    "input-meta": lambda c: lambda: c(4, 3)(torch.randn(2, 4, device="meta")),
}


@pytest.mark.parametrize("case", list(CELL_ERRORS), ids=str)
def test_gru_cell_errors_match_nn(case):
    def make(cls):
        return CELL_ERRORS[case](nn.GRUCell if cls is nn.GRU else gru_native.GRUCell)
    assert_same_error(make)


def test_gru_cell_bad_weight_shape_matches_nn():
    def make(cls):
        def call():
            c = (nn.GRUCell if cls is nn.GRU else gru_native.GRUCell)(4, 3)
            c.weight_ih = nn.Parameter(torch.randn(8, 4))
            return c(torch.randn(2, 4))
        return call
    assert_same_error(make)


def test_gru_cell_in_a_loop_equals_gru():
    torch.manual_seed(0)
    gru = gru_native.GRU(4, 6, dtype=torch.float64)
    cell = gru_native.GRUCell(4, 6, dtype=torch.float64)
    cell.load_state_dict({k[:-3]: v for k, v in gru.state_dict().items()})
    x = torch.randn(8, 2, 4, dtype=torch.float64)
    h = torch.zeros(2, 6, dtype=torch.float64)
    outs = []
    for t in range(8):
        h = cell(x[t], h)
        outs.append(h)
    out, h_n = gru(x)
    assert_close(torch.stack(outs), out, "cell loop vs GRU")


# -- double backward -------------------------------------------------------------------------


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_double_backward(bidirectional):
    torch.manual_seed(0)
    m = gru_native.GRU(3, 2, 2, bidirectional=bidirectional, dtype=torch.float64)
    names = [n for n, _ in m.named_parameters()]
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)

    def f(x, *w):
        return torch.func.functional_call(m, dict(zip(names, w)), (x,))

    assert torch.autograd.gradgradcheck(f, (x, *m.parameters()))


def test_gradient_penalty_matches_nn_gru():
    ref, ours = make_pair(3, 4, 2, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    results = []
    for m in (ref, ours):
        xi = x.clone().requires_grad_()
        out, h = m(xi)
        g, = torch.autograd.grad(out.pow(2).sum() + h.sum(), xi, create_graph=True)
        results.append(torch.autograd.grad(g.pow(2).sum(), list(m.parameters())))
    for a, b in zip(results[1], results[0]):
        assert_close(a, b, "second-order grad")


# -- autocast --------------------------------------------------------------------------------


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_cpu_autocast_like_nn_gru(input_dtype):
    # Under CPU autocast nn.GRU keeps a float32 input's dtype (its inner GEMMs run in bfloat16)
    # and returns bfloat16 for a bfloat16 input. gru_native gives the same dtypes without error;
    # its float32 results are float32-exact.
    ref, ours = make_pair(4, 5, 2, bidirectional=True)
    x = torch.randn(6, 2, 4, dtype=input_dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out_r, h_r = ref(x)
        out_o, h_o = ours(x)
    assert out_o.dtype == out_r.dtype and h_o.dtype == h_r.dtype
    assert out_o.shape == out_r.shape and h_o.shape == h_r.shape
    assert_close(out_o.float(), out_r.float(), "vs nn.GRU under autocast", torch.float32,
                 5e-2, 5e-2)
    if input_dtype == torch.float32:
        assert_close(out_o, ref(x)[0], "vs nn.GRU in float32")


# -- DistributedDataParallel -----------------------------------------------------------------


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, steps, path):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    torch.manual_seed(0)
    model = gru_native.GRU(4, 6, 2, bidirectional=True)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(5, 8, 4, generator=gen)  # the full batch; each rank takes its half
        x = x[:, rank * 4:(rank + 1) * 4]
        opt.zero_grad()
        out, h = ddp(x)
        (out.pow(2).mean() + h.pow(2).mean()).backward()
        opt.step()
    if rank == 0:
        torch.save({n: p.detach() for n, p in model.named_parameters()}, path)
    # The process group's gloo threads must be gone before the interpreter exits: one left
    # dropping its last finished allreduce while Python finalises aborts the process inside
    # torch ("terminate called without an active exception", about one run in eight, with
    # nn.GRU too). DDP's reducer holds the group, and the reducer sits in a reference cycle:
    # free it, then destroy the group, which joins the threads.
    del ddp, opt, out, h
    gc.collect()
    dist.destroy_process_group()


def test_ddp_two_processes_match_one(tmp_path):
    steps, path = 3, str(tmp_path / "ddp.pt")
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), steps, path), nprocs=2)
    ddp_params = torch.load(path)
    torch.manual_seed(0)
    model = gru_native.GRU(4, 6, 2, bidirectional=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(5, 8, 4, generator=gen)
        opt.zero_grad()
        # The mean over the full batch is the mean of the two halves' means.
        loss = 0
        for half in (x[:, :4], x[:, 4:]):
            out, h = model(half)
            loss = loss + (out.pow(2).mean() + h.pow(2).mean()) / 2
        loss.backward()
        opt.step()
    for name, p in model.named_parameters():
        assert_close(ddp_params[name], p.detach(), f"DDP {name}")


# -- torch.func transforms and forward-mode AD -------------------------------------------------


def _transform_cases():
    import torch.autograd.forward_ad as fwAD

    def forward_ad(f, x):
        with fwAD.dual_level():
            out = f(fwAD.make_dual(x, torch.ones_like(x)))
            return fwAD.unpack_dual(out).tangent

    return {
        "grad": lambda f, x: torch.func.grad(lambda v: f(v).pow(2).sum())(x),
        "vjp": lambda f, x: torch.func.vjp(f, x)[1](torch.ones_like(f(x)))[0],
        "jvp": lambda f, x: torch.func.jvp(f, (x,), (torch.ones_like(x),))[1],
        "jacrev": lambda f, x: torch.func.jacrev(f)(x),
        "jacfwd": lambda f, x: torch.func.jacfwd(f)(x),
        "forward_ad": forward_ad,
    }


@pytest.mark.parametrize("transform", list(_transform_cases()))
def test_func_transforms_match_nn_gru(transform):
    # Under torch.func transforms and forward-mode AD the module computes what nn.GRU computes
    # (it runs nn.GRU's op there): gradients, JVPs and Jacobians equal nn.GRU's.
    apply = _transform_cases()[transform]
    ref, ours = make_pair(3, 4, 2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    expected = apply(lambda v: ref(v)[0], x)
    got = apply(lambda v: ours(v)[0], x)
    assert expected.abs().max() > 0
    assert_close(got, expected, transform, dtype=torch.float64)
    cell_ref, cell_ours = _same_model(gru_native.GRUCell, nn.GRUCell, 3, 4)
    cell_ref.double(), cell_ours.double()
    h = torch.randn(2, 4, dtype=torch.float64)
    assert_close(apply(lambda v: cell_ours(v, h), x[0]), apply(lambda v: cell_ref(v, h), x[0]),
                 f"cell {transform}", dtype=torch.float64)
    params = dict(ours.named_parameters())
    g = torch.func.grad(lambda p: torch.func.functional_call(ours, p, (x,))[0].sum())(params)
    ref.zero_grad()
    ref(x)[0].sum().backward()
    for name, p in ref.named_parameters():
        assert_close(g[name], p.grad, f"func.grad {name}", dtype=torch.float64)


def test_vmap_raises_what_nn_gru_raises():
    assert_same_error(lambda cls: lambda: torch.func.vmap(
        lambda v: _fresh(cls)(v)[0])(torch.randn(2, 5, 3, 4)))


def _fresh(cls):
    torch.manual_seed(0)
    return cls(4, 6)


# -- export and ONNX -------------------------------------------------------------------------


def test_torch_export_one_node():
    model = Tagger(batch_first=False).eval()
    x = torch.randn(7, 3, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own note about _flat_weights, as for nn.GRU
        ep = torch.export.export(model, (x,))
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count("gru_native.gru_forward.default") == 1
    assert not any("gru" in t and "gru_native" not in t for t in targets)
    for a, b in zip(ep.module()(x), model(x)):
        assert_close(a, b, "exported")


class CellLoop(nn.Module):
    def __init__(self, cell_cls):
        super().__init__()
        self.cell = cell_cls(6, 5)

    def forward(self, x, h):
        for t in range(x.size(0)):
            h = self.cell(x[t], h)
        return h


def _same_model(cls_ours, cls_ref, *args):
    torch.manual_seed(0)
    ref = cls_ref(*args)
    torch.manual_seed(0)
    ours = cls_ours(*args)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_jit_trace_records_nn_grus_graph(train):
    # torch.jit.trace of a model with gru_native.GRU gives nn.GRU's traced graph (aten::gru,
    # loadable without gru_native), passes trace's own check (which re-runs without grad) and
    # computes what the eager model computes, gradients included.
    ref, ours = _same_model(Tagger, lambda: Tagger(nn.GRU))
    ref.train(train), ours.train(train)
    x = torch.randn(3, 7, 6)
    traced_ours = torch.jit.trace(ours, (x,))
    traced_ref = torch.jit.trace(ref, (x,))

    def ops(traced):  # what computes (the zero h0's size may be read from a weight)
        return [n.kind() for n in traced.inlined_graph.nodes()
                if n.kind().startswith("aten::") and n.kind() != "aten::size"]

    assert ops(traced_ours).count("aten::gru") == 1
    assert ops(traced_ours) == ops(traced_ref)
    assert not any("gru_native" in n.kind() for n in traced_ours.inlined_graph.nodes())
    _assert_same_run(traced_ours, ours, x, "traced")
    cell_ref, cell_ours = _same_model(lambda: CellLoop(gru_native.GRUCell),
                                      lambda: CellLoop(nn.GRUCell))
    xs, h0 = torch.randn(4, 2, 6), torch.randn(2, 5)
    traced_cell = torch.jit.trace(cell_ours, (xs, h0))
    assert ops(traced_cell) == ops(torch.jit.trace(cell_ref, (xs, h0)))  # torch's cell, traced
    assert not any("gru_native" in n.kind() for n in traced_cell.inlined_graph.nodes())
    assert_close(traced_cell(xs, h0), cell_ours(xs, h0), "traced cell")


def test_fx_symbolic_trace_keeps_the_gru_a_leaf():
    # FX keeps torch.nn's modules as leaves (one call_module node); gru_native's modules too.
    ref, ours = _same_model(Tagger, lambda: Tagger(nn.GRU))
    x = torch.randn(3, 7, 6)
    gm_ours, gm_ref = torch.fx.symbolic_trace(ours), torch.fx.symbolic_trace(ref)
    modules = [n.target for n in gm_ours.graph.nodes if n.op == "call_module"]
    assert modules == [n.target for n in gm_ref.graph.nodes if n.op == "call_module"]
    assert modules.count("gru") == 1
    assert isinstance(gm_ours.get_submodule("gru"), gru_native.GRU)
    for a, b in zip(gm_ours(x), ref(x)):
        assert_close(a, b, "FX-traced model")
    cell_ref, cell_ours = _same_model(lambda: CellLoop(gru_native.GRUCell),
                                      lambda: CellLoop(nn.GRUCell))
    xs, h0 = torch.randn(3, 2, 6), torch.randn(2, 5)
    # The loop needs x's length: FX specialises x (x itself becomes a constant of the graph).
    gm = torch.fx.symbolic_trace(cell_ours, concrete_args={"x": xs})
    assert [n.target for n in gm.graph.nodes if n.op == "call_module"] == ["cell"] * 3
    assert_close(gm(xs, h0), cell_ref(xs, h0), "FX-traced cell loop")


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_onnx_export_runs_in_onnxruntime(tmp_path, dynamo):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    if dynamo:
        pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = Tagger().eval()
    x = torch.randn(3, 7, 6)
    path = str(tmp_path / "tagger.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), path, dynamo=dynamo)
    import onnx
    ops = [n.op_type for n in onnx.load(path).graph.node]
    assert "GRU" in ops  # nn.GRU's translation: ONNX's GRU operator
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = model(x)
    for a, b in zip(got, expected):
        assert_close(torch.from_numpy(a), b, "ONNX Runtime", torch.float32, 1e-5, 1e-4)


# -- the example -----------------------------------------------------------------------------


def test_char_lm_example_ten_steps(capsys):
    from gru_native.examples import char_lm
    assert char_lm.run(steps=10, seq_len=32, batch=8, tolerance=1e-5) == 0
    out = capsys.readouterr().out
    assert "time per step" in out and "largest relative difference" in out
