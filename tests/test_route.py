"""The route from the module to the kernels (gru_native/_route.py): one path for every device.

Whatever backend serves a tensor (the CPU backend; the CUDA backend on a GPU; the CUDA backend on
CPU tensors in a build on the CUDA emulation, as CI runs it), its forward and backward take the
same route, record the same C++ autograd node and run that backend's two ops; the direct route
and the dispatcher route give the same bits. The route depends only on facts: which backends the
build registered, the dtype, grad mode and torch's tracing / compiling / transform state."""

import ast
import copy
import pathlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import gru_native
from gru_native import _route

from _util import devices

ROOT = pathlib.Path(__file__).resolve().parent.parent
NODE = "GRUNativeBackward"


class OpLog(TorchDispatchMode):
    """Records the gru_native ops that reach the dispatcher below autograd."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "gru_native":
            self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _node(t):
    """The autograd node that produced t, looking through the views taken of its result."""
    fn = t.grad_fn
    while fn is not None and fn.name().split("::")[-1].startswith(
            ("Squeeze", "Select", "Transpose", "View", "Unsqueeze")):
        fn = fn.next_functions[0][0]
    return None if fn is None else fn.name()


def _train(m, x, h0):
    x = x.detach().clone().requires_grad_()
    out, h = m(x, h0)
    grads = torch.autograd.grad(out.pow(2).sum() + h.sum(), [x] + list(m.parameters()))
    return out, h, grads, _node(out)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_direct_and_dispatcher_routes_record_one_node_and_agree_bitwise(device, packed):
    torch.manual_seed(0)
    m = gru_native.GRU(5, 7, 2, bidirectional=True, device=device)
    x = torch.randn(6, 3, 5, device=device)
    h0 = torch.randn(4, 3, 7, device=device)
    if packed:
        x = torch.nn.utils.rnn.pack_padded_sequence(x, [6, 4, 2]).data
    weights = m._flat_weights
    assert _route.route((x, h0, *weights), x.device.type, x.dtype) == _route.DIRECT

    def run(mx):
        if not packed:
            return _train(m, mx, h0)
        # The packed data straight to the functional entry (what GRU.forward calls).
        mx = mx.detach().clone().requires_grad_()
        bs = torch.tensor([3, 3, 2, 2, 1, 1])
        out, h = gru_native.gru(mx, h0, weights, True, 2, 0.0, True, True, False, bs)
        grads = torch.autograd.grad(out.pow(2).sum() + h.sum(), [mx] + list(weights))
        return out, h, grads, _node(out)

    direct = run(x)
    log = OpLog()
    with log:
        assert _route.route((x, h0, *weights), x.device.type, x.dtype) == _route.DISPATCHER
        dispatched = run(x)
    # Under the mode the ops went through the dispatcher (forward, then backward), recorded by
    # the same node as the direct call.
    assert log.ops == ["gru_forward", "gru_backward"]
    assert NODE in direct[3] and direct[3] == dispatched[3]
    for a, b in zip([direct[0], direct[1], *direct[2]],
                    [dispatched[0], dispatched[1], *dispatched[2]]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device", devices())
def test_cell_takes_the_same_route_and_node(device):
    torch.manual_seed(0)
    cell = gru_native.GRUCell(4, 6, device=device)
    x = torch.randn(3, 4, device=device, requires_grad=True)
    h = torch.randn(3, 6, device=device)
    out = cell(x, h)
    assert NODE in _node(out)
    with OpLog() as log:
        out2 = cell(x, h)
        torch.autograd.grad(out2.sum(), [x])
    assert log.ops == ["gru_forward", "gru_backward"] and _node(out2) == _node(out)
    assert torch.equal(out, out2)


def test_backend_table_names_who_serves_each_device():
    info = gru_native.build_info()
    expected_cpu = "CUDA" if info["cuda_emulation"] else "CPU"
    assert info["backends"]["cpu"] == expected_cpu
    assert ("cuda" in info["backends"]) == (info["cuda"] and not info["cuda_emulation"])
    # What the route reads is that table, nothing else about the device.
    for device_type, (name, dtypes, _) in _route.BACKENDS.items():
        assert info["backends"][device_type] == name
        for dtype in dtypes:
            assert _route.has_kernel(device_type, dtype)


def test_no_kernel_for_the_dtype_takes_torchs_route(monkeypatch):
    # A dtype without a kernel (here: the table emptied) goes to torch's own GRU, with its
    # result; with the table back, the same call goes direct.
    torch.manual_seed(0)
    m = gru_native.GRU(3, 4)
    ref = torch.nn.GRU(3, 4)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(5, 2, 3)
    monkeypatch.setattr(_route, "_DIRECT_KERNELS", frozenset())
    monkeypatch.setattr(_route, "_KERNELS", frozenset())
    assert _route.route((x,), "cpu", x.dtype) == _route.TORCH
    out, _ = m(x)
    assert NODE not in _node(out)
    assert torch.equal(out, ref(x)[0])


def test_autocast_cast_follows_the_table(monkeypatch):
    # Where nn.GRU runs in the autocast dtype (AUTOCAST_CASTS: CUDA), gru_native casts input,
    # h0 and weights to it. Made to hold for the CPU here, so that CI runs that code: the result
    # is bitwise the module converted to that dtype by hand.
    torch.manual_seed(0)
    m = gru_native.GRU(4, 5, 2)
    x = torch.randn(6, 2, 4)
    by_hand = copy.deepcopy(m).to(torch.bfloat16)
    expected, expected_h = by_hand(x.to(torch.bfloat16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, h = m(x)  # not in the table: nn.GRU on the CPU stays in float32
    assert out.dtype == torch.float32
    monkeypatch.setattr(_route, "AUTOCAST_CASTS", frozenset({"cpu"}))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, h = m(x)
    assert out.dtype == h.dtype == torch.bfloat16
    assert torch.equal(out, expected) and torch.equal(h, expected_h)


def _device_literals(tree):
    """(line, text) of every string literal naming a device type, and of every attribute
    access that asks what a tensor's device is (.is_cuda, .is_cpu)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value in ("cpu", "cuda", "meta"):
            found.append((node.lineno, node.value))
        if isinstance(node, ast.Attribute) and node.attr in ("is_cuda", "is_cpu"):
            found.append((node.lineno, node.attr))
    return found


def test_the_route_names_no_device():
    # The package's Python decides nothing by device: the device type is only a key into the
    # backend table (from C++) and the autocast table. The only device names in its code are
    # the autocast table's and the fake kernels' meta entry, both in _route.py.
    allowed = {("_route.py", "cuda"), ("_route.py", "meta")}
    seen = set()
    for path in sorted((ROOT / "gru_native").glob("*.py")):
        if path.name in ("_reference.py", "seed.py", "__main__.py"):
            continue  # the oracle and the walkthrough, not the route
        for _, text in _device_literals(ast.parse(path.read_text())):
            seen.add((path.name, text))
    assert seen <= allowed, sorted(seen - allowed)
