// wrows_gemm.h: C[M, Nc] (+)= A[M, K] W[Nc, K]^T for a few dozen rows of A, with W's rows read in
// place (nn.GRU keeps W_ih and W_hh row-major, so the input projection x W_ih^T and the recurrent
// product h W_hh^T are of this form).
//
// The packed GEMMs (gemm.cpp, packed_gemm.h) copy W^T into panels first: a pass over the weights
// per call, which a few dozen rows of A do not earn back (a [64 x 1024] x [1024 x 3072] product
// spends about a fifth of its time packing). Here the roles are swapped: the microkernel computes
// a tile of C^T, kWRows rows of W (each element broadcast from its row, kWRows streams along k) by
// kLanes rows of A (two vectors, from A packed into panels: small, M x K), and the tile is stored
// back transposed. Nothing the size of W is copied.
//
// Each element of C is summed as gemm.cpp and packed_gemm.h sum it: per block of kKC k's, a chain
// of fused multiply-adds in k order from zero; the first block's chain added to the start (C
// when accumulating, then the bias; nothing when neither), each later one to the running total.
// So the bits are those of the packed products, whichever form runs. Header-only, internal to
// the CPU kernels' files (an unnamed namespace; include after vec.h).
#pragma once

#include <algorithm>
#include <cstdint>

namespace gru_native::cpu {
namespace {

template <typename T>
struct WRowsTiling {
  using V = Vec<T>;
  static constexpr int64_t kV = V::size();
  static constexpr int64_t kLanes = 2 * kV;  // rows of A in a panel (a tile's columns of C^T)
  static constexpr int kWRows = 6;           // rows of W in a tile: 12 accumulators
  static constexpr int64_t kKC = 256;        // the K block of gemm.cpp and packed_gemm.h
};

// Elements of the buffer wrows_pack_a fills for M rows of K.
template <typename T>
int64_t wrows_panels_size(int64_t M, int64_t K) {
  using Tl = WRowsTiling<T>;
  return (M + Tl::kLanes - 1) / Tl::kLanes * Tl::kLanes * K;
}

// A's rows [0, M) (row m at a + m * lda) into panels of kLanes rows, per K block: block [k0, k0 +
// kc) at dst + k0 * Mp (Mp: M rounded up to whole panels), its panel q at + q * kc * kLanes,
// element (k, r) at + (k - k0) * kLanes + r; zero past M.
template <typename T>
void wrows_pack_a(int64_t M, int64_t K, const T* a, int64_t lda, T* dst) {
  using Tl = WRowsTiling<T>;
  constexpr int64_t L = Tl::kLanes;
  const int64_t panels = (M + L - 1) / L, Mp = panels * L;
  for (int64_t k0 = 0; k0 < K; k0 += Tl::kKC) {
    const int64_t kc = std::min(Tl::kKC, K - k0);
    for (int64_t q = 0; q < panels; ++q) {
      T* panel = dst + k0 * Mp + q * kc * L;
      for (int64_t r = 0; r < L; ++r) {
        const int64_t m = q * L + r;
        if (m < M) {
          const T* row = a + m * lda + k0;
          for (int64_t k = 0; k < kc; ++k) panel[k * L + r] = row[k];
        } else {
          for (int64_t k = 0; k < kc; ++k) panel[k * L + r] = T(0);
        }
      }
    }
  }
}

// Rows [0, R) of W (row i at w + i * ldw) by panel q of the packed A (rows q * kLanes + r, r < mr
// written): C[r * ldc + i] for i < R, r < mr, over all K.
template <typename T, int R>
void wrows_tile(int64_t K, const T* w, int64_t ldw, const T* ap, int64_t Mp, int64_t q, T* c,
                int64_t ldc, int64_t mr, bool add_c, const T* bias) {
  using Tl = WRowsTiling<T>;
  using V = typename Tl::V;
  constexpr int64_t kV = Tl::kV, L = Tl::kLanes;
  alignas(64) T total[R][L];
  const T* wp[R];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) wp[i] = w + i * ldw;
  for (int64_t k0 = 0; k0 < K; k0 += Tl::kKC) {
    const int64_t kc = std::min(Tl::kKC, K - k0);
    const T* b = ap + k0 * Mp + q * kc * L;
    V acc[R][2];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) acc[i][0] = acc[i][1] = V(T(0));
#pragma GCC unroll 4
    for (int64_t k = 0; k < kc; ++k) {
      const V b0 = V::loadu(b + k * L), b1 = V::loadu(b + k * L + kV);
#pragma GCC unroll 8
      for (int i = 0; i < R; ++i) {
        const V x(wp[i][k0 + k]);
        acc[i][0] = at::vec::fmadd(x, b0, acc[i][0]);
        acc[i][1] = at::vec::fmadd(x, b1, acc[i][1]);
      }
    }
    if (k0 > 0) {
#pragma GCC unroll 8
      for (int i = 0; i < R; ++i) {
        (V::loadu(total[i]) + acc[i][0]).store(total[i]);
        (V::loadu(total[i] + kV) + acc[i][1]).store(total[i] + kV);
      }
      continue;
    }
    // The start, in gemm.cpp's order: (C, then + bias) + the first block; the block alone when
    // there is neither.
    if (!add_c && bias == nullptr) {
#pragma GCC unroll 8
      for (int i = 0; i < R; ++i) {
        acc[i][0].store(total[i]);
        acc[i][1].store(total[i] + kV);
      }
      continue;
    }
    for (int i = 0; i < R; ++i) {
      for (int64_t r = 0; r < L; ++r) {
        if (add_c) {
          total[i][r] = r < mr ? c[r * ldc + i] : T(0);
          if (bias != nullptr) total[i][r] = total[i][r] + bias[i];
        } else {
          total[i][r] = bias[i];
        }
      }
    }
    // (Every loop over acc is unrolled: indexed by a rolled loop, GCC keeps it in memory.)
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      (V::loadu(total[i]) + acc[i][0]).store(total[i]);
      (V::loadu(total[i] + kV) + acc[i][1]).store(total[i] + kV);
    }
  }
  for (int64_t r = 0; r < mr; ++r) {
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) c[r * ldc + i] = total[i][r];
  }
}

// C[m * ldc + n] (+)= sum_k A(m, k) W(n, k) (+ bias[n]) for m < M, n < Nc: A packed by
// wrows_pack_a (ap), W's row n at w + n * ldw, K > 0. add_c: C is added to (else overwritten).
template <typename T>
void wrows_run(int64_t M, int64_t Nc, int64_t K, const T* ap, const T* w, int64_t ldw, T* c,
               int64_t ldc, bool add_c, const T* bias) {
  using Tl = WRowsTiling<T>;
  constexpr int64_t L = Tl::kLanes;
  constexpr int R = Tl::kWRows;
  const int64_t panels = (M + L - 1) / L, Mp = panels * L;
  for (int64_t n0 = 0; n0 < Nc; n0 += R) {
    const int64_t nr = std::min<int64_t>(R, Nc - n0);
    const T* wn = w + n0 * ldw;
    const T* bn = bias != nullptr ? bias + n0 : nullptr;
    for (int64_t q = 0; q < panels; ++q) {
      T* cq = c + q * L * ldc + n0;
      const int64_t mr = std::min(L, M - q * L);
      switch (nr) {
        case 6: wrows_tile<T, 6>(K, wn, ldw, ap, Mp, q, cq, ldc, mr, add_c, bn); break;
        case 5: wrows_tile<T, 5>(K, wn, ldw, ap, Mp, q, cq, ldc, mr, add_c, bn); break;
        case 4: wrows_tile<T, 4>(K, wn, ldw, ap, Mp, q, cq, ldc, mr, add_c, bn); break;
        case 3: wrows_tile<T, 3>(K, wn, ldw, ap, Mp, q, cq, ldc, mr, add_c, bn); break;
        case 2: wrows_tile<T, 2>(K, wn, ldw, ap, Mp, q, cq, ldc, mr, add_c, bn); break;
        default: wrows_tile<T, 1>(K, wn, ldw, ap, Mp, q, cq, ldc, mr, add_c, bn); break;
      }
    }
  }
}

}  // namespace
}  // namespace gru_native::cpu
