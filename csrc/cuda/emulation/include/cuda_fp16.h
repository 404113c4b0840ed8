// The CUDA emulation's <cuda_fp16.h>: everything is in runtime.h (see there).
#pragma once
#include "cuda/emulation/runtime.h"
