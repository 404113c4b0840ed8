// gemm.cpp: C = A B + beta C (+ bias) for the CPU backend (gemm.h), in the classic layered
// form: C is cut into one rectangle per thread; in a rectangle, blocks of B (kKC x kNC) are packed
// into panels kNR columns wide and blocks of A (kMC x kKC) into micro-panels kMR rows high, and
// a microkernel keeps a kMR x kNR tile of C in registers across a block of K. A B micro-panel
// (kKC x kNR) stays in L1/L2 while the A micro-panels of a block stream past from L2; the packed
// B block is reused for every block of A.
//
// Each element of C is (beta C + bias) + S_0 + S_1 + ..., S_j the chain of fused multiply-adds
// over the j-th block of kKC k's in order, from zero (a rounding error that grows with kKC +
// K / kKC, not with K): the same bits whatever the threads, the split of C over them, the other
// blocking or the vector width. bfloat16 on AVX512-BF16 (run_rectangle_pairs) is the same with
// S_j summed over pairs of k (bf16_pairs.h).

// First: it chooses at::vec's instruction set, for every ATen header after it.
#include "cpu/vec.h"

#include "cpu/gemm.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>

#include "cpu/bf16_pairs.h"
#include "cpu/host_cache.h"
#include "cpu/kernels.h"
#include "cpu/wrows_gemm.h"

namespace gru_native::cpu {
namespace {

template <typename T>
struct Blocking {
  using V = Vec<T>;
  static constexpr int64_t kV = V::size();
  static constexpr int64_t kNR = 2 * kV;  // a tile's width: two vectors
  // A tile's height: as many rows as leave registers for the two B vectors and a broadcast
  // (16 vector registers: 6 x 2 accumulators; 32 with AVX-512: 12 x 2).
#if defined(CPU_CAPABILITY_AVX512)
  static constexpr int kMR = 12;
#else
  static constexpr int kMR = 6;
#endif
  // The K block: a B micro-panel, kKC x kNR, is 32 KB (float, AVX2) or 64 KB (AVX-512). 512
  // rather than 256: half the passes of C's tiles through the cache, 1.00-1.10x (geometric mean
  // 1.056) over the canonical phases' products on a Zen 4 with AVX-512, 1.00x with AVX2 there
  // (benchmarks/ab.py --cases gemm, 2026-12-07). The same for every instruction set, so the
  // bits do not depend on it (below).
  static constexpr int64_t kKC = 512;
  // A block, kMC x kKC: 480 KB (float) in L2; B block, kKC x kNC: 2 MB (float).
  static constexpr int64_t kMC = 240 * 4 / static_cast<int64_t>(sizeof(T));
  static constexpr int64_t kNC = 1024 * 4 / static_cast<int64_t>(sizeof(T));
  static_assert(kMC % kMR == 0 && kNC % kNR == 0, "blocks of whole tiles");
};

// A 64-byte aligned buffer kept by each thread for the packed blocks.
template <typename T>
class Packed {
 public:
  T* get(int64_t n) {
    if (n > capacity_) {
      const size_t bytes = (static_cast<size_t>(n) * sizeof(T) + 63) / 64 * 64;
      data_.reset(static_cast<T*>(std::aligned_alloc(64, bytes)));
      TORCH_CHECK(data_ != nullptr, "gru_native: out of memory packing a GEMM operand (",
                  bytes, " bytes)");
      capacity_ = n;
    }
    return data_.get();
  }

 private:
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T, Free> data_;
  int64_t capacity_ = 0;
};

template <typename T>
struct ThreadBuffers {
  Packed<T> a, b;
};

template <typename T>
ThreadBuffers<T>& thread_buffers() {
  thread_local ThreadBuffers<T> buffers;
  return buffers;
}

// r[0, kV) := its transpose (r[i][j] <- r[j][i]), by log2(kV) rounds of perfect shuffles.
// (Raw<T>, not Vec<T>: an array of at::vec's class would go through the stack, vec.h.)
template <typename T>
inline void transpose_square(Raw<T>* r) {
  constexpr int n = static_cast<int>(Vec<T>::size());
#pragma GCC unroll 4
  for (int round = 1; round < n; round *= 2) {
    Raw<T> next[n];
#pragma GCC unroll 16
    for (int i = 0; i < n / 2; ++i) {
      const auto pair = at::vec::interleave2(Vec<T>(r[i]), Vec<T>(r[i + n / 2]));
      next[2 * i] = pair.first;
      next[2 * i + 1] = pair.second;
    }
#pragma GCC unroll 16
    for (int i = 0; i < n; ++i) r[i] = next[i];
  }
}

// dst[0, n) = src[0, n), converted to T.
template <typename T, typename S>
inline void copy_converted(const S* src, int64_t n, T* dst) {
  if constexpr (std::is_same_v<S, T>) {
    std::memcpy(dst, src, n * sizeof(T));
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(src[i]);
  }
}

// A's rows [0, mc) x columns [0, kc) (A points at the block's first element) into micro-panels
// of kMR rows: panel p holds dst[p * kc * kMR + k * kMR + i] = A(p * kMR + i, k), zero past mc.
// S: T, or a half type whose elements are converted to T (float) as they are read.
template <typename T, typename S = T>
void pack_a(int64_t mc, int64_t kc, const S* A, int64_t rs, int64_t cs, T* dst) {
  using V = Vec<T>;
  constexpr int MR = Blocking<T>::kMR;
  constexpr int kV = static_cast<int>(V::size());
  for (int64_t m0 = 0; m0 < mc; m0 += MR, dst += kc * MR) {
    const int mr = static_cast<int>(std::min<int64_t>(MR, mc - m0));
    const S* a = A + m0 * rs;
    if constexpr (std::is_same_v<S, T>) {
      if (mr == MR && rs == 1) {  // a column of the panel is contiguous
        for (int64_t k = 0; k < kc; ++k) {
#pragma GCC unroll 16
          for (int i = 0; i < MR; ++i) dst[k * MR + i] = a[k * cs + i];
        }
        continue;
      }
      if (mr == MR && cs == 1 && MR <= kV) {
        // Rows of the panel are contiguous: kV x kV blocks (kMR rows, zeros below) transposed
        // in registers; each of the block's columns is stored whole at its place (kV elements
        // where kMR belong: the next store, or the slack past the buffer, takes the rest).
        int64_t k = 0;
        for (; k + kV <= kc; k += kV) {
          Raw<T> r[kV];
#pragma GCC unroll 16
          for (int i = 0; i < kV; ++i) r[i] = i < MR ? V::loadu(a + i * rs + k) : V(T(0));
          transpose_square<T>(r);
#pragma GCC unroll 16
          for (int j = 0; j < kV; ++j) V(r[j]).store(dst + (k + j) * MR);
        }
        for (; k < kc; ++k) {
#pragma GCC unroll 16
          for (int i = 0; i < MR; ++i) dst[k * MR + i] = a[i * rs + k];
        }
        continue;
      }
      if (mr == MR) {  // rows: kMR streams along k
        const T* rows[MR];
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i) rows[i] = a + i * rs;
        for (int64_t k = 0; k < kc; ++k) {
#pragma GCC unroll 16
          for (int i = 0; i < MR; ++i) dst[k * MR + i] = rows[i][k * cs];
        }
        continue;
      }
    }
    // The last rows, zero-padded; or a half type's elements, converted one by one.
    for (int64_t k = 0; k < kc; ++k) {
      for (int i = 0; i < MR; ++i) {
        dst[k * MR + i] = i < mr ? static_cast<T>(a[i * rs + k * cs]) : T(0);
      }
    }
  }
}

// B's rows [0, kc) x columns [0, nc) (B points at the block's first element) into panels of
// kNR columns: panel p holds dst[p * kc * kNR + k * kNR + c] = B(k, p * kNR + c), zero past nc.
// S: T, or a half type whose elements are converted to T (float) as they are read.
template <typename T, typename S = T>
void pack_b(int64_t kc, int64_t nc, const S* B, int64_t rs, int64_t cs, T* dst) {
  using V = Vec<T>;
  constexpr int64_t NR = Blocking<T>::kNR, kV = V::size();
  for (int64_t n0 = 0; n0 < nc; n0 += NR, dst += kc * NR) {
    const int64_t nr = std::min(NR, nc - n0);
    const S* b = B + n0 * cs;
    if constexpr (std::is_same_v<S, T>) {
      if (nr == NR && cs == 1) {  // rows of the panel are contiguous: two vectors a row
        for (int64_t k = 0; k < kc; ++k) {
          V::loadu(b + k * rs).store(dst + k * NR);
          V::loadu(b + k * rs + kV).store(dst + k * NR + kV);
        }
        continue;
      }
      if (nr == NR && rs == 1) {
        // Columns of the panel are contiguous (B is a row-major matrix transposed): kV x kV
        // blocks of each half of the panel transposed in registers.
        int64_t k = 0;
        for (; k + kV <= kc; k += kV) {
#pragma GCC unroll 2
          for (int64_t half = 0; half < 2; ++half) {
            Raw<T> r[kV];
#pragma GCC unroll 16
            for (int64_t c = 0; c < kV; ++c) r[c] = V::loadu(b + (half * kV + c) * cs + k);
            transpose_square<T>(r);
#pragma GCC unroll 16
            for (int64_t j = 0; j < kV; ++j) V(r[j]).store(dst + (k + j) * NR + half * kV);
          }
        }
        for (; k < kc; ++k) {
          for (int64_t c = 0; c < NR; ++c) dst[k * NR + c] = b[c * cs + k];
        }
        continue;
      }
    } else {
      if (cs == 1) {  // a half type's rows: each converted as a whole
        for (int64_t k = 0; k < kc; ++k) {
          T* out = dst + k * NR;
          copy_converted(b + k * rs, nr, out);
          if (nr < NR) std::fill(out + nr, out + NR, T(0));
        }
        continue;
      }
      if (rs == 1) {  // a half type's columns: kNR streams along k, a cache line of each at a time
        constexpr int64_t kLine = 64 / static_cast<int64_t>(sizeof(T));
        for (int64_t k0 = 0; k0 < kc; k0 += kLine) {
          const int64_t k1 = std::min(kc, k0 + kLine);
          for (int64_t c = 0; c < NR; ++c) {
            for (int64_t k = k0; k < k1; ++k) {
              dst[k * NR + c] = c < nr ? static_cast<T>(b[c * cs + k]) : T(0);
            }
          }
        }
        continue;
      }
    }
    // The last columns, zero-padded, or any strides.
    for (int64_t k = 0; k < kc; ++k) {
      for (int64_t c = 0; c < NR; ++c) {
        dst[k * NR + c] = c < nr ? static_cast<T>(b[k * rs + c * cs]) : T(0);
      }
    }
  }
}

// p[0, n) of a vector, n <= kV (whole, masked or zero).
template <typename T>
inline Vec<T> load_n(const T* p, int64_t n) {
  if (n >= Vec<T>::size()) return Vec<T>::loadu(p);
  if (n <= 0) return Vec<T>(T(0));
  return load_first(p, n);
}

template <typename T>
inline void store_n(T* p, const Vec<T>& v, int64_t n) {
  if (n >= Vec<T>::size()) {
    v.store(p);
  } else if (n > 0) {
    v.store(p, static_cast<int>(n));
  }
}

// How a tile's sums over one block of K are put into C: added to C (a later block, or beta 1),
// to the bias, or stored as they are.
struct TileStart {
  bool add_c;
  const void* bias;  // the tile's first column of bias, or nullptr
};

// c[0, n) = (add_c ? c : 0) + (bias ? bias : 0) + v, in that order.
template <typename T>
inline void put_n(T* c, const T* bias, bool add_c, Vec<T> v, int64_t n) {
  if (n <= 0) return;
  Vec<T> base(T(0));
  bool has_base = false;
  if (add_c) {
    base = load_n(c, n);
    has_base = true;
  }
  if (bias != nullptr) {
    base = has_base ? base + load_n(bias, n) : load_n(bias, n);
    has_base = true;
  }
  store_n(c, has_base ? base + v : v, n);
}

// A tile's sums acc (kMR x kNR) into C: rows [0, mr), columns [0, nc), as TileStart says.
template <typename T>
inline void put_tile(const Raw<T> (&acc)[Blocking<T>::kMR][2], T* c, int64_t ldc, int mr,
                     int64_t nc, TileStart start) {
  using V = Vec<T>;
  constexpr int MR = Blocking<T>::kMR;
  constexpr int64_t kV = V::size();
  const T* bias = static_cast<const T*>(start.bias);
  if (mr == MR && nc == 2 * kV && bias == nullptr) {
    if (start.add_c) {
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        (V::loadu(c + i * ldc) + V(acc[i][0])).store(c + i * ldc);
        (V::loadu(c + i * ldc + kV) + V(acc[i][1])).store(c + i * ldc + kV);
      }
    } else {
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        V(acc[i][0]).store(c + i * ldc);
        V(acc[i][1]).store(c + i * ldc + kV);
      }
    }
    return;
  }
  const int64_t n0 = std::min(kV, nc), n1 = nc - n0;
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    if (i < mr) {
      put_n(c + i * ldc, bias, start.add_c, V(acc[i][0]), n0);
      put_n(c + i * ldc + kV, bias ? bias + kV : nullptr, start.add_c, V(acc[i][1]), n1);
    }
  }
}

// One kMR x kNR tile of C (rows [0, mr), columns [0, nc) written) over a block of kc k's, from
// packed micro-panels a (kc x kMR) and b (kc x kNR): each element's products summed in one
// chain of FMAs in k order from zero, then put into C (put_n).
template <typename T>
inline void micro_kernel(int64_t kc, const T* __restrict a, const T* __restrict b, T* c,
                         int64_t ldc, int mr, int64_t nc, TileStart start) {
  using V = Vec<T>;
  constexpr int MR = Blocking<T>::kMR;
  constexpr int64_t kV = V::size();
  Raw<T> acc[MR][2];  // (not V: see Raw)
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = V(T(0));
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; ++k) {
    const V b0 = V::loadu(b + k * 2 * kV);
    const V b1 = V::loadu(b + k * 2 * kV + kV);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const V x(a[k * MR + i]);
      acc[i][0] = at::vec::fmadd(x, b0, V(acc[i][0]));
      acc[i][1] = at::vec::fmadd(x, b1, V(acc[i][1]));
    }
  }
  put_tile<T>(acc, c, ldc, mr, nc, start);
}

// S: the element type of A and B (T, or a half type packed into T = float).
template <typename T, typename S = T>
struct Problem {
  int64_t M, N, K;
  MatRef<S> A, B;
  bool beta;  // C is accumulated into
  T* C;
  int64_t ldc;
  const T* bias;
};

// A rectangle of at most kWRowsMaxRows rows (kernels.h), times a row-major matrix transposed (B =
// W^T: the input projection), reads W's rows in place (wrows_gemm.h) instead of packing B:
// packing is a pass over W that these few rows do not earn back. The same sums, so the same
// bits. Below kWRowsMinK its transposed stores cost more than the packing saves.
constexpr int64_t kWRowsMinK = 64;

#if defined(GRU_NATIVE_BF16_PAIRS)
// A bfloat16 product on AVX512-BF16 (bf16_pairs.h): the layers and tiles of run_rectangle, its
// operands packed as words of two bfloat16 (into the float buffers: a word is a float's size),
// each block's sums taken in pairs by vdpbf16ps.
void run_rectangle_pairs(const Problem<float, c10::BFloat16>& p, int64_t m0, int64_t m1,
                         int64_t n0, int64_t n1) {
  using Bl = Blocking<float>;
  constexpr int MR = Bl::kMR;
  constexpr int64_t NR = Bl::kNR, KC = Bl::kKC, MC = Bl::kMC, NC = Bl::kNC;
  static_assert(NR == pairs::kPairNR && KC % 2 == 0, "a tile of two vectors; blocks of pairs");
  ThreadBuffers<float>& buf = thread_buffers<float>();
  const int64_t np_max = (std::min(KC, p.K) + 1) / 2;
  auto* bp = reinterpret_cast<uint32_t*>(buf.b.get(np_max * ((std::min(NC, n1 - n0) + NR - 1) / NR) * NR));
  auto* ap = reinterpret_cast<uint32_t*>(buf.a.get(np_max * ((std::min(MC, m1 - m0) + MR - 1) / MR) * MR));
  struct PackedWords {
    const uint32_t* a;
    uint32_t operator()(int i, int64_t kp) const { return a[kp * MR + i]; }
    uint32_t last(int) const { return 0; }
  };
  for (int64_t jc = n0; jc < n1; jc += NC) {
    const int64_t nc = std::min(NC, n1 - jc);
    for (int64_t pc = 0; pc < p.K; pc += KC) {
      const int64_t kc = std::min(KC, p.K - pc), np = (kc + 1) / 2;
      pairs::pack_b(kc, nc, p.B.p + pc * p.B.rs + jc * p.B.cs, p.B.rs, p.B.cs, bp);
      const bool add_c = pc > 0 || p.beta;
      const float* bias = (pc == 0 && p.bias != nullptr) ? p.bias + jc : nullptr;
      for (int64_t ic = m0; ic < m1; ic += MC) {
        const int64_t mc = std::min(MC, m1 - ic);
        pairs::pack_a<MR>(mc, kc, p.A.p + ic * p.A.rs + pc * p.A.cs, p.A.rs, p.A.cs, ap);
        for (int64_t jr = 0; jr < nc; jr += NR) {
          const uint32_t* b = bp + (jr / NR) * np * NR;
          for (int64_t ir = 0; ir < mc; ir += MR) {
            Raw<float> sums[MR][2];  // __m512
            pairs::tile<MR>(np, PackedWords{ap + (ir / MR) * np * MR}, false, b, sums);
            put_tile<float>(sums, p.C + (ic + ir) * p.ldc + jc + jr, p.ldc,
                            static_cast<int>(std::min<int64_t>(MR, mc - ir)),
                            std::min(NR, nc - jr), TileStart{add_c, bias ? bias + jr : nullptr});
          }
        }
      }
    }
  }
}
#endif

// Rows [m0, m1) x columns [n0, n1) of C, on the calling thread.
template <typename T, typename S>
void run_rectangle(const Problem<T, S>& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  using Bl = Blocking<T>;
  constexpr int MR = Bl::kMR;
  constexpr int64_t NR = Bl::kNR, KC = Bl::kKC, MC = Bl::kMC, NC = Bl::kNC;
  static_assert(WRowsTiling<T>::kKC == KC, "one K block for both forms");
  if (m0 >= m1 || n0 >= n1) return;
#if defined(GRU_NATIVE_BF16_PAIRS)
  if constexpr (std::is_same_v<S, c10::BFloat16>) return run_rectangle_pairs(p, m0, m1, n0, n1);
#endif
  ThreadBuffers<T>& buf = thread_buffers<T>();
  if constexpr (std::is_same_v<S, T>) {
    if (p.B.rs == 1 && p.A.cs == 1 && m1 - m0 <= kWRowsMaxRows && p.K >= kWRowsMinK) {
      T* ap = buf.a.get(wrows_panels_size<T>(m1 - m0, p.K));
      wrows_pack_a(m1 - m0, p.K, p.A.p + m0 * p.A.rs, p.A.rs, ap);
      wrows_run(m1 - m0, n1 - n0, p.K, ap, p.B.p + n0 * p.B.cs, p.B.cs, p.C + m0 * p.ldc + n0,
                p.ldc, p.beta, p.bias != nullptr ? p.bias + n0 : nullptr);
      return;
    }
  }
  const int64_t kc_max = std::min(KC, p.K);
  T* bp = buf.b.get(kc_max * ((std::min(NC, n1 - n0) + NR - 1) / NR) * NR);
  // (pack_a's transposed blocks may store up to a vector past the last panel.)
  T* ap = buf.a.get(kc_max * ((std::min(MC, m1 - m0) + MR - 1) / MR) * MR + Bl::kV);
  for (int64_t jc = n0; jc < n1; jc += NC) {
    const int64_t nc = std::min(NC, n1 - jc);
    for (int64_t pc = 0; pc < p.K; pc += KC) {
      const int64_t kc = std::min(KC, p.K - pc);
      const S* b_block = p.B.p + pc * p.B.rs + jc * p.B.cs;
      pack_b<T, S>(kc, nc, b_block, p.B.rs, p.B.cs, bp);
      const bool add_c = pc > 0 || p.beta;
      const T* bias = (pc == 0 && p.bias != nullptr) ? p.bias + jc : nullptr;
      for (int64_t ic = m0; ic < m1; ic += MC) {
        const int64_t mc = std::min(MC, m1 - ic);
        const S* a_block = p.A.p + ic * p.A.rs + pc * p.A.cs;
        pack_a<T, S>(mc, kc, a_block, p.A.rs, p.A.cs, ap);
        for (int64_t jr = 0; jr < nc; jr += NR) {
          const T* b = bp + (jr / NR) * kc * NR;
          for (int64_t ir = 0; ir < mc; ir += MR) {
            micro_kernel(kc, ap + (ir / MR) * kc * MR, b, p.C + (ic + ir) * p.ldc + jc + jr,
                         p.ldc, static_cast<int>(std::min<int64_t>(MR, mc - ir)),
                         std::min(NR, nc - jr),
                         TileStart{add_c, bias ? bias + jr : nullptr});
          }
        }
      }
    }
  }
}

// K == 0: C = beta C + bias.
template <typename T, typename S>
void scale_and_bias(const Problem<T, S>& p) {
  for (int64_t m = 0; m < p.M; ++m) {
    T* c = p.C + m * p.ldc;
    if (!p.beta) std::fill(c, c + p.N, T(0));
    if (p.bias != nullptr) {
      for (int64_t n = 0; n < p.N; ++n) c[n] += p.bias[n];
    }
  }
}

// How C is cut over threads: tm x tn rectangles of whole tiles.
struct Grid {
  int tm = 1, tn = 1;
};

// Below this many multiply-adds per thread, another thread costs more than it saves.
constexpr int64_t kMinWorkPerThread = 256 * 1024;

template <typename T>
Grid plan_grid(int64_t M, int64_t N, int64_t K, int available) {
  using Bl = Blocking<T>;
  const int64_t mt = (M + Bl::kMR - 1) / Bl::kMR, nt = (N + Bl::kNR - 1) / Bl::kNR;
  const int64_t by_work = std::max<int64_t>(1, M * N * K / kMinWorkPerThread);
  const int threads = static_cast<int>(std::min<int64_t>({available, by_work, mt * nt}));
  Grid best;
  double best_cost = -1;
  // Per thread and per k: its tile FMAs (two vectors an FMA, two FMAs a cycle) and the packing
  // of its rows of A and its columns of B (about an element a cycle).
  for (int tn = 1; tn <= threads; ++tn) {
    if (threads % tn != 0) continue;
    const int tm = threads / tn;
    if (tm > mt || tn > nt) continue;
    const double rows = static_cast<double>((mt + tm - 1) / tm) * Bl::kMR;
    const double cols = static_cast<double>((nt + tn - 1) / tn) * Bl::kNR;
    const double cost = rows * cols / (4.0 * Bl::kV) + rows + cols;
    if (best_cost < 0 || cost < best_cost) {
      best_cost = cost;
      best = {tm, tn};
    }
  }
  return best;
}

// [begin, end) of part i of `parts` over `tiles` tiles of `size` (clamped to `total`).
inline void split(int64_t tiles, int parts, int i, int64_t size, int64_t total, int64_t& begin,
                  int64_t& end) {
  begin = std::min(total, tiles * i / parts * size);
  end = std::min(total, tiles * (i + 1) / parts * size);
}

thread_local Grid last_grid;

template <typename T, typename S>
void run(const Problem<T, S>& p, int available) {
  if (p.M <= 0 || p.N <= 0) return;
  if (p.K <= 0) return scale_and_bias(p);
  using Bl = Blocking<T>;
  const Grid g = plan_grid<T>(p.M, p.N, p.K, available);
  last_grid = g;
  if (g.tm * g.tn == 1) return run_rectangle(p, 0, p.M, 0, p.N);
  const int64_t mt = (p.M + Bl::kMR - 1) / Bl::kMR, nt = (p.N + Bl::kNR - 1) / Bl::kNR;
  at::parallel_for(0, g.tm * g.tn, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      int64_t m0, m1, n0, n1;
      split(mt, g.tm, static_cast<int>(r / g.tn), Bl::kMR, p.M, m0, m1);
      split(nt, g.tn, static_cast<int>(r % g.tn), Bl::kNR, p.N, n0, n1);
      run_rectangle(p, m0, m1, n0, n1);
    }
  });
}

// The half types: A and B packed into float panels as they are read (the same microkernel and
// sum order as float), C accumulated in float (a host-cache block) and rounded to T once at
// the end.
template <typename T>
void half_gemm(int64_t M, int64_t N, int64_t K, MatRef<T> A, MatRef<T> B, T beta, T* C,
               int64_t ldc, const T* bias, int available) {
  if (M <= 0 || N <= 0) return;
  const at::Tensor c_block = cached_empty({M * N + (bias != nullptr ? N : 0)}, at::kFloat);
  float* c = c_block.data_ptr<float>();
  float* bias_float = bias != nullptr ? c + M * N : nullptr;
  for (int64_t m = 0; m < M && beta != T(0); ++m) copy_converted(C + m * ldc, N, c + m * N);
  if (bias != nullptr) copy_converted(bias, N, bias_float);
  run(Problem<float, T>{M, N, K, A, B, beta != T(0), c, N, bias_float}, available);
  for (int64_t m = 0; m < M; ++m) copy_converted(c + m * N, N, C + m * ldc);
}

template <typename T>
void run_gemm(int64_t M, int64_t N, int64_t K, MatRef<T> A, MatRef<T> B, T beta, T* C,
              int64_t ldc, const T* bias, int available) {
  if constexpr (std::is_same_v<T, Math<T>>) {
    run(Problem<T>{M, N, K, A, B, beta != T(0), C, ldc, bias}, available);
  } else {
    half_gemm(M, N, K, A, B, beta, C, ldc, bias, available);
  }
}

}  // namespace

template <typename T>
void gemm(int64_t M, int64_t N, int64_t K, MatRef<T> A, MatRef<T> B, T beta, T* C, int64_t ldc,
          const T* bias) {
  const int available = at::in_parallel_region() ? 1 : at::get_num_threads();
  run_gemm(M, N, K, A, B, beta, C, ldc, bias, available);
}

template <typename T>
void gemm_serial(int64_t M, int64_t N, int64_t K, MatRef<T> A, MatRef<T> B, T beta, T* C,
                 int64_t ldc, const T* bias) {
  run_gemm(M, N, K, A, B, beta, C, ldc, bias, 1);
}

std::pair<int, int> last_gemm_grid() { return {last_grid.tm, last_grid.tn}; }

#define GRU_NATIVE_INSTANTIATE(T)                                                              \
  template void gemm<T>(int64_t, int64_t, int64_t, MatRef<T>, MatRef<T>, T, T*, int64_t,       \
                        const T*);                                                             \
  template void gemm_serial<T>(int64_t, int64_t, int64_t, MatRef<T>, MatRef<T>, T, T*, int64_t, \
                               const T*);
GRU_NATIVE_INSTANTIATE(float)
GRU_NATIVE_INSTANTIATE(double)
GRU_NATIVE_INSTANTIATE(c10::BFloat16)
GRU_NATIVE_INSTANTIATE(c10::Half)
#undef GRU_NATIVE_INSTANTIATE

}  // namespace gru_native::cpu
