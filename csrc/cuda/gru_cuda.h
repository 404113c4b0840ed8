// gru_cuda.h: the CUDA backend's registration, for the file that serves its tensors:
// torch_cuda.cpp (CUDA tensors on a GPU) or emulation/torch_emulated.cpp (CPU tensors on the
// CUDA emulation), each from the TORCH_LIBRARY_IMPL of its tensors' dispatch key.
#pragma once

#include <torch/library.h>

namespace gru_native {

// The CUDA backend's kernels on `m`, and its entry in the backend table (backend.h) for the
// device type device::type() names.
void register_cuda_backend(torch::Library& m);

}  // namespace gru_native
