// The CUDA emulation's <cuda_bf16.h>: everything is in runtime.h (see there).
#pragma once
#include "cuda/emulation/runtime.h"
