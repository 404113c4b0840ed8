// checks.h: what the checks driver's files share (driver.cpp: the GRU cases and graph capture;
// runtime_checks.cpp: the emulation's own semantics).
#pragma once

#include <cuda_runtime.h>

#include <string>

namespace gru_checks {

// Records a failed check (printed at once, counted for the exit status).
void expect(bool ok, const std::string& what);

// kernel<<<grid, block, smem, stream>>>(args...), or its cooperative launch, then the stream's
// work run (the launch's own failure, or the work's, is returned).
template <typename... P>
cudaError_t run(void (*kernel)(P...), bool cooperative, dim3 grid, dim3 block, size_t smem,
                P... args) {
  void* ptrs[] = {&args...};
  const cudaError_t err = cooperative
                              ? cudaLaunchCooperativeKernel(kernel, grid, block, ptrs, smem, nullptr)
                              : cudaLaunchKernel(kernel, grid, block, ptrs, smem, nullptr);
  if (err != cudaSuccess) return err;
  return cudaDeviceSynchronize();
}

// The emulation's semantics: half conversions, barriers, shuffles, launch errors, streams and
// their order, pinned memory, cuBLAS, the grid barrier's exits, ordinary launches' blocks.
void check_runtime();
// Runs only in the build whose kernels are instrumented (.ci/cuda_emulation coherence): each
// unordered or cacheable access to another block's write fails its launch; atomics do not.
void check_coherence();

}  // namespace gru_checks
