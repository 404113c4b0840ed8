// dot_gemm.h: products C = A B^T read straight from the rows of B (B row-major, as nn.GRU keeps
// W_hh and W_ih), one dot product per element of C, nothing packed: for the forward's recurrent
// product over a few steps or a small batch, and for small_gemm's transposed operand. Each dot
// runs on one vector accumulator over k in order (the last partial vector masked), then a
// horizontal sum: its bits do not depend on the tile it runs in, on the thread or on the other
// rows. A and B may be of different element types with one math type (float activations and
// bfloat16 weights): each vector is converted as it is loaded, so B is read at its own width.
// Header-only, internal to kernels.cpp (an unnamed namespace: include it from that file only).
#pragma once

#include "cpu/vec.h"

#include <ATen/cpu/vec/functional.h>

#include <cstdint>
#include <type_traits>

#include "gru_cell.h"

namespace gru_native::cpu {
namespace {

// out[i * ldo + j] = dot(a[i][0, K), w[j][0, K)) for i < RB, j < CB, in Math<A>.
template <int RB, int CB, typename A, typename W, typename Out>
inline void dot_tile(int64_t K, const A* const* a, const W* const* w, Out* out, int64_t ldo) {
  using T = Math<A>;
  static_assert(std::is_same_v<T, Math<W>>, "one math type");
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
  for (; k + kV <= K; k += kV) step([k](const auto* p) { return load_math(p + k); });
  if (k < K) step([k, n = K - k](const auto* p) { return load_first(p + k, n); });
#pragma GCC unroll 8
  for (int i = 0; i < RB; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < CB; ++j) {
      out[i * ldo + j] = static_cast<Out>(
          at::vec::vec_reduce_all<T>([](V& x, V& y) { return x + y; }, acc[i][j]));
    }
  }
}

// C[m, c] = dot(A[m * lda, +K), row(c)) for m < M, c < Nc; row(c) points at a row of B.
template <typename A, typename Row, typename Out>
void dot_rows(int64_t M, const A* Ap, int64_t lda, int64_t Nc, int64_t K, const Row& row, Out* C,
              int64_t ldc) {
  using W = std::remove_cv_t<std::remove_pointer_t<decltype(row(int64_t(0)))>>;
  constexpr int kCB = 4;
  const A* a[8];
  const W* rows[8];
  auto run_rows = [&](auto rb_tag, int64_t m0) {
    constexpr int RB = decltype(rb_tag)::value;
    // With one row of A, twice the rows of W, with eight half: enough independent accumulators
    // either way, within the registers.
    constexpr int CB = RB == 1 ? 2 * kCB : (RB == 8 ? kCB / 2 : kCB);
    for (int i = 0; i < RB; ++i) a[i] = Ap + (m0 + i) * lda;
    Out* cm = C + m0 * ldc;
    int64_t c = 0;
    for (; c + CB <= Nc; c += CB) {
      for (int j = 0; j < CB; ++j) rows[j] = row(c + j);
      dot_tile<RB, CB>(K, a, rows, cm + c, ldc);
    }
    for (; c < Nc; ++c) {
      rows[0] = row(c);
      dot_tile<RB, 1>(K, a, rows, cm + c, ldc);
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
template <typename A, typename W>
void direct_product(int64_t M, const A* Ap, int64_t lda, const W* w, int64_t H, int64_t width,
                    Math<A>* C, int64_t ldc) {
  for (int g = 0; g < kGates; ++g) {
    const W* wg = w + g * H * H;
    dot_rows(M, Ap, lda, width, H, [&](int64_t c) { return wg + c * H; }, C + g * width, ldc);
  }
}

}  // namespace
}  // namespace gru_native::cpu
