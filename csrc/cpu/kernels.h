// kernels.h: the CPU kernels (raw pointers, no ATen tensors). Shape legend: gru_cell.h.
#pragma once

#include <cstdint>

#include "gru_params.h"

namespace gru_native::cpu {

// Runs every direction of one layer over all steps: per step one GEMM h W_hh^T and one fused
// pointwise pass that writes h_t, the layer output, h_n and (if p.ws) the workspace.
template <typename T>
void forward_layer(const LayerForwardParams<T>& p);

// Backward through time of one layer: per step one fused pointwise pass (dG_i, dG_h, h_{t-1},
// the direct part of dh_{t-1}) and one GEMM dh_{t-1} += dG_h W_hh.
template <typename T>
void backward_layer(const LayerBackwardParams<T>& p);

// C[M, N] = A B + beta * C (+ bias[n] on every row), beta 0 or 1, for small products, in plain
// vectorised loops with no call overhead (larger ones go to gemm.h).
template <typename T>
void small_gemm(int64_t M, int64_t N, int64_t K, MatRef<T> A, MatRef<T> B, T beta, T* C,
                int64_t ldc, const T* bias);

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
