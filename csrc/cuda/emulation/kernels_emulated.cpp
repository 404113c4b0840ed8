// The CUDA kernels, csrc/cuda/*.cu unchanged, compiled by the host compiler against the CUDA
// emulation (runtime.h: this folder's include/ comes first on the include path); and their
// register counts for the emulated occupancy (registers.inc, checked against ptxas by
// .ci/compile_cuda).
#include "cuda/kernels.cu"
#include "cuda/upload.cu"

#include <iterator>

#include "cuda/emulation/runtime_internal.h"

namespace gru_native::cuda {
namespace {

const gru_emu::KernelInfo kKernels[] = {
#define GRU_EMU_KERNEL(regs, ...) {reinterpret_cast<const void*>(&__VA_ARGS__), #__VA_ARGS__, regs},
#include "cuda/emulation/registers.inc"
#undef GRU_EMU_KERNEL
};

const bool registered = gru_emu::register_kernels(kKernels, std::size(kKernels));

}  // namespace
}  // namespace gru_native::cuda
