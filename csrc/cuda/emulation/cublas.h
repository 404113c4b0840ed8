// cublas.h: the part of cuBLAS the CUDA backend calls (device_cuda.cpp), on the CUDA emulation
// (runtime.h), with cuBLAS's names, values and column-major semantics: handles bound to a
// stream, the math mode, and the strided batched GEMM cublasGemmStridedBatchedEx:
//   C_b = alpha op(A_b) op(B_b) + beta C_b,   b < batchCount,
// column-major with leading dimensions lda, ldb, ldc, X_b = X + b * strideX. Its argument
// errors are cuBLAS's (CUBLAS_STATUS_INVALID_VALUE for m, n, k or batchCount < 0, an op that is
// not N, T or C, lda < max(1, rows of A as stored: m for op N, else k), ldb < max(1, k for op N,
// else n), ldc < max(1, m); CUBLAS_STATUS_NOT_SUPPORTED for a type combination it does not
// have: A, B and C all double, all float, all half or all bfloat16, or half or bfloat16 A and
// B with a float C, as in cuBLAS's table); the emulation also refuses (INVALID_VALUE) output
// batches that overlap, which cuBLAS leaves undefined. The product is queued on the handle's
// stream like a kernel (streams.cpp).
// What it computes (cublas.cpp): the products in the compute type (float for CUBLAS_COMPUTE_32F,
// double for 64F); with CUBLAS_COMPUTE_32F_FAST_TF32, A and B rounded to TF32 first (10-bit
// mantissa, as tensor cores read them); for 16-bit outputs, unless the math mode has
// CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION, K above 256 is split (as cuBLAS's split-K
// does) and each part's sum rounded to the output type before the parts are added. beta = 0
// does not read C (cuBLAS's rule: it may hold NaN).
#pragma once

#include <cstdint>

#include "cuda/emulation/runtime.h"

enum cublasStatus_t {
  CUBLAS_STATUS_SUCCESS = 0,
  CUBLAS_STATUS_NOT_INITIALIZED = 1,
  CUBLAS_STATUS_ALLOC_FAILED = 3,
  CUBLAS_STATUS_INVALID_VALUE = 7,
  CUBLAS_STATUS_ARCH_MISMATCH = 8,
  CUBLAS_STATUS_MAPPING_ERROR = 11,
  CUBLAS_STATUS_EXECUTION_FAILED = 13,
  CUBLAS_STATUS_INTERNAL_ERROR = 14,
  CUBLAS_STATUS_NOT_SUPPORTED = 15,
  CUBLAS_STATUS_LICENSE_ERROR = 16,
};

enum cublasOperation_t {
  CUBLAS_OP_N = 0,
  CUBLAS_OP_T = 1,
  CUBLAS_OP_C = 2,
};

enum cublasMath_t {
  CUBLAS_DEFAULT_MATH = 0,
  CUBLAS_TENSOR_OP_MATH = 1,
  CUBLAS_PEDANTIC_MATH = 2,
  CUBLAS_TF32_TENSOR_OP_MATH = 3,
  CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION = 16,
};

enum cublasComputeType_t {
  CUBLAS_COMPUTE_16F = 64,
  CUBLAS_COMPUTE_16F_PEDANTIC = 65,
  CUBLAS_COMPUTE_32F = 68,
  CUBLAS_COMPUTE_32F_PEDANTIC = 69,
  CUBLAS_COMPUTE_64F = 70,
  CUBLAS_COMPUTE_64F_PEDANTIC = 71,
  CUBLAS_COMPUTE_32F_FAST_16F = 74,
  CUBLAS_COMPUTE_32F_FAST_16BF = 75,
  CUBLAS_COMPUTE_32F_FAST_TF32 = 77,
};

enum cublasGemmAlgo_t {
  CUBLAS_GEMM_DEFAULT = -1,
  CUBLAS_GEMM_DEFAULT_TENSOR_OP = 99,
};

// library_types.h's element types.
enum cudaDataType_t {
  CUDA_R_32F = 0,
  CUDA_R_64F = 1,
  CUDA_R_16F = 2,
  CUDA_R_16BF = 14,
};
typedef cudaDataType_t cudaDataType;

struct cublasContext;
typedef cublasContext* cublasHandle_t;

cublasStatus_t cublasCreate(cublasHandle_t* handle);
cublasStatus_t cublasDestroy(cublasHandle_t handle);
cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream);
cublasStatus_t cublasGetStream(cublasHandle_t handle, cudaStream_t* stream);
cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode);
cublasStatus_t cublasGetMathMode(cublasHandle_t handle, cublasMath_t* mode);
const char* cublasGetStatusName(cublasStatus_t status);
const char* cublasGetStatusString(cublasStatus_t status);

cublasStatus_t cublasGemmStridedBatchedEx(
    cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
    int k, const void* alpha, const void* A, cudaDataType Atype, int lda, long long int strideA,
    const void* B, cudaDataType Btype, int ldb, long long int strideB, const void* beta, void* C,
    cudaDataType Ctype, int ldc, long long int strideC, int batchCount,
    cublasComputeType_t computeType, cublasGemmAlgo_t algo);
