// cublas.cpp: the emulated cuBLAS (cublas.h): handles, the math mode, and the strided batched
// GEMM, checked as cuBLAS checks its arguments and queued on the handle's stream (streams.cpp).
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "cuda/emulation/cublas.h"
#include "cuda/emulation/runtime_internal.h"

struct cublasContext {
  cudaStream_t stream = nullptr;
  cublasMath_t mode = CUBLAS_DEFAULT_MATH;
};

namespace {

// Split-K, as the emulation models cuBLAS's reduced-precision reduction (cublas.h).
constexpr int kSplitK = 256;

size_t element_size(cudaDataType t) {
  switch (t) {
    case CUDA_R_64F: return 8;
    case CUDA_R_32F: return 4;
    case CUDA_R_16F:
    case CUDA_R_16BF: return 2;
  }
  return 0;
}

template <typename Acc>
Acc load(const unsigned char* p, cudaDataType t) {
  switch (t) {
    case CUDA_R_64F: {
      double v;
      std::memcpy(&v, p, 8);
      return static_cast<Acc>(v);
    }
    case CUDA_R_32F: {
      float v;
      std::memcpy(&v, p, 4);
      return static_cast<Acc>(v);
    }
    case CUDA_R_16F:
    case CUDA_R_16BF: {
      unsigned short h;
      std::memcpy(&h, p, 2);
      return static_cast<Acc>(t == CUDA_R_16F ? gru_emu::half_to_float(h)
                                              : gru_emu::bfloat16_to_float(h));
    }
  }
  return Acc(0);
}

template <typename Acc>
void store(unsigned char* p, cudaDataType t, Acc v) {
  switch (t) {
    case CUDA_R_64F: {
      const double d = static_cast<double>(v);
      std::memcpy(p, &d, 8);
      return;
    }
    case CUDA_R_32F: {
      const float f = static_cast<float>(v);
      std::memcpy(p, &f, 4);
      return;
    }
    case CUDA_R_16F:
    case CUDA_R_16BF: {
      const float f = static_cast<float>(v);
      const unsigned short h = t == CUDA_R_16F ? gru_emu::half_from_float(f)
                                               : gru_emu::bfloat16_from_float(f);
      std::memcpy(p, &h, 2);
      return;
    }
  }
}

// A float as a TF32 tensor core reads it: the mantissa rounded to 10 bits (nearest even).
float tf32(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) == 0x7f800000u) return x;  // inf, NaN
  u = (u + 0x0fffu + ((u >> 13) & 1u)) & ~0x1fffu;
  std::memcpy(&x, &u, 4);
  return x;
}

// sum_k a[k] b[k] in eight interleaved partial sums, then their sum in a fixed order.
template <typename A>
A dot(const A* a, const A* b, int64_t K) {
  A part[8] = {};
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    for (int i = 0; i < 8; ++i) part[i] += a[k + i] * b[k + i];
  }
  for (; k < K; ++k) part[k % 8] += a[k] * b[k];
  return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

struct Gemm {
  cublasOperation_t ta, tb;
  int m, n, k;
  const unsigned char *A, *B;
  unsigned char* C;
  cudaDataType at, bt, ct;
  int lda, ldb, ldc;
  long long sa, sb, sc;
  int batch;
  bool tf32, split;  // round A and B to TF32; round split-K parts to the output type
};

template <typename Acc>
void run(const Gemm& g, Acc alpha, Acc beta) {
  const size_t ea = element_size(g.at), eb = element_size(g.bt), ec = element_size(g.ct);
  std::vector<Acc> cols(static_cast<size_t>(g.n) * g.k), row(static_cast<size_t>(g.k));
  auto read = [&](const unsigned char* p, cudaDataType t) {
    const Acc v = load<Acc>(p, t);
    return g.tf32 ? static_cast<Acc>(tf32(static_cast<float>(v))) : v;
  };
  for (int b = 0; b < g.batch; ++b) {
    const unsigned char* A = g.A + b * g.sa * static_cast<long long>(ea);
    const unsigned char* B = g.B + b * g.sb * static_cast<long long>(eb);
    unsigned char* C = g.C + b * g.sc * static_cast<long long>(ec);
    // op(B)[kk, j] = B[kk + j ldb] (N) or B[j + kk ldb] (T, C): column j of op(B), contiguous.
    for (int j = 0; j < g.n; ++j) {
      for (int kk = 0; kk < g.k; ++kk) {
        const int64_t at = g.tb == CUBLAS_OP_N ? kk + int64_t(j) * g.ldb : j + int64_t(kk) * g.ldb;
        cols[static_cast<size_t>(j) * g.k + kk] = read(B + at * eb, g.bt);
      }
    }
    for (int i = 0; i < g.m; ++i) {
      for (int kk = 0; kk < g.k; ++kk) {
        const int64_t at = g.ta == CUBLAS_OP_N ? i + int64_t(kk) * g.lda : kk + int64_t(i) * g.lda;
        row[kk] = read(A + at * ea, g.at);
      }
      for (int j = 0; j < g.n; ++j) {
        const Acc* col = cols.data() + static_cast<size_t>(j) * g.k;
        Acc v = 0;
        if (g.split && g.k > kSplitK) {
          for (int k0 = 0; k0 < g.k; k0 += kSplitK) {
            unsigned char out[8];
            store(out, g.ct, dot(row.data() + k0, col + k0, std::min(kSplitK, g.k - k0)));
            v += load<Acc>(out, g.ct);
          }
        } else {
          v = dot(row.data(), col, g.k);
        }
        unsigned char* c = C + (i + int64_t(j) * g.ldc) * static_cast<int64_t>(ec);
        v *= alpha;
        if (beta != Acc(0)) v += beta * load<Acc>(c, g.ct);  // beta = 0: C is not read
        store(c, g.ct, v);
      }
    }
  }
}

bool valid_op(cublasOperation_t op) {
  return op == CUBLAS_OP_N || op == CUBLAS_OP_T || op == CUBLAS_OP_C;
}

}  // namespace

cublasStatus_t cublasCreate(cublasHandle_t* handle) {
  if (handle == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *handle = new cublasContext();
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t handle) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetStream(cublasHandle_t handle, cudaStream_t* stream) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (stream == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *stream = handle->stream;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if ((mode & ~(3 | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)) != 0) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  handle->mode = mode;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetMathMode(cublasHandle_t handle, cublasMath_t* mode) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (mode == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *mode = handle->mode;
  return CUBLAS_STATUS_SUCCESS;
}

const char* cublasGetStatusName(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}

const char* cublasGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    default: return "an error in the cuBLAS library";
  }
}

cublasStatus_t cublasGemmStridedBatchedEx(
    cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
    int k, const void* alpha, const void* A, cudaDataType Atype, int lda, long long int strideA,
    const void* B, cudaDataType Btype, int ldb, long long int strideB, const void* beta, void* C,
    cudaDataType Ctype, int ldc, long long int strideC, int batchCount,
    cublasComputeType_t computeType, cublasGemmAlgo_t algo) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  const int rows_a = transa == CUBLAS_OP_N ? m : k;  // rows of A as stored
  const int rows_b = transb == CUBLAS_OP_N ? k : n;
  if (m < 0 || n < 0 || k < 0 || batchCount < 0 || !valid_op(transa) || !valid_op(transb) ||
      lda < std::max(1, rows_a) || ldb < std::max(1, rows_b) || ldc < std::max(1, m) ||
      alpha == nullptr || beta == nullptr) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  const bool same = Atype == Btype && Btype == Ctype;
  const bool f64 = same && Atype == CUDA_R_64F &&
                   (computeType == CUBLAS_COMPUTE_64F || computeType == CUBLAS_COMPUTE_64F_PEDANTIC);
  const bool f32 = same && Atype == CUDA_R_32F &&
                   (computeType == CUBLAS_COMPUTE_32F || computeType == CUBLAS_COMPUTE_32F_PEDANTIC ||
                    computeType == CUBLAS_COMPUTE_32F_FAST_TF32);
  // The half types: C of the inputs' type, or float (cuBLAS's CUDA_R_16F/16BF x CUDA_R_32F).
  const bool f16 = Atype == Btype && (Atype == CUDA_R_16F || Atype == CUDA_R_16BF) &&
                   (Ctype == Atype || Ctype == CUDA_R_32F) &&
                   (computeType == CUBLAS_COMPUTE_32F || computeType == CUBLAS_COMPUTE_32F_PEDANTIC);
  if (!(f64 || f32 || f16) || (algo != CUBLAS_GEMM_DEFAULT && algo != CUBLAS_GEMM_DEFAULT_TENSOR_OP)) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (m == 0 || n == 0 || batchCount == 0) return CUBLAS_STATUS_SUCCESS;
  const long long span = static_cast<long long>(ldc) * (n - 1) + m;  // one output batch
  if (batchCount > 1 && (strideC < 0 ? -strideC : strideC) < span) {
    return CUBLAS_STATUS_INVALID_VALUE;  // the emulation's own check: overlapping outputs
  }
  Gemm g{transa, transb, m, n, k, static_cast<const unsigned char*>(A),
         static_cast<const unsigned char*>(B), static_cast<unsigned char*>(C), Atype, Btype,
         Ctype, lda, ldb, ldc, strideA, strideB, strideC, batchCount, false, false};
  g.tf32 = f32 && (computeType == CUBLAS_COMPUTE_32F_FAST_TF32 ||
                   (computeType == CUBLAS_COMPUTE_32F && (handle->mode & 3) == CUBLAS_TF32_TENSOR_OP_MATH));
  g.split = f16 && !(handle->mode & CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION);
  gru_emu::Work w;
  w.what = "cublasGemmStridedBatchedEx";
  if (f64) {  // host pointer mode: alpha and beta are read now
    const double a = *static_cast<const double*>(alpha), b = *static_cast<const double*>(beta);
    w.run = [g, a, b] {
      run<double>(g, a, b);
      return cudaSuccess;
    };
  } else {
    const float a = *static_cast<const float*>(alpha), b = *static_cast<const float*>(beta);
    w.run = [g, a, b] {
      run<float>(g, a, b);
      return cudaSuccess;
    };
  }
  gru_emu::enqueue(handle->stream, std::move(w));
  return CUBLAS_STATUS_SUCCESS;
}
