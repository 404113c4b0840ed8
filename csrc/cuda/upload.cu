// upload.cu: host values to device memory through kernel arguments (upload.cuh).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cuda/upload.cuh"

namespace gru_native::cuda {
namespace {

// Values per launch: the argument below stays under the 4 KiB every CUDA version takes.
constexpr int kUploadValues = 496;

struct Upload {
  int64_t* dst;
  int64_t n;
  int64_t values[kUploadValues];
};

__global__ void upload_kernel(Upload u) {
  for (int64_t i = threadIdx.x; i < u.n; i += blockDim.x) u.dst[i] = u.values[i];
}

}  // namespace

cudaError_t upload(int64_t* dst, const int64_t* values, int64_t n, cudaStream_t stream) {
  for (int64_t first = 0; first < n; first += kUploadValues) {
    Upload u;
    u.dst = dst + first;
    u.n = std::min<int64_t>(kUploadValues, n - first);
    std::copy(values + first, values + first + u.n, u.values);
    void* args[] = {&u};
    const cudaError_t err = cudaLaunchKernel(upload_kernel, dim3(1), dim3(128), args, 0, stream);
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace gru_native::cuda
