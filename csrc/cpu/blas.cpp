// blas.cpp: GEMMs through ATen (torch's BLAS: MKL in the x86 wheels, multi-threaded), on tensors
// that wrap the caller's raw pointers.
#include "cpu/blas.h"

#include <ATen/ATen.h>

namespace gru_native::cpu {
namespace {

template <typename T>
at::Tensor wrap(const T* data, int64_t rows, int64_t cols, int64_t rs, int64_t cs) {
  return at::from_blob(const_cast<T*>(data), {rows, cols}, {rs, cs},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

}  // namespace

template <typename T>
void blas_gemm(int64_t M, int64_t N, int64_t K, MatRef<T> A, MatRef<T> B, T beta, T* C,
               int64_t ldc, const T* bias) {
  if (M == 0 || N == 0) return;
  at::Tensor c = wrap(C, M, N, ldc, 1);
  const at::Tensor a = wrap(A.p, M, K, A.rs, A.cs);
  const at::Tensor b = wrap(B.p, K, N, B.rs, B.cs);
  if (bias != nullptr) {
    if (beta == T(0)) c.copy_(wrap(bias, 1, N, 0, 1).expand({M, N}));
    else c.add_(wrap(bias, 1, N, 0, 1));
    c.addmm_(a, b);
  } else if (beta == T(0)) {
    at::mm_out(c, a, b);
  } else {
    c.addmm_(a, b);
  }
}

template void blas_gemm<float>(int64_t, int64_t, int64_t, MatRef<float>, MatRef<float>, float,
                               float*, int64_t, const float*);
template void blas_gemm<double>(int64_t, int64_t, int64_t, MatRef<double>, MatRef<double>,
                                double, double*, int64_t, const double*);

}  // namespace gru_native::cpu
