// device_cuda.cpp: the device seam (device.h) on a GPU: c10's current CUDA stream and device,
// torch's caching allocators, and cuBLAS through ATen's thin wrapper (at::cuda::blas::bgemm:
// torch's cuBLAS handle on the current stream, torch's TF32 and reduced-precision settings; no
// ATen op, no dispatcher, no tensor in the step loop); and the CUDA backend's registration for
// CUDA tensors.
#include "cuda/device.h"

#include <ATen/cuda/CUDABlas.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstring>

#include "cuda/gru_cuda.h"

namespace gru_native::device {

c10::DeviceType type() { return at::kCUDA; }

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }

at::TensorOptions options(at::ScalarType t) {
  return at::TensorOptions().dtype(t).device(at::kCUDA, c10::cuda::current_device());
}

at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return at::empty(sizes, options);
}

Guard::Guard(const at::Tensor& t) {
  if (!t.is_cuda()) return;
  const c10::DeviceIndex current = c10::cuda::current_device();
  if (current != t.get_device()) {
    c10::cuda::set_device(t.get_device());
    previous_ = current;
  }
}

Guard::~Guard() {
  if (previous_ >= 0 && cudaSetDevice(previous_) != cudaSuccess) {
    (void)cudaGetLastError();  // a destructor must not throw
  }
}

void check(cudaError_t err) { C10_CUDA_CHECK(err); }

void check_launch() { C10_CUDA_KERNEL_LAUNCH_CHECK(); }

void copy(void* dst, const void* src, size_t bytes) {
  if (bytes) C10_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream()));
}

void zero(void* dst, size_t bytes) {
  if (bytes) C10_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, stream()));
}

at::Tensor schedule(const StepSchedule& s) {
  // Pinned, then copied asynchronously on the current stream: a pageable copy would make the
  // host wait for all the work queued before it. The caching host allocator does not hand the
  // pinned block out again before the copy is done (it records an event on the stream).
  at::Tensor host = at::empty({2, s.T}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  std::memcpy(host.data_ptr<int64_t>(), s.batch_sizes, s.T * sizeof(int64_t));
  std::memcpy(host.data_ptr<int64_t>() + s.T, s.offsets, s.T * sizeof(int64_t));
  return host.to(options(at::kLong), /*non_blocking=*/true);
}

namespace {

// A row-major operand as cuBLAS sees it (column-major): op and leading dimension of the
// transposed matrix X^T [cols, rows].
struct Operand {
  char op;
  int64_t ld;
};

template <typename T>
Operand as_column_major(const MatRef<T>& x, int64_t rows, int64_t cols) {
  if (x.cs == 1 && (x.rs >= cols || rows == 1)) return {'n', std::max<int64_t>(x.rs, cols)};
  TORCH_INTERNAL_ASSERT(x.rs == 1, "gru_native: a GEMM operand needs a unit stride");
  return {'t', std::max<int64_t>(x.cs, rows)};
}

}  // namespace

template <typename T, typename TC>
void gemm(int64_t batch, int64_t M, int64_t N, int64_t K, MatRef<T> A, int64_t stride_a,
          MatRef<T> B, int64_t stride_b, float beta, TC* C, int64_t ldc, int64_t stride_c) {
  if (batch == 0 || M == 0 || N == 0) return;
  using Op = at::opmath_type<T>;
  if (K == 0) {  // C = beta C
    TORCH_INTERNAL_ASSERT(beta == 0.0f || beta == 1.0f);
    if (beta == 0.0f) {
      for (int64_t b = 0; b < batch; ++b) {
        C10_CUDA_CHECK(cudaMemset2DAsync(C + b * stride_c, ldc * sizeof(TC), 0, N * sizeof(TC),
                                         M, stream()));
      }
    }
    return;
  }
  // Row-major C = A B is column-major C^T = B^T A^T.
  const Operand a = as_column_major(A, M, K), b = as_column_major(B, K, N);
  at::cuda::blas::bgemm<T, TC>(b.op, a.op, N, M, K, Op(1), B.p, b.ld, stride_b, A.p, a.ld,
                               stride_a, Op(beta), C, ldc, stride_c, batch);
}

#define GRU_NATIVE_INSTANTIATE(T)                                                           \
  template void gemm<T>(int64_t, int64_t, int64_t, int64_t, MatRef<T>, int64_t, MatRef<T>, \
                        int64_t, float, T*, int64_t, int64_t);
GRU_NATIVE_INSTANTIATE(float)
GRU_NATIVE_INSTANTIATE(double)
GRU_NATIVE_INSTANTIATE(at::Half)
GRU_NATIVE_INSTANTIATE(at::BFloat16)
#undef GRU_NATIVE_INSTANTIATE
// dL/dh in float for the half types (gru_cuda.cpp).
template void gemm<at::Half, float>(int64_t, int64_t, int64_t, int64_t, MatRef<at::Half>, int64_t,
                                    MatRef<at::Half>, int64_t, float, float*, int64_t, int64_t);
template void gemm<at::BFloat16, float>(int64_t, int64_t, int64_t, int64_t, MatRef<at::BFloat16>,
                                        int64_t, MatRef<at::BFloat16>, int64_t, float, float*,
                                        int64_t, int64_t);

}  // namespace gru_native::device

TORCH_LIBRARY_IMPL(gru_native, CUDA, m) { gru_native::register_cuda_backend(m); }
