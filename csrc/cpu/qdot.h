// qdot.h: products of activations quantized per row and int8 weights, for the quantized layers
// (inference only): the recurrent product of forward_layer<float, int8_t> (kernels.cpp) and the
// input projection (quantized.cpp).
//
// A row of activations x[0, K) is quantized symmetrically to 12-bit integers,
//   s = max|x| / kQuantMax,   q[k] = round(x[k] * (kQuantMax / max|x|))   (to nearest even, float),
// stored as int16, zero-padded to a multiple of kQuantAlign. A weight row is int8, |w| <= 127,
// standing for w * sw (sw: the row's scale, per output channel). An output is
//   float(sum_k q[k] * w[k]) * (s * sw),
// the sum exact in integers: vpmaddwd on AVX2 (pairs of int16 products into int32 lanes, added
// across lanes per block of kQuantBlockK k, the blocks in double), vpdpwssd where the build's
// target has AVX-VNNI or AVX512-VNNI (the same sums), plain loops in a portable build. Being exact, it does not depend on the order, the
// tiling or the threads.
//
// Why 12 bits and not 8: the activations' rounding error (at most 1/4094 of their row's largest
// value) is then 16 times below the weights' (1/254 of theirs), so the output's error is the
// weights' alone; and on AVX2 it costs nothing: vpmaddwd runs as many multiply-adds per cycle
// as the u8 x s8 vpmaddubsw does once the latter's int16 pair sums are widened, and 8-bit
// activations would have to drop to 7 bits to keep those pair sums from saturating.
// Header-only, internal to the CPU kernels' files (an unnamed namespace; include after vec.h).
#pragma once

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

constexpr int kQuantMax = 2047;       // |q| <= 2047: 12 bits
constexpr int64_t kQuantAlign = 16;   // int16 elements per vector
// The largest K (input or hidden features) a row may have: far below what the exact sums allow.
constexpr int64_t kQuantMaxK = int64_t(1) << 24;

inline int64_t quant_padded(int64_t K) { return (K + kQuantAlign - 1) / kQuantAlign * kQuantAlign; }

// The name of the instruction the products run on, for build_info().
inline const char* qdot_isa() {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return "AVX512-VNNI vpdpwssd";
#elif defined(__AVXVNNI__)
  return "AVX-VNNI vpdpwssd";
#elif defined(__AVX2__)
  return "AVX2 vpmaddwd";
#else
  return "scalar";
#endif
}

// q[0, quant_padded(K)) from x[0, K); returns the row's scale s (0 for a row of zeros, NaN for
// a row holding a NaN or an infinity: its outputs are then NaN).
inline float quantize_row(int64_t K, const float* x, int16_t* q) {
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
  if (!finite || std::isinf(amax) || amax == 0.0f) {
    std::fill(q, q + Kp, int16_t(0));
    return (finite && amax == 0.0f) ? 0.0f : std::numeric_limits<float>::quiet_NaN();
  }
  const float inv = static_cast<float>(kQuantMax) / amax;
  k = 0;
#if defined(__AVX2__)
  const __m256 vinv = _mm256_set1_ps(inv);
  for (; k + 16 <= K; k += 16) {
    const __m256i lo = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k), vinv));
    const __m256i hi = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k + 8), vinv));
    // packs works within 128-bit halves: restore the order of the four 64-bit quarters.
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0xD8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + k), packed);
  }
#endif
  for (; k < K; ++k) q[k] = static_cast<int16_t>(std::nearbyint(x[k] * inv));
  for (; k < Kp; ++k) q[k] = 0;
  return amax / static_cast<float>(kQuantMax);
}

// Rows [0, M) of a matrix quantized per row: row m at q + m * ld (ld >= quant_padded(K)), its
// scale at scale[m].
struct QuantizedView {
  const int16_t* q;
  const float* scale;
  int64_t M, K, ld;
};

// A matrix quantized per row, owning its storage.
struct QuantizedRows {
  std::vector<int16_t> q;
  std::vector<float> scale;
  int64_t M = 0, K = 0, ld = 0;

  // Rows [m0, m1).
  QuantizedView view(int64_t m0, int64_t m1) const {
    return {q.data() + m0 * ld, scale.data() + m0, m1 - m0, K, ld};
  }

  void reserve(int64_t M_, int64_t K_) {
    q.resize(static_cast<size_t>(M_ * quant_padded(K_)));
    scale.resize(static_cast<size_t>(M_));
  }
  // Rows [0, M) of x, row m at x + m * ldx (on the calling thread).
  void quantize(int64_t M_, int64_t K_, const float* x, int64_t ldx) {
    M = M_;
    K = K_;
    ld = quant_padded(K);
    reserve(M, K);
    for (int64_t m = 0; m < M; ++m) scale[m] = quantize_row(K, x + m * ldx, q.data() + m * ld);
  }
};

#if defined(__AVX2__)
inline __m256i qdot_accumulate(__m256i acc, __m256i a, __m256i w) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpwssd_epi32(acc, a, w);
#elif defined(__AVXVNNI__)
  return _mm256_dpwssd_avx_epi32(acc, a, w);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(a, w));
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

// Products summed exactly in int32 lanes over at most this many k (|sum| <= 8192 * 2047 * 127
// < 2^31), then in double (exact to 2^53).
constexpr int64_t kQuantBlockK = 8192;

// out[i * ldo + j] = float(dot(a[i], w[j])) * (sa[i] * sw[j]) for i < RB, j < CB (RB * CB <= 8);
// a rows quantized (padded), w rows int8 of K elements.
template <int RB, int CB>
inline void qdot_tile(int64_t K, const int16_t* const* a, const float* sa,
                      const int8_t* const* w, const float* sw, float* out, int64_t ldo) {
  static_assert(RB * CB <= 8, "one vector of sums");
  float sums[8] = {};
#if defined(__AVX2__)
  __m256d total_lo = _mm256_setzero_pd(), total_hi = _mm256_setzero_pd();
  for (int64_t k0 = 0; k0 < K; k0 += kQuantBlockK) {
    const int64_t k1 = std::min(K, k0 + kQuantBlockK);
    __m256i acc[8];
#pragma GCC unroll 8
    for (int v = 0; v < 8; ++v) acc[v] = _mm256_setzero_si256();
    auto step = [&](int64_t k, const __m256i* wv) {
#pragma GCC unroll 8
      for (int i = 0; i < RB; ++i) {
        const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[i] + k));
#pragma GCC unroll 8
        for (int j = 0; j < CB; ++j) acc[i * CB + j] = qdot_accumulate(acc[i * CB + j], av, wv[j]);
      }
    };
    __m256i wv[CB];
    int64_t k = k0;
    for (; k + kQuantAlign <= k1; k += kQuantAlign) {
#pragma GCC unroll 8
      for (int j = 0; j < CB; ++j) {
        wv[j] = _mm256_cvtepi8_epi16(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(w[j] + k)));
      }
      step(k, wv);
    }
    if (k < k1) {  // the rows of w end here: their last elements through a zeroed buffer
      for (int j = 0; j < CB; ++j) {
        int8_t tail[kQuantAlign] = {};
        std::memcpy(tail, w[j] + k, static_cast<size_t>(k1 - k));
        wv[j] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(tail)));
      }
      step(k, wv);
    }
    const __m256i block = qdot_lane_sums(acc);
    total_lo = _mm256_add_pd(total_lo, _mm256_cvtepi32_pd(_mm256_castsi256_si128(block)));
    total_hi = _mm256_add_pd(total_hi, _mm256_cvtepi32_pd(_mm256_extracti128_si256(block, 1)));
  }
  _mm_storeu_ps(sums, _mm256_cvtpd_ps(total_lo));
  _mm_storeu_ps(sums + 4, _mm256_cvtpd_ps(total_hi));
#else
  for (int i = 0; i < RB; ++i) {
    for (int j = 0; j < CB; ++j) {
      int64_t sum = 0;
      for (int64_t k = 0; k < K; ++k) sum += int32_t(a[i][k]) * int32_t(w[j][k]);
      sums[i * CB + j] = static_cast<float>(sum);
    }
  }
#endif
  for (int i = 0; i < RB; ++i) {
    for (int j = 0; j < CB; ++j) out[i * ldo + j] = sums[i * CB + j] * (sa[i] * sw[j]);
  }
}

// C[m, c] = the product of quantized row m of A (m < A.M) and int8 row(c) of K = A.K elements,
// scale sw[c], for c < Nc.
template <typename Row>
void qdot_rows(const QuantizedView& A, int64_t Nc, const Row& row, const float* sw, float* C,
               int64_t ldc) {
  const int16_t* a[4];
  const int8_t* w[8];
  auto run_rows = [&](auto rb_tag, int64_t m0) {
    constexpr int RB = decltype(rb_tag)::value;
    // 16 vector registers: RB x CB accumulators, CB widened weight vectors and one row vector.
    constexpr int CB = RB == 4 ? 2 : (RB == 2 ? 4 : 8);
    for (int i = 0; i < RB; ++i) a[i] = A.q + (m0 + i) * A.ld;
    const float* sa = A.scale + m0;
    float* cm = C + m0 * ldc;
    int64_t c = 0;
    for (; c + CB <= Nc; c += CB) {
      for (int j = 0; j < CB; ++j) w[j] = row(c + j);
      qdot_tile<RB, CB>(A.K, a, sa, w, sw + c, cm + c, ldc);
    }
    for (; c < Nc; ++c) {
      w[0] = row(c);
      qdot_tile<RB, 1>(A.K, a, sa, w, sw + c, cm + c, ldc);
    }
  };
  int64_t m = 0;
  for (; m + 4 <= A.M; m += 4) run_rows(std::integral_constant<int, 4>(), m);
  if (m + 2 <= A.M) {
    run_rows(std::integral_constant<int, 2>(), m);
    m += 2;
  }
  if (m < A.M) run_rows(std::integral_constant<int, 1>(), m);
}

}  // namespace
}  // namespace gru_native::cpu
