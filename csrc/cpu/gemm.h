// gemm.h: the CPU backend's general matrix product, for every product of the ops above the small
// ones (the input projections, dW_ih, dW_hh, d(input)): packed operands, a register-blocked
// microkernel, threads over blocks of C (gemm.cpp).
//
// Every element of C is summed in one order, fixed by K alone (gemm.cpp): its bits do not depend
// on the thread count, on how C is split over threads, or on the vector width the kernel was
// compiled for (bfloat16 on a CPU with AVX512-BF16 excepted: its sums run over pairs of k,
// bf16_pairs.h, fixed by K alone too, so still independent of the threads).
#pragma once

#include <cstdint>
#include <utility>

#include "gru_params.h"

namespace gru_native::cpu {

// C[M, N] = A B + beta * C (+ bias[n] on every row), beta 0 or 1. A(m, k) = A.p[m * A.rs +
// k * A.cs], B likewise: any strides. Runs on torch's intra-op threads (at::get_num_threads()).
// T: float, double, or bfloat16 / float16, whose A and B are converted to float as they are
// packed (bfloat16 with AVX512-BF16: packed as pairs) and whose C is summed in float and rounded
// to T once.
template <typename T>
void gemm(int64_t M, int64_t N, int64_t K, MatRef<T> A, MatRef<T> B, T beta, T* C, int64_t ldc,
          const T* bias);

// The same on the calling thread alone (for callers already inside a parallel region).
template <typename T>
void gemm_serial(int64_t M, int64_t N, int64_t K, MatRef<T> A, MatRef<T> B, T beta, T* C,
                 int64_t ldc, const T* bias);

// How the calling thread's last gemm cut C over threads: (row parts, column parts), (1, 1) when it
// ran alone. For the tests that check the split they rely on happened.
std::pair<int, int> last_gemm_grid();

}  // namespace gru_native::cpu
