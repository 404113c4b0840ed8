// kernels.h: the CPU kernels (raw pointers, no ATen tensors). Shape legend: gru_cell.h.
#pragma once

#include <ATen/OpMathType.h>

#include <cstdint>

#include "gru_params.h"

namespace gru_native::cpu {

// Element types: float and double, and the half types bfloat16 and float16, whose math runs in
// float (at::opmath_type): values are converted as they are loaded, sums and gates are float, the
// saved gates (the workspace) are float, and what is stored in the element type is rounded to
// nearest even once.
template <typename T, typename W = T>
using ForwardParams = LayerForwardParams<T, at::opmath_type<T>, W>;
template <typename T>
using BackwardParams = LayerBackwardParams<T, at::opmath_type<T>>;

// Runs every direction of one layer over all steps: per step one GEMM h W_hh^T and one fused
// pointwise pass that writes h_t, the layer output, h_n and (if p.ws) the workspace. W (W_hh's
// element type) is T, or for the quantized layers (float activations) bfloat16 or int8_t.
template <typename T, typename W = T>
void forward_layer(const ForwardParams<T, W>& p);

// Backward through time of one layer: per step one fused pointwise pass (dG_i, dG_h, h_{t-1},
// the direct part of dh_{t-1}) and one GEMM dh_{t-1} += dG_h W_hh.
template <typename T>
void backward_layer(const BackwardParams<T>& p);

// C[M, N] = A B + beta * C (+ bias[n] on every row), beta 0 or 1, for small products, in plain
// vectorised loops with no call overhead (larger ones go to gemm.h).
template <typename T>
void small_gemm(int64_t M, int64_t N, int64_t K, MatRef<T> A, MatRef<T> B, T beta, T* C,
                int64_t ldc, const T* bias);

// small_gemm's product (the same sums in the same order) for a few rows (M <= kFewRowsMax) of A
// times a large row-major B (unit column stride: d(input) = dG W_ih of a step): B read once, in
// place, row after row, threaded over C's columns (packing B would cost more than the product).
constexpr int64_t kFewRowsMax = 8;
template <typename T>
void few_rows_gemm(int64_t M, int64_t N, int64_t K, MatRef<T> A, MatRef<T> B, T beta, T* C,
                   int64_t ldc, const T* bias);

// A product with a transposed row-major matrix (the input projection x W^T of a step or a few,
// the recurrent h W_hh^T of a step) reads the matrix's rows in place, nothing of it packed: from
// kWRowsMinRows to kWRowsMaxRows rows of A with the packed GEMM's microkernel turned around and
// its sums (wrows_gemm.h: gemm.cpp, the forward's direct form, project_rows), below as dot
// products along its rows (dot_gemm.h: the float backend's small_gemm, project_rows).
constexpr int64_t kWRowsMinRows = 16;
constexpr int64_t kWRowsMaxRows = 64;
constexpr int64_t kDotRowsMax = kWRowsMinRows - 1;
// Products of at most this many multiply-adds run in small_gemm's plain loops (dot products for
// a transposed row-major matrix), whatever the rows.
constexpr int64_t kSmallGemmMadds = 32 * 1024;

// C[M, N] = x W^T for a few rows of x (M <= kWRowsMaxRows, or a small product), W [N, K]
// row-major of element type W read in place (bfloat16 weights stay two bytes wide; from 4 rows
// on converted to float once, a block at a time), threaded over W's rows, by the float backend's
// route for the same product (so with its bits on the converted weights): dot products up to
// kDotRowsMax rows or kSmallGemmMadds, else the packed GEMM's sums. For the quantized layers'
// input projection of a step or a few.
template <typename W>
void project_rows(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const W* w,
                  float* C, int64_t ldc);

// dst[j] = sum_i src[i * ld + j], summed in a fixed order (bitwise reproducible).
template <typename T>
void column_sum(int64_t rows, int64_t cols, const T* src, int64_t ld, T* dst);

// out[i] = a[i] * b[i]
template <typename T>
void multiply(int64_t n, const T* a, const T* b, T* out);

// The kernels' sigmoid and tanh applied to x[0, n) on the kernels' lanes (whole vectors, then
// a masked or scalar tail: cpu/vec.h), for the accuracy tests.
template <typename T>
void activations(int64_t n, const T* x, T* sigmoid, T* tanh);

// How the last layer the calling thread ran was spread over threads (threads.h: direction
// groups, and threads per group, each owning a slice of the hidden units), forward and backward;
// 0 before any. For the tests that check that a split they rely on happened.
struct ThreadPlanRecord {
  int forward_groups = 0, forward_per_group = 0;
  int backward_groups = 0, backward_per_group = 0;
};
ThreadPlanRecord last_thread_plans();

// The SIMD instruction set the kernels were compiled for ("AVX2", "AVX512", "DEFAULT").
const char* vector_isa();

}  // namespace gru_native::cpu
