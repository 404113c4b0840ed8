// gru_cpu.cpp: the CPU implementations of the gru_native ops: the shared driver (gru_stack.h) on
// the CPU kernels (kernels.cpp) and, for the larger GEMMs, torch's BLAS (blas.cpp).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/record_function.h>
#include <c10/util/accumulate.h>
#include <torch/library.h>

#include "cpu/blas.h"
#include "cpu/gru_cpu.h"
#include "cpu/host_cache.h"
#include "cpu/kernels.h"
#include "gru_stack.h"

namespace gru_native {
namespace {

struct CpuBackend {
  static constexpr const char* kName = "CPU";
  static constexpr const char* kDtypes = "torch.float32, torch.float64";
  // Below this many multiply-adds a GEMM runs in plain loops: a BLAS call through ATen costs
  // microseconds of overhead, more than the whole product.
  static constexpr int64_t kSmallGemm = 32 * 1024;
  // A few rows times a transposed row-major matrix (the input projection x W_ih^T of a step)
  // run as dot products along W_ih's rows (threaded, 8 rows at a time with AVX512), not through
  // ATen's mm, which is slow for this transposed case: a T=1, N=1, H=256 layer call went from
  // 17.4 to 12.7 us; GRUCell inference, weights read from L3 (bench.py --group stepwise):
  // N=1, H=256 50 -> 35 us, N=8, H=1024 1.31 -> 0.83 ms.
  static constexpr int64_t kFewRows = 8;

  static bool supports(at::ScalarType t) { return t == at::kFloat || t == at::kDouble; }

  // The saved gates keep the input's dtype.
  static at::ScalarType workspace_dtype(at::ScalarType t) { return t; }
  template <typename T>
  struct Workspace {
    using type = T;
  };

  // nn.GRU on the CPU: a mismatched h0 first meets W_hh in the recurrent addmm (bias) or mm
  // (no bias), whose messages these are.
  static void hidden_dtype_error(const at::Tensor& hx, const at::Tensor& w_hh, bool has_biases) {
    TORCH_CHECK(!has_biases, "mat1 and mat2 must have the same dtype, but got ",
                hx.scalar_type(), " and ", w_hh.scalar_type());
    TORCH_CHECK(false, "expected m1 and m2 to have the same dtype, but got: ", hx.dtype(),
                " != ", w_hh.dtype());
  }

  template <typename F>
  static void dispatch(at::ScalarType t, const F& f) {
    AT_DISPATCH_FLOATING_TYPES(t, "gru_native_cpu", [&] { f(static_cast<scalar_t*>(nullptr)); });
  }

  template <typename T>
  static void forward_layer(const LayerForwardParams<T>& p) {
    cpu::forward_layer(p);
  }

  template <typename T>
  static void backward_layer(const LayerBackwardParams<T>& p) {
    cpu::backward_layer(p);
  }

  template <typename T>
  static void gemm(int64_t M, int64_t N, int64_t K, MatRef<T> A, MatRef<T> B, T beta, T* C,
                   int64_t ldc, const T* bias) {
    const bool few_rows_transposed = M <= kFewRows && B.rs == 1 && A.cs == 1 && beta == T(0);
    if (M * N * K <= kSmallGemm || few_rows_transposed) {
      cpu::small_gemm(M, N, K, A, B, beta, C, ldc, bias);
    } else {
      cpu::blas_gemm(M, N, K, A, B, beta, C, ldc, bias);
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

  static at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    return cpu::cached_empty(sizes, options.dtype().toScalarType());
  }
  // The tensors returned to the caller come from the host cache too (ordinary, resizable CPU
  // tensors: host_cache.h), so that a fresh weight gradient does not fault in its pages.
  static at::Tensor empty_result(at::IntArrayRef sizes, const at::TensorOptions& options) {
    return cpu::cached_result(sizes, options.dtype().toScalarType());
  }
};

using CpuStack = Stack<CpuBackend>;

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cpu_forward_direct(
    const at::Tensor& input, const std::optional<at::Tensor>& hx,
    const std::vector<at::Tensor>& weights, const std::optional<at::Tensor>& batch_sizes,
    const std::optional<at::Tensor>& dropout_mask, bool has_biases, int64_t num_layers,
    bool bidirectional, bool need_workspace) {
  RECORD_FUNCTION("gru_native::gru_forward", std::vector<c10::IValue>());
  TORCH_CHECK(input.device().is_cpu(), "gru_native: cpu_forward_direct on ", input.device());
  // Inference returns None for the workspace tensors (no allocation); training, what the op
  // returns.
  return need_workspace
             ? CpuStack::op_forward(input, hx, weights, batch_sizes, dropout_mask, has_biases,
                                    num_layers, bidirectional, true)
             : CpuStack::forward(input, hx, weights, batch_sizes, dropout_mask, has_biases,
                                 num_layers, bidirectional, false);
}

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> cpu_backward_direct(
    const std::optional<at::Tensor>& grad_output, const std::optional<at::Tensor>& grad_hy,
    const at::Tensor& input, const std::optional<at::Tensor>& hx,
    const std::vector<at::Tensor>& weights, const std::optional<at::Tensor>& batch_sizes,
    const std::optional<at::Tensor>& dropout_mask, const at::Tensor& output,
    const at::Tensor& workspace, const at::Tensor& layer_outputs, bool has_biases,
    int64_t num_layers, bool bidirectional, bool need_input_grad, bool need_weight_grad,
    bool need_hx_grad) {
  RECORD_FUNCTION("gru_native::gru_backward", std::vector<c10::IValue>());
  TORCH_CHECK(input.device().is_cpu(), "gru_native: cpu_backward_direct on ", input.device());
  return CpuStack::backward(grad_output, grad_hy, input, hx, weights, batch_sizes, dropout_mask,
                            output, workspace, layer_outputs, has_biases, num_layers,
                            bidirectional, need_input_grad, need_weight_grad, need_hx_grad);
}

}  // namespace gru_native

TORCH_LIBRARY_IMPL(gru_native, CPU, m) {
  m.impl("gru_forward", &gru_native::CpuStack::op_forward);
  m.impl("gru_backward", &gru_native::CpuStack::backward);
}
