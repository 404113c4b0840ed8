// torch_emulated.cpp: the torch seam (cuda/torch_cuda.h) under the CUDA emulation: CPU tensors
// stand for device memory (allocated as device_memory.cpp describes), the current stream is the
// emulation's (the legacy default stream unless set_current_stream says otherwise), the pinned
// blocks come from the emulated cudaHostAlloc and behave as torch's caching host allocator's
// (freed at once unless used_on_current_stream recorded a stream, then in that stream's order),
// and an op's hand_back runs the queued work (streams.cpp); and the CUDA backend's registration
// for CPU tensors.
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "cuda/emulation/torch_emulated.h"
#include "cuda/gru_cuda.h"
#include "cuda/torch_cuda.h"

namespace gru_native::torch_cuda {
namespace {

thread_local cudaStream_t current = nullptr;

// The context of a pinned block: where it is used.
struct PinnedBlock {
  void* ptr;
  bool used = false;
  cudaStream_t stream = nullptr;
};

void free_pinned(void* ptr) { (void)cudaFreeHost(ptr); }

void release_pinned(void* context) {
  auto* block = static_cast<PinnedBlock*>(context);
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  if (block->used && cudaStreamIsCapturing(block->stream, &capture) == cudaSuccess &&
      capture == cudaStreamCaptureStatusNone) {
    // After the work queued on the stream so far (the allocator's recorded event).
    TORCH_CHECK(cudaLaunchHostFunc(block->stream, &free_pinned, block->ptr) == cudaSuccess);
  } else {
    // Unused, or used by captured work, which does not run now: torch's allocator may hand
    // the block out again at once.
    free_pinned(block->ptr);
  }
  delete block;
}

}  // namespace

c10::DeviceType device_type() { return at::kCPU; }

int device_of(const at::Tensor& t) { return t.is_cpu() ? 0 : -1; }

c10::Device device(int) { return c10::Device(at::kCPU); }

cudaStream_t current_stream() { return current; }

at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return at::empty(sizes, options);  // device_memory.cpp's: NaN bytes, guarded, stream-ordered
}

at::DataPtr pinned(size_t bytes) {
  void* ptr = nullptr;
  TORCH_CHECK(cudaHostAlloc(&ptr, bytes, cudaHostAllocDefault) == cudaSuccess,
              "gru_native emulation: cudaHostAlloc of ", bytes, " bytes failed");
  return at::DataPtr(ptr, new PinnedBlock{ptr}, &release_pinned, c10::Device(at::kCPU));
}

void used_on_current_stream(const at::DataPtr& block) {
  auto* context = static_cast<PinnedBlock*>(block.get_context());
  context->used = true;
  context->stream = current;
}

cublasHandle_t blas_handle() {
  thread_local cublasHandle_t handle = [] {
    cublasHandle_t h = nullptr;
    TORCH_CHECK(cublasCreate(&h) == CUBLAS_STATUS_SUCCESS);
    return h;
  }();
  TORCH_CHECK(cublasSetStream(handle, current) == CUBLAS_STATUS_SUCCESS);
  return handle;
}

cudaError_t hand_back() { return cudaDeviceSynchronize(); }

namespace emulation {
void set_current_stream(cudaStream_t stream) { current = stream; }
}  // namespace emulation

}  // namespace gru_native::torch_cuda

// The CUDA backend serves CPU tensors in this build (the CPU backend is not built).
TORCH_LIBRARY_IMPL(gru_native, CPU, m) { gru_native::register_cuda_backend(m); }
