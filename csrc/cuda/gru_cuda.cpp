// gru_cuda.cpp: the CUDA backend: the driver (gru_stack.h) on the CUDA kernels (kernels.cu). The
// binding layer: path choice, the GEMM path's step loop, the persistent path's setup, dtype
// mapping. Everything device-specific (stream, device guard, memory, copies, GEMMs, error checks)
// goes through device.h (device_cuda.cpp), so this one source serves a GPU and the CUDA
// emulation on CPU tensors; torch_cuda.cpp and emulation/torch_emulated.cpp register it for
// their tensors' dispatch key (register_cuda_backend, gru_cuda.h).
#include "cuda/gru_cuda.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "backend.h"
#include "cuda/device.h"
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
  return device::options(c10::CppTypeToScalarType<T>::value);
}

// W_hh of every direction at a stride of 3H * H: the parameter itself when D == 1, else a copy
// into `storage`.
template <typename T>
const T* stacked(const T* const* w, int D, int64_t rows, int64_t cols, at::Tensor& storage) {
  if (D == 1) return w[0];
  storage = device::empty({D, rows, cols}, options_for<T>());
  T* out = storage.data_ptr<T>();
  for (int d = 0; d < D; ++d) device::copy(out + d * rows * cols, w[d], rows * cols * sizeof(T));
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

// The automatic choice follows the per-step cost model of benchmarks/NOTES.md (section 8, "GPU
// cost model"), NOT YET MEASURED on a GPU: the persistent kernels where they fit and the batch
// is small enough that staging each step's rows into every block (through L2) and their dot
// products cost less than the launches and the re-read of W_hh that the GEMM path pays per
// step. float16/bfloat16: cuDNN's GEMMs run on tensor cores, the persistent kernels on FP32
// cores, so the forward's break-even batch is lower.
int64_t persistent_max_batch(bool backward, bool half_type) {
  if (backward) return 8;
  return half_type ? 8 : 16;
}

// Whether to run a layer on the persistent kernels, and their plan if so. In auto mode a batch
// above persistent_max_batch takes the GEMM path without asking the device anything.
template <typename T>
bool use_persistent(Path path, int D, int64_t N, int64_t H, bool backward,
                    cuda::PersistentPlan& plan) {
  constexpr bool half_type = sizeof(T) == 2;
  if (path == Path::kGemm) return false;
  if (path == Path::kAuto && N > persistent_max_batch(backward, half_type)) return false;
  int index = 0;
  device::check(cudaGetDevice(&index));
  plan = cuda::plan_persistent<K<T>>(D, N, H, backward, index);
  if (path == Path::kPersistent) {
    TORCH_CHECK(plan.fits, "gru_native: GRU_NATIVE_CUDA_PATH=persistent, but the persistent ",
                backward ? "backward" : "forward", " kernel does not fit a layer with batch ", N,
                " and hidden size ", H, " on this GPU");
  }
  return plan.fits;
}

// A persistent kernel's launch result. The device may refuse a cooperative launch the plan
// expected to fit: some of its multiprocessors held by other work (other processes under MPS,
// green contexts, NCCL kernels of a data-parallel job), or its resources smaller than they were
// when planned. In auto mode that is no error: the error is cleared and the layer takes the GEMM
// path (returns false); with GRU_NATIVE_CUDA_PATH=persistent it raises. Any other error raises.
bool persistent_ran(cudaError_t err, Path path, bool backward) {
  if (err == cudaSuccess) {
    device::check_launch();
    return true;
  }
  const bool refused = err == cudaErrorCooperativeLaunchTooLarge ||
                       err == cudaErrorLaunchOutOfResources || err == cudaErrorNotSupported;
  if (!refused) device::check(err);
  (void)cudaGetLastError();
  TORCH_CHECK(path == Path::kAuto, "gru_native: GRU_NATIVE_CUDA_PATH=persistent, but the device ",
              "refused the cooperative launch of the persistent ",
              backward ? "backward" : "forward", " kernel: ", cudaGetErrorString(err));
  return false;
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

// dL/dh of a layer's directions, [D, N, H], in the kernels' math type from the layer's first step
// to its last (as cuDNN keeps it): for float and double the driver's buffer itself; for the half
// types a float copy, converted from it once and rounded back into it once (write_back).
template <typename T>
class MathDh {
 public:
  using A = typename cuda::Acc<K<T>>::type;

  MathDh(T* dh, int64_t n, cudaStream_t stream) : dh_(dh), n_(n), stream_(stream) {
    if constexpr (std::is_same_v<A, K<T>>) {
      math_ = reinterpret_cast<A*>(dh);
    } else {
      storage_ = device::empty({n}, device::options(at::kFloat));
      math_ = storage_.data_ptr<float>();
      device::check(cuda::convert(n, kptr(dh), math_, stream));
      device::check_launch();
    }
  }
  A* get() const { return math_; }
  void write_back() {
    if constexpr (!std::is_same_v<A, K<T>>) {
      device::check(cuda::convert(n_, static_cast<const A*>(math_), kptr(dh_), stream_));
      device::check_launch();
    }
  }

 private:
  T* dh_;
  int64_t n_;
  cudaStream_t stream_;
  at::Tensor storage_;
  A* math_ = nullptr;
};

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

  using Guard = device::Guard;

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
    const cudaStream_t stream = device::stream();
    const Path path = requested_path();
    cuda::PersistentPlan plan;
    if (use_persistent<T>(path, D, N, H, false, plan)) {
      const at::Tensor schedule = device::schedule(s);
      auto layer = persistent_layer(s, D, H, schedule, p.w_hh, p.h0);
      layer.out = kptr(p.out);
      for (int d = 0; d < D; ++d) {
        layer.gi[d] = kptr(p.gi[d]);
        layer.b_ih[d] = kptr(p.b_ih[d]);
        layer.b_hh[d] = kptr(p.b_hh[d]);
        layer.hy[d] = kptr(p.hy[d]);
        layer.ws_out[d] = p.ws[d];
      }
      if (persistent_ran(cuda::persistent_forward(layer, plan, stream), path, false)) return;
    }
    // The GEMM path. h_n doubles as the running state: it starts as h0, and each step's
    // pointwise kernel overwrites the rows live at that step (the forward direction's finished
    // rows and the reverse direction's not yet started ones keep their values).
    for (int d = 0; d < D; ++d) {
      if (p.h0[d]) {
        device::copy(p.hy[d], p.h0[d], N * H * sizeof(T));
      } else {
        device::zero(p.hy[d], N * H * sizeof(T));
      }
    }
    at::Tensor w_storage;
    const T* w = stacked(p.w_hh, D, G, H, w_storage);  // [D, 3H, H]
    const at::Tensor gh = device::empty({D, N, G}, options_for<T>());
    T* gh_p = gh.data_ptr<T>();
    cuda::ForwardStep<K<T>> step;
    step.D = D;
    step.H = H;
    step.ld_out = D * H;
    for (int64_t i = 0; i < s.T; ++i) {
      // gh[d] = h[d] W_hh[d]^T, both directions, every row of the state.
      device::gemm<T>(D, N, G, H, MatRef<T>{p.hy[0], H, 1}, N * H,
                      MatRef<T>{w, 1, H}, G * H, 0.0f, gh_p, G, N * G);
      for (int d = 0; d < D; ++d) {
        const int64_t t = d ? s.T - 1 - i : i;
        const int64_t off = s.offsets[t];
        step.rows[d] = s.batch_sizes[t];
        step.gi[d] = kptr(p.gi[d] + off * G);
        step.b_ih[d] = kptr(p.b_ih[d]);
        step.b_hh[d] = kptr(p.b_hh[d]);
        step.gh[d] = kptr(gh_p + d * N * G);
        step.h[d] = kptr(p.hy[d]);
        step.out[d] = kptr(p.out + off * D * H + d * H);
        step.ws[d] = p.ws[d] ? p.ws[d] + off * kWorkspaceGates * H : nullptr;
      }
      device::check(cuda::forward_step(step, stream));
      device::check_launch();
    }
  }

  template <typename T, typename W>
  static void backward_layer(const LayerBackwardParams<T, W>& p) {
    using A = typename cuda::Acc<K<T>>::type;
    const StepSchedule& s = p.steps;
    const int64_t H = p.H, N = s.N, G = kGates * H, ld = p.D * H;
    const int D = p.D;
    if (s.R == 0 || N == 0) return;
    TORCH_INTERNAL_ASSERT(D == 1 || p.dh[1] == p.dh[0] + N * H);
    const cudaStream_t stream = device::stream();
    MathDh<T> dh(p.dh[0], D * N * H, stream);
    const Path path = requested_path();
    cuda::PersistentPlan plan;
    if (use_persistent<T>(path, D, N, H, true, plan)) {
      const at::Tensor schedule = device::schedule(s);
      auto layer = persistent_layer(s, D, H, schedule, p.w_hh, p.h0);
      layer.out_in = kptr(p.out);
      layer.dout = kptr(p.dout);
      for (int d = 0; d < D; ++d) {
        layer.ws_in[d] = p.ws[d];
        layer.dh[d] = dh.get() + d * N * H;
        layer.dg[d] = kptr(p.dg[d]);
        layer.hp[d] = kptr(p.hp[d]);
      }
      if (persistent_ran(cuda::persistent_backward(layer, plan, stream), path, true)) {
        if (p.need_dh0) dh.write_back();
        return;
      }
    }
    at::Tensor w_storage;
    const T* w = stacked(p.w_hh, D, G, H, w_storage);  // [D, 3H, H]
    const at::Tensor dgs = device::empty({D, N, G}, options_for<T>());
    T* dgs_p = dgs.data_ptr<T>();
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
        const StepRows sr = step_rows(s.batch_sizes, s.offsets, s.T, d, t);
        step.prev_out[d] = sr.prev_offset < 0 ? nullptr : kptr(p.out + sr.prev_offset * ld + d * H);
        step.n_from_out[d] = sr.n_from_out;
        step.h0[d] = kptr(p.h0[d]);
        step.dh[d] = dh.get() + d * N * H;
        step.dg[d] = kptr(p.dg[d] + off * kGradGates * H);
        step.dgs[d] = kptr(dgs_p + d * N * G);
        step.hp[d] = kptr(p.hp[d] + off * H);
      }
      device::check(cuda::backward_step(step, stream));
      device::check_launch();
      // The directions' first steps (the last here): the product only gives dL/dh0.
      if (i + 1 == s.T && !p.need_dh0) break;
      // dh_{t-1} += dG_h W_hh, both directions (rows past N_t add 0), into dh's math type.
      device::gemm<T, A>(D, N, H, G, MatRef<T>{dgs_p, G, 1}, N * G, MatRef<T>{w, H, 1}, G * H,
                         1.0f, dh.get(), H, N * H);
    }
    if (p.need_dh0) dh.write_back();
  }

  // C[M, N] = A B + beta * C on the device's GEMM. No bias: the driver adds biases in the
  // kernels.
  template <typename T>
  static void gemm(int64_t M, int64_t N, int64_t K, MatRef<T> A, MatRef<T> B, T beta, T* C,
                   int64_t ldc, const T* bias) {
    TORCH_INTERNAL_ASSERT(bias == nullptr);
    device::gemm<T>(1, M, N, K, A, 0, B, 0, static_cast<float>(beta), C, ldc, 0);
  }

  template <typename T>
  static void column_sum(int64_t rows, int64_t cols, const T* src, int64_t ld, T* dst) {
    using A = typename cuda::Acc<K<T>>::type;
    const int64_t scratch = cuda::column_sum_scratch(rows, cols);
    const at::Tensor partials =
        scratch ? device::empty({scratch}, device::options(c10::CppTypeToScalarType<A>::value))
                : at::Tensor();
    device::check(cuda::column_sum(rows, cols, kptr(src), ld, kptr(dst),
                                   scratch ? partials.data_ptr<A>() : nullptr, device::stream()));
    device::check_launch();
  }

  template <typename T>
  static void multiply(int64_t n, const T* a, const T* b, T* out) {
    device::check(cuda::multiply(n, kptr(a), kptr(b), kptr(out), device::stream()));
    device::check_launch();
  }

  static at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    return device::empty(sizes, options);
  }
  static at::Tensor empty_result(at::IntArrayRef sizes, const at::TensorOptions& options) {
    return at::empty(sizes, options);
  }
};

}  // namespace

void register_cuda_backend(torch::Library& m) {
  register_backend<CudaBackend>(m, device::type());
}

}  // namespace gru_native
