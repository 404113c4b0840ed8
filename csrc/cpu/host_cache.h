// host_cache.h: reused host memory for the ops' large internal tensors (workspace, lower-layer
// outputs, scratch).
//
// glibc hands allocations above its mmap threshold (at most 32 MB) back to the kernel when they
// are freed, and heap memory above its trim threshold too, so every call of the ops would fault
// in freshly zeroed pages: a quarter of the time at the large canonical shapes (measured with
// getrusage; see benchmarks/NOTES.md). Freed blocks are kept here and handed out again instead.
// Tensors the user sees (outputs, h_n, gradients) never come from here, so they keep the usual
// allocator's behaviour (e.g. resize_).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace gru_native::cpu {

// A contiguous CPU tensor of `numel` elements of `dtype`, uninitialised. Small requests go to
// at::empty; large ones reuse a cached block when one fits.
at::Tensor cached_empty(int64_t numel, at::ScalarType dtype);

// Frees every cached block that no tensor is using; returns the bytes released.
int64_t release_cached_blocks();

// Bytes held by free cached blocks.
int64_t cached_bytes();

}  // namespace gru_native::cpu
