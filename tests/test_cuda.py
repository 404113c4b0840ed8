"""The CUDA backend: parity with torch.nn.GRU (cuDNN on a GPU, TF32 off) and the float64 CPU
reference on both recurrence paths (GEMM and persistent), half types against nn.GRU's own error
and against float32, gradcheck, determinism, several units per persistent block, the fallback
from a refused cooperative launch, module moves, device errors, autocast.

A test that forces a path checks, in the record of the kernels' launches, that the path it
forces is the one that ran; shapes meant to reach a corner of the persistent kernels are derived
from the plan the device gives (gru_native._C._cuda_persistent_plan), not assumed.

They run on a GPU when there is one and gru_native has CUDA kernels, and on the CPU in a build
on the CUDA emulation (GRU_NATIVE_CUDA_EMULATION=1: CPU tensors run the CUDA backend and kernels,
and the reference nn.GRU runs on the CPU); otherwise they skip. The few that need a real GPU
(streams, moving modules to it, CUDA autocast, mixed devices) say so. Capability checks happen
inside the tests."""

import contextlib
import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import gru_native
from gru_native import _C
from gru_native._reference import module_reference

from _util import (assert_close, assert_meaningful, assert_same_error, cuda_backend_device,
                   make_pair)

DEVICE = cuda_backend_device()

pytestmark = pytest.mark.skipif(
    DEVICE is None, reason="no GPU with gru_native's CUDA kernels, and not a CUDA-emulation build")
needs_gpu = pytest.mark.skipif(DEVICE != "cuda", reason="needs a real GPU (CUDA emulation here)")

PATHS = ["gemm", "persistent"]
# The kernels of each path's recurrence.
RECURRENCE = {"gemm": ("forward_step", "backward_step"),
              "persistent": ("persistent_forward", "persistent_backward")}


_open_records = []  # the lists of the launches() blocks open now, outermost first


def _collect_launches():
    got = _C._cuda_stop_launch_record()
    assert _C._cuda_dropped_launches() == 0, "the launch record overflowed"
    for ran in _open_records:
        ran.extend(got)


@contextlib.contextmanager
def launches():
    """The CUDA kernels launched inside the block (which may be inside another), in order: dicts
    with kernel, dtype, grid, block, smem, cooperative, kt, blocks_per_direction, units, passes,
    chunk, result (cudaSuccess, or the error the launch returned)."""
    if _open_records:
        _collect_launches()
    ran = []
    _open_records.append(ran)
    _C._cuda_start_launch_record()
    try:
        yield ran
    finally:
        _collect_launches()
        _open_records.pop()
        if _open_records:
            _C._cuda_start_launch_record()


def assert_path_ran(ran, path):
    """Some of `path`'s recurrence kernels ran, and none of the other path's."""
    done = [r["kernel"] for r in ran if r["result"] == "cudaSuccess"]
    assert any(k in RECURRENCE[path] for k in done), \
        f"GRU_NATIVE_CUDA_PATH={path}, but none of its kernels ran: {sorted(set(done))}"
    other = RECURRENCE["persistent" if path == "gemm" else "gemm"]
    stray = sorted({k for k in done if k in other})
    assert not stray, f"GRU_NATIVE_CUDA_PATH={path}, but {stray} ran"


@pytest.fixture
def path(request, monkeypatch):
    """Forces request.param's path for the test, and checks afterwards that it ran."""
    monkeypatch.setenv("GRU_NATIVE_CUDA_PATH", request.param)
    with launches() as ran:
        yield request.param
    assert_path_ran(ran, request.param)


def emulated_device(mp, **settings):
    """Sets the emulated device (GRU_NATIVE_EMULATION_<NAME>=value) on the monkeypatch `mp`, and
    makes the planner forget the device it knew."""
    for name, value in settings.items():
        mp.setenv(f"GRU_NATIVE_EMULATION_{name}", str(value))
    _C._cuda_forget_devices()


@pytest.fixture(autouse=True)
def _forget_emulated_devices():
    # After a test, its emulated device settings are undone (monkeypatch): the planner must not
    # keep what it learnt of them.
    yield
    if DEVICE == "cpu":
        _C._cuda_forget_devices()


GRID = list(itertools.product([1, 2, 3], [False, True], [False, True], [True, False],
                              [True, False]))


def _run(m, x, h0):
    x = x.detach().clone().requires_grad_()
    h0 = None if h0 is None else h0.detach().clone().requires_grad_()
    out, h = m(x, h0)
    g_out = torch.randn_like(out)
    g_h = torch.randn_like(h)
    inputs = [x] + ([h0] if h0 is not None else []) + list(m.parameters())
    return out, h, torch.autograd.grad([out, h], inputs, [g_out, g_h])


def _assert_matches(ref, ours, x, h0, what=""):
    """ours and ref on x, h0 with the same output gradients: output, h_n and every gradient
    within the dtype's tolerance; returns ours' (output, h_n, grads)."""
    torch.manual_seed(1)  # the same output gradients for both
    r = _run(ref, x, h0)
    torch.manual_seed(1)
    o = _run(ours, x, h0)
    assert_close(o[0], r[0], f"output{what}")
    assert_close(o[1], r[1], f"h_n{what}")
    for a, b in zip(o[2], r[2]):
        assert_close(a, b, f"grad{what}")
    return o


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("layers, bi, batch_first, bias, with_h0", GRID, ids=[
    f"L{l}-{'bi' if b else 'uni'}-{'bf' if f else 'tm'}-{'bias' if s else 'nobias'}-"
    f"{'h0' if h else 'noh0'}" for l, b, f, s, h in GRID])
def test_cuda_parity(layers, bi, batch_first, bias, with_h0, dtype, path):
    D = 2 if bi else 1
    ref, ours = make_pair(5, 8, layers, bias=bias, batch_first=batch_first, bidirectional=bi,
                          dtype=dtype, device=DEVICE)
    x = torch.randn((3, 6, 5) if batch_first else (6, 3, 5), dtype=dtype, device=DEVICE)
    h0 = torch.randn(layers * D, 3, 8, dtype=dtype, device=DEVICE) if with_h0 else None
    o = _assert_matches(ref, ours, x, h0)
    # And the float64 CPU reference.
    cpu = gru_native.GRU(5, 8, layers, bias=bias, batch_first=batch_first, bidirectional=bi,
                         dtype=torch.float64)
    cpu.load_state_dict({k: v.double().cpu() for k, v in ours.state_dict().items()})
    out64, h64 = module_reference(cpu, x.double().cpu(),
                                  None if h0 is None else h0.double().cpu())
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert_close(o[0].cpu(), out64, "vs float64 reference", dtype, tol, tol)


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("bi", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("sort", [True, False], ids=["sorted", "unsorted"])
def test_cuda_packed_parity(bi, sort, path):
    ref, ours = make_pair(5, 8, 2, bidirectional=bi, dtype=torch.float64, device=DEVICE)
    lengths = [7, 1, 4, 7, 2]
    if sort:
        lengths = sorted(lengths, reverse=True)
    x = torch.randn(7, 5, 5, dtype=torch.float64, device=DEVICE)
    results = []
    for m in (ref, ours):
        xi = x.clone().requires_grad_()
        out, h = m(pack_padded_sequence(xi, lengths, enforce_sorted=sort))
        grads = torch.autograd.grad(out.data.pow(2).sum() + h.sum(), [xi] + list(m.parameters()))
        results.append((out.data, h, grads))
    for a, b in zip(results[1][:2], results[0][:2]):
        assert_close(a, b, "packed")
    for a, b in zip(results[1][2], results[0][2]):
        assert_close(a, b, "packed grad")


def _half_trio(C, H, dtype):
    """A float64 CPU nn.GRU (2 layers, bidirectional) and nn.GRU and gru_native.GRU on CUDA in
    `dtype`, all with its weights."""
    torch.manual_seed(0)
    ref64 = nn.GRU(C, H, 2, bidirectional=True, dtype=torch.float64)
    ref = nn.GRU(C, H, 2, bidirectional=True).to(DEVICE, dtype)
    ours = gru_native.GRU(C, H, 2, bidirectional=True).to(DEVICE, dtype)
    ref.load_state_dict(ref64.state_dict())
    ours.load_state_dict(ref64.state_dict())
    return ref64, ref, ours


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_cuda_half_types_error_at_most_twice_nn_gru(dtype, path):
    ref64, ref, ours = _half_trio(32, 64, dtype)
    x64 = torch.randn(20, 4, 32, dtype=torch.float64)
    with torch.no_grad():
        truth, _ = ref64(x64)
    x = x64.to(DEVICE, dtype)
    with torch.no_grad():
        err_ref = (ref(x)[0].double().cpu() - truth).abs().max().item()
        err_ours = (ours(x)[0].double().cpu() - truth).abs().max().item()
    assert err_ours <= 2 * err_ref + 1e-6, (err_ours, err_ref)


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_cuda_half_types_gradients_error_at_most_twice_nn_gru(dtype, path):
    # The backward in half types: each gradient's error against float64 is at most twice the
    # error nn.GRU makes in the same dtype.
    ref64, ref, ours = _half_trio(16, 32, dtype)
    x64 = torch.randn(12, 4, 16, dtype=torch.float64)
    g64 = torch.randn(12, 4, 64, dtype=torch.float64)

    def grads(m, x, g):
        x = x.detach().clone().requires_grad_()
        out, _ = m(x)
        return torch.autograd.grad(out, [x] + list(m.parameters()), g)

    truth = grads(ref64, x64, g64)
    x, g = x64.to(DEVICE, dtype), g64.to(DEVICE, dtype)
    for name, t, r, o in zip(["input"] + [n for n, _ in ref.named_parameters()], truth,
                             grads(ref, x, g), grads(ours, x, g)):
        err_ref = (r.double().cpu() - t).abs().max().item()
        err_ours = (o.double().cpu() - t).abs().max().item()
        assert err_ours <= 2 * err_ref + 1e-6, (name, err_ours, err_ref)


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_cuda_half_types_carry_dh_in_float(dtype, path):
    # dL/dh carried back through 400 steps of a layer whose update gate stays near 1 (a long
    # memory). Rounded to the half type at every step (twice a step on the GEMM path), it would
    # gather an error of about sqrt(steps) units of roundoff; carried in float, as cuDNN carries
    # it, dL/dh0 stays within a few units of roundoff (u) of a float32 run of the same weights,
    # inputs and output gradients (all of them rounded to the half type first): what the half
    # type's rounding of the inputs, of the stored outputs and of dL/dh0 itself explains.
    T, N, C, H = 400, 4, 16, 32
    torch.manual_seed(0)
    ref = gru_native.GRU(C, H, device=DEVICE)  # float32
    with torch.no_grad():
        ref.bias_ih_l0[H:2 * H] += 5.0  # z = sigmoid(... + 5), about 0.99
    ours = gru_native.GRU(C, H, device=DEVICE, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    ref.load_state_dict(ours.state_dict())  # the rounded weights, in float32
    x = torch.randn(T, N, C, device=DEVICE, dtype=dtype)
    h0 = torch.randn(1, N, H, device=DEVICE, dtype=dtype)
    g = torch.randn(T, N, H, device=DEVICE, dtype=dtype)
    grads = []
    for m, dt in ((ref, torch.float32), (ours, dtype)):
        h = h0.to(dt).requires_grad_()
        out, _ = m(x.to(dt), h)
        grads.append(torch.autograd.grad(out, h, g.to(dt))[0].float())
    want, got = grads
    assert_meaningful(want, "dL/dh0")
    u = torch.finfo(dtype).eps / 2
    err = ((got - want).abs().max() / want.abs().max()).item()
    assert err <= 4 * u, f"dL/dh0 off by {err / u:.1f} units of roundoff of {dtype}"


def _plan(dtype, D, N, H, backward):
    return _C._cuda_persistent_plan(str(dtype).split(".")[1], D, N, H, backward)


def _several_units_case(N):
    """(dtype, bidirectional, H) of the smallest layer whose persistent blocks on this device
    each hold more hidden units than warps (units past the first pass keep their weights in
    shared memory), the last block fewer, forward and backward: float64 where its kernels reach
    that size, else float32 (at 132 multiprocessors float64 stops short: H <= 512)."""
    for dtype, bi in itertools.product((torch.float64, torch.float32), (True, False)):
        D = 2 if bi else 1
        for H in range(1, _plan(dtype, D, N, 1, False)["max_hidden"] + 1):
            plans = [_plan(dtype, D, N, H, backward) for backward in (False, True)]
            if all(p["weights_in_shared_memory"] for p in plans):
                assert H % plans[0]["units"], "the last block holds as many units as the others"
                return dtype, bi, H
    return None


def test_cuda_persistent_with_several_units_per_block(monkeypatch):
    # More hidden units than the blocks' warps: each warp of the persistent kernels owns several
    # units (the first in registers, the others in shared memory), the last block fewer units.
    # The shape comes from the device's plan (the emulation also runs it at 132 SMs, below).
    monkeypatch.setenv("GRU_NATIVE_CUDA_PATH", "persistent")
    N = 3
    case = _several_units_case(N)
    assert case is not None, "no dtype reaches several units per block on this device"
    dtype, bi, H = case
    ref, ours = make_pair(7, H, 2, bidirectional=bi, dtype=dtype, device=DEVICE)
    x = torch.randn(5, N, 7, dtype=dtype, device=DEVICE)
    h0 = torch.randn(2 * (2 if bi else 1), N, H, dtype=dtype, device=DEVICE)
    with launches() as ran:
        _assert_matches(ref, ours, x, h0, f" {dtype} H={H}")
    assert_path_ran(ran, "persistent")
    persistent = [r for r in ran if r["kernel"] in RECURRENCE["persistent"]]
    assert {r["kernel"] for r in persistent} == set(RECURRENCE["persistent"])
    for r in persistent:
        assert r["passes"] >= 2 and H % r["units"], r


@pytest.mark.parametrize("T, N, parts", [(5, 1, 1), (30, 10, 2), (100, 700, 256)],
                         ids=["5-rows", "300-rows", "70000-rows"])
def test_cuda_bias_gradients_sum_rows_in_parallel(T, N, parts):
    # Bias gradients are column sums of dG over R = T * N rows: blocks of 32 columns by 8 row
    # lanes each add up a part of the rows, then (with more than one part) a second launch adds
    # up the parts, in an order fixed by R and the columns alone. R = 5 leaves row lanes empty,
    # 300 makes two parts of 150 rows, 70,000 reaches the cap of 256 parts; H = 11 gives 22, 11
    # and 33 columns (a partial block of columns, and two blocks).
    ref, ours = make_pair(3, 11, dtype=torch.float64, device=DEVICE)
    x = torch.randn(T, N, 3, dtype=torch.float64, device=DEVICE)
    g = torch.randn(T, N, 11, dtype=torch.float64, device=DEVICE)
    names = ["bias_ih_l0", "bias_hh_l0"]
    want = torch.autograd.grad(ref(x)[0], [getattr(ref, n) for n in names], g)
    runs = []
    for _ in range(2):
        with launches() as ran:
            runs.append(torch.autograd.grad(ours(x)[0], [getattr(ours, n) for n in names], g))
    for name, a, b, w in zip(names, *runs, want):
        assert torch.equal(a, b), f"{name}: not bitwise reproducible"
        assert_close(a, w, f"grad {name}")
    sums = [r for r in ran if r["kernel"].startswith("column_sum")]
    assert {r["grid"][1] for r in sums if r["kernel"] == "column_sum_partials"} == \
        ({parts} if parts > 1 else set())
    assert all(r["grid"][1] == 1 for r in sums if r["kernel"] == "column_sum")
    assert len([r for r in sums if r["kernel"] == "column_sum"]) == 3  # b_ih's two, b_hh's one


@pytest.mark.parametrize("path", ["persistent"], indirect=True)
def test_cuda_persistent_rows_in_chunks(path, monkeypatch):
    # A batch larger than the rows the persistent kernels stage in shared memory at a time: the
    # steps run in chunks of rows (here 3 forward, 5 backward, on an emulated device with little
    # shared memory; on a GPU, a batch above the 64-row chunk).
    if DEVICE == "cpu":
        emulated_device(monkeypatch, SMEM=20000)
        N = 7
    else:
        N = 150
    ref, ours = make_pair(5, 8, 2, bidirectional=True, dtype=torch.float64, device=DEVICE)
    x = torch.randn(4, N, 5, dtype=torch.float64, device=DEVICE)
    h0 = torch.randn(4, N, 8, dtype=torch.float64, device=DEVICE)
    with launches() as ran:
        _assert_matches(ref, ours, x, h0)
    chunks = {r["kernel"]: r["chunk"] for r in ran if r["kernel"] in RECURRENCE["persistent"]}
    assert set(chunks) == set(RECURRENCE["persistent"]) and max(chunks.values()) < N, chunks


@needs_gpu
@pytest.mark.parametrize("path", PATHS, indirect=True)
def test_cuda_on_a_side_stream_equals_the_default_stream(path):
    torch.manual_seed(0)
    m = gru_native.GRU(16, 32, 2, bidirectional=True, device=DEVICE)
    x = torch.randn(9, 4, 16, device=DEVICE)
    torch.manual_seed(1)  # the same output gradients for both
    expected = _run(m, x, None)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    torch.manual_seed(1)
    with torch.cuda.stream(stream):
        got = _run(m, x, None)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    for a, b in zip(got[2], expected[2]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("path", PATHS, indirect=True)
def test_cuda_gradcheck(path):
    torch.manual_seed(0)
    m = gru_native.GRU(3, 4, 2, bidirectional=True, dtype=torch.float64, device=DEVICE)
    names = [n for n, _ in m.named_parameters()]
    x = torch.randn(4, 2, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)

    def f(x, *w):
        return torch.func.functional_call(m, dict(zip(names, w)), (x,))

    assert torch.autograd.gradcheck(f, (x, *m.parameters()))


@pytest.mark.parametrize("path", PATHS, indirect=True)
def test_cuda_bitwise_deterministic(path):
    torch.manual_seed(0)
    m = gru_native.GRU(32, 64, 2, bidirectional=True, device=DEVICE)
    x = torch.randn(30, 8, 32, device=DEVICE)
    runs = []
    for _ in range(2):
        xi = x.clone().requires_grad_()
        out, h = m(xi)
        runs.append([out, h] + list(torch.autograd.grad(out.sum() + h.pow(2).sum(),
                                                        [xi] + list(m.parameters()))))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@needs_gpu
def test_cuda_module_moves():
    torch.manual_seed(0)
    m = gru_native.GRU(4, 6, 2)
    x = torch.randn(5, 3, 4)
    expected, _ = m(x)
    for moved in (m.cuda(), m.to("cuda"), m.to(torch.device("cuda", 0))):
        out, _ = moved(x.cuda())
        assert out.is_cuda
        assert_close(out.cpu(), expected, "moved")
    half = gru_native.GRU(4, 6, 2).cuda().half()
    assert half(x.cuda().half())[0].dtype == torch.float16


@needs_gpu
def test_cuda_wrong_device_raises_nn_gru_error():
    def make(cls):
        def call():
            m = cls(4, 3).cuda()
            return m(torch.randn(5, 2, 4, device=DEVICE), torch.zeros(1, 2, 3))
        return call
    assert_same_error(make)


@needs_gpu
def test_cuda_autocast_output_dtype_like_nn_gru():
    ref, ours = make_pair(4, 6, 2, device=DEVICE)
    x = torch.randn(5, 3, 4, device=DEVICE)
    for dtype in (torch.float16, torch.bfloat16):
        with torch.autocast("cuda", dtype=dtype):
            out_r, h_r = ref(x)
            out_o, h_o = ours(x)
        assert out_o.dtype == out_r.dtype and h_o.dtype == h_r.dtype


@pytest.mark.parametrize("path", ["persistent"], indirect=True)
def test_cuda_persistent_path_is_reachable(path):
    m = gru_native.GRU(16, 32, device=DEVICE)
    out, _ = m(torch.randn(10, 2, 16, device=DEVICE))
    assert out.shape == (10, 2, 32)


def test_cuda_auto_mode_plans_once_and_never_above_the_persistent_batch(monkeypatch):
    # The planner asks the runtime about a device and a kernel once; in auto mode a batch above
    # the persistent kernels' (16 rows forward) takes the GEMM path without asking at all.
    monkeypatch.setenv("GRU_NATIVE_CUDA_PATH", "auto")
    _C._cuda_forget_devices()
    m = gru_native.GRU(8, 16, device=DEVICE)
    before = _C._cuda_plan_queries()
    with torch.no_grad(), launches() as ran:
        m(torch.randn(3, 64, 8, device=DEVICE))
    assert _C._cuda_plan_queries() == before
    assert_path_ran(ran, "gemm")
    with torch.no_grad(), launches() as ran:
        m(torch.randn(3, 2, 8, device=DEVICE))
        asked = _C._cuda_plan_queries()
        m(torch.randn(3, 2, 8, device=DEVICE))
    assert asked > before and _C._cuda_plan_queries() == asked
    assert_path_ran(ran, "persistent")


# -- the CUDA emulation itself (csrc/cuda/emulation) ----------------------------------------------

emulated_only = pytest.mark.skipif(DEVICE != "cpu", reason="a CUDA-emulation build only")


def _train_step(m, x, h0):
    torch.manual_seed(1)
    return _run(m, x, h0)


@emulated_only
@pytest.mark.parametrize("path", PATHS, indirect=True)
def test_emulation_thread_order_and_os_threads_do_not_change_results(path, monkeypatch):
    # The kernels' results may not depend on the order the threads of a block run in between
    # barriers, nor on whether they are fibers or OS threads: bitwise the same in every case.
    torch.manual_seed(0)
    m = gru_native.GRU(6, 10, 2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(4, 3, 6, dtype=torch.float64)
    h0 = torch.randn(4, 3, 10, dtype=torch.float64)
    expected = _train_step(m, x, h0)
    for var, value in (("GRU_NATIVE_EMULATION_ORDER", "forward"),
                       ("GRU_NATIVE_EMULATION_ORDER", "reverse"),
                       ("GRU_NATIVE_EMULATION_ORDER", "random"),
                       ("GRU_NATIVE_EMULATION_THREADS", "os")):
        with monkeypatch.context() as mp:
            mp.setenv(var, value)
            emulated_device(mp, SMS=2)  # few blocks: few OS threads
            got = _train_step(m, x, h0)
        for a, b in zip([got[0], got[1], *got[2]], [expected[0], expected[1], *expected[2]]):
            assert torch.equal(a, b), (var, value)


@emulated_only
def test_emulation_several_units_per_block_at_an_h100s_132_sms():
    # The test above on an emulated H100/H200 (132 SMs, 227 KB of shared memory per block), where
    # float64's kernels stop short of several units per block and float32 takes over. In a process
    # of its own: its two launches of 118 blocks leave 30,000 fiber stacks (60,000 mappings) in
    # the emulation's pool, near Linux's default limit of 65,530 mappings per process.
    import os
    import subprocess
    import sys

    env = dict(os.environ, GRU_NATIVE_EMULATION_SMS="132", GRU_NATIVE_EMULATION_SMEM="232448")
    test = f"{__file__}::test_cuda_persistent_with_several_units_per_block"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
                         cwd=os.path.dirname(os.path.dirname(__file__)), env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "1 passed" in run.stdout, run.stdout[-4000:] + run.stderr


@emulated_only
def test_emulation_persistent_kernel_that_does_not_fit(monkeypatch):
    # A device whose shared memory cannot hold a block's slice of W_hh, or without cooperative
    # launches: the automatic choice takes the GEMM path (the same bits as forcing it), forcing
    # the persistent path raises.
    torch.manual_seed(0)
    m = gru_native.GRU(5, 8, dtype=torch.float64)
    x = torch.randn(6, 2, 5, dtype=torch.float64)
    with monkeypatch.context() as mp:
        mp.setenv("GRU_NATIVE_CUDA_PATH", "gemm")
        gemm = _train_step(m, x, None)
        mp.setenv("GRU_NATIVE_CUDA_PATH", "persistent")
        persistent = _train_step(m, x, None)
    assert not torch.equal(gemm[2][1], persistent[2][1])  # the paths sum in different orders
    for setting in ({"SMEM": 64}, {"COOPERATIVE": 0}):
        with monkeypatch.context() as mp:
            emulated_device(mp, **setting)
            mp.setenv("GRU_NATIVE_CUDA_PATH", "auto")
            auto = _train_step(m, x, None)
            for a, b in zip([auto[0], auto[1], *auto[2]], [gemm[0], gemm[1], *gemm[2]]):
                assert torch.equal(a, b), setting
            mp.setenv("GRU_NATIVE_CUDA_PATH", "persistent")
            with pytest.raises(RuntimeError, match="persistent .* kernel does not fit"):
                m(x)
    _C._cuda_forget_devices()
    with monkeypatch.context() as mp:  # and with room, auto takes the persistent path here
        mp.setenv("GRU_NATIVE_CUDA_PATH", "auto")
        auto = _train_step(m, x, None)
    for a, b in zip([auto[0], auto[1], *auto[2]], [persistent[0], persistent[1], *persistent[2]]):
        assert torch.equal(a, b)


@emulated_only
def test_emulation_auto_falls_back_when_the_cooperative_launch_is_refused(monkeypatch):
    # A device that refuses a cooperative launch its plan expected to fit (multiprocessors held
    # by other work: MPS clients, green contexts, NCCL kernels): here the plan is made on 16
    # multiprocessors and kept, then the launches meet one (9 blocks of 256 threads: more than
    # a multiprocessor's 2048 threads hold), or none that launches cooperatively. Auto mode takes
    # the GEMM path, with the same bits as forcing it; forcing the persistent path raises.
    torch.manual_seed(0)
    m = gru_native.GRU(5, 72, dtype=torch.float64)  # 9 blocks of 8 units
    x = torch.randn(6, 2, 5, dtype=torch.float64)
    with monkeypatch.context() as mp:
        mp.setenv("GRU_NATIVE_CUDA_PATH", "gemm")
        gemm = _train_step(m, x, None)
    for setting, error in (({"SMS": 1}, "cudaErrorCooperativeLaunchTooLarge"),
                           ({"COOPERATIVE": 0}, "cudaErrorNotSupported")):
        with monkeypatch.context() as mp:
            emulated_device(mp, SMS=16)
            mp.setenv("GRU_NATIVE_CUDA_PATH", "auto")
            with launches() as ran:
                _train_step(m, x, None)  # planned (and kept) on 16 multiprocessors
            assert_path_ran(ran, "persistent")
            for name, value in setting.items():  # the device shrinks; the plan does not know
                mp.setenv(f"GRU_NATIVE_EMULATION_{name}", str(value))
            with launches() as ran:
                auto = _train_step(m, x, None)
            for a, b in zip([auto[0], auto[1], *auto[2]], [gemm[0], gemm[1], *gemm[2]]):
                assert torch.equal(a, b), setting
            refused = [r for r in ran if r["kernel"] in RECURRENCE["persistent"]]
            assert {r["kernel"] for r in refused} == set(RECURRENCE["persistent"])
            assert all(r["result"] == error for r in refused), refused
            assert_path_ran(ran, "gemm")
            mp.setenv("GRU_NATIVE_CUDA_PATH", "persistent")
            with pytest.raises(RuntimeError, match="refused the cooperative launch of the "
                                                   "persistent forward kernel"):
                m(x)
