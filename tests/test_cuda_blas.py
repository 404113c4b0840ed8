"""The CUDA backend's cuBLAS calls (csrc/cuda/device_cuda.cpp): torch's math settings honoured
(TF32 for float32, reduced-precision reductions for the half types), and the GEMM with nothing to
sum (K = 0, an empty batch's weight gradients: C is zeroed, not computed).

They run on a GPU with gru_native's CUDA kernels, and on the CUDA emulation, whose cuBLAS rounds
TF32 inputs and reduces 16-bit products over K > 256 in the output type unless torch disallows it
(csrc/cuda/emulation/cublas.h); otherwise they skip."""

import pytest
import torch

import gru_native

from _util import assert_close, cuda_backend_device

DEVICE = cuda_backend_device()

pytestmark = pytest.mark.skipif(
    DEVICE is None, reason="no GPU with gru_native's CUDA kernels, and not a CUDA-emulation build")
emulated_only = pytest.mark.skipif(DEVICE != "cpu", reason="a CUDA-emulation build only")


@pytest.fixture
def gemm_path(monkeypatch):
    # Every product of the layer through cuBLAS (the persistent path does the recurrence itself).
    monkeypatch.setenv("GRU_NATIVE_CUDA_PATH", "gemm")


def test_cuda_float32_gemms_use_tf32_only_when_torch_allows_it(gemm_path):
    torch.manual_seed(0)
    m = gru_native.GRU(64, 64, device=DEVICE)
    x = torch.randn(6, 4, 64, device=DEVICE)
    with torch.no_grad():
        exact = m(x)[0]  # TF32 is off in every test (conftest.py)
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            fast = m(x)[0]
        finally:
            torch.backends.cuda.matmul.allow_tf32 = False
        again = m(x)[0]
    assert not torch.equal(fast, exact), "allow_tf32 had no effect on the float32 GEMMs"
    assert_close(fast, exact, "TF32", atol=1e-2, rtol=1e-2)
    assert torch.equal(again, exact)


@emulated_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_emulation_half_gemms_reduce_in_the_output_type_only_when_torch_allows_it(dtype,
                                                                                 gemm_path):
    # The input projection sums over C = 512 > 256: split in the emulated cuBLAS.
    setting = ("allow_fp16_reduced_precision_reduction" if dtype == torch.float16
               else "allow_bf16_reduced_precision_reduction")
    torch.manual_seed(0)
    m = gru_native.GRU(512, 8, dtype=dtype)
    x = torch.randn(3, 2, 512, dtype=dtype)
    old = getattr(torch.backends.cuda.matmul, setting)
    try:
        with torch.no_grad():
            setattr(torch.backends.cuda.matmul, setting, False)
            accurate = m(x)[0]
            setattr(torch.backends.cuda.matmul, setting, True)
            reduced = m(x)[0]
    finally:
        setattr(torch.backends.cuda.matmul, setting, old)
    assert not torch.equal(accurate, reduced), f"{setting} had no effect"


@pytest.mark.parametrize("path", ["gemm", "persistent"])
def test_cuda_empty_batch_gives_zero_weight_gradients(path, monkeypatch):
    # dW = dG^T x sums over R = T N = 0 rows: cuBLAS is not called, the gradients are zeroed (on
    # the emulation they would otherwise keep the NaN a new tensor starts with).
    monkeypatch.setenv("GRU_NATIVE_CUDA_PATH", path)
    torch.manual_seed(0)
    m = gru_native.GRU(3, 4, 2, bidirectional=True, device=DEVICE)
    x = torch.randn(5, 0, 3, device=DEVICE, requires_grad=True)
    out, h = m(x)
    (out.sum() + h.sum()).backward()
    for name, p in m.named_parameters():
        assert torch.equal(p.grad, torch.zeros_like(p)), name
