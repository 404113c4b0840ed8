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

#include <cstdint>

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

// One step of the GEMM path's backward, for every direction.
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
  T* dh[2] = {nullptr, nullptr};              // [N, H] dL/dh_t in, direct part of dL/dh_{t-1} out
  T* dg[2] = {nullptr, nullptr};              // [rows, 4H] out: [d_r | d_z | d_hn | d_n]
  T* dgs[2] = {nullptr, nullptr};             // [N, 3H] out: dG_h, zero beyond rows
  T* hp[2] = {nullptr, nullptr};              // [rows, H] out: h_{t-1}
};

template <typename T>
cudaError_t backward_step(const BackwardStep<T>& args, cudaStream_t stream);

// dst[j] = sum_i src[i * ld + j], in a fixed order (bitwise reproducible), accumulated in Acc.
template <typename T>
cudaError_t column_sum(int64_t rows, int64_t cols, const T* src, int64_t ld, T* dst,
                       cudaStream_t stream);

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
  T* dh[2] = {nullptr, nullptr};               // [N, H]
  T* dg[2] = {nullptr, nullptr};               // [R, 4H]
  T* hp[2] = {nullptr, nullptr};               // [R, H]
};

// How a persistent launch divides a layer: blocks_per_direction blocks per direction, each
// owning `units` hidden units (one per warp per pass), `passes` = ceil(units / warps); `chunk`
// batch rows staged in shared memory at a time.
struct PersistentShape {
  int blocks_per_direction = 0;
  int units = 0;
  int passes = 0;
  int chunk = 0;
};

// How the persistent kernels would be launched on the current device, if they can be.
struct PersistentPlan {
  bool fits = false;
  int threads = 0;
  int kt = 0;          // register tile: 32 * kt >= H
  size_t smem = 0;     // dynamic shared memory per block, bytes
  PersistentShape shape;
};

template <typename T>
PersistentPlan plan_persistent(int D, int64_t N, int64_t H, bool backward, int device);

template <typename T>
cudaError_t persistent_forward(const PersistentLayer<T>& layer, const PersistentPlan& plan,
                               cudaStream_t stream);

template <typename T>
cudaError_t persistent_backward(const PersistentLayer<T>& layer, const PersistentPlan& plan,
                                cudaStream_t stream);

}  // namespace gru_native::cuda
