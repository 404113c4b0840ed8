// blas.cpp: the recurrence GEMMs through ATen (MKL or whatever BLAS torch was built with), on
// tensors that wrap the kernels' raw pointers.
#include "cpu/blas.h"

#include <ATen/ATen.h>

namespace gru_native::cpu {
namespace {

template <typename T>
at::Tensor wrap(const T* data, int64_t rows, int64_t cols, int64_t ld) {
  return at::from_blob(const_cast<T*>(data), {rows, cols}, {ld, 1},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

template <typename T>
void gemm(const at::Tensor& a, const at::Tensor& b, T beta, at::Tensor& c) {
  if (c.numel() == 0) return;
  if (beta == T(0)) {
    at::mm_out(c, a, b);
  } else {
    c.addmm_(a, b, beta, 1);
  }
}

}  // namespace

template <typename T>
void gemm_nt(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
             T beta, T* C, int64_t ldc) {
  at::Tensor c = wrap(C, M, N, ldc);
  gemm(wrap(A, M, K, lda), wrap(B, N, K, ldb).t(), beta, c);
}

template <typename T>
void gemm_nn(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
             T beta, T* C, int64_t ldc) {
  at::Tensor c = wrap(C, M, N, ldc);
  gemm(wrap(A, M, K, lda), wrap(B, K, N, ldb), beta, c);
}

#define GRU_NATIVE_INSTANTIATE(T)                                                             \
  template void gemm_nt<T>(int64_t, int64_t, int64_t, const T*, int64_t, const T*, int64_t, T, \
                           T*, int64_t);                                                       \
  template void gemm_nn<T>(int64_t, int64_t, int64_t, const T*, int64_t, const T*, int64_t, T, \
                           T*, int64_t);
GRU_NATIVE_INSTANTIATE(float)
GRU_NATIVE_INSTANTIATE(double)
#undef GRU_NATIVE_INSTANTIATE

}  // namespace gru_native::cpu
