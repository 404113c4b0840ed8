// kernels.cpp: the CPU recurrence kernels.
//
// One parallel region per layer runs the whole sequence. Its threads are split over the
// directions (each direction on its own threads) and then over hidden units: a thread owns a
// slice [j0, j1) of the hidden units of one direction, packs the rows of W_hh it needs once, and
// per step computes the recurrent GEMM for its slice (packed_gemm.h) and the fused pointwise pass
// for its slice (gate math from gru_cell.h on at::vec lanes, Sleef exp/tanh). The threads of a
// direction meet at one barrier per step. Small problems run on one thread, with no region.

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

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu/packed_gemm.h"
#include "gru_cell.h"

namespace gru_native::cpu {
namespace {

template <typename scalar_t>
using Vec = at::vec::Vectorized<scalar_t>;

// One scalar with the part of at::vec::Vectorized's interface the kernels use, so that the same
// code handles the tail of a row that is shorter than a vector (a partial Vectorized load or
// store goes through memcpy, which costs more than the arithmetic at small sizes).
template <typename T>
struct ScalarLane {
  T v;
  ScalarLane() = default;
  ScalarLane(T x) : v(x) {}  // NOLINT: implicit, like Vectorized's broadcast
  static constexpr int64_t size() { return 1; }
  static ScalarLane loadu(const T* p) { return ScalarLane(*p); }
  void store(T* p) const { *p = v; }
  ScalarLane neg() const { return ScalarLane(-v); }
  ScalarLane exp() const { return ScalarLane(std::exp(v)); }
  ScalarLane tanh() const { return ScalarLane(std::tanh(v)); }
  ScalarLane reciprocal() const { return ScalarLane(T(1) / v); }
  friend ScalarLane operator+(ScalarLane a, ScalarLane b) { return ScalarLane(a.v + b.v); }
  friend ScalarLane operator-(ScalarLane a, ScalarLane b) { return ScalarLane(a.v - b.v); }
  friend ScalarLane operator*(ScalarLane a, ScalarLane b) { return ScalarLane(a.v * b.v); }
};

// tanh for float lanes: 2.5x cheaper than Sleef's tanh (one exp and one division instead), with
// an error of at most a few ulp (measured in tests/test_ops.py::test_cpu_activation_accuracy):
//   |x| <  0.5: the odd Taylor series to x^15 (truncation error < 1e-8 relative there);
//   |x| >= 0.5: 1 - 2 / (exp(2|x|) + 1), where there is no cancellation to speak of;
// with the sign of x put back. NaN stays NaN, +-inf gives +-1, -0 gives -0.
constexpr float kTanhSeries[8] = {1.0f,
                                  -1.0f / 3.0f,
                                  2.0f / 15.0f,
                                  -17.0f / 315.0f,
                                  62.0f / 2835.0f,
                                  -1382.0f / 155925.0f,
                                  21844.0f / 6081075.0f,
                                  -929569.0f / 638512875.0f};
constexpr float kTanhSeriesBound = 0.5f;

inline Vec<float> fast_tanh(const Vec<float>& x) {
  using V = Vec<float>;
  const V ax = x.abs();
  const V x2 = x * x;
  V p(kTanhSeries[7]);
  for (int i = 6; i >= 0; --i) p = at::vec::fmadd(p, x2, V(kTanhSeries[i]));
  const V small = p * ax;
  const V big = V(1.0f) - V(2.0f) / ((ax + ax).exp() + V(1.0f));
  const V t = V::blendv(big, small, ax < V(kTanhSeriesBound));
  return t | (x & V(-0.0f));
}

inline float fast_tanh(float x) {
  const float ax = std::fabs(x);
  float t;
  if (ax < kTanhSeriesBound) {
    const float x2 = x * x;
    float p = kTanhSeries[7];
    for (int i = 6; i >= 0; --i) p = std::fma(p, x2, kTanhSeries[i]);
    t = p * ax;
  } else {
    t = 1.0f - 2.0f / (std::exp(ax + ax) + 1.0f);
  }
  return std::copysign(t, x);
}

// Activations on a lane type: sigmoid as ATen evaluates it, 1 / (1 + exp(-x)) (Sleef exp on
// vectors, std::exp on scalars); tanh as above for float, Sleef / std::tanh for double.
template <typename V>
struct VecAct {
  static inline V sigmoid(const V& x) { return (V(1) + x.neg().exp()).reciprocal(); }
  static inline V tanh(const V& x) { return x.tanh(); }
};
template <>
struct VecAct<Vec<float>> {
  using V = Vec<float>;
  static inline V sigmoid(const V& x) { return (V(1) + x.neg().exp()).reciprocal(); }
  static inline V tanh(const V& x) { return fast_tanh(x); }
};
template <>
struct VecAct<ScalarLane<float>> {
  using V = ScalarLane<float>;
  static inline V sigmoid(const V& x) { return V(1.0f / (1.0f + std::exp(-x.v))); }
  static inline V tanh(const V& x) { return V(fast_tanh(x.v)); }
};

// Lanes: how a block of consecutive units is loaded and stored. V is the value type the math
// runs on. FullLane: a whole vector. MaskedLane: the last n < V::size() units of a row, with
// masked loads and stores (AVX2, AVX512), so a row's tail takes the same vector path (and the
// same math) as the rest. OneLane: one unit, on ScalarLane (the portable build's tail).
template <typename T>
struct FullLane {
  using V = Vec<T>;
  V load(const T* p) const { return V::loadu(p); }
  void store(T* p, const V& v) const { v.store(p); }
};

template <typename T>
struct OneLane {
  using V = ScalarLane<T>;
  V load(const T* p) const { return V::loadu(p); }
  void store(T* p, const V& v) const { v.store(p); }
};

#if defined(CPU_CAPABILITY_AVX2)
constexpr bool kMaskedLanes = true;
template <typename T>
struct MaskedLane;
template <>
struct MaskedLane<float> {
  using V = Vec<float>;
  __m256i mask;
  explicit MaskedLane(int64_t n)
      : mask(_mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)),
                                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))) {}
  V load(const float* p) const { return V(_mm256_maskload_ps(p, mask)); }
  void store(float* p, const V& v) const { _mm256_maskstore_ps(p, mask, v); }
};
template <>
struct MaskedLane<double> {
  using V = Vec<double>;
  __m256i mask;
  explicit MaskedLane(int64_t n)
      : mask(_mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3))) {}
  V load(const double* p) const { return V(_mm256_maskload_pd(p, mask)); }
  void store(double* p, const V& v) const { _mm256_maskstore_pd(p, mask, v); }
};
#elif defined(CPU_CAPABILITY_AVX512)
constexpr bool kMaskedLanes = true;
template <typename T>
struct MaskedLane;
template <>
struct MaskedLane<float> {
  using V = Vec<float>;
  __mmask16 mask;
  explicit MaskedLane(int64_t n) : mask(static_cast<__mmask16>((1u << n) - 1)) {}
  V load(const float* p) const { return V(_mm512_maskz_loadu_ps(mask, p)); }
  void store(float* p, const V& v) const { _mm512_mask_storeu_ps(p, mask, v); }
};
template <>
struct MaskedLane<double> {
  using V = Vec<double>;
  __mmask8 mask;
  explicit MaskedLane(int64_t n) : mask(static_cast<__mmask8>((1u << n) - 1)) {}
  V load(const double* p) const { return V(_mm512_maskz_loadu_pd(mask, p)); }
  void store(double* p, const V& v) const { _mm512_mask_storeu_pd(p, mask, v); }
};
#else
constexpr bool kMaskedLanes = false;
template <typename T>
using MaskedLane = OneLane<T>;  // never used
#endif

// Calls f(lane, j) for consecutive blocks [j, j + lane width) covering [0, width).
template <typename T, typename F>
inline void for_each_lane(int64_t width, const F& f) {
  constexpr int64_t kV = Vec<T>::size();
  int64_t j = 0;
  for (; j + kV <= width; j += kV) f(FullLane<T>(), j);
  if (j == width) return;
  if constexpr (kMaskedLanes) {
    f(MaskedLane<T>(width - j), j);
  } else {
    for (; j < width; ++j) f(OneLane<T>(), j);
  }
}

// ---------------------------------------------------------------------------------------------
// The forward's recurrent product straight from nn.GRU's layout, for a few steps or a small
// batch: C[m, c] = dot(A row m, W row c), rows of W contiguous (W_hh, not W_hh^T), so nothing is
// packed. Each dot runs on one vector accumulator over k in order (the last partial vector
// masked), then a horizontal sum: its bits do not depend on the tile it runs in, on the thread
// or on the other rows.

template <typename T>
inline Vec<T> load_first(const T* p, int64_t n) {  // p[0, n), zeros past n; n < Vec::size()
  if constexpr (kMaskedLanes) {
    return MaskedLane<T>(n).load(p);
  } else {
    return Vec<T>::loadu(p, n);
  }
}

// out[i * ldo + j] = dot(a[i][0, K), w[j][0, K)) for i < RB, j < CB.
template <typename T, int RB, int CB>
inline void dot_tile(int64_t K, const T* const* a, const T* const* w, T* out, int64_t ldo) {
  using V = Vec<T>;
  constexpr int64_t kV = V::size();
  V acc[RB][CB];
#pragma GCC unroll 8
  for (int i = 0; i < RB; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < CB; ++j) acc[i][j] = V(T(0));
  }
  auto step = [&](const auto& load) {
    V av[RB];
#pragma GCC unroll 8
    for (int i = 0; i < RB; ++i) av[i] = load(a[i]);
#pragma GCC unroll 8
    for (int j = 0; j < CB; ++j) {
      const V wv = load(w[j]);
#pragma GCC unroll 8
      for (int i = 0; i < RB; ++i) acc[i][j] = at::vec::fmadd(av[i], wv, acc[i][j]);
    }
  };
  int64_t k = 0;
  for (; k + kV <= K; k += kV) step([k](const T* p) { return V::loadu(p + k); });
  if (k < K) step([k, n = K - k](const T* p) { return load_first(p + k, n); });
#pragma GCC unroll 8
  for (int i = 0; i < RB; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < CB; ++j) {
      out[i * ldo + j] = at::vec::vec_reduce_all<T>([](V& x, V& y) { return x + y; }, acc[i][j]);
    }
  }
}

// C[m, c] = dot(A[m * lda, +K), row(c)) for m < M, c < Nc.
template <typename T, typename Row>
void dot_rows(int64_t M, const T* A, int64_t lda, int64_t Nc, int64_t K, const Row& row, T* C,
              int64_t ldc) {
  constexpr int kCB = 4;
  const T* a[8];
  const T* rows[8];
  auto run_rows = [&](auto rb_tag, int64_t m0) {
    constexpr int RB = decltype(rb_tag)::value;
    // With one row of A, twice the rows of W, with eight half: enough independent accumulators
    // either way, within the registers.
    constexpr int CB = RB == 1 ? 2 * kCB : (RB == 8 ? kCB / 2 : kCB);
    for (int i = 0; i < RB; ++i) a[i] = A + (m0 + i) * lda;
    T* cm = C + m0 * ldc;
    int64_t c = 0;
    for (; c + CB <= Nc; c += CB) {
      for (int j = 0; j < CB; ++j) rows[j] = row(c + j);
      dot_tile<T, RB, CB>(K, a, rows, cm + c, ldc);
    }
    for (; c < Nc; ++c) {
      rows[0] = row(c);
      dot_tile<T, RB, 1>(K, a, rows, cm + c, ldc);
    }
  };
  int64_t m = 0;
#if defined(CPU_CAPABILITY_AVX512)
  // 32 vector registers: 8 rows of A at a time (16 accumulators), so that a batch of 8 reads
  // the rows of W once (the same dots, the same bits, as in smaller tiles).
  for (; m + 8 <= M; m += 8) run_rows(std::integral_constant<int, 8>(), m);
#endif
  for (; m + 4 <= M; m += 4) run_rows(std::integral_constant<int, 4>(), m);
  if (m + 2 <= M) {
    run_rows(std::integral_constant<int, 2>(), m);
    m += 2;
  }
  if (m < M) run_rows(std::integral_constant<int, 1>(), m);
}

// The forward's product for a slice of width units: C[m, g * width + jj] = dot(A row m, row
// g * H + jj of w), w = W_hh's first row of the slice (the rows of gate g start H rows on).
template <typename T>
void direct_product(int64_t M, const T* A, int64_t lda, const T* w, int64_t H, int64_t width,
                    T* C, int64_t ldc) {
  for (int g = 0; g < kGates; ++g) {
    const T* wg = w + g * H * H;
    dot_rows(M, A, lda, width, H, [&](int64_t c) { return wg + c * H; }, C + g * width, ldc);
  }
}

// ---------------------------------------------------------------------------------------------
// Work split.

// A barrier for the threads of one direction: spin briefly, then yield.
class SpinBarrier {
 public:
  void init(int n) {
    n_ = n;
    count_.store(0);
    generation_.store(0);
  }
  void wait() {
    if (n_ <= 1) return;
    const int gen = generation_.load(std::memory_order_acquire);
    if (count_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
      count_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_acq_rel);
      return;
    }
    for (int spins = 0; generation_.load(std::memory_order_acquire) == gen; ++spins) {
      if (spins > 4096) std::this_thread::yield();
    }
  }

 private:
  int n_ = 1;
  alignas(64) std::atomic<int> count_{0};
  alignas(64) std::atomic<int> generation_{0};
};

// How a layer is spread over threads: `groups` thread groups (one per direction when the
// directions run side by side, else one group running the directions in turn), each of
// `per_group` threads owning a slice of the hidden units.
struct ThreadPlan {
  int groups = 1;
  int per_group = 1;
  int threads() const { return groups * per_group; }
};

// Below these amounts of work, more threads cost more (region start, barriers) than they save.
constexpr int64_t kMinStepWorkPerThread = 24 * 1024;  // multiply-adds per step and thread
constexpr int64_t kMinLayerWorkPerGroup = 96 * 1024;  // multiply-adds per direction and layer

// row_k: per step, rows times the reduction length of the step's GEMMs (N * H for the
// recurrence alone, N * (C + H) with the input projection).
ThreadPlan plan_threads(int available, int D, int64_t T, int64_t row_k, int64_t H,
                        int64_t slice_align) {
  ThreadPlan plan;
  const int64_t step_work = row_k * kGates * H;
  if (available <= 1 || step_work * T < kMinLayerWorkPerGroup) return plan;
  plan.groups = (D == 2 && available >= 2) ? 2 : 1;
  const int64_t by_threads = available / plan.groups;
  const int64_t by_width = std::max<int64_t>(1, H / slice_align);
  const int64_t by_work = std::max<int64_t>(1, step_work / kMinStepWorkPerThread);
  plan.per_group = static_cast<int>(std::min({by_threads, by_width, by_work}));
  return plan;
}

// Slice q of Q over [0, H), boundaries on multiples of `align` units (whole cache lines).
inline void slice_bounds(int64_t H, int q, int Q, int64_t align, int64_t& j0, int64_t& j1) {
  const int64_t blocks = (H + align - 1) / align;
  j0 = std::min(H, (blocks * q / Q) * align);
  j1 = std::min(H, (blocks * (q + 1) / Q) * align);
}

// Runs body(group, index_in_group, barrier) on plan.threads() threads (inline when 1).
template <typename Body>
void run_plan(const ThreadPlan& plan, const Body& body) {
  SpinBarrier barriers[2];
  for (auto& b : barriers) b.init(plan.per_group);
  if (plan.threads() == 1) {
    body(0, 0, barriers[0]);
    return;
  }
#ifdef _OPENMP
  const int want = plan.threads();
  std::atomic<bool> short_team{false};
#pragma omp parallel num_threads(want)
  {
    // A nested or capped runtime may give fewer threads than asked: then the calling thread
    // runs the whole plan alone, below.
    if (omp_get_num_threads() == want) {
      const int tid = omp_get_thread_num();
      body(tid / plan.per_group, tid % plan.per_group, barriers[tid / plan.per_group]);
    } else if (omp_get_thread_num() == 0) {
      short_team.store(true);
    }
  }
  if (!short_team.load()) return;
#endif
  // One thread: every slice of every group, in turn (q = -1).
  SpinBarrier alone;
  alone.init(1);
  for (int g = 0; g < plan.groups; ++g) body(g, -1, alone);
}

// The directions a thread group runs: its own when directions run side by side, else all.
inline void group_directions(int groups, int group, int D, int& d_begin, int& d_end) {
  if (groups == D) {
    d_begin = group;
    d_end = group + 1;
  } else {
    d_begin = 0;
    d_end = D;
  }
}

// h_{t-1} for the rows of step t in direction d: rows [0, n_from_out) continue from the
// direction's previous step (rows of `out`), rows [n_from_out, N_t) start here from h0.
template <typename scalar_t>
struct PrevState {
  const scalar_t* from_out = nullptr;  // row b at from_out + b * ld_out
  int64_t n_from_out = 0;
};

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

template <typename scalar_t>
inline PrevState<scalar_t> prev_state(const StepSchedule& s, int d, int64_t t,
                                      const scalar_t* out_d, int64_t ld_out) {
  PrevState<scalar_t> ps;
  if (d == 0) {
    if (t > 0) {
      ps.from_out = out_d + s.offsets[t - 1] * ld_out;
      ps.n_from_out = s.batch_sizes[t];
    }
  } else if (t + 1 < s.T) {
    ps.from_out = out_d + s.offsets[t + 1] * ld_out;
    ps.n_from_out = std::min(s.batch_sizes[t], s.batch_sizes[t + 1]);
  }
  return ps;
}

// ---------------------------------------------------------------------------------------------
// Forward.

// One thread's share of one direction's forward: hidden units [j0, j1) of all three gates.
template <typename scalar_t>
struct ForwardSlice {
  const LayerForwardParams<scalar_t>& p;
  int d;
  int64_t j0, j1;
  PackedGemm<scalar_t>& wh;  // W_hh rows of the slice, all three gates: [H, 3 * width]
  scalar_t* gh;              // [N, 3 * width] h_{t-1} W_hh^T for the slice (no bias)
  const std::vector<scalar_t>& zeros;  // [H]
  bool direct;               // products straight from W_hh (direct_product), nothing packed

  int64_t width() const { return j1 - j0; }

  // Column c = g * width + jj of the packed matrix is gate g of hidden unit j0 + jj.
  void pack() {
    if (direct) return;
    const int64_t H = p.H, wd = width();
    const scalar_t* W = p.w_hh[d] + j0 * H;
    wh.pack_rows(H, kGates * wd, [&](int64_t c) { return W + ((c / wd) * H + c % wd) * H; });
  }

  // gh rows [0, M) = rows of A times the slice of W_hh^T.
  void product(int64_t M, const scalar_t* A, int64_t lda, scalar_t* C) {
    if (direct) {
      const int64_t H = p.H;
      direct_product(M, A, lda, p.w_hh[d] + j0 * H, H, width(), C, kGates * width());
    } else {
      wh.run(M, A, lda, C, kGates * width(), false);
    }
  }

  void step(int64_t t) {
    const StepSchedule& s = p.steps;
    const int64_t H = p.H, wd = width(), G = kGates * wd, ld_out = p.D * H;
    const int64_t rows = s.batch_sizes[t], off = s.offsets[t];
    scalar_t* out_d = p.out + d * H;
    const PrevState<scalar_t> prev = prev_state(s, d, t, static_cast<const scalar_t*>(out_d),
                                                ld_out);
    const InitialState<scalar_t> h0(p.h0[d], H, zeros);
    product(prev.n_from_out, prev.from_out, ld_out, gh);
    if (h0.zero) {  // h0 W_hh^T = 0
      std::fill(gh + prev.n_from_out * G, gh + rows * G, scalar_t(0));
    } else {
      product(rows - prev.n_from_out, h0.row(prev.n_from_out), H, gh + prev.n_from_out * G);
    }
    // Rows whose last step (in this direction's order) this is also write h_n.
    const int64_t finish_from =
        d == 0 ? (t + 1 < s.T ? s.batch_sizes[t + 1] : 0) : (t == 0 ? 0 : rows);
    const scalar_t* bi = p.b_ih[d] ? p.b_ih[d] + j0 : nullptr;
    const scalar_t* bh = p.b_hh[d] ? p.b_hh[d] + j0 : nullptr;
    for (int64_t b = 0; b < rows; ++b) {
      const scalar_t* gi_b = p.gi[d] + (off + b) * kGates * H + j0;
      const scalar_t* gh_b = gh + b * G;
      const scalar_t* hp_b = (b < prev.n_from_out ? prev.from_out + b * ld_out : h0.row(b)) + j0;
      scalar_t* out_b = out_d + (off + b) * ld_out + j0;
      scalar_t* ws_b = p.ws[d] ? p.ws[d] + (off + b) * kWorkspaceGates * H + j0 : nullptr;
      scalar_t* hy_b = b >= finish_from ? p.hy[d] + b * H + j0 : nullptr;
      for_each_lane<scalar_t>(wd, [&](const auto& lane, int64_t jj) {
        using V = typename std::decay_t<decltype(lane)>::V;
        auto load = [&](const scalar_t* q) { return lane.load(q + jj); };
        const V zero(scalar_t(0));
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
  const LayerBackwardParams<scalar_t>& p;
  int d;
  int64_t j0, j1;
  PackedGemm<scalar_t>& w;  // W_hh columns of the slice: [3H, width]
  const std::vector<scalar_t>& zeros;  // [H]
  bool direct;  // W_hh read in place (PackedGemm::view), else packed: the same bits either way

  int64_t width() const { return j1 - j0; }

  void pack() {
    const int64_t H = p.H;
    const scalar_t* W = p.w_hh[d] + j0;
    if (direct) {
      w.view(kGates * H, width(), W, H);
    } else {
      w.pack(kGates * H, width(), [&](int64_t k, int64_t c) { return W[k * H + c]; });
    }
  }

  // The pointwise pass of step t for the slice: dG (kGradGates blocks), h_{t-1}, and the direct
  // part of dh_{t-1} into dh.
  void pointwise(int64_t t) {
    const StepSchedule& s = p.steps;
    const int64_t H = p.H, G = kGates * H, ld = p.D * H;
    const int64_t rows = s.batch_sizes[t], off = s.offsets[t];
    const PrevState<scalar_t> prev = prev_state(s, d, t, p.out + d * H, ld);
    const InitialState<scalar_t> h0(p.h0[d], H, zeros);
    for (int64_t b = 0; b < rows; ++b) {
      const int64_t row = off + b;
      const scalar_t* hprev = (b < prev.n_from_out ? prev.from_out + b * ld : h0.row(b)) + j0;
      const scalar_t* dout_b = p.dout + row * ld + d * H + j0;
      const scalar_t* ws_b = p.ws[d] + row * kWorkspaceGates * H + j0;
      scalar_t* dh_b = p.dh[d] + b * H + j0;
      scalar_t* dg_b = p.dg[d] + row * kGradGates * H + j0;
      scalar_t* hp_b = p.hp[d] + row * H + j0;
      for_each_lane<scalar_t>(width(), [&](const auto& lane, int64_t jj) {
        using V = typename std::decay_t<decltype(lane)>::V;
        auto load = [&](const scalar_t* q) { return lane.load(q + jj); };
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
    const int64_t H = p.H;
    w.run(s.batch_sizes[t], p.dg[d] + s.offsets[t] * kGradGates * H, kGradGates * H, p.dh[d] + j0, H,
          true);
  }
};

template <typename scalar_t>
int64_t slice_align() {
  // Whole 64-byte cache lines, and at least one vector.
  return std::max<int64_t>(Vec<scalar_t>::size(), 64 / static_cast<int64_t>(sizeof(scalar_t)));
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
// measurements); the backward's two forms give the same bits, the forward's sum in another order.
enum class Form { kAuto, kPacked, kDirect };

Form forced_form() {
  const char* env = std::getenv("GRU_NATIVE_CPU_RECURRENCE");
  if (env == nullptr || *env == 0 || std::strcmp(env, "auto") == 0) return Form::kAuto;
  if (std::strcmp(env, "packed") == 0) return Form::kPacked;
  if (std::strcmp(env, "direct") == 0) return Form::kDirect;
  TORCH_CHECK(false, "gru_native: GRU_NATIVE_CPU_RECURRENCE must be auto, packed or direct, got '",
              env, "'");
}

// The rule, measured (benchmarks/NOTES.md, section 7, "Step-wise calls"): the forward's direct
// dot products read W_hh once per 4 rows and step, where the packed microkernel reads its
// copy once per step, so packing pays from about T * N = 100 on (and never at N = 1, where
// both stream the weights once per step and the direct loop streams them faster).
constexpr int64_t kDirectForwardRowSteps = 96;
// Below a vector's width of hidden units the dot products are mostly their horizontal sums, and
// packing costs next to nothing (seed shapes, H=5: direct 3-7% slower).
constexpr int64_t kDirectForwardMinHidden = 16;
// The backward's in-place view does the packed kernel's arithmetic on W_hh's rows; it loses
// (by up to 15%) only for large batches over many steps, where the packed panels' locality wins.
constexpr int64_t kDirectBackwardMaxBatch = 16;

bool forward_direct(const StepSchedule& s, int64_t H) {
  const Form f = forced_form();
  if (f != Form::kAuto) return f == Form::kDirect;
  return H >= kDirectForwardMinHidden && (s.N <= 2 || s.T * s.N <= kDirectForwardRowSteps);
}

bool backward_direct(const StepSchedule& s) {
  const Form f = forced_form();
  if (f != Form::kAuto) return f == Form::kDirect;
  return s.N <= kDirectBackwardMaxBatch || s.T <= 2;
}

}  // namespace

template <typename scalar_t>
void forward_layer(const LayerForwardParams<scalar_t>& p) {
  const StepSchedule& s = p.steps;
  const int64_t H = p.H, align = slice_align<scalar_t>();
  const ThreadPlan plan = plan_threads(at::get_num_threads(), p.D, s.T, s.N * H, H, align);
  // Every buffer is allocated here, before any thread starts; slot i belongs to thread i.
  const int slots = plan.threads();
  const bool direct = forward_direct(s, H);
  std::vector<PackedGemm<scalar_t>> wh(slots);
  std::vector<std::vector<scalar_t>> gh(slots);
  const std::vector<scalar_t> zeros(p.h0[0] ? 0 : static_cast<size_t>(H), scalar_t(0));
  for (int i = 0; i < slots; ++i) {
    int64_t j0, j1;
    slice_bounds(H, i % plan.per_group, plan.per_group, align, j0, j1);
    const int64_t cols = kGates * (j1 - j0);
    if (!direct) wh[i].reserve(packed_size<scalar_t>(H, cols));
    gh[i].resize(static_cast<size_t>(s.N * cols));
  }
  run_plan(plan, [&](int group, int q, SpinBarrier& barrier) {
    const bool alone = q < 0;  // the serial fallback runs every slice of the group itself
    const int q_begin = alone ? 0 : q, q_end = alone ? plan.per_group : q + 1;
    int d_begin, d_end;
    group_directions(plan.groups, group, p.D, d_begin, d_end);
    auto slice_for = [&](int d, int qq) {
      const int slot = group * plan.per_group + qq;
      int64_t j0, j1;
      slice_bounds(H, qq, plan.per_group, align, j0, j1);
      return ForwardSlice<scalar_t>{p, d, j0, j1, wh[slot], gh[slot].data(), zeros, direct};
    };
    for (int d = d_begin; d < d_end; ++d) {
      for (int qq = q_begin; qq < q_end; ++qq) slice_for(d, qq).pack();
      for (int64_t i = 0; i < s.T; ++i) {
        const int64_t t = d == 0 ? i : s.T - 1 - i;
        for (int qq = q_begin; qq < q_end; ++qq) slice_for(d, qq).step(t);
        barrier.wait();  // the next step reads every slice of h_t
      }
    }
  });
}

template <typename scalar_t>
void backward_layer(const LayerBackwardParams<scalar_t>& p) {
  const StepSchedule& s = p.steps;
  const int64_t H = p.H, align = slice_align<scalar_t>();
  const ThreadPlan plan = plan_threads(at::get_num_threads(), p.D, s.T, s.N * H, H, align);
  const bool direct = backward_direct(s);
  std::vector<PackedGemm<scalar_t>> packs(plan.threads());
  const std::vector<scalar_t> zeros(p.h0[0] ? 0 : static_cast<size_t>(H), scalar_t(0));
  for (int i = 0; i < plan.threads(); ++i) {
    int64_t j0, j1;
    slice_bounds(H, i % plan.per_group, plan.per_group, align, j0, j1);
    // (In place, only the last partial panel is copied.)
    packs[i].reserve(direct ? packed_size<scalar_t>(kGates * H, PackedGemm<scalar_t>::kNR)
                            : packed_size<scalar_t>(kGates * H, j1 - j0));
  }
  run_plan(plan, [&](int group, int q, SpinBarrier& barrier) {
    const bool alone = q < 0;
    const int q_begin = alone ? 0 : q, q_end = alone ? plan.per_group : q + 1;
    int d_begin, d_end;
    group_directions(plan.groups, group, p.D, d_begin, d_end);
    auto slice_for = [&](int d, int qq) {
      int64_t j0, j1;
      slice_bounds(H, qq, plan.per_group, align, j0, j1);
      return BackwardSlice<scalar_t>{p, d, j0, j1, packs[group * plan.per_group + qq], zeros,
                                     direct};
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
}

template <typename T>
void small_gemm(int64_t M, int64_t N, int64_t K, MatRef<T> A, MatRef<T> B, T beta, T* C,
                int64_t ldc, const T* bias) {
  if (B.rs == 1 && B.cs != 1 && A.cs == 1 && K > 0 && beta == T(0)) {
    // B is a row-major matrix transposed (the input projection x W_ih^T): dot products along
    // its rows, nothing copied, the rows split over the threads from kParallelDots on (each
    // output's dot is the same whichever thread runs it). C = A B (+ bias).
    constexpr int64_t kParallelDots = 64 * 1024;  // multiply-adds
    const int64_t grain = M * N * K < kParallelDots ? N : 64;
    at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
      dot_rows(M, A.p, A.rs, n1 - n0, K, [&](int64_t n) { return B.p + (n0 + n) * B.cs; },
               C + n0, ldc);
    });
    if (bias != nullptr) {
      for (int64_t m = 0; m < M; ++m) {
        T* c = C + m * ldc;
        for_each_lane<T>(N, [&](const auto& lane, int64_t n) {
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
  // Each vector of C accumulates in a register over k, in k order (after beta C, then bias).
  for (int64_t m = 0; m < M; ++m) {
    T* c = C + m * ldc;
    const T* a = A.p + m * A.rs;
    for_each_lane<T>(N, [&](const auto& lane, int64_t n) {
      using V = typename std::decay_t<decltype(lane)>::V;
      V acc = beta == T(0) ? V(T(0)) : lane.load(c + n);
      if (bias) acc = acc + lane.load(bias + n);
      for (int64_t k = 0; k < K; ++k) acc = acc + V(a[k * A.cs]) * lane.load(b + k * b_rs + n);
      lane.store(c + n, acc);
    });
  }
}

template <typename T>
void multiply(int64_t n, const T* a, const T* b, T* out) {
  for_each_lane<T>(n, [&](const auto& lane, int64_t i) {
    lane.store(out + i, lane.load(a + i) * lane.load(b + i));
  });
}

template <typename T>
void column_sum(int64_t rows, int64_t cols, const T* src, int64_t ld, T* dst) {
  // Sequential sums over blocks of rows, then a sum of the block sums: a fixed order whose
  // rounding error grows with rows / kBlock + kBlock rather than with rows.
  constexpr int64_t kBlock = 256;
  std::fill(dst, dst + cols, T(0));
  for (int64_t r0 = 0; r0 < rows; r0 += kBlock) {
    const int64_t r1 = std::min(rows, r0 + kBlock);
    for_each_lane<T>(cols, [&](const auto& lane, int64_t j) {
      auto acc = lane.load(src + r0 * ld + j);
      for (int64_t r = r0 + 1; r < r1; ++r) acc = acc + lane.load(src + r * ld + j);
      lane.store(dst + j, lane.load(dst + j) + acc);
    });
  }
}

template <typename T>
void activations(int64_t n, const T* x, T* sigmoid, T* tanh) {
  for_each_lane<T>(n, [&](const auto& lane, int64_t i) {
    using V = typename std::decay_t<decltype(lane)>::V;
    lane.store(sigmoid + i, VecAct<V>::sigmoid(lane.load(x + i)));
    lane.store(tanh + i, VecAct<V>::tanh(lane.load(x + i)));
  });
}

const char* vector_isa() { return GRU_NATIVE_VEC_ISA; }

#define GRU_NATIVE_INSTANTIATE(T)                                                          \
  template void forward_layer<T>(const LayerForwardParams<T>&);                            \
  template void backward_layer<T>(const LayerBackwardParams<T>&);                          \
  template void small_gemm<T>(int64_t, int64_t, int64_t, MatRef<T>, MatRef<T>, T, T*, int64_t, \
                              const T*);                                                   \
  template void column_sum<T>(int64_t, int64_t, const T*, int64_t, T*);                    \
  template void multiply<T>(int64_t, const T*, const T*, T*);                               \
  template void activations<T>(int64_t, const T*, T*, T*);
GRU_NATIVE_INSTANTIATE(float)
GRU_NATIVE_INSTANTIATE(double)
#undef GRU_NATIVE_INSTANTIATE

}  // namespace gru_native::cpu
