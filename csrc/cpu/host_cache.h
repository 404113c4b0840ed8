// host_cache.h: reused host memory for the ops' large internal tensors (workspace, lower-layer
// outputs, scratch).
//
// glibc hands allocations above its mmap threshold (at most 32 MB) back to the kernel when they
// are freed, and heap memory above its trim threshold too, so every call of the ops would fault
// in freshly zeroed pages, a large share of a call at large shapes (benchmarks/NOTES.md).
// Freed blocks are kept here and handed out again instead.
//
// The tensors the ops return (outputs, h_n, gradients) come from here too: a fresh weight
// gradient is faulted in likewise whenever the allocations around it have left glibc's heap
// trimmed, a large share of a training step at few steps and a small batch. They are ordinary
// CPU tensors: their storage is resizable and has this cache's allocator, so resize_,
// share_memory_ and the rest behave as on any CPU tensor; freeing one returns its block here.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace gru_native::cpu {

// A contiguous CPU tensor of `sizes` and `dtype`, uninitialised. Small requests go to c10's CPU
// allocator; large ones reuse a cached block when one fits.
at::Tensor cached_empty(at::IntArrayRef sizes, at::ScalarType dtype);

// The same for a tensor returned to the caller, who may keep it: a cached block is reused only
// when it is at most an eighth longer than asked.
at::Tensor cached_result(at::IntArrayRef sizes, at::ScalarType dtype);

// Frees every cached block that no tensor is using; returns the bytes released.
int64_t release_cached_blocks();

// Bytes held by free cached blocks.
int64_t cached_bytes();

}  // namespace gru_native::cpu
