// gru_cell.h: the GRU gate equations, forward and backward. The one place they live: the CPU
// kernels include this file, and so do the CUDA kernels.
//
// Shape legend (used in every comment of csrc/ and in the README):
//   T   time steps (packed input: the number of packed steps, len(batch_sizes))
//   N   batch; N_t = batch_sizes[t] rows are live at step t (non-increasing in t; N_t = N for
//       dense input)
//   R   rows of the time-major 2-D layout = sum_t N_t (T*N for dense input); step t owns rows
//       [off_t, off_t + N_t) with off_t = sum_{t' < t} N_t'
//   C   input features of a layer (input_size for layer 0, D*H above)
//   H   hidden size
//   D   directions (1, or 2 when bidirectional)
//   L   layers
//
// Layout: nn.GRU's and nothing else. W_ih [3H, C], W_hh [3H, H], b_ih [3H], b_hh [3H], with the
// three gate blocks in the order r (reset), z (update), n (new); "linear before reset":
//
//   r   = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr)
//   z   = sigmoid(x W_iz^T + b_iz + h W_hz^T + b_hz)
//   hn  = h W_hn^T + b_hn
//   n   = tanh(x W_in^T + b_in + r * hn)
//   h'  = (1 - z) * n + z * h  ==  (h - n) * z + n      (the form ATen's CPU cell evaluates)
//
// Workspace contract: for every (layer, direction) and every row, the forward pass saves
// kWorkspaceGates * H values [r | z | n | hn], which is all that backward needs besides h_{t-1}
// (read back from the layer's output, or h0).
//
// The functions are templates over the value type so that one definition serves scalars
// (float, double, or float for half types on the GPU) and SIMD vectors (at::vec::Vectorized on the
// CPU). `Act` supplies sigmoid and tanh for that type.
#pragma once

#include <cmath>

#include "gru_params.h"  // GRU_HOST_DEVICE

namespace gru_native {

// Values saved per row and hidden unit by the forward pass: r, z, n, hn.
constexpr int kWorkspaceGates = 4;
// Gradients the backward pass writes per row and hidden unit: [d_r | d_z | d_hn | d_n], so that
// the first three blocks are dL/d(h W_hh^T + b_hh) and blocks 0, 1, 3 dL/d(x W_ih^T + b_ih).
constexpr int kGradGates = 4;
// Gate blocks in W_ih / W_hh / b_ih / b_hh.
constexpr int kGates = 3;

// Scalar activations (float, double). Device code gets the CUDA overloads of exp/tanh.
template <typename T>
struct ScalarAct {
  static GRU_HOST_DEVICE T sigmoid(T x) { return T(1) / (T(1) + exp(-x)); }
  static GRU_HOST_DEVICE T tanh(T x) { return ::tanh(x); }
};

#if !defined(__CUDACC__) && !defined(__HIPCC__)
// On the host, use std:: so that float stays float.
template <>
struct ScalarAct<float> {
  static inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }
  static inline float tanh(float x) { return std::tanh(x); }
};
template <>
struct ScalarAct<double> {
  static inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
  static inline double tanh(double x) { return std::tanh(x); }
};
#endif

// Forward for one hidden unit of one row.
//   gi_*: x W_i*^T + b_i*   (input projection, input bias included)
//   gh_*: h W_h*^T          (recurrent projection, no bias)
//   bh_*: b_h*              (recurrent bias; zero when bias=False)
// Outputs r, z, n, hn (the workspace) and the new hidden state.
template <typename T, typename Act>
GRU_HOST_DEVICE void gru_cell_forward(const T& gi_r, const T& gi_z, const T& gi_n, const T& gh_r,
                                      const T& gh_z, const T& gh_n, const T& bh_r, const T& bh_z,
                                      const T& bh_n, const T& h_prev, T& r, T& z, T& n, T& hn,
                                      T& h_new) {
  r = Act::sigmoid(gi_r + (gh_r + bh_r));
  z = Act::sigmoid(gi_z + (gh_z + bh_z));
  hn = gh_n + bh_n;
  n = Act::tanh(gi_n + r * hn);
  h_new = (h_prev - n) * z + n;
}

// Backward for one hidden unit of one row.
//   dh:     dL/dh_t (from the layer output and from step t+1)
//   r, z, n, hn: the workspace of the step; h_prev: h_{t-1}
// Outputs the gradients of the gate pre-activations:
//   d_r, d_z, d_n  w.r.t. (x W_i*^T + b_i*), i.e. the rows of dG_i = [d_r | d_z | d_n]
//   d_hn           w.r.t. hn, so dG_h = [d_r | d_z | d_hn]
//   dh_prev        the direct part of dL/dh_{t-1} (the dG_h W_hh part is a GEMM)
template <typename T>
GRU_HOST_DEVICE void gru_cell_backward(const T& dh, const T& r, const T& z, const T& n,
                                       const T& hn, const T& h_prev, T& d_r, T& d_z, T& d_n,
                                       T& d_hn, T& dh_prev) {
  const T one(1);
  d_n = dh * (one - z) * (one - n * n);
  d_z = dh * (h_prev - n) * z * (one - z);
  d_hn = d_n * r;
  d_r = d_n * hn * r * (one - r);
  dh_prev = dh * z;
}

}  // namespace gru_native
