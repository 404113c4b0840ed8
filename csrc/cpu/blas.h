// blas.h: GEMMs through ATen (MKL, or whatever BLAS torch was built with) on raw pointers.
#pragma once

#include <cstdint>

#include "gru_params.h"

namespace gru_native::cpu {

// C[M, N] = A B + beta * C (+ bias[n] on every row), beta 0 or 1.
template <typename T>
void blas_gemm(int64_t M, int64_t N, int64_t K, MatRef<T> A, MatRef<T> B, T beta, T* C,
               int64_t ldc, const T* bias);

}  // namespace gru_native::cpu
