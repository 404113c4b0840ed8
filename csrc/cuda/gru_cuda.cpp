// gru_cuda.cpp: the CUDA implementations of the gru_native ops: the shared driver (gru_stack.h)
// on the CUDA kernels (kernels.cu), with the GEMMs in cuBLAS through ATen on the current stream.
// The binding layer: device guard, current stream, dtype mapping, launch checks.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "cuda/kernels.cuh"
#include "gru_stack.h"

namespace gru_native {
namespace {

// ATen's element types and the kernels' (layout-identical) ones.
template <typename T>
struct KernelType {
  using type = T;
};
template <>
struct KernelType<at::Half> {
  using type = __half;
};
template <>
struct KernelType<at::BFloat16> {
  using type = __nv_bfloat16;
};
template <typename T>
using K = typename KernelType<T>::type;

template <typename T>
K<T>* kptr(T* p) {
  return reinterpret_cast<K<T>*>(p);
}
template <typename T>
const K<T>* kptr(const T* p) {
  return reinterpret_cast<const K<T>*>(p);
}

// The saved gates are kept in the kernels' math type (float for the half types).
template <typename T>
struct WorkspaceType {
  using type = typename cuda::Acc<K<T>>::type;
};

template <typename T>
at::TensorOptions options_for() {
  return at::TensorOptions()
      .dtype(c10::CppTypeToScalarType<T>::value)
      .device(at::kCUDA, c10::cuda::current_device());
}

template <typename T>
at::Tensor wrap(const T* data, at::IntArrayRef sizes, at::IntArrayRef strides) {
  return at::from_blob(const_cast<T*>(data), sizes, strides, options_for<T>());
}

// W_hh of every direction as one [D, 3H, H] tensor (a copy when D == 2).
template <typename T>
at::Tensor stacked(const T* const* w, int D, int64_t rows, int64_t cols) {
  if (D == 1) return wrap(w[0], {1, rows, cols}, {rows * cols, cols, 1});
  at::Tensor out = at::empty({D, rows, cols}, options_for<T>());
  for (int d = 0; d < D; ++d) out.select(0, d).copy_(wrap(w[d], {rows, cols}, {cols, 1}));
  return out;
}

// GRU_NATIVE_CUDA_PATH = auto (default) | gemm | persistent.
enum class Path { kAuto, kGemm, kPersistent };

Path requested_path() {
  const char* value = std::getenv("GRU_NATIVE_CUDA_PATH");
  if (value == nullptr || std::strcmp(value, "") == 0 || std::strcmp(value, "auto") == 0) {
    return Path::kAuto;
  }
  if (std::strcmp(value, "gemm") == 0) return Path::kGemm;
  if (std::strcmp(value, "persistent") == 0) return Path::kPersistent;
  TORCH_CHECK(false, "gru_native: GRU_NATIVE_CUDA_PATH must be auto, gemm or persistent, got '",
              value, "'");
}

// Provisional rule, not yet measured on a GPU (see benchmarks/RESULTS.md): the persistent
// kernel for small batches, wherever its slice of W_hh fits in shared memory.
constexpr int64_t kPersistentMaxBatch = 16;

template <typename T>
bool use_persistent(int D, int64_t N, int64_t H, bool backward, cuda::PersistentPlan& plan) {
  const Path path = requested_path();
  if (path == Path::kGemm) return false;
  plan = cuda::plan_persistent<K<T>>(D, N, H, backward, c10::cuda::current_device());
  if (path == Path::kPersistent) {
    TORCH_CHECK(plan.fits, "gru_native: GRU_NATIVE_CUDA_PATH=persistent, but the persistent ",
                backward ? "backward" : "forward", " kernel does not fit a layer with batch ", N,
                " and hidden size ", H, " on this GPU");
    return true;
  }
  return plan.fits && N <= kPersistentMaxBatch;
}

// batch_sizes and offsets on the device, for the persistent kernels: staged in pinned memory
// and copied asynchronously on the current stream (a pageable copy would make the host wait
// for all the work queued before it). The pinned block is not reused before the copy is done
// (the caching host allocator records an event for it).
at::Tensor schedule_on_device(const StepSchedule& s) {
  at::Tensor host =
      at::empty({2, s.T}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  std::memcpy(host.data_ptr<int64_t>(), s.batch_sizes, s.T * sizeof(int64_t));
  std::memcpy(host.data_ptr<int64_t>() + s.T, s.offsets, s.T * sizeof(int64_t));
  return host.to(
      at::TensorOptions().dtype(at::kLong).device(at::kCUDA, c10::cuda::current_device()),
      /*non_blocking=*/true);
}

// The fields the persistent forward and backward share. `schedule` must outlive the launch.
template <typename T>
cuda::PersistentLayer<K<T>> persistent_layer(const StepSchedule& s, int D, int64_t H,
                                             const at::Tensor& schedule, const T* const* w_hh,
                                             const T* const* h0) {
  cuda::PersistentLayer<K<T>> layer;
  layer.D = D;
  layer.T_steps = s.T;
  layer.N = s.N;
  layer.H = H;
  layer.ld = D * H;
  layer.batch_sizes = schedule.data_ptr<int64_t>();
  layer.offsets = schedule.data_ptr<int64_t>() + s.T;
  for (int d = 0; d < D; ++d) {
    layer.w_hh[d] = kptr(w_hh[d]);
    layer.h0[d] = kptr(h0[d]);
  }
  return layer;
}

struct CudaBackend {
  static constexpr const char* kName = "CUDA";
  static constexpr const char* kDtypes =
      "torch.float32, torch.float64, torch.float16, torch.bfloat16";

  static bool supports(at::ScalarType t) {
    return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
  }

  static at::ScalarType workspace_dtype(at::ScalarType t) {
    return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
  }
  template <typename T>
  using Workspace = WorkspaceType<T>;

  // nn.GRU on the GPU (cuDNN's check_attributes with check_dtype).
  static void hidden_dtype_error(const at::Tensor& hx, const at::Tensor& w_hh, bool) {
    TORCH_CHECK(false, "Input and hidden tensors are not the same dtype, found input tensor with ",
                w_hh.scalar_type(), " and hidden tensor with ", hx.scalar_type());
  }

  template <typename F>
  static void dispatch(at::ScalarType t, const F& f) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t, "gru_native_cuda",
                                    [&] { f(static_cast<scalar_t*>(nullptr)); });
  }

  template <typename T, typename W>
  static void forward_layer(const LayerForwardParams<T, W>& p) {
    const StepSchedule& s = p.steps;
    const int64_t H = p.H, N = s.N, G = kGates * H;
    const int D = p.D;
    if (s.R == 0 || N == 0) return;
    TORCH_INTERNAL_ASSERT(D == 1 || p.hy[1] == p.hy[0] + N * H);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    cuda::PersistentPlan plan;
    if (use_persistent<T>(D, N, H, false, plan)) {
      const at::Tensor schedule = schedule_on_device(s);
      auto layer = persistent_layer(s, D, H, schedule, p.w_hh, p.h0);
      layer.out = kptr(p.out);
      for (int d = 0; d < D; ++d) {
        layer.gi[d] = kptr(p.gi[d]);
        layer.b_ih[d] = kptr(p.b_ih[d]);
        layer.b_hh[d] = kptr(p.b_hh[d]);
        layer.hy[d] = kptr(p.hy[d]);
        layer.ws_out[d] = p.ws[d];
      }
      C10_CUDA_CHECK(cuda::persistent_forward(layer, plan, stream));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    // The GEMM path. h_n doubles as the running state: it starts as h0, and each step's
    // pointwise kernel overwrites the rows live at that step (the forward direction's finished
    // rows and the reverse direction's not yet started ones keep their values).
    for (int d = 0; d < D; ++d) {
      if (p.h0[d]) {
        C10_CUDA_CHECK(cudaMemcpyAsync(p.hy[d], p.h0[d], N * H * sizeof(T),
                                       cudaMemcpyDeviceToDevice, stream));
      } else {
        C10_CUDA_CHECK(cudaMemsetAsync(p.hy[d], 0, N * H * sizeof(T), stream));
      }
    }
    const at::Tensor state = wrap(p.hy[0], {D, N, H}, {N * H, H, 1});
    const at::Tensor w_t = stacked(p.w_hh, D, G, H).transpose(1, 2);  // [D, H, 3H]
    at::Tensor gh = at::empty({D, N, G}, options_for<T>());
    cuda::ForwardStep<K<T>> step;
    step.D = D;
    step.H = H;
    step.ld_out = D * H;
    for (int64_t i = 0; i < s.T; ++i) {
      at::bmm_out(gh, state, w_t);  // both directions, every row of the state
      for (int d = 0; d < D; ++d) {
        const int64_t t = d ? s.T - 1 - i : i;
        const int64_t off = s.offsets[t];
        step.rows[d] = s.batch_sizes[t];
        step.gi[d] = kptr(p.gi[d] + off * G);
        step.b_ih[d] = kptr(p.b_ih[d]);
        step.b_hh[d] = kptr(p.b_hh[d]);
        step.gh[d] = kptr(gh.data_ptr<T>() + d * N * G);
        step.h[d] = kptr(p.hy[d]);
        step.out[d] = kptr(p.out + off * D * H + d * H);
        step.ws[d] = p.ws[d] ? p.ws[d] + off * kWorkspaceGates * H : nullptr;
      }
      C10_CUDA_CHECK(cuda::forward_step(step, stream));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }

  template <typename T, typename W>
  static void backward_layer(const LayerBackwardParams<T, W>& p) {
    const StepSchedule& s = p.steps;
    const int64_t H = p.H, N = s.N, G = kGates * H, ld = p.D * H;
    const int D = p.D;
    if (s.R == 0 || N == 0) return;
    TORCH_INTERNAL_ASSERT(D == 1 || p.dh[1] == p.dh[0] + N * H);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    cuda::PersistentPlan plan;
    if (use_persistent<T>(D, N, H, true, plan)) {
      const at::Tensor schedule = schedule_on_device(s);
      auto layer = persistent_layer(s, D, H, schedule, p.w_hh, p.h0);
      layer.out_in = kptr(p.out);
      layer.dout = kptr(p.dout);
      for (int d = 0; d < D; ++d) {
        layer.ws_in[d] = p.ws[d];
        layer.dh[d] = kptr(p.dh[d]);
        layer.dg[d] = kptr(p.dg[d]);
        layer.hp[d] = kptr(p.hp[d]);
      }
      C10_CUDA_CHECK(cuda::persistent_backward(layer, plan, stream));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    at::Tensor dh = wrap(p.dh[0], {D, N, H}, {N * H, H, 1});
    const at::Tensor w = stacked(p.w_hh, D, G, H);  // [D, 3H, H]
    at::Tensor dgs = at::empty({D, N, G}, options_for<T>());
    cuda::BackwardStep<K<T>> step;
    step.D = D;
    step.H = H;
    step.N = N;
    step.ld = ld;
    for (int64_t i = 0; i < s.T; ++i) {
      for (int d = 0; d < D; ++d) {
        // Steps in the reverse of the order the forward ran them.
        const int64_t t = d ? i : s.T - 1 - i;
        const int64_t rows = s.batch_sizes[t], off = s.offsets[t];
        step.rows[d] = rows;
        step.dout[d] = kptr(p.dout + off * ld + d * H);
        step.ws[d] = p.ws[d] + off * kWorkspaceGates * H;
        // h_{t-1}: rows [0, n_from_out) from the direction's previous step, others from h0.
        step.prev_out[d] = nullptr;
        step.n_from_out[d] = 0;
        if (d == 0 && t > 0) {
          step.prev_out[d] = kptr(p.out + s.offsets[t - 1] * ld);
          step.n_from_out[d] = rows;
        } else if (d == 1 && t + 1 < s.T) {
          step.prev_out[d] = kptr(p.out + s.offsets[t + 1] * ld + H);
          step.n_from_out[d] = std::min(rows, s.batch_sizes[t + 1]);
        }
        step.h0[d] = kptr(p.h0[d]);
        step.dh[d] = kptr(p.dh[d]);
        step.dg[d] = kptr(p.dg[d] + off * kGradGates * H);
        step.dgs[d] = kptr(dgs.data_ptr<T>() + d * N * G);
        step.hp[d] = kptr(p.hp[d] + off * H);
      }
      C10_CUDA_CHECK(cuda::backward_step(step, stream));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      dh.baddbmm_(dgs, w);  // dh_{t-1} += dG_h W_hh, both directions (rows past N_t add 0)
    }
  }

  // C[M, N] = A B + beta * C on cuBLAS (through ATen, current stream). No bias: the driver
  // adds biases in the kernels.
  template <typename T>
  static void gemm(int64_t M, int64_t N, int64_t K, MatRef<T> A, MatRef<T> B, T beta, T* C,
                   int64_t ldc, const T* bias) {
    TORCH_INTERNAL_ASSERT(bias == nullptr);
    if (M == 0 || N == 0) return;
    at::Tensor c = wrap(C, {M, N}, {ldc, 1});
    const at::Tensor a = wrap(A.p, {M, K}, {A.rs, A.cs});
    const at::Tensor b = wrap(B.p, {K, N}, {B.rs, B.cs});
    if (static_cast<float>(beta) == 0.0f) {
      at::mm_out(c, a, b);
    } else {
      c.addmm_(a, b);
    }
  }

  template <typename T>
  static void column_sum(int64_t rows, int64_t cols, const T* src, int64_t ld, T* dst) {
    C10_CUDA_CHECK(cuda::column_sum(rows, cols, kptr(src), ld, kptr(dst),
                                    c10::cuda::getCurrentCUDAStream()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  template <typename T>
  static void multiply(int64_t n, const T* a, const T* b, T* out) {
    C10_CUDA_CHECK(
        cuda::multiply(n, kptr(a), kptr(b), kptr(out), c10::cuda::getCurrentCUDAStream()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  static at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    return at::empty(sizes, options);
  }
};

using CudaStack = Stack<CudaBackend>;

std::optional<c10::Device> cuda_device(const at::Tensor& t) {
  return t.is_cuda() ? std::optional<c10::Device>(t.device()) : std::nullopt;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_forward_cuda(
    const at::Tensor& input, const std::optional<at::Tensor>& hx, at::TensorList weights,
    const std::optional<at::Tensor>& batch_sizes, const std::optional<at::Tensor>& dropout_mask,
    bool has_biases, int64_t num_layers, bool bidirectional, bool need_workspace) {
  // (A CPU input, reached with CUDA weights, gets make_geometry's device error, not a guard's.)
  const c10::cuda::OptionalCUDAGuard guard(cuda_device(input));
  return CudaStack::op_forward(input, hx, weights, batch_sizes, dropout_mask, has_biases,
                               num_layers, bidirectional, need_workspace);
}

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> gru_backward_cuda(
    const std::optional<at::Tensor>& grad_output, const std::optional<at::Tensor>& grad_hy,
    const at::Tensor& input, const std::optional<at::Tensor>& hx, at::TensorList weights,
    const std::optional<at::Tensor>& batch_sizes, const std::optional<at::Tensor>& dropout_mask,
    const at::Tensor& output, const at::Tensor& workspace, const at::Tensor& layer_outputs,
    bool has_biases, int64_t num_layers, bool bidirectional, bool need_input_grad,
    bool need_weight_grad) {
  const c10::cuda::OptionalCUDAGuard guard(cuda_device(input));
  return CudaStack::backward(grad_output, grad_hy, input, hx, weights, batch_sizes,
                             dropout_mask, output, workspace, layer_outputs, has_biases,
                             num_layers, bidirectional, need_input_grad, need_weight_grad);
}

}  // namespace
}  // namespace gru_native

TORCH_LIBRARY_IMPL(gru_native, CUDA, m) {
  m.impl("gru_forward", &gru_native::gru_forward_cuda);
  m.impl("gru_backward", &gru_native::gru_backward_cuda);
}
