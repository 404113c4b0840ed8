// packed_gemm.h: the recurrent GEMM of the CPU kernels, C[M, Nc] (+)= A[M, K] B[K, Nc], where B
// (a slice of W_hh, the same at every step) is read as panels of kNR columns, and a
// register-blocked microkernel computes kMR x kNR tiles of C with at::vec FMAs.
//
// B comes in one of two forms, with the same arithmetic (every element of C sums its products in
// the same order, so both give the same bits):
//   packed: copied once per call into contiguous [K, kNR] panels (pack, pack_rows): what a BLAS
//           call would redo at every step, worth it over many steps;
//   view:   read in place from a row-major matrix (view), only the last partial panel copied:
//           no per-call work that grows with the weights, for a few steps.
// M (the batch at one step) is small, so the microkernel runs on up to kMR rows at a time with
// every shorter tail specialised. Included by kernels.cpp only, after cpu/vec.h has chosen
// at::vec's instruction set.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include "cpu/host_cache.h"

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace gru_native::cpu {

template <typename T>
struct PackedGemm {
  using V = at::vec::Vectorized<T>;
  static constexpr int64_t kV = V::size();
  static constexpr int64_t kNR = 2 * kV;  // panel width: two vectors
  static constexpr int kMR = 6;           // rows per microkernel tile
  static constexpr int64_t kKC = 512;     // K block, gemm.cpp's (the same sums)

  // Packed B: ceil(Nc / kNR) panels, each [K, kNR] row-major, zero-padded past Nc, in data_. In
  // view form, data_ holds only the last partial panel (if any).
  int64_t K = 0, Nc = 0;
  const T* view_ = nullptr;  // view form: B[k, c] = view_[k * view_ld_ + c], c < full panels
  int64_t view_ld_ = 0;

  int64_t panels() const { return (Nc + kNR - 1) / kNR; }

  // Room for n elements of panels, kept for the next pack of this object. The block comes from
  // the host cache (host_cache.h), so that a large copy of W_hh is not faulted in afresh at every
  // call. kernels.cpp reserves before its threads start, so that the packs inside them allocate
  // nothing.
  void reserve(int64_t n) {
    if (n > capacity_) {
      storage_ = cached_empty({n}, c10::CppTypeToScalarType<T>::value);
      data_ = storage_.template data_ptr<T>();
      capacity_ = n;
    }
  }

  // B[k, c] = get(k, c) for k < K, c < Nc (converted to T: a half type's weights are packed
  // into float panels).
  template <typename Get>
  void pack(int64_t K_, int64_t Nc_, const Get& get) {
    K = K_;
    Nc = Nc_;
    view_ = nullptr;
    start_panels();
    for (int64_t p = 0; p < panels(); ++p) {
      T* panel = data_ + p * K * kNR;
      const int64_t c0 = p * kNR, nc = std::min(kNR, Nc - c0);
      for (int64_t k = 0; k < K; ++k) {
        for (int64_t c = 0; c < nc; ++c) panel[k * kNR + c] = static_cast<T>(get(k, c0 + c));
      }
    }
  }

  // B[k, c] = row(c)[k] for k < K, c < Nc: column c of B is a contiguous row of K elements
  // (B = rows^T, e.g. a slice of W_hh^T), of T or of a type converted to T. The panel's rows are
  // read as kNR parallel streams, a cache line of each at a time.
  template <typename Row>
  void pack_rows(int64_t K_, int64_t Nc_, const Row& row) {
    using S = std::remove_cv_t<std::remove_pointer_t<decltype(row(int64_t(0)))>>;
    K = K_;
    Nc = Nc_;
    view_ = nullptr;
    start_panels();
    constexpr int64_t kLine = 64 / static_cast<int64_t>(sizeof(S));
    const S* rows[kNR];
    for (int64_t p = 0; p < panels(); ++p) {
      T* panel = data_ + p * K * kNR;
      const int64_t c0 = p * kNR, nc = std::min(kNR, Nc - c0);
      for (int64_t c = 0; c < nc; ++c) rows[c] = row(c0 + c);
      for (int64_t k0 = 0; k0 < K; k0 += kLine) {
        const int64_t k1 = std::min(K, k0 + kLine);
        for (int64_t c = 0; c < nc; ++c) {
          const S* src = rows[c];
          for (int64_t k = k0; k < k1; ++k) panel[k * kNR + c] = static_cast<T>(src[k]);
        }
      }
    }
  }

  // B[k, c] = b[k * ld + c] for k < K, c < Nc, read in place (b must outlive the runs). Only
  // the last partial panel, which a full-width vector load would read past, is copied.
  void view(int64_t K_, int64_t Nc_, const T* b, int64_t ld) {
    K = K_;
    Nc = Nc_;
    view_ = b;
    view_ld_ = ld;
    const int64_t full = Nc / kNR, nc = Nc - full * kNR;
    if (nc == 0) return;
    reserve(K * kNR);
    std::fill(data_, data_ + K * kNR, T(0));
    for (int64_t k = 0; k < K; ++k) {
      std::copy(b + k * ld + full * kNR, b + k * ld + Nc, data_ + k * kNR);
    }
  }

  // C[m, c] = (accumulate ? C[m, c] : 0) + sum_k A[m * lda + k] * B[k, c]; m < M, c < Nc.
  void run(int64_t M, const T* A, int64_t lda, T* C, int64_t ldc, bool accumulate) const {
    if (M <= 0 || Nc <= 0) return;
    if (K == 0) {
      if (!accumulate) {
        for (int64_t m = 0; m < M; ++m) std::fill(C + m * ldc, C + m * ldc + Nc, T(0));
      }
      return;
    }
    // The panels: all of them packed, or the view's full panels and the copied partial one.
    Panels sets[2];
    int n_sets = 0;
    if (view_ == nullptr) {
      sets[n_sets++] = {data_, kNR, K * kNR, Nc, 0};
    } else {
      const int64_t full = (Nc / kNR) * kNR;
      if (full > 0) sets[n_sets++] = {view_, view_ld_, kNR, full, 0};
      if (full < Nc) sets[n_sets++] = {data_, kNR, K * kNR, Nc - full, full};
    }
    if (M <= kMC && K > kKC && M * K * static_cast<int64_t>(sizeof(T)) <= kResidentA) {
      // All of A stays in L2: each group of panels runs over all K blocks in turn, so that its
      // columns of C stay in L1 between blocks instead of going out to L3 and back once per
      // block (C = M x Nc can be far larger than L2). The same sums in the same order as below.
      for (int i = 0; i < n_sets; ++i) {
        const Panels& P = sets[i];
        for (int64_t p0 = 0; p0 < P.count(); p0 += kGroup) {
          const Panels group{P.b + p0 * P.stride, P.ld, P.stride,
                             std::min(kGroup * kNR, P.Nc - p0 * kNR), P.c0 + p0 * kNR};
          for (int64_t k0 = 0; k0 < K; k0 += kKC) {
            run_block(group, M, A + k0, lda, k0, std::min(kKC, K - k0), C + group.c0, ldc,
                      accumulate || k0 > 0);
          }
        }
      }
      return;
    }
    for (int64_t k0 = 0; k0 < K; k0 += kKC) {
      const int64_t kc = std::min(kKC, K - k0);
      // Blocks of kMC rows: the rows' K block stays in L2 while the panels stream past.
      for (int64_t m0 = 0; m0 < M; m0 += kMC) {
        for (int i = 0; i < n_sets; ++i) {
          run_block(sets[i], std::min(kMC, M - m0), A + m0 * lda + k0, lda, k0, kc,
                    C + m0 * ldc + sets[i].c0, ldc, accumulate || k0 > 0);
        }
      }
    }
  }

 private:
  static constexpr int64_t kMC = 32 * kMR;  // rows per block
  // A of at most this many bytes is taken to stay in L2 over a whole product; panels in groups
  // of kGroup (the rows' tiles of a group of panels: at most kMC x 4 panels of C, in L1/L2).
  static constexpr int64_t kResidentA = 256 * 1024;
  static constexpr int64_t kGroup = 4;

  at::Tensor storage_;  // the panels' block
  T* data_ = nullptr;
  int64_t capacity_ = 0;

  // Room for every panel; only the last panel's padding past Nc is zeroed (the packs write the
  // rest).
  void start_panels() {
    reserve(panels() * K * kNR);
    const int64_t nc = Nc - (panels() - 1) * kNR;
    if (panels() > 0 && nc < kNR) {
      T* last = data_ + (panels() - 1) * K * kNR;
      std::fill(last, last + K * kNR, T(0));
    }
  }

  // Columns [c0, c0 + Nc) of B: panel p, row k, column c at b[p * stride + k * ld + c].
  struct Panels {
    const T* b;
    int64_t ld, stride, Nc, c0;
    int64_t count() const { return (Nc + kNR - 1) / kNR; }
  };

  // Rows [0, M) of one K block [k0, k0 + kc) of one panel set; A points at the block's first
  // element, C at the set's first column.
  void run_block(const Panels& P, int64_t M, const T* A, int64_t lda, int64_t k0, int64_t kc,
                 T* C, int64_t ldc, bool acc) const {
    const int64_t stride = P.stride, ld = P.ld, Ncs = P.Nc;
    const T* B = P.b + k0 * ld;
    // Full-height tiles, one panel wide; a panel's K block stays in L1 across the rows.
    const int64_t full = M - M % kMR;
    for (int64_t p = 0; p < P.count(); ++p) {
      for (int64_t m0 = 0; m0 < full; m0 += kMR) {
        tile<kMR, 1>(kc, A + m0 * lda, lda, B + p * stride, stride, ld, C + m0 * ldc + p * kNR,
                     ldc, std::min(kNR, Ncs - p * kNR), acc);
      }
    }
    // The last rows (< kMR) take several panels at once, so that there are enough independent
    // accumulators to keep both FMA pipes busy.
    const int rest = static_cast<int>(M - full);
    if (rest == 0) return;
    const int np = rest == 1 ? 4 : (rest <= 3 ? 2 : 1);
    for (int64_t p = 0; p < P.count(); p += np) {
      const int64_t nc = std::min(np * kNR, Ncs - p * kNR);
      const T* a = A + full * lda;
      const T* b = B + p * stride;
      T* c = C + full * ldc + p * kNR;
      const int span = static_cast<int>((nc + kNR - 1) / kNR);  // panels left, <= np
      if (rest == 1 && span == 4) {
        tile<1, 4>(kc, a, lda, b, stride, ld, c, ldc, nc, acc);
      } else if (rest <= 3 && span == 2) {
        if (rest == 2) tile<2, 2>(kc, a, lda, b, stride, ld, c, ldc, nc, acc);
        else if (rest == 3) tile<3, 2>(kc, a, lda, b, stride, ld, c, ldc, nc, acc);
        else tile<1, 2>(kc, a, lda, b, stride, ld, c, ldc, nc, acc);
      } else {
        for (int q = 0; q < span; ++q) {
          const int64_t ncq = std::min(kNR, nc - q * kNR);
          const T* bq = b + q * stride;
          T* cq = c + q * kNR;
          switch (rest) {
            case 5: tile<5, 1>(kc, a, lda, bq, stride, ld, cq, ldc, ncq, acc); break;
            case 4: tile<4, 1>(kc, a, lda, bq, stride, ld, cq, ldc, ncq, acc); break;
            case 3: tile<3, 1>(kc, a, lda, bq, stride, ld, cq, ldc, ncq, acc); break;
            case 2: tile<2, 1>(kc, a, lda, bq, stride, ld, cq, ldc, ncq, acc); break;
            default: tile<1, 1>(kc, a, lda, bq, stride, ld, cq, ldc, ncq, acc); break;
          }
        }
      }
    }
  }

  // One MR x (NP * kNR) tile (NP panels side by side) over kc steps of K. Every loop over the
  // accumulators is fully unrolled and they are of the register type (Raw, vec.h), so they stay
  // in registers (GCC spills an array of Vectorized indexed by a rolled loop at every k, and an
  // array of Vectorized at all on AVX-512).
  template <int MR, int NP>
  static inline void tile(int64_t kc, const T* a, int64_t lda, const T* b, int64_t panel_stride,
                          int64_t ldb, T* c, int64_t ldc, int64_t nc, bool accumulate) {
    Raw<T> acc[MR][2 * NP];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 16
      for (int v = 0; v < 2 * NP; ++v) acc[i][v] = V(T(0));
    }
    auto step = [&](int64_t k) {
      V bv[2 * NP];
#pragma GCC unroll 16
      for (int p = 0; p < NP; ++p) {
        bv[2 * p] = V::loadu(b + p * panel_stride + k * ldb);
        bv[2 * p + 1] = V::loadu(b + p * panel_stride + k * ldb + kV);
      }
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const V x(a[i * lda + k]);
#pragma GCC unroll 16
        for (int v = 0; v < 2 * NP; ++v) acc[i][v] = at::vec::fmadd(x, bv[v], V(acc[i][v]));
      }
    };
    if constexpr (MR == kMR && NP == 1) {
      // The main tile only is unrolled by 4: faster for full tiles of rows, slower for one row.
#pragma GCC unroll 4
      for (int64_t k = 0; k < kc; ++k) step(k);
    } else {
      for (int64_t k = 0; k < kc; ++k) step(k);
    }
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 16
      for (int p = 0; p < NP; ++p) {
        const int64_t ncp = std::min(kNR, nc - p * kNR);
        if (ncp > 0) store_row(c + i * ldc + p * kNR, V(acc[i][2 * p]), V(acc[i][2 * p + 1]), ncp,
                               accumulate);
      }
    }
  }

  // c[0, nc) (+)= [lo | hi]
  static inline void store_row(T* c, V lo, V hi, int64_t nc, bool accumulate) {
    if (nc == kNR) {
      if (accumulate) {
        lo = lo + V::loadu(c);
        hi = hi + V::loadu(c + kV);
      }
      lo.store(c);
      hi.store(c + kV);
      return;
    }
    const int64_t n_lo = std::min(kV, nc), n_hi = nc - n_lo;
    if (accumulate) {
      lo = lo + V::loadu(c, n_lo);
      if (n_hi > 0) hi = hi + V::loadu(c + kV, n_hi);
    }
    lo.store(c, n_lo);
    if (n_hi > 0) hi.store(c + kV, n_hi);
  }
};

}  // namespace gru_native::cpu
