// device.h: what the CUDA backend (gru_cuda.cpp) needs from the device it runs on: the stream,
// the device guard, memory, copies, the GEMMs, error checks. One implementation, device_cuda.cpp,
// on the CUDA runtime and cuBLAS, and on torch through torch_cuda.h; it is compiled for a GPU
// and, unchanged, on the CUDA emulation (emulation/runtime.h), whose CPU tensors stand for
// device memory. Besides this header, gru_cuda.cpp sees the kernels' (kernels.cuh), the
// driver's (gru_stack.h) and the backend table's (backend.h).
#pragma once

#include <ATen/ATen.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "gru_params.h"

namespace gru_native::device {

// The device type of the tensors the backend serves (kCUDA; kCPU under the emulation).
c10::DeviceType type();

// The stream every kernel, copy and GEMM of the backend goes to (the current CUDA stream).
cudaStream_t stream();

// Options for internal tensors of dtype `t` on the current device.
at::TensorOptions options(at::ScalarType t);

// An uninitialised internal buffer (workspace, scratch) on the current device.
at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options);

// Makes `t`'s device current for the guard's lifetime (a no-op for tensors of other devices).
// finish(): the op's results are handed back (torch_cuda::hand_back; raises what the emulation
// found wrong in the work it ran there).
class Guard {
 public:
  explicit Guard(const at::Tensor& t);
  ~Guard();
  void finish() const;
  Guard(const Guard&) = delete;
  Guard& operator=(const Guard&) = delete;

 private:
  int previous_ = -1;
};

// Raises (c10::Error) if `err` is not cudaSuccess, with CUDA's text for it; clears the error.
void check(cudaError_t err);

// After every kernel launch: raises if the launch failed.
void check_launch();

// Device to device, on stream().
void copy(void* dst, const void* src, size_t bytes);
void zero(void* dst, size_t bytes);

// batch_sizes then offsets of the schedule, [2, T] int64 on the current device, copied on
// stream() from pinned memory (through kernel arguments while the stream is captured into a CUDA
// graph). Keep the tensor until the work using it is done.
at::Tensor schedule(const StepSchedule& s);

// C_b = A_b B_b + beta C_b for b < batch, on stream(): C_b[M, N] row-major with leading dimension
// ldc at C + b * stride_c; A_b[M, K] = A at A.p + b * stride_a, B_b[K, N] likewise (each with one
// unit stride, rows or columns). cuBLAS with torch's handle: accumulates in float for the half
// types (double for double), with torch's TF32 and reduced-precision-reduction settings.
// T: float, double, at::Half, at::BFloat16; C of type T, or float for the half types (TC).
template <typename T, typename TC = T>
void gemm(int64_t batch, int64_t M, int64_t N, int64_t K, MatRef<T> A, int64_t stride_a,
          MatRef<T> B, int64_t stride_b, float beta, TC* C, int64_t ldc, int64_t stride_c);

}  // namespace gru_native::device
