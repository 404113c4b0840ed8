// dot_gemm.h: products C = A B^T read straight from the rows of B (B row-major, as nn.GRU keeps
// W_hh and W_ih), one dot product per element of C, nothing packed: for the forward's recurrent
// product over a few steps or a small batch, and for small_gemm's transposed operand. Each dot
// runs on one vector accumulator over k in order (the last partial vector masked), then a
// horizontal sum: its bits do not depend on the tile it runs in, on the thread or on the other
// rows. Header-only, internal to kernels.cpp (an unnamed namespace: include it from that file
// only).
#pragma once

#include "cpu/vec.h"

#include <ATen/cpu/vec/functional.h>

#include <cstdint>
#include <type_traits>

#include "gru_cell.h"

namespace gru_native::cpu {
namespace {

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

// The forward's recurrent product for a slice of width units: C[m, g * width + jj] = dot(A row
// m, row g * H + jj of w), w = W_hh's first row of the slice (the rows of gate g start H rows on).
template <typename T>
void direct_product(int64_t M, const T* A, int64_t lda, const T* w, int64_t H, int64_t width,
                    T* C, int64_t ldc) {
  for (int g = 0; g < kGates; ++g) {
    const T* wg = w + g * H * H;
    dot_rows(M, A, lda, width, H, [&](int64_t c) { return wg + c * H; }, C + g * width, ldc);
  }
}

}  // namespace
}  // namespace gru_native::cpu
