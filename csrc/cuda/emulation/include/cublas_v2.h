// The CUDA emulation's <cublas_v2.h>: the part of cuBLAS the backend calls is in cublas.h (see
// there).
#pragma once
#include "cuda/emulation/cublas.h"
