// The CUDA emulation's <cooperative_groups.h>: everything is in runtime.h (see there).
#pragma once
#include "cuda/emulation/runtime.h"
