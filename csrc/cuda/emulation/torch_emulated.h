// torch_emulated.h: what the emulated torch seam (torch_emulated.cpp) adds for the emulation's own
// checks (checks/driver.cpp): torch's notion of the current stream, which Python cannot set here.
#pragma once

#include <cuda_runtime.h>

namespace gru_native::torch_cuda::emulation {

// The stream current_stream() returns on this host thread (nullptr: the legacy default stream).
void set_current_stream(cudaStream_t stream);

}  // namespace gru_native::torch_cuda::emulation
