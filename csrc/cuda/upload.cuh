// upload.cuh: host values to device memory through kernel arguments, for work that a CUDA graph
// may capture: a copy from host memory would be replayed from that host address long after the
// call (when the memory may hold something else), while kernel arguments are captured by value.
// ATen-free, like kernels.cuh.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace gru_native::cuda {

// dst[i] = values[i] for i < n, on `stream`, by launches whose arguments carry the values
// (values may be freed or changed once this returns).
cudaError_t upload(int64_t* dst, const int64_t* values, int64_t n, cudaStream_t stream);

}  // namespace gru_native::cuda
