// gru_cuda.h: the CUDA backend's registration, for the file that serves its tensors:
// torch_cuda.cpp (CUDA tensors on a GPU) or emulation/torch_emulated.cpp (CPU tensors on the
// CUDA emulation), each from the TORCH_LIBRARY_IMPL of its tensors' dispatch key; and its
// introspection, for gru_native._C (gru_native.cpp).
#pragma once

#include <torch/library.h>

namespace pybind11 {
class module_;
}

namespace gru_native {

// The CUDA backend's kernels on `m`, and its entry in the backend table (backend.h) for the
// device type device::type() names.
void register_cuda_backend(torch::Library& m);

// _C._cuda_persistent_plan, _cuda_start_launch_record, _cuda_stop_launch_record,
// _cuda_dropped_launches, _cuda_plan_queries, _cuda_forget_devices (introspect_cuda.cpp).
void add_cuda_introspection(pybind11::module_& m);

}  // namespace gru_native
