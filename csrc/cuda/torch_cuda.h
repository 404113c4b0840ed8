// torch_cuda.h: what the CUDA backend's device layer (device_cuda.cpp) takes from torch, because
// on a GPU only torch has it: the current device and stream, the caching allocators (device
// memory, pinned host memory), torch's cuBLAS handle, and the point where an op hands its results
// back. Everything else device_cuda.cpp does with the CUDA runtime and cuBLAS directly, so that
// the same source runs on a GPU and on the CUDA emulation. Two implementations:
//   torch_cuda.cpp               a GPU: c10::cuda's streams, torch's CUDA caching allocators
//                                and cuBLAS handle;
//   emulation/torch_emulated.cpp the CUDA emulation (emulation/runtime.h): CPU tensors stand for
//                                device memory, the emulation's streams and cuBLAS.
// Each also registers the CUDA backend for its tensors' dispatch key (gru_cuda.h).
#pragma once

#include <ATen/ATen.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>

namespace gru_native::torch_cuda {

// The device type of the tensors the backend serves: kCUDA (kCPU under the emulation).
c10::DeviceType device_type();

// The CUDA device `t` is on, or -1 if it is not a tensor of device_type().
int device_of(const at::Tensor& t);

// The torch device of CUDA device `index`.
c10::Device device(int index);

// torch's current stream on the current device: every kernel, copy and GEMM goes there.
cudaStream_t current_stream();

// An uninitialised tensor from torch's caching allocator on the current device, for work on the
// current stream (freed, its memory is reused in that stream's order).
at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options);

// Pinned host memory from torch's caching host allocator; it goes back when the DataPtr dies.
at::DataPtr pinned(size_t bytes);

// The work queued on the current stream so far uses `block` (record_event): the caching host
// allocator does not hand it out again before that work has run.
void used_on_current_stream(const at::DataPtr& block);

// torch's cuBLAS handle for the current device, bound to current_stream().
cublasHandle_t blas_handle();

// An op hands its results back to torch. On a GPU there is nothing to do (torch's later work on
// the stream is ordered after it); under the emulation, where torch's CPU ops read the results at
// once, the queued work runs here, and what it found wrong is returned.
cudaError_t hand_back();

}  // namespace gru_native::torch_cuda
