// The CUDA emulation's <cuda_runtime.h>: everything is in runtime.h (see there).
#pragma once
#include "cuda/emulation/runtime.h"
