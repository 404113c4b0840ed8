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

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace gru_native::cpu {
namespace {

// How dot_rows tiles a product: RB rows of A by CB rows of W, RB x CB vector accumulators plus
// RB vectors of A and one of W in the registers (16 with AVX2: 2 x 6, 12 + 2 + 1; 32 with
// AVX-512: 4 x 6). A block of K (kKC) of the tile's rows of W stays in L1 while every row of A
// runs past it; the accumulators of a block not the last wait in memory (`part`).
template <typename T>
struct DotTiling {
#if defined(CPU_CAPABILITY_AVX512)
  static constexpr int kRB = 4;
#else
  static constexpr int kRB = 2;
#endif
  static constexpr int kCB = 6;
  static constexpr int kCBOneRow = 8;  // the tile width when A has one row
  static constexpr int64_t kKC = 1024;  // a multiple of every vector width
  static constexpr int64_t kMChunk = 64;  // rows of A whose accumulators `part` holds
};

// Over k in [k0, k1) (k0 a multiple of the vector width), for i < RB, j < CB: the accumulator
// of dot(a + i * lda, w + j * ldw) continues from part[i * ldp + j] (from zero at k0 == 0);
// at k1 == K it is summed horizontally into out[i * ldo + j], else saved back to part.
template <int RB, int CB, typename A, typename W, typename Out>
inline void dot_tile(int64_t k0, int64_t k1, int64_t K, const A* a, int64_t lda, const W* w,
                     int64_t ldw, Vec<Math<A>>* part, int64_t ldp, Out* out, int64_t ldo) {
  using T = Math<A>;
  static_assert(std::is_same_v<T, Math<W>>, "one math type");
  using V = Vec<T>;
  constexpr int64_t kV = V::size();
  Raw<T> acc[RB][CB];  // (the register type: see Raw)
#pragma GCC unroll 8
  for (int i = 0; i < RB; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < CB; ++j) acc[i][j] = k0 == 0 ? V(T(0)) : part[i * ldp + j];
  }
  // The rows' pointers, set once: in the loop each load is one register plus k.
  const A* ap[RB];
  const W* wp[CB];
#pragma GCC unroll 8
  for (int i = 0; i < RB; ++i) ap[i] = a + i * lda;
#pragma GCC unroll 8
  for (int j = 0; j < CB; ++j) wp[j] = w + j * ldw;
  auto step = [&](const auto& load) {
    V av[RB];
#pragma GCC unroll 8
    for (int i = 0; i < RB; ++i) av[i] = load(ap[i]);
#pragma GCC unroll 8
    for (int j = 0; j < CB; ++j) {
      // One row of A (RB 1): the load stays in the FMA (in a register it ran 5-15% slower).
      V wv = load(wp[j]);
      if constexpr (RB > 1) wv = in_register(wv);
#pragma GCC unroll 8
      for (int i = 0; i < RB; ++i) acc[i][j] = at::vec::fmadd(av[i], wv, V(acc[i][j]));
    }
  };
  int64_t k = k0;
  for (; k + kV <= k1; k += kV) step([k](const auto* p) { return load_math(p + k); });
  if (k < k1) step([k, n = k1 - k](const auto* p) { return load_first(p + k, n); });
  if (k1 < K) {
#pragma GCC unroll 8
    for (int i = 0; i < RB; ++i) {
#pragma GCC unroll 8
      for (int j = 0; j < CB; ++j) part[i * ldp + j] = V(acc[i][j]);
    }
    return;
  }
#pragma GCC unroll 8
  for (int i = 0; i < RB; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < CB; ++j) {
      out[i * ldo + j] = static_cast<Out>(
          at::vec::vec_reduce_all<T>([](V& x, V& y) { return x + y; }, V(acc[i][j])));
    }
  }
}

// dot_tile out of line: on its own, the loop keeps its row pointers and accumulators in
// registers (inlined into dot_rows, GCC spilled the pointers: 10% slower at one row of A); the
// call costs more than that below kOutOfLineK.
constexpr int64_t kOutOfLineK = 128;
template <int RB, int CB, typename A, typename W, typename Out>
__attribute__((noinline)) void dot_tile_call(int64_t k0, int64_t k1, int64_t K, const A* a,
                                             int64_t lda, const W* w, int64_t ldw,
                                             Vec<Math<A>>* part, int64_t ldp, Out* out,
                                             int64_t ldo) {
  dot_tile<RB, CB>(k0, k1, K, a, lda, w, ldw, part, ldp, out, ldo);
}

// C[m, c] = dot(A[m * lda, +K), W[c * ldw, +K)) for m < M, c < Nc. Each dot is one vector
// accumulator over k in order (the last partial vector masked), then a horizontal sum, however
// the product is tiled and blocked: its bits do not depend on the tile, the thread or the other
// rows. Blocks: kCB rows of W by kKC of K, every row of A past each (so W is read from memory
// once, A from L2 once per block).
template <typename A, typename W, typename Out>
void dot_rows(int64_t M, const A* Ap, int64_t lda, int64_t Nc, int64_t K, const W* Wp,
              int64_t ldw, Out* C, int64_t ldc) {
  using V = Vec<Math<A>>;
  using Tiling = DotTiling<Math<A>>;
  auto tile = [&](auto rb_tag, auto cb_tag, int64_t k0, int64_t k1, const A* a, const W* w,
                  V* part, int64_t ldp, Out* out) {
    constexpr int RB = decltype(rb_tag)::value, CB = decltype(cb_tag)::value;
    if (K >= kOutOfLineK && CB > 1) {
      dot_tile_call<RB, CB>(k0, k1, K, a, lda, w, ldw, part, ldp, out, ldc);
    } else {
      dot_tile<RB, CB>(k0, k1, K, a, lda, w, ldw, part, ldp, out, ldc);
    }
  };
  using One = std::integral_constant<int, 1>;
  if (M == 1) {
    // One row of A: nothing to keep in L1 between rows, no blocks of K; wider tiles.
    // (`unused`: a tile over all of K keeps no accumulators.)
    using CB = std::integral_constant<int, Tiling::kCBOneRow>;
    V unused[CB::value];
    int64_t c = 0;
    for (; c + CB::value <= Nc; c += CB::value) {
      tile(One(), CB(), 0, K, Ap, Wp + c * ldw, unused, 0, C + c);
    }
    for (; c < Nc; ++c) tile(One(), One(), 0, K, Ap, Wp + c * ldw, unused, 0, C + c);
    return;
  }
  using RB = std::integral_constant<int, Tiling::kRB>;
  using CB = std::integral_constant<int, Tiling::kCB>;
  constexpr int64_t kMChunk = Tiling::kMChunk;
  V part[kMChunk * CB::value];
  for (int64_t m0 = 0; m0 < M; m0 += kMChunk) {
    const int64_t mc = std::min(kMChunk, M - m0);
    for (int64_t c0 = 0; c0 < Nc; c0 += CB::value) {
      const int64_t cb = std::min<int64_t>(CB::value, Nc - c0);
      const W* w = Wp + c0 * ldw;
      for (int64_t k0 = 0; k0 < K || k0 == 0; k0 += Tiling::kKC) {
        const int64_t k1 = std::min(K, k0 + Tiling::kKC);
        auto rows = [&](auto rb_tag, int64_t m) {
          const A* a = Ap + (m0 + m) * lda;
          V* p = part + m * CB::value;
          Out* out = C + (m0 + m) * ldc + c0;
          if (cb == CB::value) return tile(rb_tag, CB(), k0, k1, a, w, p, CB::value, out);
          for (int64_t j = 0; j < cb; ++j) {
            tile(rb_tag, One(), k0, k1, a, w + j * ldw, p + j, CB::value, out + j);
          }
        };
        int64_t m = 0;
        for (; m + RB::value <= mc; m += RB::value) rows(RB(), m);
        for (; m < mc; ++m) rows(One(), m);
        if (K == 0) break;
      }
    }
  }
}

}  // namespace
}  // namespace gru_native::cpu
