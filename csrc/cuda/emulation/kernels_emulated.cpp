// The CUDA kernels, csrc/cuda/kernels.cu unchanged, compiled by the host compiler against the
// CUDA emulation (runtime.h: this folder's include/ comes first on the include path).
#include "cuda/kernels.cu"
