// runtime.h: CUDA's execution model on host threads, so that gru_native's CUDA kernels
// (csrc/cuda/*.cu, unchanged) and its CUDA backend (gru_cuda.cpp and the device layer
// device_cuda.cpp, unchanged) run on a machine without a GPU, in CI, checked against nn.GRU like
// the CPU path.
//
// What it is. The host compiler compiles the CUDA code with this folder's include/ first on the
// include path: its <cuda_runtime.h>, <cooperative_groups.h>, <cuda_fp16.h> and <cuda_bf16.h>
// are this header, its <cublas_v2.h> is cublas.h. It supplies what the kernels and the backend
// use of CUDA, and nothing else:
//   - qualifiers (__global__, __device__, __host__, __forceinline__, __launch_bounds__,
//     __align__); static __shared__ variables are refused at compile time, dynamic shared
//     memory is declared with GRU_DYNAMIC_SHARED(name) (kernels.cu's one spelling of it);
//   - threadIdx, blockIdx, blockDim, gridDim, warpSize; __syncthreads(), __syncwarp(),
//     __shfl_sync / _xor / _down / _up, __threadfence(); __ldg (a plain load), __ldcg (an
//     atomic load, so that the coherence check tells it apart); atomicAdd;
//   - cooperative_groups::this_grid().sync() and this_thread_block().sync();
//   - __half and __nv_bfloat16 with CUDA's round-to-nearest-even conversions (no implicit
//     conversions, as torch's extension builds define __CUDA_NO_HALF_CONVERSIONS__);
//   - the runtime API (host_api.h): errors, device and function attributes, occupancy,
//     launches, streams, graph capture, pinned host memory, copies and memsets;
//   - cuBLAS's strided batched GEMM (cublas.h).
//
// Streams (streams.cpp). A launch is checked when it is made (its configuration, the shared
// memory, a cooperative grid's size: those errors are returned at once, as CUDA's are), then it
// waits in its stream's queue with the copies, memsets, GEMMs and host functions queued there;
// the queue runs, in order, at a synchronisation point: cudaStreamSynchronize,
// cudaDeviceSynchronize, cudaMemcpy, a copy to pageable host memory, and the torch seam's
// hand_back at the end of every op (../torch_cuda.h), where torch's CPU side reads the results.
// What a kernel found wrong then fails the synchronisation (cudaErrorLaunchFailure; a copy from
// freed pinned memory: cudaErrorIllegalAddress), with what was found in cudaGetErrorString's text
// (and gru_emu::last_failure()). So work that reads host memory freed before it runs fails:
//   - pinned memory (host_memory.cpp) is filled with 0xff bytes when freed and remembered: a
//     queued copy that meets it fails instead of reading it; a copy from pageable memory is
//     staged when it is made, as CUDA stages it;
//   - device memory (device_memory.cpp: CPU tensors, from a wrapped CPU allocator) starts as
//     0xff bytes (NaN in every float type), sits between two 1 KiB guards of 0xff bytes (a read
//     past a tensor's end reads NaN), and is freed in its stream's order as torch's caching
//     allocator frees it: filled with 0xff bytes after the work queued before the free.
// While a stream captures (cudaStreamBeginCapture), its work goes into a graph; each
// cudaGraphLaunch queues it again; memory freed during the capture lives as long as the graph.
//
// How threads run (launch.cpp, fibers.cpp, os_threads.cpp). Every thread of a block really runs,
// and the threads of a block interleave at every barrier:
//   GRU_NATIVE_EMULATION_THREADS=fiber  (default) each CUDA thread is a fiber (its own stack) on
//       the host thread that runs the queue; a fiber runs until it reaches a barrier or ends,
//       then the next one runs. A barrier releases its group once every thread of it that has
//       not exited has arrived; the released threads resume in thread order after even-numbered
//       barriers and in reverse order after odd ones (GRU_NATIVE_EMULATION_ORDER=forward|
//       reverse|alternate|random, with GRU_NATIVE_EMULATION_SEED), so that a read that a missing
//       barrier leaves unordered sees the wrong value in one of the orders.
//   GRU_NATIVE_EMULATION_THREADS=os  each CUDA thread is an OS thread, barriers are mutex and
//       condition variable, so ThreadSanitizer sees every unordered pair of accesses (racecheck)
//       and AddressSanitizer every access past a buffer, shared memory included (memcheck).
//       Sanitizer builds use it always.
// A cooperative launch makes every block resident at once; an ordinary launch runs its blocks in
// waves of as many as the device holds resident (fibers) or a few (OS threads); a wave's blocks
// start in an order shuffled by GRU_NATIVE_EMULATION_SEED and interleave at their barriers, so
// that a race between blocks can show. Barriers count the threads that have not exited, as on the
// GPU, except that grid.sync() waits for every block: a block that exits while others wait at
// grid.sync(), or before a grid.sync() they reach, fails the launch (a GPU hangs there). A barrier
// that can never complete (threads waiting at different barriers), or grid.sync() in a launch
// that was not cooperative, fails the launch too. Shared memory starts filled with 0xff bytes, so
// reading it before writing it shows.
//
// The coherence check (coherence.cpp), for kernels compiled with instrumented loads and stores
// (the checks driver's coherence run: checks/tsan_hooks.cpp): per launch, which block wrote
// which address; a load of another block's write that nothing orders (an ordinary launch, or no
// grid.sync() between), or that a plain load or __ldg makes after grid.sync() (only __ldcg,
// volatile and atomic loads bypass the caches), fails the launch.
//
// The emulated device (device_model.cpp; device 0, compute capability 9.0), read from the
// environment at every query so that a test can change it between calls:
//   GRU_NATIVE_EMULATION_SMS           multiprocessors (default 8; an H100 SXM has 132)
//   GRU_NATIVE_EMULATION_SMEM          opt-in dynamic shared memory per block, bytes (default
//                                      232448, an H100's); 48 KiB without cudaFuncSetAttribute
//   GRU_NATIVE_EMULATION_SMEM_PER_SM   shared memory per multiprocessor (default 233472)
//   GRU_NATIVE_EMULATION_COOPERATIVE   0: no cooperative launches (default 1)
// Occupancy follows CUDA's limits (2048 threads, 32 blocks, 65536 registers and the shared memory
// per multiprocessor, 1 KiB of it reserved per block), with each kernel's registers per thread as
// ptxas allocates them for sm_90 (registers.inc, checked against ptxas by .ci/compile_cuda; 32
// for a kernel not in it); a cooperative launch of more blocks than SMs x occupancy fails with
// cudaErrorCooperativeLaunchTooLarge, as CUDA's does.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#ifndef GRU_NATIVE_CUDA_EMULATION
#define GRU_NATIVE_CUDA_EMULATION 1
#endif

// -- qualifiers ----------------------------------------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
// A static __shared__ variable would be one per host thread, not one per block: refused.
#define __shared__ gru_emulation_supports_only_dynamic_shared_memory_use_GRU_DYNAMIC_SHARED
#define __constant__ gru_emulation_does_not_support_constant_memory

// Dynamic shared memory of the running block (extern __shared__ on the GPU).
#define GRU_DYNAMIC_SHARED(name) unsigned char* const name = ::gru_emu::dynamic_shared_memory()

// -- vector and index types ----------------------------------------------------------------------

struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1)
      : x(x_), y(y_), z(z_) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}  // NOLINT: CUDA's implicit conversion
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) double2 {
  double x, y;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

#include "cuda/emulation/host_api.h"

// -- the runtime (launch.cpp, device_model.cpp; runtime_internal.h says which file does what) ----

namespace gru_emu {

struct Warp;
struct Block;
struct Launch;

// What a CUDA thread knows about itself.
struct ThreadState {
  uint3 thread_idx, block_idx;
  dim3 block_dim, grid_dim;
  int rank = 0;        // linear index in the block
  int grid_syncs = 0;  // grid.sync() calls it has passed
  unsigned char* smem = nullptr;
  const char* stack_lo = nullptr;  // its stack (the coherence check skips it)
  const char* stack_hi = nullptr;
  Block* block = nullptr;
  Warp* warp = nullptr;
  Launch* launch = nullptr;
};

// Initial-exec: one pointer of static TLS, read at every threadIdx (not a __tls_get_addr call).
extern thread_local ThreadState* current_thread __attribute__((tls_model("initial-exec")));

inline const ThreadState& self() { return *current_thread; }
inline unsigned char* dynamic_shared_memory() { return current_thread->smem; }

void sync_block();
void sync_grid();
void sync_warp(unsigned mask);
// The warp's exchange: every lane of the warp publishes `value`; returns lane `src`'s (its own
// if `src` is outside the warp or not in `mask`).
uint64_t warp_exchange(unsigned mask, uint64_t value, int src);
int lane_id();

}  // namespace gru_emu

#define threadIdx (::gru_emu::self().thread_idx)
#define blockIdx (::gru_emu::self().block_idx)
#define blockDim (::gru_emu::self().block_dim)
#define gridDim (::gru_emu::self().grid_dim)
#define warpSize 32

inline void __syncthreads() { gru_emu::sync_block(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { gru_emu::sync_warp(mask); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// __ldg: a load through the read-only (non-coherent) cache: a plain load here. __ldcg: a load
// that bypasses L1, coherent across blocks after grid.sync(): an atomic (relaxed) load here, so
// that the coherence check (coherence.cpp) tells it from a plain one. A 16-byte vector (float4,
// the kernels' staging loads: ld.global.cg.v4) is two atomic 8-byte loads.
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
template <typename T>
inline T __ldcg(const T* p) {
  static_assert(std::is_trivially_copyable<T>::value &&
                    (sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8 || sizeof(T) == 16),
                "__ldcg of 2, 4, 8 or 16 bytes");
  T v;
  if constexpr (sizeof(T) == 16) {
    const uint64_t* q = reinterpret_cast<const uint64_t*>(p);
    const uint64_t halves[2] = {__atomic_load_n(q, __ATOMIC_RELAXED),
                                __atomic_load_n(q + 1, __ATOMIC_RELAXED)};
    std::memcpy(&v, halves, 16);
  } else {
    __atomic_load(p, &v, __ATOMIC_RELAXED);
  }
  return v;
}

inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline float atomicAdd(float* p, float v) {
  float old = __ldcg(p), updated;
  do {
    updated = old + v;
  } while (!__atomic_compare_exchange(p, &old, &updated, false, __ATOMIC_RELAXED,
                                      __ATOMIC_RELAXED));
  return old;
}

namespace gru_emu {
template <typename T>
inline T shuffle(unsigned mask, T value, int src) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable<T>::value,
                "shuffles move at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = warp_exchange(mask, bits, src);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}
// The lane a width-wide segment's lane `lane` reads for each kind of shuffle.
inline int segment_base(int width) { return lane_id() & ~(width - 1); }
}  // namespace gru_emu

template <typename T>
inline T __shfl_sync(unsigned mask, T value, int src, int width = 32) {
  return gru_emu::shuffle(mask, value, gru_emu::segment_base(width) + (src & (width - 1)));
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  const int lane = gru_emu::lane_id();
  const int src = lane ^ lane_mask;
  const bool inside = (src & ~(width - 1)) == (lane & ~(width - 1));
  return gru_emu::shuffle(mask, value, inside ? src : lane);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = 32) {
  const int lane = gru_emu::lane_id();
  const int src = lane + static_cast<int>(delta);
  const bool inside = (src & ~(width - 1)) == (lane & ~(width - 1));
  return gru_emu::shuffle(mask, value, inside ? src : lane);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T value, unsigned delta, int width = 32) {
  const int lane = gru_emu::lane_id();
  const int src = lane - static_cast<int>(delta);
  const bool inside = src >= (lane & ~(width - 1));
  return gru_emu::shuffle(mask, value, inside ? src : lane);
}

// -- cooperative groups --------------------------------------------------------------------------

namespace cooperative_groups {
class grid_group {
 public:
  void sync() const { gru_emu::sync_grid(); }
  unsigned long long size() const {
    const auto& s = gru_emu::self();
    return 1ull * s.grid_dim.x * s.grid_dim.y * s.grid_dim.z * s.block_dim.x * s.block_dim.y *
           s.block_dim.z;
  }
};
class thread_block {
 public:
  void sync() const { gru_emu::sync_block(); }
  unsigned size() const {
    const auto& s = gru_emu::self();
    return s.block_dim.x * s.block_dim.y * s.block_dim.z;
  }
  unsigned thread_rank() const { return static_cast<unsigned>(gru_emu::self().rank); }
};
inline grid_group this_grid() { return grid_group(); }
inline thread_block this_thread_block() { return thread_block(); }
}  // namespace cooperative_groups

// -- half types: storage, and CUDA's conversions (round to nearest even) -------------------------

struct __half {
  unsigned short __x;
};
struct __nv_bfloat16 {
  unsigned short __x;
};

namespace gru_emu {
inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// IEEE binary16 from binary32, round to nearest even, with subnormals: the float adds below
// round at bit 13 of the scaled value (the hardware's rounding); NaN becomes the quiet NaN 0x7e00.
inline unsigned short half_from_float(float f) {
  const uint32_t w = float_bits(f);
  const uint32_t sign = (w >> 16) & 0x8000u;
  const uint32_t twice = w + w;  // without the sign
  if (twice > 0xff000000u) return static_cast<unsigned short>(sign | 0x7e00u);  // NaN
  // Scale so that the result's last bit sits at a float's rounding position.
  float base = (std::fabs(f) * 0x1.0p+112f) * 0x1.0p-110f;
  uint32_t bias = twice & 0xff000000u;
  if (bias < 0x71000000u) bias = 0x71000000u;
  base = bits_float((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = float_bits(base);
  const uint32_t nonsign = ((bits >> 13) & 0x7c00u) + (bits & 0x0fffu);
  return static_cast<unsigned short>(sign | nonsign);
}
inline float half_to_float(unsigned short h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 0x1f) return bits_float(sign | 0x7f800000u | (mant << 13));  // inf, NaN
  if (exp == 0) {  // zero or subnormal: mant * 2^-24, exact in float
    const float v = static_cast<float>(mant) * 0x1.0p-24f;
    return sign ? -v : v;
  }
  return bits_float(sign | ((exp + 112) << 23) | (mant << 13));
}
inline unsigned short bfloat16_from_float(float f) {
  const uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<unsigned short>((u >> 16) | 0x40u);
  return static_cast<unsigned short>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
inline float bfloat16_to_float(unsigned short b) {
  return bits_float(static_cast<uint32_t>(b) << 16);
}
}  // namespace gru_emu

inline __half __float2half_rn(float f) { return __half{gru_emu::half_from_float(f)}; }
inline float __half2float(__half h) { return gru_emu::half_to_float(h.__x); }
inline __half __ushort_as_half(unsigned short u) { return __half{u}; }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  return __nv_bfloat16{gru_emu::bfloat16_from_float(f)};
}
inline float __bfloat162float(__nv_bfloat16 b) { return gru_emu::bfloat16_to_float(b.__x); }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return __nv_bfloat16{u}; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.__x; }
