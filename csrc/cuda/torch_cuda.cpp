// torch_cuda.cpp: the torch seam (torch_cuda.h) on a GPU: c10::cuda's current stream, torch's
// CUDA caching allocator and caching host allocator, ATen's cuBLAS handle; and the CUDA backend's
// registration for CUDA tensors.
#include "cuda/torch_cuda.h"

#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CachingHostAllocator.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>
#include <torch/version.h>

#include "cuda/gru_cuda.h"

// torch 2.8 made the host allocator one interface for every device (at::getHostAllocator) and
// deprecated the CUDA-only functions.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 8)
#define GRU_NATIVE_HOST_ALLOCATOR_INTERFACE 1
#else
#define GRU_NATIVE_HOST_ALLOCATOR_INTERFACE 0
#endif

namespace gru_native::torch_cuda {

c10::DeviceType device_type() { return at::kCUDA; }

int device_of(const at::Tensor& t) { return t.is_cuda() ? t.get_device() : -1; }

c10::Device device(int index) {
  return c10::Device(at::kCUDA, static_cast<c10::DeviceIndex>(index));
}

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }

at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return at::empty(sizes, options);
}

at::DataPtr pinned(size_t bytes) {
#if GRU_NATIVE_HOST_ALLOCATOR_INTERFACE
  return at::getHostAllocator(at::kCUDA)->allocate(bytes);
#else
  return at::cuda::getCachingHostAllocator()->allocate(bytes);
#endif
}

void used_on_current_stream(const at::DataPtr& block) {
  const c10::cuda::CUDAStream stream = c10::cuda::getCurrentCUDAStream();
#if GRU_NATIVE_HOST_ALLOCATOR_INTERFACE
  at::getHostAllocator(at::kCUDA)->record_event(block.get(), block.get_context(), stream.unwrap());
#else
  at::cuda::CachingHostAllocator_recordEvent(block.get(), block.get_context(), stream);
#endif
}

cublasHandle_t blas_handle() { return at::cuda::getCurrentCUDABlasHandle(); }

cudaError_t hand_back() { return cudaSuccess; }

}  // namespace gru_native::torch_cuda

TORCH_LIBRARY_IMPL(gru_native, CUDA, m) { gru_native::register_cuda_backend(m); }
