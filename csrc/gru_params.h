// gru_params.h: the raw-pointer contract between the device-independent driver (gru_stack.cpp)
// and the per-device recurrence kernels (cpu/, cuda/), and the per-step row rules every kernel
// follows (step_rows). No ATen here; nvcc compiles it for device code too. Shape legend:
// gru_cell.h.
#pragma once

// A function for the host and, under nvcc (or hipcc), for the device too.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define GRU_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define GRU_HOST_DEVICE inline
#endif

#include <cstdint>

namespace gru_native {

// A matrix view: element (i, j) at p[i * rs + j * cs] (any transposition).
template <typename T>
struct MatRef {
  const T* p;
  int64_t rs, cs;
};

// The step schedule of one sequence batch: N_t rows live at step t, stored at rows
// [offsets[t], offsets[t] + batch_sizes[t]) of every [R, ...] buffer. Host memory.
struct StepSchedule {
  int64_t T = 0;                         // steps
  int64_t N = 0;                         // batch = batch_sizes[0] (0 for an empty batch)
  int64_t R = 0;                         // rows = sum(batch_sizes)
  const int64_t* batch_sizes = nullptr;  // [T], non-increasing
  const int64_t* offsets = nullptr;      // [T], offsets[t] = sum_{t'<t} batch_sizes[t']
};

// Which rows of step t of direction d continue there, start there and finish there. Direction 0
// runs t = 0..T-1 and direction 1 t = T-1..0, so a direction's previous step is t - 1 or t + 1.
// As N_t is non-increasing, in direction 0 every row of step t was live at t - 1 and rows
// [N_{t+1}, N_t) finish at t; in direction 1 rows [N_{t+1}, N_t) start at t and every row
// finishes at t = 0.
//   rows [0, n_from_out):    h_{t-1} of row b is row prev_offset + b of the layer output (the
//                            direction's own columns), the previous step's h;
//   rows [n_from_out, N_t):  h_{t-1} is the row's own h0 (nn.GRU's packed
//                            semantics: a sequence starts from its own h0 row);
//   rows [finish_from, N_t): this is the row's last step in the direction's order: h_t is h_n.
struct StepRows {
  int64_t prev_offset;  // the previous step's first row in the layer output, -1 when none
  int64_t n_from_out;
  int64_t finish_from;
};

// batch_sizes and offsets as in StepSchedule (host or device memory, wherever this runs).
GRU_HOST_DEVICE StepRows step_rows(const int64_t* batch_sizes, const int64_t* offsets, int64_t T,
                                   int d, int64_t t) {
  const int64_t rows = batch_sizes[t];
  StepRows r{-1, 0, 0};
  if (d == 0) {
    if (t > 0) {
      r.prev_offset = offsets[t - 1];
      r.n_from_out = rows;
    }
    r.finish_from = t + 1 < T ? batch_sizes[t + 1] : 0;
  } else {
    if (t + 1 < T) {
      r.prev_offset = offsets[t + 1];
      r.n_from_out = rows < batch_sizes[t + 1] ? rows : batch_sizes[t + 1];
    }
    r.finish_from = t == 0 ? 0 : rows;
  }
  return r;
}

// One layer, all its directions, forward. Direction 0 runs t = 0..T-1, direction 1 (reverse)
// runs t = T-1..0; every row starts from its own h0 row (nn.GRU's packed semantics).
// ws_t is the workspace's element type: scalar_t, or float for the half types. w_t is W_hh's
// element type: scalar_t, or for the CPU's inference-only quantized layers bfloat16 or int8_t
// (then W_hh[g, k] = w_hh[g, k] * w_hh_scale[g]).
template <typename scalar_t, typename ws_t = scalar_t, typename w_t = scalar_t>
struct LayerForwardParams {
  StepSchedule steps;
  int64_t H = 0;
  int D = 1;
  const scalar_t* gi[2] = {nullptr, nullptr};    // [R, 3H]  x W_ih^T (no bias)
  const scalar_t* b_ih[2] = {nullptr, nullptr};  // [3H], nullptr when bias=False
  const w_t* w_hh[2] = {nullptr, nullptr};       // [3H, H]
  const float* w_hh_scale[2] = {nullptr, nullptr};  // [3H] for int8_t weights, else unused
  bool w_hh_panels = false;  // int8_t weights: w_hh in panels (cpu/qdot.h), not [3H, H]
  const scalar_t* b_hh[2] = {nullptr, nullptr};  // [3H], nullptr when bias=False
  const scalar_t* h0[2] = {nullptr, nullptr};    // [N, H], nullptr: zeros
  scalar_t* hy[2] = {nullptr, nullptr};          // [N, H]  out: h_n (not aliasing h0)
  ws_t* ws[2] = {nullptr, nullptr};              // [R, 4H] [r|z|n|hn], nullptr: do not save
  scalar_t* out = nullptr;                       // [R, D*H], direction d owns columns d*H..
};

// One layer, all its directions, backward through time.
template <typename scalar_t, typename ws_t = scalar_t>
struct LayerBackwardParams {
  StepSchedule steps;
  int64_t H = 0;
  int D = 1;
  const scalar_t* w_hh[2] = {nullptr, nullptr};  // [3H, H]
  const scalar_t* h0[2] = {nullptr, nullptr};    // [N, H], nullptr: zeros
  const ws_t* ws[2] = {nullptr, nullptr};        // [R, 4H] saved by the forward
  const scalar_t* out = nullptr;                 // [R, D*H] the layer's output h_t
  const scalar_t* dout = nullptr;                // [R, D*H] dL/d(output of this layer)
  scalar_t* dh[2] = {nullptr, nullptr};          // [N, H]  dL/dh_n on entry, dL/dh0 on exit
  bool need_dh0 = true;  // false: dh on exit is not used (a kernel may skip the last product)
  scalar_t* dg[2] = {nullptr, nullptr};          // [R, 4H] out: [d_r | d_z | d_hn | d_n]
  scalar_t* hp[2] = {nullptr, nullptr};          // [R, H]  out: h_{t-1} of every row
};

}  // namespace gru_native
