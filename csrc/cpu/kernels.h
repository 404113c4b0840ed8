// kernels.h: the CPU recurrence kernels (raw pointers, no ATen). Shape legend: gru_cell.h.
#pragma once

#include <cstdint>

#include "gru_params.h"

namespace gru_native::cpu {

// Runs every direction of one layer over all steps: per step one GEMM h W_hh^T and one fused
// pointwise pass that writes h_t, the layer output and (if p.ws) the workspace.
template <typename scalar_t>
void forward_layer(const LayerForwardParams<scalar_t>& p);

// Backward through time of one layer: per step one fused pointwise pass (dG_i, dG_h, h_{t-1},
// the direct part of dh_{t-1}) and one GEMM dh_{t-1} += dG_h W_hh.
template <typename scalar_t>
void backward_layer(const LayerBackwardParams<scalar_t>& p);

// dst[j] = sum_i src[i * ld + j], summed in a fixed order (bitwise reproducible).
template <typename scalar_t>
void column_sum(int64_t rows, int64_t cols, const scalar_t* src, int64_t ld, scalar_t* dst);

// The SIMD instruction set the kernels were compiled for ("AVX2", "AVX512", "DEFAULT").
const char* vector_isa();

}  // namespace gru_native::cpu
