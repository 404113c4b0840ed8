"""Shared test helpers: the tolerance table, one comparison that reports the worst element, the
same-error check against nn.GRU, the devices to run on, and runs at a given thread count."""

import pytest
import torch

# Per dtype: (atol, rtol) for comparing gru_native with torch.nn.GRU / the float64 reference.
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
}


def devices():
    """CPU always; CUDA when a GPU is there and gru_native was built with its kernels."""
    params = [pytest.param("cpu", id="cpu")]
    cuda_ok = torch.cuda.is_available()
    if cuda_ok:
        import gru_native

        cuda_ok = gru_native.build_info()["cuda"]
    params.append(pytest.param(
        "cuda", id="cuda",
        marks=pytest.mark.skipif(not cuda_ok, reason="no GPU, or gru_native built without CUDA"),
    ))
    return params


def cuda_backend_device():
    """The device whose tensors run gru_native's CUDA backend: "cuda" on a GPU with gru_native's
    CUDA kernels; "cpu" in a build on the CUDA emulation (GRU_NATIVE_CUDA_EMULATION=1), where CPU
    tensors run the CUDA backend and kernels; None otherwise."""
    import gru_native

    info = gru_native.build_info()
    if info["cuda"] and torch.cuda.is_available():
        return "cuda"
    return "cpu" if info["cuda_emulation"] else None


def assert_close(actual, expected, name="", dtype=None, atol=None, rtol=None):
    """allclose with the dtype's tolerances; on failure, name the worst element."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    dtype = dtype or actual.dtype
    d_atol, d_rtol = TOLERANCES[dtype]
    atol = d_atol if atol is None else atol
    rtol = d_rtol if rtol is None else rtol
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    if a.numel() == 0:
        return
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    assert torch.equal(nan_a, nan_e), f"{name}: NaN positions differ"
    a = torch.where(nan_a, torch.zeros_like(a), a)
    e = torch.where(nan_e, torch.zeros_like(e), e)
    err = (a - e).abs()
    excess = err - (atol + rtol * e.abs())
    worst = int(torch.argmax(excess))
    if excess.reshape(-1)[worst] > 0:
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), a.shape))
        raise AssertionError(
            f"{name}: max |diff| {err.max().item():.3e}; worst at {idx}: "
            f"{a.reshape(-1)[worst].item()!r} vs {e.reshape(-1)[worst].item()!r} "
            f"(atol={atol}, rtol={rtol}, dtype={dtype})"
        )


def _outcome(fn):
    try:
        result = fn()
    except Exception as e:  # noqa: BLE001 - we compare whatever is raised
        return type(e), str(e)
    return "ok", result


def assert_same_error(make_call):
    """make_call(cls) -> a zero-argument callable using cls (nn.GRU or gru_native.GRU): both
    raise, the same exception type with the same message."""
    import gru_native

    ref_type, ref_msg = _outcome(make_call(torch.nn.GRU))
    our_type, our_msg = _outcome(make_call(gru_native.GRU))
    assert ref_type != "ok", "nn.GRU did not raise: the case is not a bad input"
    assert our_type is ref_type, f"{our_type} != {ref_type}: {our_msg!r} vs {ref_msg!r}"
    assert our_msg == ref_msg


def assert_meaningful(grad, name, minimum=1e-3):
    """A gradient that is almost zero everywhere proves nothing when compared."""
    assert grad is not None, f"{name}: no gradient"
    assert grad.abs().max().item() > minimum, f"{name}: gradient too small to be a test"


def make_pair(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
              bidirectional=False, dtype=torch.float32, device="cpu", seed=0):
    """A torch.nn.GRU and a gru_native.GRU with the same weights."""
    import gru_native

    torch.manual_seed(seed)
    ref = torch.nn.GRU(input_size, hidden_size, num_layers, bias=bias, batch_first=batch_first,
                       bidirectional=bidirectional, dtype=dtype, device=device)
    ours = gru_native.GRU(input_size, hidden_size, num_layers, bias=bias,
                          batch_first=batch_first, bidirectional=bidirectional, dtype=dtype,
                          device=device)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def cpu_kernels_build():
    """Whether CPU tensors run the CPU kernels (not the CUDA backend of a CUDA-emulation build)."""
    import gru_native

    return not gru_native.build_info()["cuda_emulation"]


def with_threads(threads, fn):
    """fn() with torch's intra-op thread count set to `threads`, and the CPU kernels' thread plans
    of the last layer and GEMM it ran ({"forward": (groups, per_group), "backward": ...,
    "gemm": (row parts, column parts)}); the count is restored after."""
    from gru_native import _C

    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        result = fn()
        return result, _C._cpu_last_thread_plans()
    finally:
        torch.set_num_threads(old)
