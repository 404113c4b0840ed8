// blas.h: the GEMMs of the CPU recurrence kernels, on raw row-major pointers.
#pragma once

#include <cstdint>

namespace gru_native::cpu {

// C[M, N] = A[M, K] @ B[N, K]^T + beta * C
template <typename T>
void gemm_nt(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
             T beta, T* C, int64_t ldc);

// C[M, N] = A[M, K] @ B[K, N] + beta * C
template <typename T>
void gemm_nn(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
             T beta, T* C, int64_t ldc);

}  // namespace gru_native::cpu
