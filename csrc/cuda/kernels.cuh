// kernels.cuh: the CUDA kernels of gru_native (raw pointers, sizes, a stream; no ATen), for the
// binding in gru_cuda.cpp. Shape legend and gate equations: gru_cell.h.
//
// Element types: float, double, __half, __nv_bfloat16. The gate math runs in Acc<T> (float for
// float and the half types, double for double); the saved workspace is Acc<T> too.
//
// Two ways to run a layer's recurrence:
//  - the GEMM path: per step, one batched GEMM h W_hh^T for both directions (cuBLAS, through
//    ATen, in the binding) and one pointwise kernel for both directions (forward_step); the
//    backward likewise (backward_step, then one batched GEMM dG_h W_hh).
//  - the persistent path: one cooperative launch for the whole sequence. Each block owns some of
//    one direction's hidden units and keeps their rows (forward) or columns (backward) of W_hh
//    for all steps, in registers (and shared memory beyond one unit per warp), the reduction
//    split over the lanes of a warp; one grid-wide synchronisation per step (kernels.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace gru_native::cuda {

template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

// One step of the GEMM path's forward, for every direction. Pointers of direction d point at
// the step's first row.
template <typename T>
struct ForwardStep {
  using W = typename Acc<T>::type;
  int D = 1;
  int64_t H = 0, ld_out = 0;
  int64_t rows[2] = {0, 0};
  const T* gi[2] = {nullptr, nullptr};    // [rows, 3H] x W_ih^T (no bias)
  const T* b_ih[2] = {nullptr, nullptr};  // [3H] or nullptr
  const T* b_hh[2] = {nullptr, nullptr};  // [3H] or nullptr
  const T* gh[2] = {nullptr, nullptr};    // [N, 3H] h_{t-1} W_hh^T (no bias)
  T* h[2] = {nullptr, nullptr};           // [N, H] running state: h_{t-1} in, h_t out
  T* out[2] = {nullptr, nullptr};         // [rows, ld_out] column block of direction d
  W* ws[2] = {nullptr, nullptr};          // [rows, 4H] or nullptr
};

template <typename T>
cudaError_t forward_step(const ForwardStep<T>& args, cudaStream_t stream);

// One step of the GEMM path's backward, for every direction. dL/dh stays in W (float for the
// half types) from the layer's first step to its last: only its inputs and outputs are rounded.
template <typename T>
struct BackwardStep {
  using W = typename Acc<T>::type;
  int D = 1;
  int64_t H = 0, N = 0, ld = 0;
  int64_t rows[2] = {0, 0};
  const T* dout[2] = {nullptr, nullptr};      // [rows, ld] column block of direction d
  const W* ws[2] = {nullptr, nullptr};        // [rows, 4H]
  const T* prev_out[2] = {nullptr, nullptr};  // h_{t-1} of rows < n_from_out: [.., ld]
  int64_t n_from_out[2] = {0, 0};
  const T* h0[2] = {nullptr, nullptr};        // [N, H] h_{t-1} of the other rows; nullptr: 0
  W* dh[2] = {nullptr, nullptr};              // [N, H] dL/dh_t in, direct part of dL/dh_{t-1} out
  T* dg[2] = {nullptr, nullptr};              // [rows, 4H] out: [d_r | d_z | d_hn | d_n]
  T* dgs[2] = {nullptr, nullptr};             // [N, 3H] out: dG_h, zero beyond rows
  T* hp[2] = {nullptr, nullptr};              // [rows, H] out: h_{t-1}
};

template <typename T>
cudaError_t backward_step(const BackwardStep<T>& args, cudaStream_t stream);

// dst[j] = sum_i src[i * ld + j], accumulated in Acc in an order fixed by rows and cols alone
// (bitwise reproducible, no atomics): blocks of rows summed in parallel, then their sums.
// `partials` is scratch of column_sum_scratch(rows, cols) Acc values (0: none needed).
template <typename T>
cudaError_t column_sum(int64_t rows, int64_t cols, const T* src, int64_t ld, T* dst,
                       typename Acc<T>::type* partials, cudaStream_t stream);
int64_t column_sum_scratch(int64_t rows, int64_t cols);

// dst[i] = src[i] converted (round to nearest even where it narrows).
template <typename S, typename D>
cudaError_t convert(int64_t n, const S* src, D* dst, cudaStream_t stream);

// out[i] = a[i] * b[i]
template <typename T>
cudaError_t multiply(int64_t n, const T* a, const T* b, T* out, cudaStream_t stream);

// -- persistent path ---------------------------------------------------------------------------

// A whole layer (all directions, all steps). The step schedule lives on the device.
template <typename T>
struct PersistentLayer {
  using W = typename Acc<T>::type;
  int D = 1;
  int64_t T_steps = 0, N = 0, H = 0, ld = 0;   // ld = D * H
  const int64_t* batch_sizes = nullptr;        // device [T]
  const int64_t* offsets = nullptr;            // device [T]
  const T* w_hh[2] = {nullptr, nullptr};       // [3H, H]
  const T* h0[2] = {nullptr, nullptr};         // [N, H] or nullptr (zeros)
  // forward: step t reads h_{t-1} from the output rows of the direction's previous step (or
  // h0), never from a buffer written in the same step, so one grid sync per step suffices
  const T* gi[2] = {nullptr, nullptr};         // [R, 3H]
  const T* b_ih[2] = {nullptr, nullptr};
  const T* b_hh[2] = {nullptr, nullptr};
  T* hy[2] = {nullptr, nullptr};               // [N, H] out: h_n
  T* out = nullptr;                            // [R, ld]
  W* ws_out[2] = {nullptr, nullptr};           // [R, 4H] or nullptr
  // backward
  const T* out_in = nullptr;                   // [R, ld] the layer's output
  const T* dout = nullptr;                     // [R, ld]
  const W* ws_in[2] = {nullptr, nullptr};      // [R, 4H]
  W* dh[2] = {nullptr, nullptr};               // [N, H], in W (see BackwardStep)
  T* dg[2] = {nullptr, nullptr};               // [R, 4H]
  T* hp[2] = {nullptr, nullptr};               // [R, H]
};

// n / d and n % d for 0 <= n < 2^31 with a multiply-high and a shift instead of a division
// (d >= 1 fixed for a launch: the round-up method, m = floor(2^32 (2^s - d) / d) + 1 with
// 2^(s-1) < d <= 2^s, so that n / d = (mulhi(n, m) + n) >> s).
struct FastDivisor {
  uint32_t d = 1, m = 1;
  int s = 0;
  FastDivisor() = default;
  explicit FastDivisor(uint32_t divisor) : d(divisor) {
    while ((uint64_t{1} << s) < d) ++s;
    m = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << s) - d)) / d + 1);
  }
};

// How a persistent launch divides a layer: blocks_per_direction blocks per direction, each
// owning `units` hidden units (one per warp per pass), `passes` = ceil(units / warps); `chunk`
// batch rows staged in shared memory at a time.
struct PersistentShape {
  int blocks_per_direction = 0;
  int units = 0;
  int passes = 0;
  int chunk = 0;
  FastDivisor by_units;  // FastDivisor(units)
};

// How the persistent kernels would be launched on the current device, if they can be.
struct PersistentPlan {
  bool fits = false;
  int threads = 0;
  int kt = 0;          // register tile: 32 * kt >= H
  size_t smem = 0;     // dynamic shared memory per block, bytes
  PersistentShape shape;
  int64_t max_hidden = 0;  // the largest H the kernels take for this element type
};

// The plan for a layer on `device` (persistent_plan.cpp). The device's attributes and each
// kernel's occupancy are queried once per device (and kernel and shared memory size) and kept.
template <typename T>
PersistentPlan plan_persistent(int D, int64_t N, int64_t H, bool backward, int device);

// How many times the planner has queried the CUDA runtime (device attributes, function
// attributes, occupancy): for tests of the cache.
int64_t plan_queries();
// Forgets what the planner learnt of every device: for the CUDA emulation, whose device a test
// may change between calls (a GPU's does not change).
void forget_devices();

// What the planner needs of the kernels (kernels.cu): 256 threads a block, a unit per warp and
// pass; the kernel with register tile kt (32 kt >= H; nullptr where there is none); its dynamic
// shared memory in bytes.
constexpr int kPersistentThreads = 256;
constexpr int kPersistentUnitsPerPass = kPersistentThreads / 32;
template <typename T>
constexpr int persistent_max_kt() {
  return sizeof(typename Acc<T>::type) == 8 ? 16 : 32;  // register budget: <= 96 32-bit words
}
template <typename T>
using PersistentKernel = void (*)(PersistentLayer<T>, PersistentShape);
template <typename T>
PersistentKernel<T> persistent_kernel(bool backward, int kt);
template <typename T>
size_t persistent_smem(bool backward, int kt, int passes, int chunk);

template <typename T>
cudaError_t persistent_forward(const PersistentLayer<T>& layer, const PersistentPlan& plan,
                               cudaStream_t stream);

template <typename T>
cudaError_t persistent_backward(const PersistentLayer<T>& layer, const PersistentPlan& plan,
                                cudaStream_t stream);

// -- what ran ------------------------------------------------------------------------------

// One launch of the kernels above (launch_record.cpp keeps them while recording is on).
struct LaunchRecord {
  const char* kernel = "";  // forward_step, backward_step, column_sum, column_sum_partials,
                            // convert, multiply, persistent_forward, persistent_backward
  const char* dtype = "";   // the element type: float32, float64, float16, bfloat16
  unsigned grid[3] = {0, 0, 0}, block[3] = {0, 0, 0};
  size_t smem = 0;
  bool cooperative = false;
  int kt = 0;               // the persistent kernels' register tile
  PersistentShape shape;    // the persistent kernels' division of the layer
  cudaError_t result = cudaSuccess;
};

// Process-wide: start clears the record and starts it, stop ends it and returns what it holds
// (at most kMaxLaunchRecords launches; dropped_launches() says how many more there were).
constexpr size_t kMaxLaunchRecords = 1 << 16;
void start_launch_record();
std::vector<LaunchRecord> stop_launch_record();
int64_t dropped_launches();
bool recording_launches();
void record_launch(const LaunchRecord& record);

}  // namespace gru_native::cuda
