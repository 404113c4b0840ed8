// kernels.cpp: the CPU recurrence, and the small vectorised loops the CPU backend calls besides
// it (small_gemm, column_sum, multiply, activations). Every element type's math runs in
// Math<T> (vec.h): float for bfloat16 and float16, converted on load and rounded on store.
//
// One parallel region per layer runs the whole sequence (threads.h). A thread owns a slice
// [j0, j1) of the hidden units of one direction, packs the rows of W_hh it needs once (or, for a
// few steps, reads them in place), and per step computes the recurrent GEMM for its slice
// (packed_gemm.h, wrows_gemm.h, dot_gemm.h) and the fused pointwise pass for its slice (gate
// math from gru_cell.h on at::vec lanes: vec.h). The threads of a direction meet at one barrier per step.
// Small problems run on one thread, with no region.

// First: it chooses at::vec's instruction set, for every ATen header after it.
#include "cpu/vec.h"

#include "cpu/kernels.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu/bf16_pairs.h"
#include "cpu/dot_gemm.h"
#include "cpu/packed_gemm.h"
#include "cpu/qdot.h"
#include "cpu/threads.h"
#include "cpu/wrows_gemm.h"
#include "gru_cell.h"

namespace gru_native::cpu {
namespace {

// h0 of one direction: rows at h0 + b * ld; a zero row (ld 0) when the caller gave none.
template <typename scalar_t>
struct InitialState {
  const scalar_t* rows;
  int64_t ld;
  bool zero;
  InitialState(const scalar_t* h0, int64_t H, const std::vector<scalar_t>& zeros)
      : rows(h0 ? h0 : zeros.data()), ld(h0 ? H : 0), zero(h0 == nullptr) {}
  const scalar_t* row(int64_t b) const { return rows + b * ld; }
};

// The rows of step t in direction d (step_rows: which continue, which start from h0, which
// finish), and h_{t-1} of those that continue: row b at prev + b * ld_out, in the direction's
// columns of the layer output (out_d).
template <typename scalar_t>
struct StepState {
  StepRows rows;
  const scalar_t* prev;  // nullptr when no row continues
  StepState(const StepSchedule& s, int d, int64_t t, const scalar_t* out_d, int64_t ld_out)
      : rows(step_rows(s.batch_sizes, s.offsets, s.T, d, t)),
        prev(rows.prev_offset < 0 ? nullptr : out_d + rows.prev_offset * ld_out) {}
};

// src rows [0, M) x [0, K) into dst (rows at ld_src and ld_dst), converted to D's type.
template <typename S, typename D>
void convert_rows(int64_t M, int64_t K, const S* src, int64_t ld_src, D* dst, int64_t ld_dst) {
  for (int64_t m = 0; m < M; ++m) {
    const S* s = src + m * ld_src;
    D* t = dst + m * ld_dst;
    for_each_lane<Math<S>>(K, [&](const auto& lane, int64_t k) { lane.store(t + k, lane.load(s + k)); });
  }
}

// dot_rows with 16-bit weights (bfloat16, float16) converts each vector of W as it loads it, once
// per tile of rows of A. From kConvertRows rows of A on, W's rows are converted to float once
// instead, a block of whole tiles of rows (about kConvertBytes) at a time into a buffer of the
// thread's, and the float dot products run on the block: the same values in the same sums, the
// same bits (dot_rows' sums do not depend on the tiling).
constexpr int64_t kConvertRows = 4;
constexpr int64_t kConvertBytes = 48 * 1024;

// fn(c0, rows, block) for blocks of W's rows [c0, c0 + rows) converted to Math<W> (row stride K),
// each a multiple of `tile` rows of about kConvertBytes, in order, in a buffer of the calling
// thread's: the one converting loop of dot_rows_converted and wrows_run_converted.
template <typename W, typename Fn>
void for_converted_blocks(int64_t Nc, int64_t K, const W* w, int64_t ldw, int64_t tile,
                          const Fn& fn) {
  using T = Math<W>;
  const int64_t block =
      tile * std::max<int64_t>(1, kConvertBytes / (tile * K * static_cast<int64_t>(sizeof(T))));
  thread_local std::vector<T> converted;
  if (converted.size() < static_cast<size_t>(block * K)) converted.resize(block * K);
  for (int64_t c0 = 0; c0 < Nc; c0 += block) {
    const int64_t rows = std::min(block, Nc - c0);
    convert_rows(rows, K, w + c0 * ldw, ldw, converted.data(), K);
    fn(c0, rows, static_cast<const T*>(converted.data()));
  }
}

template <typename A, typename W, typename Out>
void dot_rows_converted(int64_t M, const A* a, int64_t lda, int64_t Nc, int64_t K, const W* w,
                        int64_t ldw, Out* C, int64_t ldc) {
  using T = Math<W>;
#if defined(GRU_NATIVE_BF16_PAIRS)
  if constexpr (std::is_same_v<A, c10::BFloat16> && std::is_same_v<W, c10::BFloat16>) {
    return pairs::dot_rows(M, a, lda, Nc, K, w, ldw, C, ldc);  // bf16_pairs.h
  }
#endif
  if constexpr (std::is_same_v<W, T>) {
    dot_rows(M, a, lda, Nc, K, w, ldw, C, ldc);
  } else {
    if (M < kConvertRows || K <= 0) return dot_rows(M, a, lda, Nc, K, w, ldw, C, ldc);
    for_converted_blocks(Nc, K, w, ldw, DotTiling<T>::kCB,
                         [&](int64_t c0, int64_t rows, const T* block) {
                           dot_rows(M, a, lda, rows, K, block, K, C + c0, ldc);
                         });
  }
}

// C = A W^T from A packed by wrows_pack_a (no bias, C overwritten), W of T or of a 16-bit type
// (bfloat16 weights): the latter converted to T a block of whole tiles of rows (about
// kConvertBytes) at a time, as dot_rows_converted does; each element's sum is the same whatever
// the blocks (wrows_gemm.h), so the bits are those of the float product on the converted weights.
template <typename T, typename W>
void wrows_run_converted(int64_t M, int64_t Nc, int64_t K, const T* ap, const W* w, int64_t ldw,
                         T* C, int64_t ldc) {
  if constexpr (std::is_same_v<W, T>) {
    wrows_run(M, Nc, K, ap, w, ldw, C, ldc, false, static_cast<const T*>(nullptr));
  } else {
    for_converted_blocks(Nc, K, w, ldw, WRowsTiling<T>::kWRows,
                         [&](int64_t c0, int64_t rows, const T* block) {
                           wrows_run(M, rows, K, ap, block, K, C + c0, ldc, false,
                                     static_cast<const T*>(nullptr));
                         });
  }
}

// ---------------------------------------------------------------------------------------------
// Forward.

// What a forward thread keeps for its slice: the packed form's W_hh rows and the previous step's
// rows converted to the math type (a half type's); gh.
template <typename acc_t>
struct ForwardBuffers {
  PackedGemm<acc_t> wh;       // W_hh rows of the slice, all three gates: [H, 3 * width]
  std::vector<acc_t> gh;      // [N, 3 * width] h_{t-1} W_hh^T for the slice (no bias)
  std::vector<acc_t> rows;    // [N, H] h_{t-1} in acc_t for the packed product
  std::vector<acc_t> a_panels;  // h_{t-1} packed for the direct form's wrows_run
#if defined(GRU_NATIVE_BF16_PAIRS)
  pairs::PairPanels wp;  // bfloat16 layers on AVX512-BF16: wh's columns as words of two k
#endif
};

// A bfloat16 layer's packed form on AVX512-BF16: W_hh packed as pairs, h_{t-1} read in place
// (bf16_pairs.h); elsewhere, and for bfloat16 weights under float activations, float panels.
template <typename scalar_t, typename w_t>
constexpr bool kPairsForm =
#if defined(GRU_NATIVE_BF16_PAIRS)
    std::is_same_v<scalar_t, c10::BFloat16> && std::is_same_v<w_t, c10::BFloat16>;
#else
    false;
#endif

// One thread's share of one direction's forward: hidden units [j0, j1) of all three gates.
template <typename scalar_t, typename w_t>
struct ForwardSlice {
  using acc_t = Math<scalar_t>;
  static constexpr bool kInt8 = std::is_same_v<w_t, int8_t>;
  const ForwardParams<scalar_t, w_t>& p;
  int d;
  int64_t j0, j1;
  ForwardBuffers<acc_t>& buf;
  const std::vector<scalar_t>& zeros;  // [H]
  bool direct;  // products straight from W_hh (wrows_run, dot_rows, qdot), nothing packed
  QuantizedRows* hq;  // int8 weights: [N, H] the direction's h_{t-1} quantized per row, shared

  int64_t width() const { return j1 - j0; }

  // Column c = g * width + jj of the packed matrix is gate g of hidden unit j0 + jj.
  void pack() {
    if (direct) return;
    const int64_t H = p.H, wd = width();
    const w_t* W = p.w_hh[d] + j0 * H;
    auto row = [&](int64_t c) { return W + ((c / wd) * H + c % wd) * H; };
#if defined(GRU_NATIVE_BF16_PAIRS)
    if constexpr (kPairsForm<scalar_t, w_t>) return buf.wp.pack_rows(H, kGates * wd, row);
#endif
    buf.wh.pack_rows(H, kGates * wd, row);
  }

  // int8 weights: share q of Q of the rows of h_{t-1} that step t multiplies, quantized into hq
  // (the rows that continue, then those that start from h0); the direction's threads each
  // quantize their share, once per step, and meet at a barrier before the products.
  void quantize_share(int64_t t, int q, int Q) {
    const StepSchedule& s = p.steps;
    const int64_t H = p.H, ld_out = p.D * H;
    const StepState<scalar_t> st(s, d, t, p.out + d * H, ld_out);
    const InitialState<scalar_t> h0(p.h0[d], H, zeros);
    const int64_t n_from_out = st.rows.n_from_out;
    const int64_t n = h0.zero ? n_from_out : s.batch_sizes[t];
    const int64_t r0 = n * q / Q, r1 = n * (q + 1) / Q;
    const int64_t split = std::clamp(n_from_out, r0, r1);
    if (r0 < split) hq->quantize(r0, split, st.prev + r0 * ld_out, ld_out);
    if (split < r1) hq->quantize(split, r1, h0.row(split), H);
  }

  // gh rows [0, M) = rows [m0, m0 + M) of h_{t-1} (A: row m0 of them, int8: in hq) times the
  // slice of W_hh^T.
  void product(int64_t m0, int64_t M, const scalar_t* A, int64_t lda, acc_t* C) {
    const int64_t H = p.H, wd = width(), ldc = kGates * wd;
    if (M <= 0) return;
    if constexpr (kInt8) {
      for (int g = 0; g < kGates; ++g) {
        const Int8Weights w = p.w_hh_panels
            ? Int8Weights{p.w_hh[d] + g * int8_panels_size(1, H, H), 0}.from_row(j0, H)
            : Int8Weights{p.w_hh[d] + (g * H + j0) * H, H};
        qdot(hq->view(m0, m0 + M), wd, w, p.w_hh_scale[d] + g * H + j0, C + g * wd, ldc);
      }
    } else if (direct) {
      // From kWRowsMinRows rows (kernels.h), W_hh's rows in place with the packed form's
      // microkernel turned around (wrows_gemm.h): the packed form's sums, at 1.2-1.4x the dot
      // products (64 rows at H = 1024, standalone). Fewer rows fill too little of its tile of
      // kLanes rows: dot products.
      if constexpr (std::is_same_v<scalar_t, acc_t>) {
        if (M >= kWRowsMinRows) {
          wrows_pack_a(M, H, A, lda, buf.a_panels.data());
          for (int g = 0; g < kGates; ++g) {
            wrows_run_converted(M, wd, H, buf.a_panels.data(), p.w_hh[d] + (g * H + j0) * H, H,
                                C + g * wd, ldc);
          }
          return;
        }
      }
      for (int g = 0; g < kGates; ++g) {  // dot products (a half type's W_hh converted once)
        dot_rows_converted(M, A, lda, wd, H, p.w_hh[d] + (g * H + j0) * H, H, C + g * wd, ldc);
      }
    } else if constexpr (std::is_same_v<scalar_t, acc_t>) {
      buf.wh.run(M, A, lda, C, ldc, false);
    } else {
#if defined(GRU_NATIVE_BF16_PAIRS)
      if constexpr (kPairsForm<scalar_t, w_t>) return buf.wp.run(M, A, lda, C, ldc);
#endif
      convert_rows(M, H, A, lda, buf.rows.data(), H);
      buf.wh.run(M, buf.rows.data(), H, C, ldc, false);
    }
  }

  void step(int64_t t) {
    const StepSchedule& s = p.steps;
    const int64_t H = p.H, wd = width(), G = kGates * wd, ld_out = p.D * H;
    const int64_t rows = s.batch_sizes[t], off = s.offsets[t];
    scalar_t* out_d = p.out + d * H;
    const StepState<scalar_t> st(s, d, t, out_d, ld_out);
    const int64_t n_from_out = st.rows.n_from_out, finish_from = st.rows.finish_from;
    const InitialState<scalar_t> h0(p.h0[d], H, zeros);
    acc_t* gh = buf.gh.data();
    product(0, n_from_out, st.prev, ld_out, gh);
    if (h0.zero) {  // h0 W_hh^T = 0
      std::fill(gh + n_from_out * G, gh + rows * G, acc_t(0));
    } else {
      product(n_from_out, rows - n_from_out, h0.row(n_from_out), H, gh + n_from_out * G);
    }
    const scalar_t* bi = p.b_ih[d] ? p.b_ih[d] + j0 : nullptr;
    const scalar_t* bh = p.b_hh[d] ? p.b_hh[d] + j0 : nullptr;
    for (int64_t b = 0; b < rows; ++b) {
      const scalar_t* gi_b = p.gi[d] + (off + b) * kGates * H + j0;
      const acc_t* gh_b = gh + b * G;
      const scalar_t* hp_b = (b < n_from_out ? st.prev + b * ld_out : h0.row(b)) + j0;
      scalar_t* out_b = out_d + (off + b) * ld_out + j0;
      acc_t* ws_b = p.ws[d] ? p.ws[d] + (off + b) * kWorkspaceGates * H + j0 : nullptr;
      scalar_t* hy_b = b >= finish_from ? p.hy[d] + b * H + j0 : nullptr;  // h_t is h_n
      for_each_lane<acc_t>(wd, [&](const auto& lane, int64_t jj) {
        using V = typename std::decay_t<decltype(lane)>::V;
        auto load = [&](const auto* q) { return lane.load(q + jj); };
        const V zero(acc_t(0));
        V gi_r = load(gi_b), gi_z = load(gi_b + H), gi_n = load(gi_b + 2 * H);
        if (bi) {
          gi_r = gi_r + load(bi);
          gi_z = gi_z + load(bi + H);
          gi_n = gi_n + load(bi + 2 * H);
        }
        V r, z, nn, hn, h_new;
        gru_cell_forward<V, VecAct<V>>(
            gi_r, gi_z, gi_n, load(gh_b), load(gh_b + wd), load(gh_b + 2 * wd),
            bh ? load(bh) : zero, bh ? load(bh + H) : zero, bh ? load(bh + 2 * H) : zero,
            load(hp_b), r, z, nn, hn, h_new);
        lane.store(out_b + jj, h_new);
        if (hy_b) lane.store(hy_b + jj, h_new);
        if (ws_b) {
          lane.store(ws_b + jj, r);
          lane.store(ws_b + H + jj, z);
          lane.store(ws_b + 2 * H + jj, nn);
          lane.store(ws_b + 3 * H + jj, hn);
        }
      });
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Backward.

template <typename scalar_t>
struct BackwardSlice {
  using acc_t = Math<scalar_t>;
  const BackwardParams<scalar_t>& p;
  int d;
  int64_t j0, j1;
  PackedGemm<acc_t>& w;  // W_hh columns of the slice: [3H, width]
  acc_t* dg_rows;        // [N, 3H] a step's dG_h converted to acc_t (half types), else unused
  acc_t* dh;             // [N, H] dL/dh of direction d: p.dh[d], or a float copy (half types)
  const std::vector<scalar_t>& zeros;  // [H]
  bool direct;  // W_hh read in place (PackedGemm::view), else packed: the same bits either way

  int64_t width() const { return j1 - j0; }

  void pack() {
    const int64_t H = p.H;
    const scalar_t* W = p.w_hh[d] + j0;
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      if (direct) return w.view(kGates * H, width(), W, H);
    }
    w.pack(kGates * H, width(), [&](int64_t k, int64_t c) { return W[k * H + c]; });
  }

  // The pointwise pass of step t for the slice: dG (kGradGates blocks), h_{t-1}, and the direct
  // part of dh_{t-1} into dh.
  void pointwise(int64_t t) {
    const StepSchedule& s = p.steps;
    const int64_t H = p.H, ld = p.D * H;
    const int64_t rows = s.batch_sizes[t], off = s.offsets[t];
    const StepState<scalar_t> st(s, d, t, p.out + d * H, ld);
    const InitialState<scalar_t> h0(p.h0[d], H, zeros);
    for (int64_t b = 0; b < rows; ++b) {
      const int64_t row = off + b;
      const scalar_t* hprev = (b < st.rows.n_from_out ? st.prev + b * ld : h0.row(b)) + j0;
      const scalar_t* dout_b = p.dout + row * ld + d * H + j0;
      const acc_t* ws_b = p.ws[d] + row * kWorkspaceGates * H + j0;
      acc_t* dh_b = dh + b * H + j0;
      scalar_t* dg_b = p.dg[d] + row * kGradGates * H + j0;
      scalar_t* hp_b = p.hp[d] + row * H + j0;
      for_each_lane<acc_t>(width(), [&](const auto& lane, int64_t jj) {
        using V = typename std::decay_t<decltype(lane)>::V;
        auto load = [&](const auto* q) { return lane.load(q + jj); };
        const V hp = load(hprev);
        V d_r, d_z, d_n, d_hn, dh_prev;
        gru_cell_backward<V>(load(dout_b) + load(dh_b), load(ws_b), load(ws_b + H),
                             load(ws_b + 2 * H), load(ws_b + 3 * H), hp, d_r, d_z, d_n, d_hn,
                             dh_prev);
        lane.store(dg_b + jj, d_r);
        lane.store(dg_b + H + jj, d_z);
        lane.store(dg_b + 2 * H + jj, d_hn);
        lane.store(dg_b + 3 * H + jj, d_n);
        lane.store(dh_b + jj, dh_prev);
        lane.store(hp_b + jj, hp);
      });
    }
  }

  // dh_{t-1}[:, slice] += dG_h(t) W_hh[:, slice] (dG_h: dG's first three blocks); needs every
  // slice's dG of step t.
  void gemm(int64_t t) {
    const StepSchedule& s = p.steps;
    const int64_t H = p.H, M = s.batch_sizes[t];
    const scalar_t* dg = p.dg[d] + s.offsets[t] * kGradGates * H;
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      w.run(M, dg, kGradGates * H, dh + j0, H, true);
    } else {
      convert_rows(M, kGates * H, dg, kGradGates * H, dg_rows, kGates * H);
      w.run(M, dg_rows, kGates * H, dh + j0, H, true);
    }
  }
};

template <typename scalar_t>
int64_t slice_align() {
  // Whole 64-byte cache lines of the rows written, and at least one vector of the math.
  return std::max<int64_t>(Vec<Math<scalar_t>>::size(),
                           64 / static_cast<int64_t>(sizeof(scalar_t)));
}

template <typename scalar_t>
int64_t packed_size(int64_t K, int64_t Nc) {
  using PG = PackedGemm<scalar_t>;
  return ((Nc + PG::kNR - 1) / PG::kNR) * K * PG::kNR;
}

// How a layer call reads W_hh. Packing it (a transposed copy for the forward, a copy for the
// backward) costs about a pass over the weights per call and pays off only over several steps;
// for fewer, the kernels read nn.GRU's layout in place (ForwardSlice::direct,
// BackwardSlice::direct). GRU_NATIVE_CPU_RECURRENCE=packed or =direct forces one form (tests,
// measurements); the backward's two forms give the same bits, and so do the forward's from
// kWRowsMinRows rows a step (below, its direct dot products sum in another order).
enum class Form { kAuto, kPacked, kDirect };

Form forced_form() {
  const char* env = std::getenv("GRU_NATIVE_CPU_RECURRENCE");
  if (env == nullptr || *env == 0 || std::strcmp(env, "auto") == 0) return Form::kAuto;
  if (std::strcmp(env, "packed") == 0) return Form::kPacked;
  if (std::strcmp(env, "direct") == 0) return Form::kDirect;
  TORCH_CHECK(false, "gru_native: GRU_NATIVE_CPU_RECURRENCE must be auto, packed or direct, got '",
              env, "'");
}

// The forward's direct dot products (dot_gemm.h) read W_hh once per step, as the packed
// microkernel reads its copy, but run fewer multiply-adds a cycle; packing costs about a pass
// over W_hh per call. Direct wins up to about T * N = 96 row-steps, more where W_hh is large
// (H / 4 row-steps: measured 128 at H = 512, 256 at H = 1024), and always at N = 1, where both
// stream the weights once per step (the measurements: benchmarks/NOTES.md, "Step-wise calls").
// At N = 2 the packed form is ahead over long sequences (T = 200, H = 256 and 512-1024: direct
// 0.78-0.80x with AVX-512, 0.86-0.89x with AVX2, Zen 4, 2026-12-07): the row-steps rule.
constexpr int64_t kDirectForwardRowSteps = 96;
constexpr int64_t kDirectForwardRowStepsPerHidden = 4;  // H / 4 row-steps when more than 96
// Below a vector's width of hidden units the dot products are mostly their horizontal sums,
// and packing costs next to nothing: the packed form is the faster there.
constexpr int64_t kDirectForwardMinHidden = 16;
// The backward's in-place view does the packed kernel's arithmetic on W_hh's rows; it loses
// only for large batches over many steps, where the packed panels' locality wins.
constexpr int64_t kDirectBackwardMaxBatch = 16;

thread_local ThreadPlanRecord last_plans;

// With float or double states and weights and kWRowsMinRows to kWRowsMaxRows rows a step, the
// direct form is the packed form's arithmetic (the same bits) without the packing (wrows_gemm.h),
// and measured as fast or faster whatever the steps from H = 256 on: 1.0-1.7x at T = 1-16 and
// N = 16-64 (H = 256 and 1024), 0.99-1.04x at T = 100-200 with H = 256-512, 1.12x at T = 50, N = 64,
// H = 1024; at H = 64, T = 100 the packed form was ahead (0.94x). It is taken there whatever T
// where its panels of rows are nearly full (N >= 7/8 of WRowsTiling::padded(N)). With emptier
// panels (AVX-512: 24 rows in a panel of 32, 33 in 32 + 16) it lost over long sequences (Zen 4,
// H = 256: 0.86x at T = 4, N = 33; 0.85-0.87x at T = 100, N = 24 and 33; 2026-12-07) and follows
// the row-steps rule below.
constexpr int64_t kWRowsMinHidden = 256;
constexpr int64_t kWRowsMinFillEighths = 7;

// wrows_padded: WRowsTiling::padded(N) where the direct form can read W_hh's rows in place with
// the packed form's sums (float or double throughout), else 0.
bool forward_direct(const StepSchedule& s, int64_t H, int64_t wrows_padded) {
  const Form f = forced_form();
  if (f != Form::kAuto) return f == Form::kDirect;
  if (wrows_padded > 0 && s.N >= kWRowsMinRows && s.N <= kWRowsMaxRows && H >= kWRowsMinHidden &&
      8 * s.N >= kWRowsMinFillEighths * wrows_padded) {
    return true;
  }
  const int64_t row_steps =
      std::max(kDirectForwardRowSteps, H / kDirectForwardRowStepsPerHidden);
  return H >= kDirectForwardMinHidden && (s.N == 1 || s.T * s.N <= row_steps);
}

bool backward_direct(const StepSchedule& s) {
  const Form f = forced_form();
  if (f != Form::kAuto) return f == Form::kDirect;
  return s.N <= kDirectBackwardMaxBatch || s.T <= 2;
}

}  // namespace

template <typename scalar_t, typename w_t>
void forward_layer(const ForwardParams<scalar_t, w_t>& p) {
  using acc_t = Math<scalar_t>;
  constexpr bool kInt8 = std::is_same_v<w_t, int8_t>;
  const StepSchedule& s = p.steps;
  const int64_t H = p.H, align = slice_align<scalar_t>();
  const ThreadPlan plan = plan_threads(at::get_num_threads(), p.D, s.T, s.N * H, H, align);
  last_plans.forward_groups = plan.groups;
  last_plans.forward_per_group = plan.per_group;
  // Every buffer is allocated here, before any thread starts; slot i belongs to thread i.
  const int slots = plan.threads();
  constexpr bool kInPlaceGemm = std::is_same_v<scalar_t, acc_t> && std::is_same_v<w_t, acc_t>;
  const bool direct =  // int8: qdot, own layouts
      kInt8 || forward_direct(s, H, kInPlaceGemm ? WRowsTiling<acc_t>::padded(s.N) : 0);
  std::vector<ForwardBuffers<acc_t>> bufs(slots);
  std::vector<QuantizedRows> hq(kInt8 ? p.D : 0);
  for (auto& q : hq) q.reserve(s.N, H);
  const std::vector<scalar_t> zeros(p.h0[0] ? 0 : static_cast<size_t>(H), scalar_t(0));
  for (int i = 0; i < slots; ++i) {
    int64_t j0, j1;
    slice_bounds(H, i % plan.per_group, plan.per_group, align, j0, j1);
    const int64_t cols = kGates * (j1 - j0);
    if (!direct && kPairsForm<scalar_t, w_t>) {
#if defined(GRU_NATIVE_BF16_PAIRS)
      bufs[i].wp.reserve(pairs::PairPanels::size(H, cols));
#endif
    } else if (!direct) {
      bufs[i].wh.reserve(packed_size<acc_t>(H, cols));
      if (!std::is_same_v<scalar_t, acc_t>) bufs[i].rows.resize(s.N * H);
    }
    if (direct && !kInt8 && std::is_same_v<scalar_t, acc_t> && s.N >= kWRowsMinRows) {
      bufs[i].a_panels.resize(static_cast<size_t>(wrows_panels_size<acc_t>(s.N, H)));
    }
    bufs[i].gh.resize(static_cast<size_t>(s.N * cols));
  }
  run_plan(plan, [&](int group, int q, SpinBarrier& barrier) {
    const bool alone = q < 0;  // the serial fallback runs every slice of the group itself
    const int q_begin = alone ? 0 : q, q_end = alone ? plan.per_group : q + 1;
    int d_begin, d_end;
    group_directions(plan.groups, group, p.D, d_begin, d_end);
    auto slice_for = [&](int d, int qq) {
      int64_t j0, j1;
      slice_bounds(H, qq, plan.per_group, align, j0, j1);
      return ForwardSlice<scalar_t, w_t>{p, d, j0, j1, bufs[group * plan.per_group + qq], zeros,
                                         direct, kInt8 ? &hq[d] : nullptr};
    };
    for (int d = d_begin; d < d_end; ++d) {
      for (int qq = q_begin; qq < q_end; ++qq) slice_for(d, qq).pack();
      for (int64_t i = 0; i < s.T; ++i) {
        const int64_t t = d == 0 ? i : s.T - 1 - i;
        if constexpr (kInt8) {
          for (int qq = q_begin; qq < q_end; ++qq) {
            slice_for(d, qq).quantize_share(t, qq, plan.per_group);
          }
          barrier.wait();  // every slice's product reads every row of hq
        }
        for (int qq = q_begin; qq < q_end; ++qq) slice_for(d, qq).step(t);
        barrier.wait();  // the next step reads every slice of h_t
      }
    }
  });
}

template <typename scalar_t>
void backward_layer(const BackwardParams<scalar_t>& p) {
  using acc_t = Math<scalar_t>;
  constexpr bool kHalf = !std::is_same_v<scalar_t, acc_t>;
  const StepSchedule& s = p.steps;
  const int64_t H = p.H, N = s.N, align = slice_align<scalar_t>();
  const ThreadPlan plan = plan_threads(at::get_num_threads(), p.D, s.T, s.N * H, H, align);
  last_plans.backward_groups = plan.groups;
  last_plans.backward_per_group = plan.per_group;
  // The half types' W_hh is always packed (into float panels).
  const bool direct = !kHalf && backward_direct(s);
  std::vector<PackedGemm<acc_t>> packs(plan.threads());
  std::vector<std::vector<acc_t>> dg_rows(kHalf ? plan.threads() : 0);
  const std::vector<scalar_t> zeros(p.h0[0] ? 0 : static_cast<size_t>(H), scalar_t(0));
  for (int i = 0; i < plan.threads(); ++i) {
    int64_t j0, j1;
    slice_bounds(H, i % plan.per_group, plan.per_group, align, j0, j1);
    // (In place, only the last partial panel is copied.)
    packs[i].reserve(direct ? packed_size<acc_t>(kGates * H, PackedGemm<acc_t>::kNR)
                            : packed_size<acc_t>(kGates * H, j1 - j0));
    if (kHalf) dg_rows[i].resize(N * kGates * H);
  }
  // dL/dh runs from step to step in acc_t: p.dh itself, or (half types) a float copy of it,
  // rounded back into p.dh once at the end.
  std::vector<acc_t> dh_copy(kHalf ? p.D * N * H : 0);
  acc_t* dh[2] = {nullptr, nullptr};
  for (int d = 0; d < p.D; ++d) {
    if constexpr (kHalf) {
      dh[d] = dh_copy.data() + d * N * H;
      convert_rows(N, H, p.dh[d], H, dh[d], H);
    } else {
      dh[d] = p.dh[d];
    }
  }
  run_plan(plan, [&](int group, int q, SpinBarrier& barrier) {
    const bool alone = q < 0;
    const int q_begin = alone ? 0 : q, q_end = alone ? plan.per_group : q + 1;
    int d_begin, d_end;
    group_directions(plan.groups, group, p.D, d_begin, d_end);
    auto slice_for = [&](int d, int qq) {
      const int slot = group * plan.per_group + qq;
      int64_t j0, j1;
      slice_bounds(H, qq, plan.per_group, align, j0, j1);
      return BackwardSlice<scalar_t>{p, d, j0, j1, packs[slot],
                                     kHalf ? dg_rows[slot].data() : nullptr, dh[d], zeros, direct};
    };
    // The product of a direction's first step (its last here) only gives dL/dh0.
    const int64_t products = p.need_dh0 ? s.T : s.T - 1;
    for (int d = d_begin; d < d_end; ++d) {
      if (products > 0) {
        for (int qq = q_begin; qq < q_end; ++qq) slice_for(d, qq).pack();
      }
      // Steps in the reverse of the order the forward ran them.
      for (int64_t i = 0; i < s.T; ++i) {
        const int64_t t = d == 0 ? s.T - 1 - i : i;
        for (int qq = q_begin; qq < q_end; ++qq) slice_for(d, qq).pointwise(t);
        barrier.wait();  // the GEMM reads every slice of dG_h(t)
        if (i == products) break;
        for (int qq = q_begin; qq < q_end; ++qq) slice_for(d, qq).gemm(t);
      }
    }
  });
  if constexpr (kHalf) {
    for (int d = 0; d < p.D; ++d) convert_rows(N, H, dh[d], H, p.dh[d], H);
  }
}

namespace {

// C[m, n] = dot(A row m, row n of B) for m < M, n < N, B's rows at b + n * ldb, threaded over
// the rows of B from kParallelDots on (each output's dot is the same whichever thread runs it).
template <typename A, typename B, typename Out>
void dot_rows_threaded(int64_t M, int64_t N, int64_t K, const A* a, int64_t lda, const B* b,
                       int64_t ldb, Out* C, int64_t ldc) {
  constexpr int64_t kParallelDots = 64 * 1024;  // multiply-adds
  const int64_t grain = M * N * K < kParallelDots ? N : 64;
  at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
    dot_rows_converted(M, a, lda, n1 - n0, K, b + n0 * ldb, ldb, C + n0, ldc);
  });
}

}  // namespace

template <typename W>
void project_rows(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const W* w,
                  float* C, int64_t ldc) {
  if (M <= kDotRowsMax || M * N * K <= kSmallGemmMadds) {
    return dot_rows_threaded(M, N, K, x, ldx, w, K, C, ldc);
  }
  TORCH_CHECK(M <= kWRowsMaxRows, "gru_native: project_rows: ", M, " rows");
  thread_local std::vector<float> a_panels;  // the caller's: read by every thread below
  const size_t size = static_cast<size_t>(wrows_panels_size<float>(M, K));
  if (a_panels.size() < size) a_panels.resize(size);
  wrows_pack_a(M, K, x, ldx, a_panels.data());
  const float* ap = a_panels.data();
  constexpr int64_t kParallelMadds = 64 * 1024;
  const int64_t grain = M * N * K < kParallelMadds ? N : 6 * 16;
  at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
    wrows_run_converted(M, n1 - n0, K, ap, w + n0 * K, K, C + n0, ldc);
  });
}

namespace {

constexpr int64_t kRowsAccBytes = 16 * 1024;

// C[M, N] = A B + beta C (+ bias), B with unit column stride: rows of A in groups of at most
// kFewRowsMax; a group's accumulators for `chunk` columns of C (at most 16 KB) stay in L1 while
// B's rows stream past, each row's part read once, in order. Each vector of C is (beta C +
// bias), then the products in k order: its bits do not depend on the groups or the chunks.
// Threaded over chunks of columns (at least one a thread) unless `serial`.
template <typename T>
void rows_gemm(int64_t M, int64_t N, int64_t K, MatRef<T> A, const T* B, int64_t ldb, T beta,
               T* C, int64_t ldc, const T* bias, bool serial) {
  using acc_t = Math<T>;
  if (M <= 0 || N <= 0) return;
  constexpr int64_t kAlign = 64;
  const int threads = serial || at::in_parallel_region() ? 1 : at::get_num_threads();
  const int64_t rows = std::min(M, kFewRowsMax);
  int64_t chunk = std::max<int64_t>(
      kAlign, kRowsAccBytes / static_cast<int64_t>(sizeof(acc_t)) / rows / kAlign * kAlign);
  chunk = std::min(chunk, (N + threads - 1) / threads + kAlign - 1) / kAlign * kAlign;
  chunk = std::max(chunk, kAlign);
  const int64_t chunks = (N + chunk - 1) / chunk;
  auto run = [&](int64_t q0, int64_t q1) {
    alignas(64) acc_t acc[kRowsAccBytes / sizeof(acc_t)];
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t n0 = q * chunk, nc = std::min(chunk, N - n0);
      for (int64_t m0 = 0; m0 < M; m0 += rows) {
        const int64_t mr = std::min(rows, M - m0);
        for (int64_t m = 0; m < mr; ++m) {
          const T* c = C + (m0 + m) * ldc + n0;
          acc_t* r = acc + m * chunk;
          for_each_lane<acc_t>(nc, [&](const auto& lane, int64_t n) {
            using V = typename std::decay_t<decltype(lane)>::V;
            V v = beta == T(0) ? V(acc_t(0)) : lane.load(c + n);
            if (bias) v = v + lane.load(bias + n0 + n);
            lane.store(r + n, v);
          });
        }
        for (int64_t k = 0; k < K; ++k) {
          const T* b = B + k * ldb + n0;
          for (int64_t m = 0; m < mr; ++m) {
            acc_t* r = acc + m * chunk;
            const acc_t a = static_cast<acc_t>(A.p[(m0 + m) * A.rs + k * A.cs]);
            for_each_lane<acc_t>(nc, [&](const auto& lane, int64_t n) {
              using V = typename std::decay_t<decltype(lane)>::V;
              lane.store(r + n, lane.load(r + n) + V(a) * lane.load(b + n));
            });
          }
        }
        for (int64_t m = 0; m < mr; ++m) {
          T* c = C + (m0 + m) * ldc + n0;
          const acc_t* r = acc + m * chunk;
          for_each_lane<acc_t>(nc, [&](const auto& lane, int64_t n) {
            lane.store(c + n, lane.load(r + n));
          });
        }
      }
    }
  };
  if (threads == 1) {
    run(0, chunks);
  } else {
    at::parallel_for(0, chunks, 1, run);
  }
}

}  // namespace

template <typename T>
void small_gemm(int64_t M, int64_t N, int64_t K, MatRef<T> A, MatRef<T> B, T beta, T* C,
                int64_t ldc, const T* bias) {
  if (B.rs == 1 && B.cs != 1 && A.cs == 1 && K > 0 && beta == T(0)) {
    // B is a row-major matrix transposed (the input projection x W_ih^T): dot products along
    // its rows, nothing copied. C = A B (+ bias).
    dot_rows_threaded(M, N, K, A.p, A.rs, B.p, B.cs, C, ldc);
    if (bias != nullptr) {
      for (int64_t m = 0; m < M; ++m) {
        T* c = C + m * ldc;
        for_each_lane<Math<T>>(N, [&](const auto& lane, int64_t n) {
          lane.store(c + n, lane.load(c + n) + lane.load(bias + n));
        });
      }
    }
    return;
  }
  // Vectors run along a row of C and of B: give B unit column stride (a small copy, into a
  // buffer each thread keeps, so that a small call does not allocate).
  const T* b = B.p;
  int64_t b_rs = B.rs;
  if (B.cs != 1 && K > 0 && N > 0) {
    thread_local std::vector<T> b_copy;
    if (b_copy.size() < static_cast<size_t>(K * N)) b_copy.resize(static_cast<size_t>(K * N));
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t k = 0; k < K; ++k) b_copy[k * N + n] = B.p[k * B.rs + n * B.cs];
    }
    b = b_copy.data();
    b_rs = N;
  }
  rows_gemm(M, N, K, A, b, b_rs, beta, C, ldc, bias, /*serial=*/true);
}

template <typename T>
void few_rows_gemm(int64_t M, int64_t N, int64_t K, MatRef<T> A, MatRef<T> B, T beta, T* C,
                   int64_t ldc, const T* bias) {
  TORCH_CHECK(M <= kFewRowsMax && B.cs == 1, "gru_native: few_rows_gemm: M ", M, ", B.cs ", B.cs);
  rows_gemm(M, N, K, A, B.p, B.rs, beta, C, ldc, bias, /*serial=*/false);
}

template <typename T>
void multiply(int64_t n, const T* a, const T* b, T* out) {
  for_each_lane<Math<T>>(n, [&](const auto& lane, int64_t i) {
    lane.store(out + i, lane.load(a + i) * lane.load(b + i));
  });
}

template <typename T>
void column_sum(int64_t rows, int64_t cols, const T* src, int64_t ld, T* dst) {
  // Sequential sums over blocks of rows, then a sum of the block sums: a fixed order whose
  // rounding error grows with rows / kBlock + kBlock rather than with rows. The half types sum
  // in float and round once.
  using acc_t = Math<T>;
  constexpr int64_t kBlock = 256;
  std::vector<acc_t> sums_copy(std::is_same_v<T, acc_t> ? 0 : cols);
  acc_t* sums;
  if constexpr (std::is_same_v<T, acc_t>) {
    sums = dst;
  } else {
    sums = sums_copy.data();
  }
  std::fill(sums, sums + cols, acc_t(0));
  for (int64_t r0 = 0; r0 < rows; r0 += kBlock) {
    const int64_t r1 = std::min(rows, r0 + kBlock);
    for_each_lane<acc_t>(cols, [&](const auto& lane, int64_t j) {
      auto acc = lane.load(src + r0 * ld + j);
      for (int64_t r = r0 + 1; r < r1; ++r) acc = acc + lane.load(src + r * ld + j);
      lane.store(sums + j, lane.load(sums + j) + acc);
    });
  }
  if constexpr (!std::is_same_v<T, acc_t>) convert_rows(1, cols, sums, cols, dst, cols);
}

template <typename T>
void activations(int64_t n, const T* x, T* sigmoid, T* tanh) {
  for_each_lane<T>(n, [&](const auto& lane, int64_t i) {
    using V = typename std::decay_t<decltype(lane)>::V;
    lane.store(sigmoid + i, VecAct<V>::sigmoid(lane.load(x + i)));
    lane.store(tanh + i, VecAct<V>::tanh(lane.load(x + i)));
  });
}

ThreadPlanRecord last_thread_plans() { return last_plans; }

const char* vector_isa() { return GRU_NATIVE_VEC_ISA; }

#define GRU_NATIVE_INSTANTIATE(T)                                                          \
  template void forward_layer<T, T>(const ForwardParams<T, T>&);                           \
  template void backward_layer<T>(const BackwardParams<T>&);                               \
  template void small_gemm<T>(int64_t, int64_t, int64_t, MatRef<T>, MatRef<T>, T, T*, int64_t, \
                              const T*);                                                   \
  template void few_rows_gemm<T>(int64_t, int64_t, int64_t, MatRef<T>, MatRef<T>, T, T*,      \
                                 int64_t, const T*);                                       \
  template void column_sum<T>(int64_t, int64_t, const T*, int64_t, T*);                    \
  template void multiply<T>(int64_t, const T*, const T*, T*);
GRU_NATIVE_INSTANTIATE(float)
GRU_NATIVE_INSTANTIATE(double)
GRU_NATIVE_INSTANTIATE(c10::BFloat16)
GRU_NATIVE_INSTANTIATE(c10::Half)
#undef GRU_NATIVE_INSTANTIATE
template void activations<float>(int64_t, const float*, float*, float*);
template void activations<double>(int64_t, const double*, double*, double*);
// The quantized layers: float activations, W_hh in bfloat16 or int8 (qdot.h).
template void forward_layer<float, c10::BFloat16>(const ForwardParams<float, c10::BFloat16>&);
template void forward_layer<float, int8_t>(const ForwardParams<float, int8_t>&);
template void project_rows<c10::BFloat16>(int64_t, int64_t, int64_t, const float*, int64_t,
                                          const c10::BFloat16*, float*, int64_t);

}  // namespace gru_native::cpu
