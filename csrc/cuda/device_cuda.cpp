// device_cuda.cpp: the device layer (device.h) on the CUDA runtime and cuBLAS, with what only
// torch has (stream, allocators, cuBLAS handle) from torch_cuda.h. No ATen op, no dispatcher and
// no tensor in the step loop. The same source is compiled for a GPU and on the CUDA emulation
// (emulation/runtime.h, emulation/cublas.h), so CI runs all of it: the translation of row-major
// operands to cuBLAS, the K = 0 branch, the step schedule's pinned copy and its capture-safe
// upload.
#include "cuda/device.h"

#include <ATen/Context.h>
#include <c10/util/Exception.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <type_traits>

#include "cuda/torch_cuda.h"
#include "cuda/upload.cuh"

namespace gru_native::device {

c10::DeviceType type() { return torch_cuda::device_type(); }

cudaStream_t stream() { return torch_cuda::current_stream(); }

at::TensorOptions options(at::ScalarType t) {
  int index = 0;
  check(cudaGetDevice(&index));
  return at::TensorOptions().dtype(t).device(torch_cuda::device(index));
}

at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return torch_cuda::empty(sizes, options);
}

Guard::Guard(const at::Tensor& t) {
  const int want = torch_cuda::device_of(t);
  if (want < 0) return;
  int current = 0;
  check(cudaGetDevice(&current));
  if (current != want) {
    check(cudaSetDevice(want));
    previous_ = current;
  }
}

Guard::~Guard() {
  if (previous_ >= 0 && cudaSetDevice(previous_) != cudaSuccess) {
    (void)cudaGetLastError();  // a destructor must not throw
  }
}

void Guard::finish() const { check(torch_cuda::hand_back()); }

void check(cudaError_t err) {
  if (err == cudaSuccess) return;
  (void)cudaGetLastError();
  TORCH_CHECK(false, "gru_native: CUDA error: ", cudaGetErrorString(err), " (",
              cudaGetErrorName(err), ")");
}

void check_launch() { check(cudaGetLastError()); }

void copy(void* dst, const void* src, size_t bytes) {
  if (bytes) check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream()));
}

void zero(void* dst, size_t bytes) {
  if (bytes) check(cudaMemsetAsync(dst, 0, bytes, stream()));
}

at::Tensor schedule(const StepSchedule& s) {
  at::Tensor on_device = empty({2, s.T}, options(at::kLong));
  int64_t* dst = on_device.data_ptr<int64_t>();
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  check(cudaStreamIsCapturing(stream(), &capture));
  if (capture != cudaStreamCaptureStatusNone) {
    // A CUDA graph would replay a copy from host memory long after this call, from an address
    // that may hold something else by then; kernel arguments are captured by value.
    check(cuda::upload(dst, s.batch_sizes, s.T, stream()));
    check(cuda::upload(dst + s.T, s.offsets, s.T, stream()));
    return on_device;
  }
  // Pinned, then copied asynchronously: a copy from pageable memory would make the host wait for
  // all the work queued before it.
  const size_t bytes = 2 * s.T * sizeof(int64_t);
  at::DataPtr host = torch_cuda::pinned(bytes);
  int64_t* staged = static_cast<int64_t*>(host.get());
  std::memcpy(staged, s.batch_sizes, s.T * sizeof(int64_t));
  std::memcpy(staged + s.T, s.offsets, s.T * sizeof(int64_t));
  check(cudaMemcpyAsync(dst, staged, bytes, cudaMemcpyHostToDevice, stream()));
  torch_cuda::used_on_current_stream(host);  // not handed out again before the copy has run
  return on_device;
}

namespace {

// A row-major operand as cuBLAS sees it (column-major): op and leading dimension of the
// transposed matrix X^T [cols, rows].
struct Operand {
  cublasOperation_t op;
  int64_t ld;
};

template <typename T>
Operand as_column_major(const MatRef<T>& x, int64_t rows, int64_t cols) {
  if (x.cs == 1 && (x.rs >= cols || rows == 1)) return {CUBLAS_OP_N, std::max<int64_t>(x.rs, cols)};
  TORCH_INTERNAL_ASSERT(x.rs == 1, "gru_native: a GEMM operand needs a unit stride");
  return {CUBLAS_OP_T, std::max<int64_t>(x.cs, rows)};
}

// cuBLAS's element type, compute type and math mode for T under torch's settings: TF32 for
// float where torch allows it (torch.backends.cuda.matmul.allow_tf32, or a float32 matmul
// precision below "highest"); for the half types, float accumulation with reductions in the
// output type only where torch allows it (allow_fp16/bf16_reduced_precision_reduction).
struct Types {
  cudaDataType data;
  cublasComputeType_t compute;
  cublasMath_t math;
};

// torch's reduced-precision-reduction setting: a bool before torch 2.7, an enum since.
inline bool reduction_allowed(bool allowed) { return allowed; }
template <typename Option, std::enable_if_t<std::is_enum_v<Option>, int> = 0>
bool reduction_allowed(Option option) {
  return option == Option::AllowReducedPrecisionWithSplitK;
}

template <typename T>
Types types() {
  at::Context& ctx = at::globalContext();
  if constexpr (std::is_same_v<T, double>) {
    return {CUDA_R_64F, CUBLAS_COMPUTE_64F, CUBLAS_DEFAULT_MATH};
  } else if constexpr (std::is_same_v<T, float>) {
    return ctx.allowTF32CuBLAS() && !at::NoTF32Guard::should_disable_tf32()
               ? Types{CUDA_R_32F, CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_TF32_TENSOR_OP_MATH}
               : Types{CUDA_R_32F, CUBLAS_COMPUTE_32F, CUBLAS_DEFAULT_MATH};
  } else {
    constexpr bool half = std::is_same_v<T, at::Half>;
    const bool reduced = half ? reduction_allowed(ctx.allowFP16ReductionCuBLAS())
                              : reduction_allowed(ctx.allowBF16ReductionCuBLAS());
    return {half ? CUDA_R_16F : CUDA_R_16BF, CUBLAS_COMPUTE_32F,
            reduced ? CUBLAS_DEFAULT_MATH : CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION};
  }
}

int as_int(int64_t v, const char* what) {
  TORCH_CHECK(v >= INT_MIN && v <= INT_MAX, "gru_native: a GEMM's ", what, " (", v,
              ") does not fit cuBLAS's int");
  return static_cast<int>(v);
}

char op_name(cublasOperation_t op) { return op == CUBLAS_OP_N ? 'N' : 'T'; }

void check_blas(cublasStatus_t status, const char* call, const Operand& a, const Operand& b,
                int64_t m, int64_t n, int64_t k, int64_t ldc, int64_t batch) {
  TORCH_CHECK(status == CUBLAS_STATUS_SUCCESS, "gru_native: ", call, " failed: ",
              cublasGetStatusName(status), " (", cublasGetStatusString(status), ") for transa=",
              op_name(a.op), " transb=", op_name(b.op), " m=", m, " n=", n, " k=", k,
              " lda=", a.ld, " ldb=", b.ld, " ldc=", ldc, " batch=", batch);
}

}  // namespace

template <typename T, typename TC>
void gemm(int64_t batch, int64_t M, int64_t N, int64_t K, MatRef<T> A, int64_t stride_a,
          MatRef<T> B, int64_t stride_b, float beta, TC* C, int64_t ldc, int64_t stride_c) {
  if (batch == 0 || M == 0 || N == 0) return;
  if (K == 0) {  // C = beta C
    TORCH_INTERNAL_ASSERT(beta == 0.0f || beta == 1.0f);
    if (beta == 0.0f) {
      for (int64_t b = 0; b < batch; ++b) {
        check(cudaMemset2DAsync(C + b * stride_c, ldc * sizeof(TC), 0, N * sizeof(TC), M,
                                stream()));
      }
    }
    return;
  }
  // Row-major C = A B is column-major C^T = B^T A^T: cuBLAS's A is our B, its B our A.
  const Operand a = as_column_major(A, M, K), b = as_column_major(B, K, N);
  static_assert(std::is_same_v<TC, T> || (std::is_same_v<TC, float> && sizeof(T) == 2),
                "gru_native: C of type T, or float for the half types");
  const Types t = types<T>();
  // C in float for the half types' float output (dL/dh): cuBLAS converts the float accumulator.
  const cudaDataType c_type = std::is_same_v<TC, T> ? t.data : CUDA_R_32F;
  using Scale = std::conditional_t<std::is_same_v<T, double>, double, float>;
  const Scale alpha = 1, scale_c = beta;
  cublasHandle_t handle = torch_cuda::blas_handle();
  cublasMath_t previous = CUBLAS_DEFAULT_MATH;
  check_blas(cublasGetMathMode(handle, &previous), "cublasGetMathMode", b, a, N, M, K, ldc, batch);
  check_blas(cublasSetMathMode(handle, t.math), "cublasSetMathMode", b, a, N, M, K, ldc, batch);
  const cublasStatus_t status = cublasGemmStridedBatchedEx(
      handle, b.op, a.op, as_int(N, "n"), as_int(M, "m"), as_int(K, "k"), &alpha, B.p, t.data,
      as_int(b.ld, "ldb"), stride_b, A.p, t.data, as_int(a.ld, "lda"), stride_a, &scale_c, C,
      c_type, as_int(ldc, "ldc"), stride_c, as_int(batch, "batch count"), t.compute,
      CUBLAS_GEMM_DEFAULT);
  (void)cublasSetMathMode(handle, previous);
  check_blas(status, "cublasGemmStridedBatchedEx", b, a, N, M, K, ldc, batch);
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
