// kernels.cpp: the CPU recurrence kernels. The gate math comes from gru_cell.h, evaluated on
// at::vec::Vectorized lanes (Sleef exp/tanh), so every hidden unit, tail included, takes the
// same vector path.

// at::vec picks its implementation from CPU_CAPABILITY_*; match it to what the compiler targets
// (-march=native by default, the x86-64 baseline with GRU_NATIVE_PORTABLE=1). Must come before
// any ATen include.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && \
    defined(__AVX512VL__)
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#define GRU_NATIVE_VEC_ISA "AVX512"
#elif defined(__AVX2__) && defined(__FMA__)
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define GRU_NATIVE_VEC_ISA "AVX2"
#else
#define CPU_CAPABILITY DEFAULT
#define GRU_NATIVE_VEC_ISA "DEFAULT"
#endif

#include "cpu/kernels.h"

#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <vector>

#include "cpu/blas.h"
#include "gru_cell.h"

namespace gru_native::cpu {
namespace {

template <typename scalar_t>
using Vec = at::vec::Vectorized<scalar_t>;

template <typename scalar_t>
struct VecAct {
  using V = Vec<scalar_t>;
  // The same evaluation as ATen's vectorised sigmoid: 1 / (1 + exp(-x)).
  static inline V sigmoid(const V& x) { return (V(1) + x.neg().exp()).reciprocal(); }
  static inline V tanh(const V& x) { return x.tanh(); }
};

// Calls f(j, n) for every block of n <= V::size() hidden units starting at j.
template <typename scalar_t, typename F>
inline void for_each_lane_block(int64_t H, const F& f) {
  constexpr int64_t kV = Vec<scalar_t>::size();
  for (int64_t j = 0; j < H; j += kV) f(j, std::min(kV, H - j));
}

// One step of one direction, rows [0, rows):
//   gi [rows, 3H], gh [rows, 3H] (h W_hh^T, no bias), h [rows, H] (h_{t-1} in, h_t out),
//   out [rows, ld_out], ws [rows, 4H] or nullptr.
template <typename scalar_t>
void forward_pointwise(int64_t rows, int64_t H, const scalar_t* gi, const scalar_t* gh,
                       const scalar_t* b_hh, scalar_t* h, scalar_t* out, int64_t ld_out,
                       scalar_t* ws) {
  using V = Vec<scalar_t>;
  const int64_t G = kGates * H;
  for (int64_t b = 0; b < rows; ++b) {
    const scalar_t* gi_b = gi + b * G;
    const scalar_t* gh_b = gh + b * G;
    scalar_t* h_b = h + b * H;
    scalar_t* out_b = out + b * ld_out;
    scalar_t* ws_b = ws ? ws + b * kWorkspaceGates * H : nullptr;
    for_each_lane_block<scalar_t>(H, [&](int64_t j, int64_t n) {
      auto load = [&](const scalar_t* p) { return V::loadu(p + j, n); };
      const V zero(0);
      const V bh_r = b_hh ? load(b_hh) : zero;
      const V bh_z = b_hh ? load(b_hh + H) : zero;
      const V bh_n = b_hh ? load(b_hh + 2 * H) : zero;
      V r, z, nn, hn, h_new;
      gru_cell_forward<V, VecAct<scalar_t>>(load(gi_b), load(gi_b + H), load(gi_b + 2 * H),
                                            load(gh_b), load(gh_b + H), load(gh_b + 2 * H), bh_r,
                                            bh_z, bh_n, load(h_b), r, z, nn, hn, h_new);
      h_new.store(h_b + j, n);
      h_new.store(out_b + j, n);
      if (ws_b) {
        r.store(ws_b + j, n);
        z.store(ws_b + H + j, n);
        nn.store(ws_b + 2 * H + j, n);
        hn.store(ws_b + 3 * H + j, n);
      }
    });
  }
}

// One row of one step, backward:
//   dout_b [H] dL/dh_t from the layer output, dh_b [H] dL/dh_t from step t+1 (in) and the direct
//   part of dL/dh_{t-1} (out), ws_b [4H], h_prev [H]; writes dgi_b [3H], dgh_b [3H], hp_b [H].
template <typename scalar_t>
void backward_pointwise_row(int64_t H, const scalar_t* dout_b, const scalar_t* ws_b,
                            const scalar_t* h_prev, scalar_t* dh_b, scalar_t* dgi_b,
                            scalar_t* dgh_b, scalar_t* hp_b) {
  using V = Vec<scalar_t>;
  for_each_lane_block<scalar_t>(H, [&](int64_t j, int64_t n) {
    auto load = [&](const scalar_t* p) { return V::loadu(p + j, n); };
    const V hp = load(h_prev);
    V d_r, d_z, d_n, d_hn, dh_prev;
    gru_cell_backward<V>(load(dout_b) + load(dh_b), load(ws_b), load(ws_b + H),
                         load(ws_b + 2 * H), load(ws_b + 3 * H), hp, d_r, d_z, d_n, d_hn, dh_prev);
    d_r.store(dgi_b + j, n);
    d_z.store(dgi_b + H + j, n);
    d_n.store(dgi_b + 2 * H + j, n);
    d_r.store(dgh_b + j, n);
    d_z.store(dgh_b + H + j, n);
    d_hn.store(dgh_b + 2 * H + j, n);
    dh_prev.store(dh_b + j, n);
    hp.store(hp_b + j, n);
  });
}

template <typename scalar_t>
void forward_direction(const LayerForwardParams<scalar_t>& p, int d) {
  const StepSchedule& s = p.steps;
  const int64_t H = p.H, G = kGates * H, ld_out = p.D * H;
  std::vector<scalar_t> gh(static_cast<size_t>(s.N * G));
  for (int64_t i = 0; i < s.T; ++i) {
    const int64_t t = d ? s.T - 1 - i : i;
    const int64_t rows = s.batch_sizes[t], off = s.offsets[t];
    gemm_nt<scalar_t>(rows, G, H, p.h[d], H, p.w_hh[d], H, scalar_t(0), gh.data(), G);
    forward_pointwise<scalar_t>(rows, H, p.gi[d] + off * G, gh.data(), p.b_hh[d], p.h[d],
                                p.out + off * ld_out + d * H, ld_out,
                                p.ws[d] ? p.ws[d] + off * kWorkspaceGates * H : nullptr);
  }
}

template <typename scalar_t>
void backward_direction(const LayerBackwardParams<scalar_t>& p, int d) {
  const StepSchedule& s = p.steps;
  const int64_t H = p.H, G = kGates * H, ld = p.D * H;
  const scalar_t* out = p.out + d * H;
  const scalar_t* dout = p.dout + d * H;
  // Steps in the reverse of the order the forward ran them.
  for (int64_t i = 0; i < s.T; ++i) {
    const int64_t t = d ? i : s.T - 1 - i;
    const int64_t rows = s.batch_sizes[t], off = s.offsets[t];
    for (int64_t b = 0; b < rows; ++b) {
      // h_{t-1} of this row: the previous step's output, or h0 where the row starts here.
      const scalar_t* h_prev;
      if (d == 0) {
        h_prev = (t == 0) ? p.h0[d] + b * H : out + (s.offsets[t - 1] + b) * ld;
      } else {
        h_prev = (t + 1 < s.T && b < s.batch_sizes[t + 1]) ? out + (s.offsets[t + 1] + b) * ld
                                                            : p.h0[d] + b * H;
      }
      const int64_t row = off + b;
      backward_pointwise_row<scalar_t>(H, dout + row * ld, p.ws[d] + row * kWorkspaceGates * H,
                                       h_prev, p.dh[d] + b * H, p.dgi[d] + row * G,
                                       p.dgh[d] + row * G, p.hp[d] + row * H);
    }
    gemm_nn<scalar_t>(rows, H, G, p.dgh[d] + off * G, G, p.w_hh[d], H, scalar_t(1), p.dh[d], H);
  }
}

}  // namespace

template <typename scalar_t>
void forward_layer(const LayerForwardParams<scalar_t>& p) {
  for (int d = 0; d < p.D; ++d) forward_direction(p, d);
}

template <typename scalar_t>
void backward_layer(const LayerBackwardParams<scalar_t>& p) {
  for (int d = 0; d < p.D; ++d) backward_direction(p, d);
}

template <typename scalar_t>
void column_sum(int64_t rows, int64_t cols, const scalar_t* src, int64_t ld, scalar_t* dst) {
  using V = Vec<scalar_t>;
  // Sequential sums over blocks of rows, then a sum of the block sums: a fixed order whose
  // rounding error grows with rows / kBlock + kBlock rather than with rows.
  constexpr int64_t kBlock = 256;
  std::fill(dst, dst + cols, scalar_t(0));
  for (int64_t r0 = 0; r0 < rows; r0 += kBlock) {
    const int64_t r1 = std::min(rows, r0 + kBlock);
    for_each_lane_block<scalar_t>(cols, [&](int64_t j, int64_t n) {
      V acc = V::loadu(src + r0 * ld + j, n);
      for (int64_t r = r0 + 1; r < r1; ++r) acc = acc + V::loadu(src + r * ld + j, n);
      (V::loadu(dst + j, n) + acc).store(dst + j, n);
    });
  }
}

const char* vector_isa() { return GRU_NATIVE_VEC_ISA; }

#define GRU_NATIVE_INSTANTIATE(T)                                      \
  template void forward_layer<T>(const LayerForwardParams<T>&);        \
  template void backward_layer<T>(const LayerBackwardParams<T>&);      \
  template void column_sum<T>(int64_t, int64_t, const T*, int64_t, T*);
GRU_NATIVE_INSTANTIATE(float)
GRU_NATIVE_INSTANTIATE(double)
#undef GRU_NATIVE_INSTANTIATE

}  // namespace gru_native::cpu
