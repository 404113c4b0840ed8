"""What a replacement for nn.GRU must never do differently: bad inputs (checked against nn.GRU
in the test itself), NaN/Inf, non-contiguous tensors, long sequences, threads, determinism,
memory, and errors from the C++ side."""

import concurrent.futures
import gc
import io
import os
import time

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_sequence

import gru_native

from _util import assert_close, assert_same_error, cpu_kernels_build, make_pair, with_threads

C, H = 4, 3


def _call(cls_args, x_fn, h_fn=None, **kw):
    def make(cls):
        def call():
            torch.manual_seed(0)
            m = cls(*cls_args, **kw)
            x = x_fn()
            return m(x) if h_fn is None else m(x, h_fn())
        return call
    return make


def _double_model(cls_args, x_fn, h_fn=None, **kw):
    def make(cls):
        def call():
            torch.manual_seed(0)
            m = cls(*cls_args, **kw).double()
            return m(x_fn()) if h_fn is None else m(x_fn(), h_fn())
        return call
    return make


BAD_INPUTS = {
    # wrong rank
    "input-rank-1": _call((C, H), lambda: torch.randn(C)),
    "input-rank-4": _call((C, H), lambda: torch.randn(2, 5, 2, C)),
    "input-rank-5": _call((C, H), lambda: torch.randn(1, 1, 5, 2, C)),
    # wrong feature size
    "features-batched": _call((C, H), lambda: torch.randn(5, 2, C + 1)),
    "features-batch-first": _call((C, H), lambda: torch.randn(2, 5, C - 1), batch_first=True),
    "features-unbatched": _call((C, H), lambda: torch.randn(5, C + 2)),
    # wrong h0 rank or shape
    "h0-rank-1": _call((C, H), lambda: torch.randn(5, 2, C), lambda: torch.randn(H)),
    "h0-rank-4": _call((C, H), lambda: torch.randn(5, 2, C), lambda: torch.randn(1, 1, 2, H)),
    "h0-rank-3-unbatched": _call((C, H), lambda: torch.randn(5, C), lambda: torch.randn(1, 1, H)),
    "h0-layers": _call((C, H, 3), lambda: torch.randn(5, 2, C), lambda: torch.randn(2, 2, H)),
    "h0-batch": _call((C, H), lambda: torch.randn(5, 2, C), lambda: torch.randn(1, 4, H)),
    "h0-hidden": _call((C, H), lambda: torch.randn(5, 2, C), lambda: torch.randn(1, 2, H + 1)),
    "h0-directions": _call((C, H), lambda: torch.randn(5, 2, C), lambda: torch.randn(1, 2, H),
                           bidirectional=True),
    # int / bool input
    "input-int64": _call((C, H), lambda: torch.ones(5, 2, C, dtype=torch.long)),
    "input-int32": _call((C, H), lambda: torch.ones(5, 2, C, dtype=torch.int32)),
    "input-bool": _call((C, H), lambda: torch.ones(5, 2, C, dtype=torch.bool)),
    "input-uint8-unbatched": _call((C, H), lambda: torch.ones(5, C, dtype=torch.uint8)),
    # dtype mismatches
    "input-f64-model-f32": _call((C, H), lambda: torch.randn(5, 2, C, dtype=torch.float64)),
    "input-f32-model-f64": _double_model((C, H), lambda: torch.randn(5, 2, C)),
    "h0-f64-input-f32": _call((C, H), lambda: torch.randn(5, 2, C),
                              lambda: torch.randn(1, 2, H, dtype=torch.float64)),
    "h0-f32-input-f64": _double_model((C, H), lambda: torch.randn(5, 2, C, dtype=torch.float64),
                                      lambda: torch.randn(1, 2, H)),
    "h0-f64-nobias": _call((C, H), lambda: torch.randn(5, 2, C),
                           lambda: torch.randn(1, 2, H, dtype=torch.float64), bias=False),
    "h0-int-bi-2layers": _call((C, H, 2), lambda: torch.randn(5, 2, C),
                               lambda: torch.zeros(4, 2, H, dtype=torch.int64),
                               bidirectional=True),
    # device mismatches, a meta tensor among them
    "h0-meta": _call((C, H), lambda: torch.randn(5, 2, C),
                     lambda: torch.zeros(1, 2, H, device="meta")),
    "input-meta": _call((C, H), lambda: torch.randn(5, 2, C, device="meta")),
    "input-meta-h0-cpu": _call((C, H), lambda: torch.randn(5, 2, C, device="meta"),
                               lambda: torch.zeros(1, 2, H)),
    # empty sequences
    "seq-len-0": _call((C, H), lambda: torch.randn(0, 2, C)),
    "seq-len-0-bi-3layers": _call((C, H, 3), lambda: torch.randn(0, 2, C), bidirectional=True),
    "seq-len-0-unbatched": _call((C, H), lambda: torch.randn(0, C)),
    "seq-len-0-batch-first": _call((C, H), lambda: torch.randn(3, 0, C), batch_first=True),
    "seq-len-0-h0-f64": _call((C, H), lambda: torch.randn(0, 2, C),
                              lambda: torch.randn(1, 2, H, dtype=torch.float64)),
    # wrong PackedSequence batch
    "packed-h0-batch": _call((C, H), lambda: pack_sequence([torch.randn(3, C), torch.randn(2, C)]),
                             lambda: torch.randn(1, 3, H)),
    "packed-h0-too-small-unsorted": _call(
        (C, H), lambda: pack_sequence([torch.randn(2, C), torch.randn(3, C)],
                                      enforce_sorted=False), lambda: torch.randn(1, 1, H)),
    "packed-features": _call((C, H), lambda: pack_sequence([torch.randn(3, C + 1)])),
    "packed-data-3d": _call((C, H), lambda: PackedSequence(torch.randn(4, 1, C),
                                                           torch.tensor([2, 2]))),
    "packed-dtype": _call((C, H), lambda: pack_sequence([torch.randn(3, C, dtype=torch.float64)])),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=str)
def test_bad_input_matrix(case):
    assert_same_error(BAD_INPUTS[case])


# -- NaN and Inf ---------------------------------------------------------------------------

@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")],
                         ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", ["input", "h0", "weight"])
def test_nan_inf_propagate_like_nn_gru(value, where):
    ref, ours = make_pair(C, 5, 2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(6, 3, C, dtype=torch.float64)
    h0 = torch.randn(4, 3, 5, dtype=torch.float64)
    if where == "input":
        x[2, 1, 0] = value
    elif where == "h0":
        h0[1, 2, 3] = value
    else:
        with torch.no_grad():
            for m in (ref, ours):
                m.weight_hh_l0[4, 1] = value
    out_r, h_r = ref(x, h0)
    out_o, h_o = ours(x, h0)
    for name, a, b in (("output", out_o, out_r), ("h_n", h_o, h_r)):
        assert torch.equal(torch.isnan(a), torch.isnan(b)), f"{name}: NaN positions differ"
        assert torch.equal(torch.isinf(a), torch.isinf(b)), f"{name}: Inf positions differ"
        assert_close(a, b, name)


# -- layouts ---------------------------------------------------------------------------------

def test_non_contiguous_input_h0_and_weights():
    ref, ours = make_pair(C, 6, 2, bidirectional=True, dtype=torch.float64)
    for m in (ref, ours):
        with torch.no_grad():
            # A transposed (non-contiguous) parameter, and a weight tied to another.
            w = m.weight_hh_l1.detach().t().contiguous().t()
            m.weight_hh_l1 = nn.Parameter(w)
            m.weight_hh_l1_reverse = m.weight_hh_l1
    assert not ours.weight_hh_l1.is_contiguous()
    big = torch.randn(7, 6, 2 * C, dtype=torch.float64)
    x = big[:, ::2, ::2]                       # strided in two dimensions
    h0 = torch.randn(3, 4, 6, dtype=torch.float64).transpose(0, 1)  # [4, 3, 6], transposed
    assert not x.is_contiguous() and not h0.is_contiguous()
    results = []
    for m in (ref, ours):
        xi = x.detach().clone().requires_grad_()  # clone keeps the strides
        out, h = m(xi[:, :, :], h0)
        grads = torch.autograd.grad(out.sum() + h.pow(2).sum(), [xi] + list(m.parameters()))
        results.append((out, h, grads))
    assert_close(results[1][0], results[0][0], "output")
    assert_close(results[1][1], results[0][1], "h_n")
    for a, b in zip(results[1][2], results[0][2]):
        assert_close(a, b, "grad")


# -- long sequences --------------------------------------------------------------------------

def test_long_sequence_batch1_linear_time():
    torch.manual_seed(0)
    ref, ours = make_pair(2, 4, 1)
    x = torch.randn(100_000, 1, 2)
    with torch.no_grad():
        ours(x[:1000])  # warm up
        t0 = time.perf_counter()
        ours(x[:10_000])
        t_short = time.perf_counter() - t0
        t0 = time.perf_counter()
        out, h = ours(x)
        t_long = time.perf_counter() - t0
        out_r, h_r = ref(x)
    assert_close(h, h_r, "h_n after 100,000 steps")
    assert_close(out[-100:], out_r[-100:], "last outputs")
    # 10x the steps: about 10x the time (generous bounds for a noisy machine).
    assert t_long < 40 * t_short, (t_short, t_long)
    # Backward through all of them.
    xg = x.clone().requires_grad_()
    out, h = ours(xg)
    (out.sum() + h.sum()).backward()
    assert torch.isfinite(xg.grad).all()


def _available_memory_gib():
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) for line in f}
        return info["MemAvailable"] / 2**20
    except (OSError, KeyError, ValueError):
        return 0.0


@pytest.mark.slow
def test_beyond_2_31_elements():
    # gi (R x 3H) and the output cross 2^31 elements: all index arithmetic must be 64-bit.
    Hh, N = 128, 128
    T = (2**31) // (3 * Hh * N) + 64
    need = T * N * Hh * 4 * (3 + 1 + 1) / 2**30  # gi, output, input (C = 1) and slack, GiB
    if _available_memory_gib() < need + 2:
        pytest.skip(f"needs about {need:.0f} GiB free")
    torch.manual_seed(0)
    m = gru_native.GRU(1, Hh)
    x = torch.randn(T, N, 1)
    assert T * N * 3 * Hh > 2**31
    with torch.no_grad():
        out, h = m(x)
        # The last 50 steps again, from the state the long run reached: same results.
        tail_out, tail_h = m(x[-50:], out[-51].unsqueeze(0).contiguous())
    assert_close(tail_out, out[-50:], "last steps")
    assert_close(tail_h, h, "h_n")


# -- threads and determinism -------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["inference", "training"])
def test_eight_threads_give_the_serial_results_bitwise(mode):
    torch.manual_seed(0)
    m = gru_native.GRU(16, 48, 2, bidirectional=True)
    inputs = [torch.randn(12, 5, 16) for _ in range(8)]

    def run(x):
        if mode == "inference":
            with torch.no_grad():
                return list(m(x))
        x = x.clone().requires_grad_()
        out, h = m(x)
        return [out, h] + list(torch.autograd.grad(out.sum() + h.pow(2).sum(),
                                                   [x] + list(m.parameters())))

    serial = [run(x) for x in inputs]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(3):
            threaded = list(pool.map(run, inputs))
            for s, t in zip(serial, threaded):
                for a, b in zip(s, t):
                    assert torch.equal(a, b)


@pytest.mark.skipif(not cpu_kernels_build(), reason="the CPU kernels' thread split")
@pytest.mark.parametrize("bidirectional, threads, per_group", [(False, 2, 2), (False, 3, 3),
                                                                (True, 4, 2)],
                         ids=["uni-2", "uni-3", "bi-4"])
def test_bitwise_identical_across_thread_counts(bidirectional, threads, per_group):
    # The CPU kernels' results do not depend on how many threads share a layer: each element is
    # computed by one thread, in a fixed order. The plan gives two directions to two thread
    # groups first, so the hidden units of a direction are split over threads only where a
    # group has more than one (asserted: the split this test is named for happens).
    torch.manual_seed(0)
    m = gru_native.GRU(40, 96, 2, bidirectional=bidirectional)
    x = torch.randn(20, 16, 40, requires_grad=True)

    def run():
        out, h = m(x)
        grads = torch.autograd.grad(out.sum() + h.pow(2).sum(), [x] + list(m.parameters()))
        return [out, h, *grads]

    serial, plan1 = with_threads(1, run)
    split, plan = with_threads(threads, run)
    assert (plan1["forward"], plan1["backward"]) == ((1, 1), (1, 1))
    groups = 2 if bidirectional else 1
    assert plan["forward"] == plan["backward"] == (groups, per_group)
    for a, b in zip(serial, split):
        assert torch.equal(a, b)


# (T, N, C, H, layers, bidirectional): the products of every size class (the plain loops, the
# few-rows dot products, the packed GEMM, tile and block edges), packed-sized batches of one and
# two rows, and a shape where torch's BLAS gave other bits at two threads on an AMD CPU.
THREAD_GRID = [(5, 1, 64, 300, 1, False), (5, 2, 64, 300, 1, False), (3, 9, 20, 33, 1, True),
               (12, 16, 40, 96, 2, True), (7, 37, 130, 70, 2, False), (20, 64, 256, 512, 1, False),
               (2, 100, 600, 257, 1, True)]


@pytest.mark.skipif(not cpu_kernels_build(), reason="the CPU kernels' threads")
@pytest.mark.parametrize("shape", THREAD_GRID, ids=lambda s: "-".join(map(str, s)))
def test_bits_do_not_depend_on_threads_over_a_grid(shape):
    T, N, C, H, L, bi = shape
    torch.manual_seed(0)
    m = gru_native.GRU(C, H, L, bidirectional=bi)
    x = torch.randn(T, N, C, requires_grad=True)
    h0 = torch.randn(L * (2 if bi else 1), N, H, requires_grad=True)

    def run():
        out, h = m(x, h0)
        grads = torch.autograd.grad(out.pow(2).sum() + h.sum(), [x, h0] + list(m.parameters()))
        return [out, h, *grads]

    expected, _ = with_threads(1, run)
    for threads in (2, 3, 4):
        got, _ = with_threads(threads, run)
        for a, b in zip(expected, got):
            assert torch.equal(a, b), threads


@pytest.mark.skipif(not cpu_kernels_build(), reason="the CPU kernels' threads")
@pytest.mark.parametrize("N, C, H", [(1, 70, 300), (9, 64, 300), (64, 512, 1024)])
def test_cell_bits_do_not_depend_on_threads(N, C, H):
    torch.manual_seed(0)
    cell = gru_native.GRUCell(C, H)
    x = torch.randn(N, C, requires_grad=True)
    h = torch.randn(N, H, requires_grad=True)

    def run():
        out = cell(x, h)
        return [out, *torch.autograd.grad(out.pow(2).sum(), [x, h] + list(cell.parameters()))]

    expected, _ = with_threads(1, run)
    for threads in (2, 3, 4):
        got, _ = with_threads(threads, run)
        for a, b in zip(expected, got):
            assert torch.equal(a, b), threads


# -- memory ----------------------------------------------------------------------------------

def _rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _training_rss_growth(steps):
    torch.manual_seed(0)
    m = gru_native.GRU(32, 64, 2, bidirectional=True, dropout=0.1)
    opt = torch.optim.SGD(m.parameters(), lr=1e-3)
    x = torch.randn(20, 8, 32)

    def step():
        opt.zero_grad()
        out, h = m(x)
        (out.pow(2).mean() + h.pow(2).mean()).backward()
        opt.step()

    for _ in range(50):
        step()
    gc.collect()
    before = _rss_mib()
    for _ in range(steps):
        step()
    gc.collect()
    return _rss_mib() - before


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_training_memory_is_flat_short():
    assert _training_rss_growth(300) < 8.0


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_training_memory_is_flat_5000_steps():
    assert _training_rss_growth(5000) < 8.0


@pytest.mark.skipif(gru_native.build_info()["cuda_emulation"],
                    reason="the emulated CUDA backend's internal tensors are emulated device "
                           "memory (csrc/cuda/emulation/device_memory.cpp), not the host cache's")
def test_empty_cache_releases_the_reused_blocks():
    torch.manual_seed(0)
    m = gru_native.GRU(64, 128)
    x = torch.randn(100, 32, 64, requires_grad=True)
    out, h = m(x)
    (out.sum() + h.sum()).backward()
    del out, h
    assert gru_native._C._cached_bytes() > 0  # the workspace and scratch, kept for reuse
    released = gru_native.empty_cache()
    assert released > 0 and gru_native._C._cached_bytes() == 0


@pytest.mark.skipif(gru_native.build_info()["cuda_emulation"],
                    reason="the emulated CUDA backend returns at::empty's tensors, not the host "
                           "cache's")
def test_returned_tensors_are_ordinary_cpu_tensors():
    # Outputs, h_n and gradients come from the host cache (csrc/cpu/host_cache.h) but behave as
    # at::empty's: resizable, shareable, picklable, and never handed out again while alive.
    torch.manual_seed(0)
    m = gru_native.GRU(256, 512)  # gradients of 1.5-3 MB: cached blocks
    x = torch.randn(300, 2, 256, requires_grad=True)  # output of 1.2 MB
    out, h = m(x)
    (out.sum() + h.sum()).backward()
    grad = m.weight_hh_l0.grad
    kept_out, kept_grad = out.detach().clone(), grad.clone()
    with torch.no_grad():  # more calls, freeing and reusing blocks, while out and grad live
        for _ in range(3):
            m(torch.randn(300, 2, 256))
    m.zero_grad(set_to_none=True)  # the next backward's gradients are new tensors
    out_b, h_b = m(torch.randn(300, 2, 256, requires_grad=True))
    (out_b.sum() + h_b.sum()).backward()
    assert m.weight_hh_l0.grad is not grad
    assert torch.equal(out.detach(), kept_out)
    assert torch.equal(grad, kept_grad)
    out2 = out.detach()
    out2.resize_(400, 2, 512)  # grows: a new block from the same allocator
    assert torch.equal(out2[:300], kept_out)
    out2.share_memory_()
    assert out2.is_shared() and torch.equal(out2[:300], kept_out)
    buf = io.BytesIO()
    torch.save(grad, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf), kept_grad)


def test_backward_frees_its_workspace():
    # After backward, the saved workspace is released (the graph frees it): a second backward
    # through the same graph is refused, like for any op whose saved tensors are freed.
    torch.manual_seed(0)
    m = gru_native.GRU(4, 8, 2)
    out, h = m(torch.randn(5, 2, 4))
    (out.sum() + h.sum()).backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        (out.sum() + h.sum()).backward()


# -- errors from the C++ side ------------------------------------------------------------------

def _weights(L=1, D=1, bias=True, Cc=C, Hh=H):
    ws = []
    for layer in range(L):
        for _ in range(D):
            cin = Cc if layer == 0 else D * Hh
            ws += [torch.randn(3 * Hh, cin), torch.randn(3 * Hh, Hh)]
            if bias:
                ws += [torch.randn(3 * Hh), torch.randn(3 * Hh)]
    return ws


OP_ERRORS = {
    "weight shape": (lambda ws: ws.__setitem__(1, torch.randn(3 * H, H + 1)), "weight_hh_l0"),
    "bias shape": (lambda ws: ws.__setitem__(3, torch.randn(3 * H + 1)), "bias_hh_l0"),
    "weight count": (lambda ws: ws.pop(), "incorrect number of RNN parameters"),
    "weight dtype": (lambda ws: ws.__setitem__(2, torch.randn(3 * H, dtype=torch.float64)),
                     "bias_ih_l0"),
}


@pytest.mark.parametrize("case", list(OP_ERRORS), ids=str)
def test_op_errors_name_the_argument(case):
    mutate, needle = OP_ERRORS[case]
    ws = _weights()
    mutate(ws)
    x = torch.randn(5, 2, C)
    with pytest.raises(RuntimeError, match=needle):
        torch.ops.gru_native.gru_forward(x, None, ws, None, None, True, 1, False, False)
    # The direct entry hands weights it does not take to torch's own GRU instead (None: the
    # route's TORCH), which computes nn.GRU's result or raises nn.GRU's error.
    assert gru_native._C.gru(x, None, ws, None, None, True, 1, False) is None


@pytest.mark.parametrize("batch_sizes, needle", [
    ([2, 3], "non-increasing"), ([2, 0], "positive"), ([3, 3], "sum to"),
    ([[2, 1]], "1-D int64"),
], ids=["increasing", "zero", "sum", "2-D"])
def test_op_rejects_bad_batch_sizes(batch_sizes, needle):
    data = torch.randn(5, C)
    with pytest.raises(RuntimeError, match=needle):
        torch.ops.gru_native.gru_forward(data, torch.zeros(1, 3, H), _weights(),
                                         torch.tensor(batch_sizes), None, True, 1, False, False)


def test_op_rejects_bad_hx_and_mask():
    x = torch.randn(5, 2, C)
    with pytest.raises(RuntimeError, match="hx must have shape"):
        torch.ops.gru_native.gru_forward(x, torch.zeros(1, 3, H), _weights(), None, None, True,
                                         1, False, False)
    with pytest.raises(RuntimeError, match="dropout_mask must have shape"):
        torch.ops.gru_native.gru_forward(x, None, _weights(L=2), None, torch.ones(1, 10, H + 1),
                                         True, 2, False, False)


def test_backward_op_without_workspace_raises():
    x = torch.randn(5, 2, C)
    ws = _weights()
    out, hy, work, lower = torch.ops.gru_native.gru_forward(x, None, ws, None, None, True, 1,
                                                            False, False)
    with pytest.raises(RuntimeError, match="workspace has shape"):
        torch.ops.gru_native.gru_backward(torch.ones_like(out), None, x, None, ws, None, None,
                                          out, work, lower, True, 1, False, True, True)


# -- autograd machinery around the training node ----------------------------------------------


def _autograd_features():
    import threading
    from torch.utils.checkpoint import checkpoint

    def in_thread(step):
        box = []
        t = threading.Thread(target=lambda: box.append(step()))
        t.start()
        t.join()
        return box[0]

    def with_context(make_ctx):
        def run(m, x):
            with make_ctx():
                return m(x)
        return run

    return {
        "checkpoint-reentrant": lambda m, x: checkpoint(m, x, use_reentrant=True),
        "checkpoint-non-reentrant": lambda m, x: checkpoint(m, x, use_reentrant=False),
        "save_on_cpu": with_context(torch.autograd.graph.save_on_cpu),
        "anomaly-mode": with_context(torch.autograd.detect_anomaly),
        "backward-in-a-thread": "thread",
        "retain-graph-twice": "retain",
        "packed": "packed",
    }, in_thread


@pytest.mark.parametrize("feature", list(_autograd_features()[0]))
def test_autograd_features_give_nn_grus_gradients(feature):
    # Activation checkpointing, saved-tensor hooks, anomaly mode, a backward run from another
    # thread, a retained graph: the gradients are nn.GRU's.
    features, in_thread = _autograd_features()
    how = features[feature]
    results = []
    for m in make_pair(3, 4, 2, bidirectional=True, dtype=torch.float64):
        torch.manual_seed(2)
        x = torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True)
        if how == "packed":
            out, h = m(pack_sequence([x[:, 0], x[:4, 1]]))
            out = out.data
        else:
            out, h = how(m, x) if callable(how) else m(x)
        loss = out.pow(2).sum() + h.sum()
        if how == "thread":
            in_thread(loss.backward)
        elif how == "retain":
            loss.backward(retain_graph=True)
            loss.backward()
        else:
            loss.backward()
        results.append([x.grad] + [p.grad for p in m.parameters()])
    ref, ours = results
    for a, b in zip(ours, ref):
        assert_close(a, b, feature, dtype=torch.float64)


def test_a_hung_test_fails_fast_with_its_traceback(tmp_path):
    # The per-test time limit of tests/conftest.py: a test that hangs (here it sleeps) is cut off
    # after GRU_NATIVE_TEST_TIMEOUT seconds with every thread's traceback, and the run fails.
    import shutil
    import subprocess
    import sys

    shutil.copy(os.path.join(os.path.dirname(__file__), "conftest.py"), tmp_path)
    (tmp_path / "test_hang.py").write_text(
        "import time\n\n\ndef test_hangs_in_here():\n    time.sleep(600)\n")
    env = dict(os.environ, GRU_NATIVE_TEST_TIMEOUT="3")
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(tmp_path / "test_hang.py")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert time.monotonic() - start < 60
    assert "Timeout" in run.stderr and "test_hangs_in_here" in run.stderr, run.stderr
