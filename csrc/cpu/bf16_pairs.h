// bf16_pairs.h: bfloat16 products on AVX512-BF16 (vdpbf16ps), built where the compiler targets
// it (-march=native on a CPU with avx512_bf16): the float sums of a bfloat16 GEMM taken two k at
// a time, each pair of products added to a float accumulator, at twice the multiply-adds of an
// instruction that the converting path (bfloat16 widened to float, float FMA) gets.
//
// Operands are 32-bit words holding two bfloat16, element 2kp in the low half and 2kp + 1 in the
// high half (an odd K's last word has zero above); a tile is MR rows x kPairNR columns of float
// sums in 2 x MR vectors. Every product of two bfloat16 is exact in float, and each element's sum
// runs over its pairs in k order from zero, so its bits are fixed by K alone: not by the threads,
// the split of C over them or the tiling. They differ from the converting path's (pairs, and
// vdpbf16ps takes bfloat16 denormals as zero and flushes denormal sums).
//
// Used by gemm.cpp (packed A and B), by the CPU recurrence (PairPanels, below: W_hh packed once
// per call, h_{t-1} read in place from the layer output) and for the products of a few rows
// (dot_rows, below: both operands read in place). Only where both operands are bfloat16 (a
// bfloat16 module): bfloat16 weights under float activations (quantize) keep the converting
// path, which does not round the activations. Included after cpu/vec.h.
#pragma once

#if defined(__AVX512BF16__) && defined(__AVX512F__) && defined(__AVX512BW__)
#define GRU_NATIVE_BF16_PAIRS 1

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cpu/host_cache.h"

namespace gru_native::cpu {
namespace pairs {

constexpr int64_t kPairNR = 32;  // a tile's columns: two vectors of 16 float sums

// The word of p[0] and p[1]; of p[0] and zero.
inline uint32_t word(const c10::BFloat16* p) {
  uint32_t w;
  std::memcpy(&w, p, sizeof(w));
  return w;
}
inline uint32_t low_word(const c10::BFloat16* p) { return p->x; }
inline uint32_t make_word(c10::BFloat16 lo, c10::BFloat16 hi) {
  return static_cast<uint32_t>(lo.x) | (static_cast<uint32_t>(hi.x) << 16);
}

inline __m512 dot_pairs(__m512 acc, __m512i a, __m512i b) {
  return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b);
}

// acc[i][0..1] = the sums over the pairs [0, np) of row i's words a(i, kp) times the tile's
// columns b[kp * kPairNR, + kPairNR); with `last`, one more pair: a.last(i) times b[np *
// kPairNR, ...) (an odd K's last element, which a row read in place holds alone).
template <int MR, typename AWords>
__attribute__((always_inline)) inline void tile(int64_t np, const AWords& a, bool last,
                                                const uint32_t* b, __m512 (&acc)[MR][2]) {
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
#pragma GCC unroll 2
  for (int64_t kp = 0; kp < np; ++kp) {
    const __m512i b0 = _mm512_loadu_si512(b + kp * kPairNR);
    const __m512i b1 = _mm512_loadu_si512(b + kp * kPairNR + 16);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m512i x = _mm512_set1_epi32(static_cast<int>(a(i, kp)));
      acc[i][0] = dot_pairs(acc[i][0], x, b0);
      acc[i][1] = dot_pairs(acc[i][1], x, b1);
    }
  }
  if (last) {
    const __m512i b0 = _mm512_loadu_si512(b + np * kPairNR);
    const __m512i b1 = _mm512_loadu_si512(b + np * kPairNR + 16);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m512i x = _mm512_set1_epi32(static_cast<int>(a.last(i)));
      acc[i][0] = dot_pairs(acc[i][0], x, b0);
      acc[i][1] = dot_pairs(acc[i][1], x, b1);
    }
  }
}

// Rows [0, mc) x k [0, kc) of a bfloat16 A (A(i, k) = A[i * rs + k * cs]) into micro-panels of
// MR rows: panel p holds dst[p * ceil(kc / 2) * MR + kp * MR + i] = the word of A(p MR + i, 2kp)
// and A(p MR + i, 2kp + 1), zero past mc and kc.
template <int MR>
void pack_a(int64_t mc, int64_t kc, const c10::BFloat16* A, int64_t rs, int64_t cs,
            uint32_t* dst) {
  const int64_t np = (kc + 1) / 2, whole = kc / 2;
  for (int64_t m0 = 0; m0 < mc; m0 += MR, dst += np * MR) {
    const int mr = static_cast<int>(std::min<int64_t>(MR, mc - m0));
    for (int i = 0; i < MR; ++i) {
      if (i >= mr) {
        for (int64_t kp = 0; kp < np; ++kp) dst[kp * MR + i] = 0;
        continue;
      }
      const c10::BFloat16* a = A + (m0 + i) * rs;
      if (cs == 1) {
        for (int64_t kp = 0; kp < whole; ++kp) dst[kp * MR + i] = word(a + 2 * kp);
      } else {
        for (int64_t kp = 0; kp < whole; ++kp) {
          dst[kp * MR + i] = make_word(a[2 * kp * cs], a[(2 * kp + 1) * cs]);
        }
      }
      if (whole < np) dst[whole * MR + i] = low_word(a + 2 * whole * cs);
    }
  }
}

// Columns [nr, kPairNR) of a panel of np words a column: zero.
inline void zero_past(int64_t np, int64_t nr, uint32_t* panel) {
  for (int64_t kp = 0; kp < np; ++kp) {
    for (int64_t c = nr; c < kPairNR; ++c) panel[kp * kPairNR + c] = 0;
  }
}

// One panel from nr <= kPairNR columns whose K elements run contiguously (column c at col(c)):
// panel[kp * kPairNR + c] = the word of col(c)[2kp], col(c)[2kp + 1] (an odd K's last alone),
// read in place a cache line of each column at a time; zero past nr.
template <typename Col>
inline void pack_columns(int64_t K, int64_t nr, const Col& col, uint32_t* panel) {
  const int64_t np = (K + 1) / 2, whole = K / 2;
  constexpr int64_t kLine = 16;  // words in 64 bytes
  for (int64_t p0 = 0; p0 < whole; p0 += kLine) {
    const int64_t p1 = std::min(whole, p0 + kLine);
    for (int64_t c = 0; c < nr; ++c) {
      const c10::BFloat16* src = col(c);
      for (int64_t kp = p0; kp < p1; ++kp) panel[kp * kPairNR + c] = word(src + 2 * kp);
    }
  }
  if (whole < np) {
    for (int64_t c = 0; c < nr; ++c) panel[whole * kPairNR + c] = low_word(col(c) + K - 1);
  }
  zero_past(np, nr, panel);
}

// Rows (k) [0, kc) x columns [0, nc) of a bfloat16 B (B(k, c) = B[k * rs + c * cs]) into panels
// of kPairNR columns: panel q holds dst[q * ceil(kc / 2) * kPairNR + kp * kPairNR + c] = the word
// of B(2kp, q kPairNR + c) and B(2kp + 1, ...), zero past nc and kc.
inline void pack_b(int64_t kc, int64_t nc, const c10::BFloat16* B, int64_t rs, int64_t cs,
                   uint32_t* dst) {
  const int64_t np = (kc + 1) / 2, whole = kc / 2;
  for (int64_t n0 = 0; n0 < nc; n0 += kPairNR, dst += np * kPairNR) {
    const int64_t nr = std::min(kPairNR, nc - n0);
    const c10::BFloat16* b = B + n0 * cs;
    if (rs == 1) {  // B is a row-major matrix transposed: its columns contiguous
      pack_columns(kc, nr, [&](int64_t c) { return b + c * cs; }, dst);
      continue;
    }
    for (int64_t kp = 0; kp < whole; ++kp) {
      for (int64_t c = 0; c < nr; ++c) {
        dst[kp * kPairNR + c] = make_word(b[2 * kp * rs + c * cs], b[(2 * kp + 1) * rs + c * cs]);
      }
    }
    if (whole < np) {
      for (int64_t c = 0; c < nr; ++c) dst[whole * kPairNR + c] = low_word(b + 2 * whole * rs + c * cs);
    }
    zero_past(np, nr, dst);
  }
}

// The recurrent product of a bfloat16 layer, C[M, Nc] = A[M, K] B[K, Nc] in float, with B (a
// slice of W_hh^T, the same at every step) packed once per call into word panels, and A (the
// rows of h_{t-1}, bfloat16) read in place. K blocks of kKC: a panel's block (16 KB) stays in L1
// across the rows; each block's sums are added to C in order.
struct PairPanels {
  static constexpr int kMR = 12;  // rows a tile: 24 accumulators of 32 vector registers
  static constexpr int64_t kKC = 256;

  int64_t K = 0, Nc = 0;

  int64_t panels() const { return (Nc + kPairNR - 1) / kPairNR; }
  static int64_t size(int64_t K, int64_t Nc) {
    return (Nc + kPairNR - 1) / kPairNR * kPairNR * ((K + 1) / 2);
  }

  void reserve(int64_t words) {
    if (words > capacity_) {
      storage_ = cached_empty({words}, at::kInt);
      data_ = reinterpret_cast<uint32_t*>(storage_.data_ptr<int32_t>());
      capacity_ = words;
    }
  }

  // B[k, c] = row(c)[k]: column c of B is a contiguous row of K bfloat16.
  template <typename Row>
  void pack_rows(int64_t K_, int64_t Nc_, const Row& row) {
    K = K_;
    Nc = Nc_;
    reserve(size(K, Nc));
    const int64_t np = (K + 1) / 2;
    for (int64_t p = 0; p < panels(); ++p) {
      const int64_t c0 = p * kPairNR;
      pack_columns(K, std::min(kPairNR, Nc - c0), [&](int64_t c) { return row(c0 + c); },
                   data_ + p * np * kPairNR);
    }
  }

  // C[m, c] = sum_k A[m * lda + k] * B[k, c]; m < M, c < Nc.
  void run(int64_t M, const c10::BFloat16* A, int64_t lda, float* C, int64_t ldc) const {
    if (M <= 0 || Nc <= 0) return;
    if (K == 0) {
      for (int64_t m = 0; m < M; ++m) std::fill(C + m * ldc, C + m * ldc + Nc, 0.0f);
      return;
    }
    const int64_t np = (K + 1) / 2;
    for (int64_t k0 = 0; k0 < K; k0 += kKC) {
      const int64_t kc = std::min(kKC, K - k0);
      const uint32_t* block = data_ + (k0 / 2) * kPairNR;
      for (int64_t p = 0; p < panels(); ++p) {
        const uint32_t* b = block + p * np * kPairNR;
        const int64_t nc = std::min(kPairNR, Nc - p * kPairNR);
        float* c = C + p * kPairNR;
        int64_t m0 = 0;
        for (; m0 + kMR <= M; m0 += kMR) {
          rows_tile<kMR>(kc, A + m0 * lda + k0, lda, b, c + m0 * ldc, ldc, nc, k0 > 0);
        }
        const int64_t rest = M - m0;
        const c10::BFloat16* a = A + m0 * lda + k0;
        float* cr = c + m0 * ldc;
        switch (rest) {
#define GRU_NATIVE_PAIR_ROWS(R) \
  case R: rows_tile<R>(kc, a, lda, b, cr, ldc, nc, k0 > 0); break;
          GRU_NATIVE_PAIR_ROWS(11) GRU_NATIVE_PAIR_ROWS(10) GRU_NATIVE_PAIR_ROWS(9)
          GRU_NATIVE_PAIR_ROWS(8) GRU_NATIVE_PAIR_ROWS(7) GRU_NATIVE_PAIR_ROWS(6)
          GRU_NATIVE_PAIR_ROWS(5) GRU_NATIVE_PAIR_ROWS(4) GRU_NATIVE_PAIR_ROWS(3)
          GRU_NATIVE_PAIR_ROWS(2) GRU_NATIVE_PAIR_ROWS(1)
#undef GRU_NATIVE_PAIR_ROWS
          default: break;
        }
      }
    }
  }

 private:
  at::Tensor storage_;
  uint32_t* data_ = nullptr;
  int64_t capacity_ = 0;

  // Rows a[i * lda + k], k < kc, read in place (a word at any bfloat16 offset: unaligned loads).
  struct RowWords {
    const c10::BFloat16* a;
    int64_t lda, kc;
    uint32_t operator()(int i, int64_t kp) const { return word(a + i * lda + 2 * kp); }
    uint32_t last(int i) const { return low_word(a + i * lda + kc - 1); }
  };

  template <int MR>
  static void rows_tile(int64_t kc, const c10::BFloat16* a, int64_t lda, const uint32_t* b,
                        float* c, int64_t ldc, int64_t nc, bool accumulate) {
    __m512 acc[MR][2];
    tile<MR>(kc / 2, RowWords{a, lda, kc}, kc % 2 != 0, b, acc);
    const int64_t n0 = std::min<int64_t>(16, nc), n1 = nc - n0;
    const __mmask16 m0 = static_cast<__mmask16>((1u << n0) - 1);
    const __mmask16 m1 = static_cast<__mmask16>((1u << std::max<int64_t>(n1, 0)) - 1);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      float* ci = c + i * ldc;
      __m512 lo = acc[i][0], hi = acc[i][1];
      if (accumulate) {
        lo = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, ci), lo);
        hi = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, ci + 16), hi);
      }
      _mm512_mask_storeu_ps(ci, m0, lo);
      _mm512_mask_storeu_ps(ci + 16, m1, hi);
    }
  }
};

// The dot products of a few rows, C[m, c] = sum_k A[m * lda + k] * W[c * ldw + k] for m < M,
// c < Nc (Out: float, or bfloat16 rounded once from the float sum): both read in place, 32 k a
// vector, pairs summed by vdpbf16ps into 16 float lanes an output, a masked last vector, the
// lanes summed at the end (_mm512_reduce_add_ps); the same chain for every output whatever the
// tiling, so the bits are fixed by K. Tiles of RB rows of A x CB rows of W (the products of a
// step of a small batch: W's rows stream once per tile of rows of A).
template <int RB, int CB, typename Out>
__attribute__((noinline)) void dot_tile(int64_t K, const c10::BFloat16* a, int64_t lda,
                                        const c10::BFloat16* w, int64_t ldw, Out* c,
                                        int64_t ldc) {
  __m512 acc[RB][CB];
#pragma GCC unroll 8
  for (int i = 0; i < RB; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < CB; ++j) acc[i][j] = _mm512_setzero_ps();
  }
  // One loop, the last vector masked (a lambda called for the whole vectors and again for the
  // tail, capturing acc, kept the sums in memory: a load and a store around each product).
  const __mmask32 tail = K % 32 == 0 ? ~__mmask32(0)
                                     : static_cast<__mmask32>((uint64_t(1) << (K % 32)) - 1);
  for (int64_t k = 0; k < K; k += 32) {
    const __mmask32 mask = k + 32 <= K ? ~__mmask32(0) : tail;
    __m512i av[RB];
#pragma GCC unroll 8
    for (int i = 0; i < RB; ++i) av[i] = _mm512_maskz_loadu_epi16(mask, a + i * lda + k);
#pragma GCC unroll 8
    for (int j = 0; j < CB; ++j) {
      const __m512i wv = _mm512_maskz_loadu_epi16(mask, w + j * ldw + k);
#pragma GCC unroll 8
      for (int i = 0; i < RB; ++i) {
        acc[i][j] = dot_pairs(acc[i][j], av[i], wv);
        __asm__("" : "+v"(acc[i][j]));  // each sum in its register (no rotation, no spill)
      }
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < RB; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < CB; ++j) c[i * ldc + j] = static_cast<Out>(_mm512_reduce_add_ps(acc[i][j]));
  }
}

template <int RB, int CB, typename Out>
void dot_rows_tiled(int64_t M, const c10::BFloat16* a, int64_t lda, int64_t Nc, int64_t K,
                    const c10::BFloat16* w, int64_t ldw, Out* C, int64_t ldc) {
  int64_t c0 = 0;
  for (; c0 + CB <= Nc; c0 += CB) {
    int64_t m = 0;
    for (; m + RB <= M; m += RB) {
      dot_tile<RB, CB>(K, a + m * lda, lda, w + c0 * ldw, ldw, C + m * ldc + c0, ldc);
    }
    for (; m < M; ++m) dot_tile<1, CB>(K, a + m * lda, lda, w + c0 * ldw, ldw, C + m * ldc + c0, ldc);
  }
  for (; c0 < Nc; ++c0) {
    int64_t m = 0;
    for (; m + RB <= M; m += RB) {
      dot_tile<RB, 1>(K, a + m * lda, lda, w + c0 * ldw, ldw, C + m * ldc + c0, ldc);
    }
    for (; m < M; ++m) dot_tile<1, 1>(K, a + m * lda, lda, w + c0 * ldw, ldw, C + m * ldc + c0, ldc);
  }
}

template <typename Out>
void dot_rows(int64_t M, const c10::BFloat16* a, int64_t lda, int64_t Nc, int64_t K,
              const c10::BFloat16* w, int64_t ldw, Out* C, int64_t ldc) {
  if (M <= 0 || Nc <= 0) return;
  if (M == 1) return dot_rows_tiled<1, 8>(M, a, lda, Nc, K, w, ldw, C, ldc);
  if (M == 2) return dot_rows_tiled<2, 6>(M, a, lda, Nc, K, w, ldw, C, ldc);
  if (M == 3) return dot_rows_tiled<3, 4>(M, a, lda, Nc, K, w, ldw, C, ldc);
  dot_rows_tiled<4, 4>(M, a, lda, Nc, K, w, ldw, C, ldc);
}

}  // namespace pairs
}  // namespace gru_native::cpu

#endif  // __AVX512BF16__
