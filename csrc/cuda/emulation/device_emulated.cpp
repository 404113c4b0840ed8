// device_emulated.cpp: the device seam (cuda/device.h) under the CUDA emulation: CPU tensors stand
// for device memory, the kernels run on the emulation runtime (runtime.h) as they are launched,
// GEMMs run on the host in the precision cuBLAS computes them in (float for the half types), and
// errors are nn.GRU's on the CPU (the tensors are CPU tensors); and the CUDA backend's
// registration for CPU tensors.
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "cpu/host_cache.h"
#include "cuda/device.h"
#include "cuda/gru_cuda.h"

namespace gru_native::device {

c10::DeviceType type() { return at::kCPU; }

cudaStream_t stream() { return nullptr; }

at::TensorOptions options(at::ScalarType t) {
  return at::TensorOptions().dtype(t).device(at::kCPU);
}

at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  // Device memory is uninitialised: NaN bytes, so that a kernel reading what nothing wrote shows.
  at::Tensor t = cpu::cached_empty(sizes, options.dtype().toScalarType());
  std::memset(t.data_ptr(), 0xff, t.nbytes());
  return t;
}

Guard::Guard(const at::Tensor&) {}
Guard::~Guard() = default;

void check(cudaError_t err) {
  if (err == cudaSuccess) return;
  (void)cudaGetLastError();
  const char* detail = err == cudaErrorLaunchFailure ? gru_emu::last_failure() : "";
  TORCH_CHECK(false, "CUDA error (emulated): ", cudaGetErrorString(err),
              *detail ? ": " : "", detail);
}

void check_launch() { check(cudaGetLastError()); }

void copy(void* dst, const void* src, size_t bytes) {
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream()));
}

void zero(void* dst, size_t bytes) { check(cudaMemsetAsync(dst, 0, bytes, stream())); }

at::Tensor schedule(const StepSchedule& s) {
  at::Tensor t = at::empty({2, s.T}, at::TensorOptions().dtype(at::kLong));
  std::memcpy(t.data_ptr<int64_t>(), s.batch_sizes, s.T * sizeof(int64_t));
  std::memcpy(t.data_ptr<int64_t>() + s.T, s.offsets, s.T * sizeof(int64_t));
  return t;
}

namespace {

template <typename T>
using Acc = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Row m of A (or column n of B) as a contiguous Acc vector of length K.
template <typename T>
void gather(const T* p, int64_t stride, int64_t K, Acc<T>* out) {
  for (int64_t k = 0; k < K; ++k) out[k] = static_cast<Acc<T>>(p[k * stride]);
}

// sum_k a[k] b[k] in eight interleaved partial sums, then their sum in a fixed order.
template <typename A>
A dot(const A* a, const A* b, int64_t K) {
  A part[8] = {};
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    for (int i = 0; i < 8; ++i) part[i] += a[k + i] * b[k + i];
  }
  for (; k < K; ++k) part[k % 8] += a[k] * b[k];
  return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

}  // namespace

template <typename T, typename TC>
void gemm(int64_t batch, int64_t M, int64_t N, int64_t K, MatRef<T> A, int64_t stride_a,
          MatRef<T> B, int64_t stride_b, float beta, TC* C, int64_t ldc, int64_t stride_c) {
  using Op = Acc<T>;
  std::vector<Op> bt(static_cast<size_t>(N * K)), row(static_cast<size_t>(K));
  for (int64_t b = 0; b < batch; ++b) {
    const T* a = A.p + b * stride_a;
    const T* bp = B.p + b * stride_b;
    TC* c = C + b * stride_c;
    for (int64_t n = 0; n < N; ++n) gather(bp + n * B.cs, B.rs, K, bt.data() + n * K);
    for (int64_t m = 0; m < M; ++m) {
      gather(a + m * A.rs, A.cs, K, row.data());
      for (int64_t n = 0; n < N; ++n) {
        Op v = dot(row.data(), bt.data() + n * K, K);
        if (beta != 0.0f) v += static_cast<Op>(beta) * static_cast<Op>(c[m * ldc + n]);
        c[m * ldc + n] = static_cast<TC>(v);
      }
    }
  }
}

#define GRU_NATIVE_INSTANTIATE(T)                                                           \
  template void gemm<T>(int64_t, int64_t, int64_t, int64_t, MatRef<T>, int64_t, MatRef<T>, \
                        int64_t, float, T*, int64_t, int64_t);
GRU_NATIVE_INSTANTIATE(float)
GRU_NATIVE_INSTANTIATE(double)
GRU_NATIVE_INSTANTIATE(at::Half)
GRU_NATIVE_INSTANTIATE(at::BFloat16)
#undef GRU_NATIVE_INSTANTIATE
template void gemm<at::Half, float>(int64_t, int64_t, int64_t, int64_t, MatRef<at::Half>, int64_t,
                                    MatRef<at::Half>, int64_t, float, float*, int64_t, int64_t);
template void gemm<at::BFloat16, float>(int64_t, int64_t, int64_t, int64_t, MatRef<at::BFloat16>,
                                        int64_t, MatRef<at::BFloat16>, int64_t, float, float*,
                                        int64_t, int64_t);

}  // namespace gru_native::device

// The CUDA backend serves CPU tensors in this build (the CPU backend is not built).
TORCH_LIBRARY_IMPL(gru_native, CPU, m) { gru_native::register_cuda_backend(m); }
