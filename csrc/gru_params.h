// gru_params.h: the raw-pointer contract between the device-independent driver (gru_stack.cpp)
// and the per-device recurrence kernels (cpu/, cuda/). No ATen here. Shape legend: gru_cell.h.
#pragma once

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

// One layer, all its directions, forward. Direction 0 runs t = 0..T-1, direction 1 (reverse)
// runs t = T-1..0; every row starts from its own h0 row (packed semantics, SPEC 1.5).
// ws_t is the workspace's element type: scalar_t, or float for the half types on the GPU.
template <typename scalar_t, typename ws_t = scalar_t>
struct LayerForwardParams {
  StepSchedule steps;
  int64_t H = 0;
  int D = 1;
  const scalar_t* gi[2] = {nullptr, nullptr};    // [R, 3H]  x W_ih^T (no bias)
  const scalar_t* b_ih[2] = {nullptr, nullptr};  // [3H], nullptr when bias=False
  const scalar_t* w_hh[2] = {nullptr, nullptr};  // [3H, H]
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
