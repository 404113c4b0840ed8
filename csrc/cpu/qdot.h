// qdot.h: products of activations quantized per row and int8 weights, for the quantized layers
// (inference only): the recurrent product of forward_layer<float, int8_t> (kernels.cpp) and the
// input projection (quantized.cpp).
//
// A row of activations x[0, K) is quantized symmetrically to 129 levels,
//   s = max|x| / kQuantMax,   q[k] = round(x[k] * (kQuantMax / max|x|))   (to nearest even, float),
// |q| <= kQuantMax = 64, stored as int8, zero-padded to a multiple of kQuantAlign, with the row's
// sum of q. A weight row is int8 (|w| <= 127 from gru_native's quantize, -128 possible from
// torch.ao's), standing for w * sw (sw: the row's scale, per output channel). An output is
//   float(sum_k q[k] * w[k]) * (s * sw),
// the sum exact in integers. The products take the weights as unsigned bytes w + 128 (w XOR
// 0x80) against the signed activations, and subtract 128 * sum(q) after:
//   AVX2: vpmaddubsw (u8 x s8 pairs into int16: |pair| <= 2 * 255 * 64 < 2^15, never saturated),
//         vpmaddwd against ones (the pairs into int32 lanes), vpaddd;
//   AVX-VNNI / AVX512-VNNI builds: vpdpbusd (the same sums in one instruction: qdot_accumulate
//         is the only difference, so those paths are the AVX2 one by construction);
//   a portable build: plain loops.
// Two forms of product. The dot form (every build; weights as rows or as panels of 8 rows):
// vectors along k, each accumulator one output, summed horizontally at the end. The broadcast
// form (AVX512-VNNI builds, weights as panels of 16 rows interleaved per 4 k): 4 bytes of a row
// of activations broadcast against a vector of 16 outputs x 4 k, each int32 lane one output, no
// horizontal sums, 12 rows x 32 outputs a tile; on the AVX512 Zen 4 a GRU's recurrence at
// N = 64, H = 1024 (products and gates) runs 1.7x as fast as with the dot form (150 against 90
// GMAC/s, one core; benchmarks/NOTES.md section 12).
// The lanes are added per block of kQuantBlockK k, the blocks in double. Being exact, a sum does
// not depend on the order, the tiling, the weights' layout (rows as stored, or panels of kPanel
// rows read as one stream: Int8Weights) or the threads.
//
// At one row of activations (a step of a small batch) the products are bound by the weights'
// bytes: the panel layout turns the rows' streams into one sequential stream. With more rows,
// each panel stays in L1 while every row of activations passes (tiles of 4, 2, 1 rows in the
// dot form), and the bound is the vector ports: per 32 weights and row a vpmaddubsw, a vpmaddwd
// and a vpaddd on AVX2, one vpdpbusd with VNNI.
//
// Why 129 levels (torch.ao's x86 dynamic int8 GRU uses 128, with its reduce_range): the most
// for which vpmaddubsw's int16 pair sums cannot saturate against any int8 weights. On
// the AVX2 Zen 3 the int8 GRU runs 1.4-1.7x as fast as with the 12-bit activations (int16,
// vpmaddwd) used before at the batched shapes, whose error was a third of torch.ao's; with 129
// levels the activations' rounding (at most 1/128 of their row's largest value, per row where
// torch.ao's is per tensor) is about twice the weights' (1/254 of each channel's largest), and
// the output's error about 0.8 of torch.ao's (benchmarks/NOTES.md section 11).
// Header-only, internal to the CPU kernels' files (an unnamed namespace; include after vec.h).
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace gru_native::cpu {
namespace {

constexpr int kQuantMax = 64;         // |q| <= 64: 129 levels
constexpr int64_t kQuantAlign = 32;   // int8 elements per vector
constexpr int kWeightOffset = 128;    // the products read w + 128 (w XOR 0x80), unsigned
// The largest K (input or hidden features) a row may have: far below what the exact sums allow.
constexpr int64_t kQuantMaxK = int64_t(1) << 24;

inline int64_t quant_padded(int64_t K) { return (K + kQuantAlign - 1) / kQuantAlign * kQuantAlign; }

// The name of the instructions the products run on, for build_info().
inline const char* qdot_isa() {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return "AVX512-VNNI vpdpbusd";
#elif defined(__AVXVNNI__)
  return "AVX-VNNI vpdpbusd";
#elif defined(__AVX2__)
  return "AVX2 vpmaddubsw + vpmaddwd";
#else
  return "scalar";
#endif
}

// q[0, quant_padded(K)) from x[0, K), *sum = the sum of q; returns the row's scale s (0 for a
// row of zeros, NaN for a row holding a NaN or an infinity: its outputs are then NaN).
inline float quantize_row(int64_t K, const float* x, int8_t* q, int32_t* sum) {
  TORCH_CHECK(K <= kQuantMaxK, "gru_native: quantized layers take at most ", kQuantMaxK,
              " input or hidden features, got ", K);
  float amax = 0.0f;
  bool finite = true;
  int64_t k = 0;
#if defined(__AVX2__)
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 vmax = _mm256_setzero_ps(), unordered = _mm256_setzero_ps();
  for (; k + 8 <= K; k += 8) {
    const __m256 v = _mm256_and_ps(_mm256_loadu_ps(x + k), abs_mask);
    unordered = _mm256_or_ps(unordered, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    vmax = _mm256_max_ps(vmax, v);
  }
  float lanes[8];
  _mm256_storeu_ps(lanes, vmax);
  for (float v : lanes) amax = std::max(amax, v);
  finite = _mm256_movemask_ps(unordered) == 0;
#endif
  for (; k < K; ++k) {
    const float v = std::fabs(x[k]);
    if (std::isnan(v)) finite = false;
    amax = std::max(amax, v);
  }
  const int64_t Kp = quant_padded(K);
  *sum = 0;
  if (!finite || std::isinf(amax) || amax == 0.0f) {
    std::fill(q, q + Kp, int8_t(0));
    return (finite && amax == 0.0f) ? 0.0f : std::numeric_limits<float>::quiet_NaN();
  }
  const float inv = static_cast<float>(kQuantMax) / amax;
  int32_t total = 0;
  k = 0;
#if defined(__AVX2__)
  const __m256 vinv = _mm256_set1_ps(inv);
  // packs works within 128-bit halves: after the two packs the 32-bit groups hold the vectors'
  // quarters in the order a0 b0 c0 d0 a1 b1 c1 d1; this puts them back as a0 a1 b0 b1 ...
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  __m256i vsum = _mm256_setzero_si256();
  for (; k + 32 <= K; k += 32) {
    __m256i v[4];
    for (int i = 0; i < 4; ++i) {
      v[i] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k + 8 * i), vinv));
    }
    vsum = _mm256_add_epi32(vsum, _mm256_add_epi32(_mm256_add_epi32(v[0], v[1]),
                                                   _mm256_add_epi32(v[2], v[3])));
    const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]),
                                             _mm256_packs_epi32(v[2], v[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + k),
                        _mm256_permutevar8x32_epi32(bytes, order));
  }
  alignas(32) int32_t partial[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(partial), vsum);
  for (int32_t v : partial) total += v;
#endif
  for (; k < K; ++k) {
    q[k] = static_cast<int8_t>(std::nearbyint(x[k] * inv));
    total += q[k];
  }
  for (; k < Kp; ++k) q[k] = 0;
  *sum = total;
  return amax / static_cast<float>(kQuantMax);
}

// Rows [0, M) of a matrix quantized per row: row m at q + m * ld (ld >= quant_padded(K)), its
// scale at scale[m], the sum of its q at sum[m].
struct QuantizedView {
  const int8_t* q;
  const float* scale;
  const int32_t* sum;
  int64_t M, K, ld;

  QuantizedView rows(int64_t m0, int64_t m1) const {
    return {q + m0 * ld, scale + m0, sum + m0, m1 - m0, K, ld};
  }
};

// Rows [0, M) of x (row m at x + m * ldx) quantized into q (row m at q + m * ld, ld >=
// quant_padded(K)), scale[m] and sum[m], spread over torch's threads (on the calling thread
// inside a parallel region, and for a few rows). The one quantizing loop of the input
// projections and of the recurrence.
inline void quantize_rows(int64_t M, int64_t K, const float* x, int64_t ldx, int8_t* q,
                          int64_t ld, float* scale, int32_t* sum) {
  constexpr int64_t kParallelElements = 64 * 1024;
  const int64_t grain = std::max<int64_t>(1, kParallelElements / std::max<int64_t>(K, 1));
  at::parallel_for(0, M, grain, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      scale[m] = quantize_row(K, x + m * ldx, q + m * ld, sum + m);
    }
  });
}

// A matrix quantized per row, owning its storage: up to M rows of K elements.
struct QuantizedRows {
  std::vector<int8_t> q;
  std::vector<float> scale;
  std::vector<int32_t> sum;
  int64_t K = 0, ld = 0;

  void reserve(int64_t M, int64_t K_) {
    K = K_;
    ld = quant_padded(K_);
    q.resize(static_cast<size_t>(M * ld));
    scale.resize(static_cast<size_t>(M));
    sum.resize(static_cast<size_t>(M));
  }
  // Rows [m0, m1) from x (row m at x + (m - m0) * ldx).
  void quantize(int64_t m0, int64_t m1, const float* x, int64_t ldx) {
    quantize_rows(m1 - m0, K, x, ldx, q.data() + m0 * ld, ld, scale.data() + m0,
                  sum.data() + m0);
  }
  QuantizedView view(int64_t m0, int64_t m1) const {
    return QuantizedView{q.data(), scale.data(), sum.data(), m1, K, ld}.rows(m0, m1);
  }
};

// The int8 weights of a product: Nc rows (outputs) of K elements, in one of two layouts.
//   row-major (ld > 0): row c at w + c * ld, as the modules store them (int8 w);
//   panels (ld == 0): kPanelRows consecutive rows in one sequential stream of kPanelRows *
//     quant_padded(K) bytes, each byte w XOR 0x80 (w + 128 as an unsigned byte, what the
//     products read), weight 0 (byte 0x80) past K and past the last row. Element k of row c at
//     w + (c / kPanelRows) * kPanelRows * Kp + within(c % kPanelRows, k), Kp = quant_padded(K):
//       dot form (AVX2, portable): kPanelRows 8, the rows interleaved per kQuantAlign elements,
//         within(j, k) = (k / 32) * 8 * 32 + j * 32 + k % 32;
//       broadcast form (AVX512-VNNI): kPanelRows 16, the rows interleaved per 4 elements (a
//         vector of 16 columns x 4 k, what one vpdpbusd takes against 4 bytes of a row of
//         activations broadcast), within(j, k) = (k / 4) * 16 * 4 + j * 4 + k % 4.
//     A GRU weight [3H, K] is packed per gate (each gate's H rows padded to a multiple of
//     kPanelRows): pack_int8_panels, the only writer of the layout.
// Both give the same sums (exact integers), so the same bits.
constexpr int64_t kPanel = 8;  // the dot form's rows of W per group (qdot_layout)
#if defined(__AVX512VNNI__) && defined(__AVX512VL__) && defined(__AVX512BW__)
#define GRU_NATIVE_INT8_BROADCAST 1
constexpr int64_t kPanelRows = 16;
constexpr int64_t kPanelGroup = 4;  // k per group of the broadcast form
#else
constexpr int64_t kPanelRows = kPanel;
constexpr int64_t kPanelGroup = kQuantAlign;
#endif

struct Int8Weights {
  const int8_t* w;
  int64_t ld;  // row stride of the row-major layout; 0 for panels

  bool panels() const { return ld == 0; }
  // The matrix from row c0 on (for panels, c0 a multiple of kPanelRows).
  Int8Weights from_row(int64_t c0, int64_t K) const {
    TORCH_CHECK(!panels() || c0 % kPanelRows == 0, "gru_native: int8 panels cut at row ", c0);
    return {w + c0 * (panels() ? quant_padded(K) : ld), ld};
  }
};

// The bytes of a panel-packed GRU weight [gates * rows, K] (each gate's rows padded).
inline int64_t int8_panels_size(int64_t gates, int64_t rows, int64_t K) {
  return gates * ((rows + kPanelRows - 1) / kPanelRows * kPanelRows) * quant_padded(K);
}

// W [gates * rows, K] (row-major, row stride ld) into the panel layout, each gate's rows padded:
// out[0, int8_panels_size(gates, rows, K)), every byte written (0x80, weight 0, where padded).
inline void pack_int8_panels(int64_t gates, int64_t rows, int64_t K, const int8_t* w, int64_t ld,
                             int8_t* out) {
  const int64_t Kp = quant_padded(K), panels = (rows + kPanelRows - 1) / kPanelRows;
  const auto offset = [](int8_t v) {
    return static_cast<int8_t>(static_cast<uint8_t>(v) ^ 0x80u);
  };
  for (int64_t g = 0; g < gates; ++g) {
    for (int64_t p = 0; p < panels; ++p) {
      for (int64_t k0 = 0; k0 < Kp; k0 += kPanelGroup) {
        for (int64_t j = 0; j < kPanelRows; ++j, out += kPanelGroup) {
          const int64_t r = p * kPanelRows + j;
          const int64_t n = r < rows ? std::clamp<int64_t>(K - k0, 0, kPanelGroup) : 0;
          for (int64_t i = 0; i < n; ++i) out[i] = offset(w[(g * rows + r) * ld + k0 + i]);
          std::fill(out + n, out + kPanelGroup, offset(0));
        }
      }
    }
  }
}

#if defined(__AVX2__)
// acc + (per int32 lane) the sum of four products of w (unsigned bytes, the weights + 128) and
// a (signed bytes, |a| <= kQuantMax).
inline __m256i qdot_accumulate(__m256i acc, __m256i w, __m256i a) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(acc, w, a);
#elif defined(__AVXVNNI__)
  return _mm256_dpbusd_avx_epi32(acc, w, a);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w, a),
                                                 _mm256_set1_epi16(1)));
#endif
}

// Lane l of the result: the sum of v[l]'s eight lanes (integer sums: any order is exact).
inline __m256i qdot_lane_sums(const __m256i* v) {
  const __m256i ab = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]),
                                       _mm256_hadd_epi32(v[2], v[3]));
  const __m256i cd = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]),
                                       _mm256_hadd_epi32(v[6], v[7]));
  return _mm256_add_epi32(_mm256_permute2x128_si256(ab, cd, 0x20),
                          _mm256_permute2x128_si256(ab, cd, 0x31));
}
#endif

// Products summed exactly in int32 lanes over at most this many k (|sum| <= 8192 * 255 * 64
// < 2^31, before and after the offset's 128 * sum(q) is taken off), then in double (exact to
// 2^53). A sum of one block goes to float directly: the same rounding as through the double.
constexpr int64_t kQuantBlockK = 8192;

#if defined(__AVX2__)
// Lane i * CB + j: the sum over the chunks [k0, k1) (whole chunks) of a[i] times (w_j + 128),
// whose chunk at k is at w[j] + k * KS (row-major rows, KS 1, are offset as loaded; panels
// hold the offset bytes).
template <int RB, int CB, int KS>
__attribute__((always_inline)) inline __m256i qdot_loop(const int8_t* const* a_rows,
                                                        const int8_t* const* w_rows, int64_t k0,
                                                        int64_t k1) {
  const int8_t* a[RB];
  const int8_t* w[CB];
  for (int i = 0; i < RB; ++i) a[i] = a_rows[i] + k0;
  // Panels: one pointer, the rows at fixed offsets from it.
  for (int j = 0; j < CB; ++j) w[j] = KS == 1 ? w_rows[j] + k0 : w_rows[0] + k0 * KS;
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
  __m256i acc[RB * CB];
#pragma GCC unroll 8
  for (int v = 0; v < RB * CB; ++v) acc[v] = _mm256_setzero_si256();
  for (int64_t n = (k1 - k0) / kQuantAlign; n > 0; --n) {
    __m256i av[RB];
#pragma GCC unroll 4
    for (int i = 0; i < RB; ++i) {
      av[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[i]));
      a[i] += kQuantAlign;
    }
#pragma GCC unroll 8
    for (int j = 0; j < CB; ++j) {
      const int8_t* wj = KS == 1 ? w[j] : w[0] + j * kQuantAlign;
      __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wj));
      if (KS == 1) wv = _mm256_xor_si256(wv, flip);
#pragma GCC unroll 4
      for (int i = 0; i < RB; ++i) {
        acc[i * CB + j] = qdot_accumulate(acc[i * CB + j], wv, av[i]);
        // Each product finished before the next begins: left to itself GCC issues all eight
        // vpmaddubsw first, and their eight results beside eight accumulators spill one to the
        // stack (1.05-1.3x slower, benchmarks/NOTES.md section 11).
        __asm__("" : "+x"(acc[i * CB + j]));
      }
    }
#pragma GCC unroll 8
    for (int j = 0; j < (KS == 1 ? CB : 1); ++j) w[j] += kQuantAlign * KS;
  }
  return qdot_lane_sums(acc);
}

// qdot_loop out of line: on its own, the loop keeps its pointers and accumulators in registers.
template <int RB, int CB, int KS>
__attribute__((noinline)) __m256i qdot_chunks(const int8_t* const* a_rows,
                                              const int8_t* const* w_rows, int64_t k0,
                                              int64_t k1) {
  return qdot_loop<RB, CB, KS>(a_rows, w_rows, k0, k1);
}

// The last, partial chunk [whole, k1) of row-major rows (KS 1), read through zeroed copies of
// their last elements (the rows of A are padded with zeros).
template <int RB, int CB>
inline __m256i qdot_tail(const int8_t* const* a, const int8_t* const* w, int64_t whole,
                         int64_t k1) {
  alignas(32) int8_t tail[CB][kQuantAlign] = {};
  const int8_t* tw[CB];
  const int8_t* ta[RB];
  for (int j = 0; j < CB; ++j) {
    std::memcpy(tail[j], w[j] + whole, static_cast<size_t>(k1 - whole));
    tw[j] = tail[j];
  }
  for (int i = 0; i < RB; ++i) ta[i] = a[i] + whole;
  return qdot_chunks<RB, CB, 1>(ta, tw, 0, kQuantAlign);
}

// qdot_chunks over [k0, k1) (k1 - k0 <= kQuantBlockK), a partial last chunk of row-major rows
// through qdot_tail.
template <int RB, int CB, int KS>
inline __m256i qdot_block(const int8_t* const* a, const int8_t* const* w, int64_t k0,
                          int64_t k1) {
  const int64_t whole = k0 + (k1 - k0) / kQuantAlign * kQuantAlign;
  __m256i sums = qdot_chunks<RB, CB, KS>(a, w, k0, whole);
  if (KS == 1 && whole < k1) sums = _mm256_add_epi32(sums, qdot_tail<RB, CB>(a, w, whole, k1));
  return sums;
}

// Lane i * CB + j: kWeightOffset * sum[i], the offset's share of row i's sums (K <=
// kQuantBlockK: |sum[i]| <= 64 * 8192).
template <int RB, int CB>
inline __m256i qdot_offsets(const int32_t* sum) {
  alignas(32) int32_t lanes[8];
  for (int i = 0; i < RB; ++i) {
    for (int j = 0; j < CB; ++j) lanes[i * CB + j] = kWeightOffset * sum[i];
  }
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(lanes));
}
#endif

// out[i * ldo + j] = float(dot(a[i], w_j)) * (sa[i] * sw[j]) for i < RB, j < n_out <= CB
// (RB * CB == 8): a rows quantized (padded to quant_padded(K)), asum[i] the sum of a[i]; the
// kQuantAlign elements of w_j from k on at w[j] + k * KS: KS 1, a row-major row, KS kPanel, a
// row of a panel (padded, offset bytes).
template <int RB, int CB, int KS>
inline void qdot_tile(int64_t K, const int8_t* const* a, const float* sa, const int32_t* asum,
                      const int8_t* const* w, const float* sw, float* out, int64_t ldo,
                      int64_t n_out) {
  static_assert(RB * CB == 8, "one vector of sums");
  if (KS != 1) K = quant_padded(K);  // panels and rows of A are padded with zeros
  alignas(32) float sums[8];
#if defined(__AVX2__)
  if (K <= kQuantBlockK) {
    const __m256i dots = _mm256_sub_epi32(qdot_block<RB, CB, KS>(a, w, 0, K),
                                          qdot_offsets<RB, CB>(asum));
    _mm256_store_ps(sums, _mm256_cvtepi32_ps(dots));
  } else {
    __m256d total_lo = _mm256_setzero_pd(), total_hi = _mm256_setzero_pd();
    for (int64_t k0 = 0; k0 < K; k0 += kQuantBlockK) {
      const __m256i b = qdot_block<RB, CB, KS>(a, w, k0, std::min(K, k0 + kQuantBlockK));
      total_lo = _mm256_add_pd(total_lo, _mm256_cvtepi32_pd(_mm256_castsi256_si128(b)));
      total_hi = _mm256_add_pd(total_hi, _mm256_cvtepi32_pd(_mm256_extracti128_si256(b, 1)));
    }
    alignas(32) double offsets[8];  // in double: 128 * sum(q) may pass 2^31 for such K
    for (int i = 0; i < RB; ++i) {
      for (int j = 0; j < CB; ++j) offsets[i * CB + j] = double(kWeightOffset) * asum[i];
    }
    total_lo = _mm256_sub_pd(total_lo, _mm256_load_pd(offsets));
    total_hi = _mm256_sub_pd(total_hi, _mm256_load_pd(offsets + 4));
    _mm_store_ps(sums, _mm256_cvtpd_ps(total_lo));
    _mm_store_ps(sums + 4, _mm256_cvtpd_ps(total_hi));
  }
  if (RB == 1 && n_out == CB) {  // one row of eight outputs: one vector
    const __m256 scale = _mm256_mul_ps(_mm256_set1_ps(sa[0]), _mm256_loadu_ps(sw));
    _mm256_storeu_ps(out, _mm256_mul_ps(_mm256_load_ps(sums), scale));
    return;
  }
#else
  for (int i = 0; i < RB; ++i) {
    for (int j = 0; j < CB; ++j) {
      int64_t sum = 0;
      for (int64_t k = 0; k < K; ++k) {
        const int64_t at = (k / kQuantAlign) * kQuantAlign * KS + k % kQuantAlign;
        const int32_t wk = KS == 1 ? int32_t(w[j][at]) + kWeightOffset
                                   : int32_t(static_cast<uint8_t>(w[j][at]));
        sum += int32_t(a[i][k]) * wk;
      }
      sums[i * CB + j] = static_cast<float>(sum - int64_t(kWeightOffset) * asum[i]);
    }
  }
#endif
  for (int i = 0; i < RB; ++i) {
    for (int j = 0; j < n_out; ++j) out[i * ldo + j] = sums[i * CB + j] * (sa[i] * sw[j]);
  }
}

#if defined(__AVX2__)
// out[i * ldo + j] = float(dot(a[i], w_j)) * (sa[i] * sw[j]) for i < 4, j < kPanel (w as in
// qdot_tile, K padded for panels): four rows of A against kPanel rows of W in one call, as four
// 4 x 2 tiles whose sums are transposed in registers into the four rows of eight outputs,
// scaled and stored as vectors. The same exact sums and the same float operations as
// qdot_tile's, so the same bits; at K = 256 it runs 1.2-1.3x as fast as the four qdot_tile
// calls (their calls and scalar epilogues were about a third of their time). K <= kQuantBlockK.
template <int KS>
__attribute__((noinline)) void qdot_rows4(int64_t K, const int8_t* const* a,
                                          const int8_t* const* w, const float* sa,
                                          const int32_t* asum, const float* sw, float* out,
                                          int64_t ldo) {
  const int64_t whole = K / kQuantAlign * kQuantAlign;
  const __m256i offsets = qdot_offsets<4, 2>(asum);
  __m256i r[4];  // r[t], lane 2 i + jj: row i of A, row 2 t + jj of W
  for (int t = 0; t < 4; ++t) {
    r[t] = qdot_loop<4, 2, KS>(a, w + 2 * t, 0, whole);
    if (KS == 1 && whole < K) {
      r[t] = _mm256_add_epi32(r[t], qdot_tail<4, 2>(a, w + 2 * t, whole, K));
    }
    r[t] = _mm256_sub_epi32(r[t], offsets);
  }
  // A transpose of 64-bit pairs: row i's eight sums are (r[0], r[1], r[2], r[3]) at pair i.
  const __m256i u0 = _mm256_unpacklo_epi64(r[0], r[1]), u1 = _mm256_unpackhi_epi64(r[0], r[1]);
  const __m256i u2 = _mm256_unpacklo_epi64(r[2], r[3]), u3 = _mm256_unpackhi_epi64(r[2], r[3]);
  const __m256i sums[4] = {_mm256_permute2x128_si256(u0, u2, 0x20),
                           _mm256_permute2x128_si256(u1, u3, 0x20),
                           _mm256_permute2x128_si256(u0, u2, 0x31),
                           _mm256_permute2x128_si256(u1, u3, 0x31)};
  const __m256 scale_w = _mm256_loadu_ps(sw);
  for (int i = 0; i < 4; ++i) {
    const __m256 scale = _mm256_mul_ps(_mm256_set1_ps(sa[i]), scale_w);
    _mm256_storeu_ps(out + i * ldo, _mm256_mul_ps(_mm256_cvtepi32_ps(sums[i]), scale));
  }
}
#endif

// C[m, c] = the product of quantized row m of A (m < A.M) and int8 row c of W (K = A.K), scale
// sw[c], for c < Nc. Per kPanel rows of W (in L1 while every row of A passes), tiles of 4, 2,
// then 1 rows of A.
template <int KS>
void qdot_layout(const QuantizedView& A, int64_t Nc, const Int8Weights& W, const float* sw,
                 float* C, int64_t ldc) {
  const int64_t K = A.K;
  const int8_t* w[kPanel];
  const int8_t* a[4];
  for (int64_t c0 = 0; c0 < Nc; c0 += kPanel) {
    const int64_t nc = std::min(kPanel, Nc - c0);
    for (int64_t j = 0; j < kPanel; ++j) {
      // Row-major: past Nc the last row again (computed, not stored).
      w[j] = KS == 1 ? W.w + std::min(c0 + j, Nc - 1) * W.ld
                     : W.w + c0 * quant_padded(K) + j * kQuantAlign;
    }
    const float* s = sw + c0;
    int64_t m = 0;
#if defined(__AVX2__)
    if (nc == kPanel && quant_padded(K) <= kQuantBlockK) {
      for (; m + 4 <= A.M; m += 4) {
        for (int i = 0; i < 4; ++i) a[i] = A.q + (m + i) * A.ld;
        qdot_rows4<KS>(KS == 1 ? K : quant_padded(K), a, w, A.scale + m, A.sum + m, s,
                       C + m * ldc + c0, ldc);
      }
    }
#endif
    for (; m + 4 <= A.M; m += 4) {
      for (int i = 0; i < 4; ++i) a[i] = A.q + (m + i) * A.ld;
      for (int64_t j = 0; j < nc; j += 2) {
        qdot_tile<4, 2, KS>(K, a, A.scale + m, A.sum + m, w + j, s + j, C + m * ldc + c0 + j,
                            ldc, std::min<int64_t>(2, nc - j));
      }
    }
    if (m + 2 <= A.M) {
      for (int i = 0; i < 2; ++i) a[i] = A.q + (m + i) * A.ld;
      for (int64_t j = 0; j < nc; j += 4) {
        qdot_tile<2, 4, KS>(K, a, A.scale + m, A.sum + m, w + j, s + j, C + m * ldc + c0 + j,
                            ldc, std::min<int64_t>(4, nc - j));
      }
      m += 2;
    }
    if (m < A.M) {
      a[0] = A.q + m * A.ld;
      qdot_tile<1, 8, KS>(K, a, A.scale + m, A.sum + m, w, s, C + m * ldc + c0, ldc, nc);
    }
  }
}

#if defined(GRU_NATIVE_INT8_BROADCAST)
// The broadcast form (AVX512-VNNI, panels): out[i * ldo + c] = float(dot(a[i], w_c)) * (sa[i] *
// sw[c]) for rows i < MR of A (row i at a + i * lda, padded to Kp) and the columns c < nc of NP
// panels (panel p at b + p * Kp * kPanelRows, 16 columns). Per 4 k, one vector of each panel and
// 4 bytes of each row broadcast: MR x NP vpdpbusd into int32 lanes, one column a lane, so no
// horizontal sums. The same exact sums as the dot form (per block of kQuantBlockK k in int32,
// the blocks in double) and the same float operations after, so the same bits.
// acc[i][p] lane l = the int32 sum over k in [k0, k1) of row i of A and column l of panel p
// (k1 - k0 <= kQuantBlockK: exact). Inlined into one place in each caller, whose acc then stays
// in registers.
template <int MR, int NP>
__attribute__((always_inline)) inline void qdot_broadcast_loop(int64_t k0, int64_t k1,
                                                               const int8_t* a, int64_t lda,
                                                               const int8_t* b, int64_t stride,
                                                               __m512i (&acc)[MR][NP]) {
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
    for (int p = 0; p < NP; ++p) acc[i][p] = _mm512_setzero_si512();
  }
  for (int64_t k = k0; k < k1; k += kPanelGroup) {
    __m512i wv[NP];
#pragma GCC unroll 8
    for (int p = 0; p < NP; ++p) wv[p] = _mm512_loadu_si512(b + p * stride + k * kPanelRows);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      int32_t four;
      std::memcpy(&four, a + i * lda + k, sizeof(four));
      const __m512i x = _mm512_set1_epi32(four);
#pragma GCC unroll 8
      for (int p = 0; p < NP; ++p) {
        acc[i][p] = _mm512_dpbusd_epi32(acc[i][p], wv[p], x);
        // Each accumulator kept in its register (as qdot_loop's): left to itself GCC rotates
        // them through a spare register, a move per product.
        __asm__("" : "+v"(acc[i][p]));
      }
    }
  }
}

// One block of K, the sums stored: lanes[(i * NP + p) * 16 + l] (the multi-block path).
template <int MR, int NP>
__attribute__((noinline)) void qdot_broadcast_sums(int64_t k0, int64_t k1, const int8_t* a,
                                                   int64_t lda, const int8_t* b, int64_t stride,
                                                   int32_t* lanes) {
  __m512i acc[MR][NP];
  qdot_broadcast_loop<MR, NP>(k0, k1, a, lda, b, stride, acc);
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
    for (int p = 0; p < NP; ++p) _mm512_storeu_si512(lanes + (i * NP + p) * 16, acc[i][p]);
  }
}

// out[i * ldo + p * 16 + l] = float(sums) * (sa[i] * sw[p * 16 + l]) for columns < nc, from
// sums as float vectors (the one float multiply order of every form).
template <int MR, int NP>
__attribute__((always_inline)) inline void qdot_broadcast_store(const __m512 (&sums)[MR][NP],
                                                                const float* sa, const float* sw,
                                                                float* out, int64_t ldo,
                                                                int64_t nc) {
  __mmask16 mask[NP];
  __m512 scale_w[NP];
#pragma GCC unroll 8
  for (int p = 0; p < NP; ++p) {
    const int64_t n = std::clamp<int64_t>(nc - p * 16, 0, 16);
    mask[p] = static_cast<__mmask16>((1u << n) - 1);
    scale_w[p] = _mm512_maskz_loadu_ps(mask[p], sw + p * 16);
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    const __m512 row_scale = _mm512_set1_ps(sa[i]);
#pragma GCC unroll 8
    for (int p = 0; p < NP; ++p) {
      _mm512_mask_storeu_ps(out + i * ldo + p * 16, mask[p],
                            _mm512_mul_ps(sums[i][p], _mm512_mul_ps(row_scale, scale_w[p])));
    }
  }
}

// The tile of one block of K (Kp <= kQuantBlockK): from the accumulators' registers to C.
template <int MR, int NP>
__attribute__((noinline)) void qdot_broadcast_one(int64_t Kp, const int8_t* a, int64_t lda,
                                                  const float* sa, const int32_t* asum,
                                                  const int8_t* b, const float* sw, float* out,
                                                  int64_t ldo, int64_t nc) {
  __m512i acc[MR][NP];
  qdot_broadcast_loop<MR, NP>(0, Kp, a, lda, b, Kp * kPanelRows, acc);
  __m512 sums[MR][NP];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    const __m512i offset = _mm512_set1_epi32(kWeightOffset * asum[i]);
#pragma GCC unroll 8
    for (int p = 0; p < NP; ++p) {
      sums[i][p] = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[i][p], offset));
    }
  }
  qdot_broadcast_store<MR, NP>(sums, sa, sw, out, ldo, nc);
}

template <int MR, int NP>
void qdot_broadcast_tile(int64_t Kp, const int8_t* a, int64_t lda, const float* sa,
                         const int32_t* asum, const int8_t* b, const float* sw, float* out,
                         int64_t ldo, int64_t nc) {
  if (Kp <= kQuantBlockK) return qdot_broadcast_one<MR, NP>(Kp, a, lda, sa, asum, b, sw, out, ldo, nc);
  // Blocks of kQuantBlockK k, added in double (exact), the offset taken off there: 128 *
  // sum(q) may pass 2^31 for such K.
  const int64_t stride = Kp * kPanelRows;
  __m512 sums[MR][NP];
  alignas(64) int32_t lanes[MR * NP * 16];
  std::vector<double> total(MR * NP * 16, 0.0);
  for (int64_t k0 = 0; k0 < Kp; k0 += kQuantBlockK) {
    qdot_broadcast_sums<MR, NP>(k0, std::min(Kp, k0 + kQuantBlockK), a, lda, b, stride, lanes);
    for (int l = 0; l < MR * NP * 16; ++l) total[l] += lanes[l];
  }
  for (int i = 0; i < MR; ++i) {
    const double offset = double(kWeightOffset) * asum[i];
    for (int p = 0; p < NP; ++p) {
      alignas(64) float row[16];
      for (int l = 0; l < 16; ++l) {
        row[l] = static_cast<float>(total[(i * NP + p) * 16 + l] - offset);
      }
      sums[i][p] = _mm512_load_ps(row);
    }
  }
  qdot_broadcast_store<MR, NP>(sums, sa, sw, out, ldo, nc);
}

// Rows [0, MR) of A against the panels [0, panels) of W: tiles of NP panels, then single panels.
template <int MR, int NP>
inline void qdot_broadcast_rows(int64_t Kp, const int8_t* a, int64_t lda, const float* sa,
                                const int32_t* asum, const int8_t* w, int64_t panels,
                                const float* sw, float* C, int64_t ldc, int64_t Nc) {
  const int64_t stride = Kp * kPanelRows;
  int64_t p = 0;
  for (; p + NP <= panels; p += NP) {
    qdot_broadcast_tile<MR, NP>(Kp, a, lda, sa, asum, w + p * stride, sw + p * 16, C + p * 16,
                                ldc, Nc - p * 16);
  }
  for (; p < panels; ++p) {
    qdot_broadcast_tile<MR, 1>(Kp, a, lda, sa, asum, w + p * stride, sw + p * 16, C + p * 16,
                               ldc, Nc - p * 16);
  }
}

// C[m, c] for m < A.M, c < Nc from panels (broadcast form). Tiles of 12 rows x 2 panels (24
// accumulators of the 32 vector registers), a pair of panels (2 x 16 x Kp bytes) in L1 while
// the rows pass; the last rows (< 12) then pass over all panels in wider tiles (4 or 8 panels),
// so that a tile still has at least 8 independent sums.
inline void qdot_broadcast(const QuantizedView& A, int64_t Nc, const int8_t* w, const float* sw,
                           float* C, int64_t ldc) {
  const int64_t Kp = quant_padded(A.K), panels = (Nc + kPanelRows - 1) / kPanelRows;
  const int64_t stride = Kp * kPanelRows, full = A.M / 12 * 12;
  for (int64_t p = 0; p < panels && full > 0; p += 2) {
    const int64_t np = std::min<int64_t>(2, panels - p);
    for (int64_t m = 0; m < full; m += 12) {
      qdot_broadcast_rows<12, 2>(Kp, A.q + m * A.ld, A.ld, A.scale + m, A.sum + m,
                                 w + p * stride, np, sw + p * 16, C + m * ldc + p * 16, ldc,
                                 Nc - p * 16);
    }
  }
  const int64_t m = full;
  const int8_t* a = A.q + m * A.ld;
  float* c = C + m * ldc;
  switch (A.M - full) {
#define GRU_NATIVE_QB(R, NP)                                                                    \
  case R:                                                                                      \
    qdot_broadcast_rows<R, NP>(Kp, a, A.ld, A.scale + m, A.sum + m, w, panels, sw, c, ldc, Nc); \
    break;
    GRU_NATIVE_QB(11, 2) GRU_NATIVE_QB(10, 2) GRU_NATIVE_QB(9, 2) GRU_NATIVE_QB(8, 2)
    GRU_NATIVE_QB(7, 2) GRU_NATIVE_QB(6, 2) GRU_NATIVE_QB(5, 4) GRU_NATIVE_QB(4, 4)
    GRU_NATIVE_QB(3, 4) GRU_NATIVE_QB(2, 8) GRU_NATIVE_QB(1, 8)
#undef GRU_NATIVE_QB
    default: break;
  }
}
#endif

inline void qdot(const QuantizedView& A, int64_t Nc, const Int8Weights& W, const float* sw,
                 float* C, int64_t ldc) {
  if (A.M <= 0 || Nc <= 0) return;
  if (W.panels()) {
#if defined(GRU_NATIVE_INT8_BROADCAST)
    qdot_broadcast(A, Nc, W.w, sw, C, ldc);
#else
    qdot_layout<kPanel>(A, Nc, W, sw, C, ldc);
#endif
  } else {
    qdot_layout<1>(A, Nc, W, sw, C, ldc);
  }
}

}  // namespace
}  // namespace gru_native::cpu
