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
  static constexpr int64_t kKC = 512;        // the K block of gemm.cpp and packed_gemm.h

  // A's M rows in panels of kLanes, the last one of kV rows where at most kV remain (a narrow
  // panel, one vector: 16 rows on AVX-512 would fill half of a 32-row tile with zeros).
  static int64_t panels(int64_t M) { return (M + kLanes - 1) / kLanes; }
  static int64_t width(int64_t M, int64_t q) {
    const int64_t rest = M - q * kLanes;
    return rest >= kLanes ? kLanes : (rest <= kV ? kV : kLanes);
  }
  // The padded rows of all panels (the stride of a K block in the packed buffer).
  static int64_t padded(int64_t M) {
    return M <= 0 ? 0 : (panels(M) - 1) * kLanes + width(M, panels(M) - 1);
  }
};

// Elements of the buffer wrows_pack_a fills for M rows of K.
template <typename T>
int64_t wrows_panels_size(int64_t M, int64_t K) {
  return WRowsTiling<T>::padded(M) * K;
}

// A's rows [0, M) (row m at a + m * lda) into panels (WRowsTiling::width rows), per K block: block
// [k0, k0 + kc) at dst + k0 * Mp (Mp: WRowsTiling::padded), its panel q at + q * kc * kLanes,
// element (k, r) at + (k - k0) * width + r; zero past M.
template <typename T>
void wrows_pack_a(int64_t M, int64_t K, const T* a, int64_t lda, T* dst) {
  using Tl = WRowsTiling<T>;
  constexpr int64_t L = Tl::kLanes;
  const int64_t panels = Tl::panels(M), Mp = Tl::padded(M);
  for (int64_t k0 = 0; k0 < K; k0 += Tl::kKC) {
    const int64_t kc = std::min(Tl::kKC, K - k0);
    for (int64_t q = 0; q < panels; ++q) {
      T* panel = dst + k0 * Mp + q * kc * L;
      const int64_t width = Tl::width(M, q);
      for (int64_t r = 0; r < width; ++r) {
        const int64_t m = q * L + r;
        if (m < M) {
          const T* row = a + m * lda + k0;
          for (int64_t k = 0; k < kc; ++k) panel[k * width + r] = row[k];
        } else {
          for (int64_t k = 0; k < kc; ++k) panel[k * width + r] = T(0);
        }
      }
    }
  }
}

// Rows [0, R) of W (row i at w + i * ldw) by panel q of the packed A, NV vectors wide (rows q *
// kLanes + r, r < mr written): C[r * ldc + i] for i < R, r < mr, over all K.
template <typename T, int R, int NV>
void wrows_tile(int64_t K, const T* w, int64_t ldw, const T* ap, int64_t Mp, int64_t q, T* c,
                int64_t ldc, int64_t mr, bool add_c, const T* bias) {
  using Tl = WRowsTiling<T>;
  using V = typename Tl::V;
  constexpr int64_t kV = Tl::kV, L = Tl::kLanes, Wd = NV * kV;
  alignas(64) T total[R][Wd];
  const T* wp[R];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) wp[i] = w + i * ldw;
  for (int64_t k0 = 0; k0 < K; k0 += Tl::kKC) {
    const int64_t kc = std::min(Tl::kKC, K - k0);
    const T* b = ap + k0 * Mp + q * kc * L;
    Raw<T> acc[R][NV];  // (the register type: see Raw)
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[i][v] = V(T(0));
    }
#pragma GCC unroll 4
    for (int64_t k = 0; k < kc; ++k) {
      V bv[NV];
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) bv[v] = V::loadu(b + k * Wd + v * kV);
#pragma GCC unroll 8
      for (int i = 0; i < R; ++i) {
        const V x(wp[i][k0 + k]);
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) acc[i][v] = at::vec::fmadd(x, bv[v], V(acc[i][v]));
      }
    }
    if (k0 == 0) {
      // The start, in gemm.cpp's order: (C, then + bias) + the first block; the block alone when
      // there is neither.
      if (!add_c && bias == nullptr) {
#pragma GCC unroll 8
        for (int i = 0; i < R; ++i) {
#pragma GCC unroll 2
          for (int v = 0; v < NV; ++v) V(acc[i][v]).store(total[i] + v * kV);
        }
        continue;
      }
      for (int i = 0; i < R; ++i) {
        for (int64_t r = 0; r < Wd; ++r) {
          if (add_c) {
            total[i][r] = r < mr ? c[r * ldc + i] : T(0);
            if (bias != nullptr) total[i][r] = total[i][r] + bias[i];
          } else {
            total[i][r] = bias[i];
          }
        }
      }
    }
    // (Every loop over acc is unrolled: indexed by a rolled loop, GCC keeps it in memory.)
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) {
        (V::loadu(total[i] + v * kV) + V(acc[i][v])).store(total[i] + v * kV);
      }
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
  const int64_t panels = Tl::panels(M), Mp = Tl::padded(M);
  for (int64_t n0 = 0; n0 < Nc; n0 += R) {
    const int64_t nr = std::min<int64_t>(R, Nc - n0);
    const T* wn = w + n0 * ldw;
    const T* bn = bias != nullptr ? bias + n0 : nullptr;
    for (int64_t q = 0; q < panels; ++q) {
      T* cq = c + q * L * ldc + n0;
      const int64_t mr = std::min(L, M - q * L);
      const auto tile = [&]<int NV>() {
        switch (nr) {
          case 6: return wrows_tile<T, 6, NV>(K, wn, ldw, ap, Mp, q, cq, ldc, mr, add_c, bn);
          case 5: return wrows_tile<T, 5, NV>(K, wn, ldw, ap, Mp, q, cq, ldc, mr, add_c, bn);
          case 4: return wrows_tile<T, 4, NV>(K, wn, ldw, ap, Mp, q, cq, ldc, mr, add_c, bn);
          case 3: return wrows_tile<T, 3, NV>(K, wn, ldw, ap, Mp, q, cq, ldc, mr, add_c, bn);
          case 2: return wrows_tile<T, 2, NV>(K, wn, ldw, ap, Mp, q, cq, ldc, mr, add_c, bn);
          default: return wrows_tile<T, 1, NV>(K, wn, ldw, ap, Mp, q, cq, ldc, mr, add_c, bn);
        }
      };
      if (Tl::width(M, q) == L) {
        tile.template operator()<2>();
      } else {
        tile.template operator()<1>();
      }
    }
  }
}

}  // namespace
}  // namespace gru_native::cpu
