// gru_cpu.cpp: the CPU backend: the driver (gru_stack.h) on the CPU kernels (kernels.cpp) and,
// for the larger GEMMs, the backend's own (gemm.cpp); registered for CPU tensors.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "backend.h"
#include "cpu/gemm.h"
#include "cpu/host_cache.h"
#include "cpu/kernels.h"
#include "gru_stack.h"

namespace gru_native {
namespace {

struct CpuBackend {
  static constexpr const char* kName = "CPU";
  static constexpr const char* kDtypes =
      "torch.float32, torch.float64, torch.float16, torch.bfloat16";
  // Up to this many multiply-adds a GEMM runs in plain loops, with no packing.
  static constexpr int64_t kSmallGemm = cpu::kSmallGemmMadds;
  // Up to kDotRows rows times a transposed row-major matrix (the input projection x W_ih^T of a
  // step or a few) run as dot products along W_ih's rows (dot_gemm.h), threaded: nothing packed;
  // from there to kWRowsMaxRows, gemm reads W_ih's rows in place too (wrows_gemm.h). Packing
  // W_ih^T costs a pass over it per call, which a few dozen rows do not earn back (benchmarks/
  // NOTES.md, step-wise calls). A few rows times a row-major one (d(input) = dG W_ih of a step)
  // run as rows of W_ih streamed once (few_rows_gemm).
  static constexpr int64_t kDotRows = cpu::kDotRowsMax;
  static constexpr int64_t kFewRows = cpu::kFewRowsMax;

  // Tensors of one device: nothing to guard.
  struct Guard {
    explicit Guard(const at::Tensor&) {}
    void finish() const {}
  };

  static bool supports(at::ScalarType t) {
    return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
  }

  // The saved gates are kept in the kernels' math type: float for the half types (as on CUDA),
  // the input's dtype otherwise.
  static at::ScalarType workspace_dtype(at::ScalarType t) { return at::toOpMathType(t); }
  template <typename T>
  struct Workspace {
    using type = at::opmath_type<T>;
  };

  template <typename F>
  static void dispatch(at::ScalarType t, const F& f) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t, "gru_native_cpu",
                                    [&] { f(static_cast<scalar_t*>(nullptr)); });
  }

  template <typename T>
  static void forward_layer(const cpu::ForwardParams<T>& p) {
    cpu::forward_layer(p);
  }

  template <typename T>
  static void backward_layer(const cpu::BackwardParams<T>& p) {
    cpu::backward_layer(p);
  }

  template <typename T>
  static void gemm(int64_t M, int64_t N, int64_t K, MatRef<T> A, MatRef<T> B, T beta, T* C,
                   int64_t ldc, const T* bias) {
    const bool dots = M <= kDotRows && B.rs == 1 && A.cs == 1 && beta == T(0);
    if (M * N * K <= kSmallGemm || dots) {
      cpu::small_gemm(M, N, K, A, B, beta, C, ldc, bias);
    } else if (M <= kFewRows && B.cs == 1) {
      cpu::few_rows_gemm(M, N, K, A, B, beta, C, ldc, bias);
    } else {
      cpu::gemm(M, N, K, A, B, beta, C, ldc, bias);
    }
  }

  template <typename T>
  static void column_sum(int64_t rows, int64_t cols, const T* src, int64_t ld, T* dst) {
    cpu::column_sum(rows, cols, src, ld, dst);
  }

  template <typename T>
  static void multiply(int64_t n, const T* a, const T* b, T* out) {
    cpu::multiply(n, a, b, out);
  }

  // The work of every call is done when the call returns.
  static void synchronize() {}

  static at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    return cpu::cached_empty(sizes, options.dtype().toScalarType());
  }
  // The tensors returned to the caller come from the host cache too (ordinary, resizable CPU
  // tensors: host_cache.h), so that a fresh weight gradient does not fault in its pages.
  static at::Tensor empty_result(at::IntArrayRef sizes, const at::TensorOptions& options) {
    return cpu::cached_result(sizes, options.dtype().toScalarType());
  }
};

}  // namespace
}  // namespace gru_native

TORCH_LIBRARY_IMPL(gru_native, CPU, m) {
  gru_native::register_backend<gru_native::CpuBackend>(m, c10::DeviceType::CPU);
}
