// persistent_plan.cpp: whether and how the persistent kernels (kernels.cu) run a layer on a
// device: blocks, units per block, passes, rows per chunk, shared memory (kernels.cuh,
// plan_persistent). Host code only, on the CUDA runtime API: one source for a GPU and the CUDA
// emulation.
//
// What the plan asks of the runtime is asked once and kept: per device, its multiprocessors,
// cooperative launches and opt-in shared memory per block; per (device, kernel, dynamic shared
// memory), the blocks resident on a multiprocessor, after the kernel's dynamic shared memory limit
// is raised to the device's opt-in maximum (the same value on every call: a per-call size could
// be lowered by another host thread between a plan and its launch).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>

#include "cuda/kernels.cuh"

namespace gru_native::cuda {
namespace {

struct DeviceFacts {
  bool ok = false;
  int sms = 0, cooperative = 0, max_smem = 0;
};

std::mutex facts_mutex;
int64_t runtime_queries = 0;  // under facts_mutex
std::map<int, DeviceFacts>& device_facts() {
  static auto* kept = new std::map<int, DeviceFacts>();  // never destroyed
  return *kept;
}
using ResidencyKey = std::tuple<int, const void*, size_t>;
std::map<ResidencyKey, int>& residency() {
  static auto* kept = new std::map<ResidencyKey, int>();
  return *kept;
}

DeviceFacts facts_of(int device) {
  const std::lock_guard<std::mutex> lock(facts_mutex);
  const auto known = device_facts().find(device);
  if (known != device_facts().end()) return known->second;
  ++runtime_queries;
  DeviceFacts f;
  f.ok = cudaDeviceGetAttribute(&f.sms, cudaDevAttrMultiProcessorCount, device) == cudaSuccess &&
         cudaDeviceGetAttribute(&f.cooperative, cudaDevAttrCooperativeLaunch, device) ==
             cudaSuccess &&
         cudaDeviceGetAttribute(&f.max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) ==
             cudaSuccess;
  if (!f.ok) cudaGetLastError();  // clear the failed query's error
  device_facts()[device] = f;
  return f;
}

// Blocks of `kernel` with `smem` bytes of dynamic shared memory resident on one multiprocessor of
// `device` (0 where the runtime refuses the queries).
// (The runtime's C entry points, which take the kernel as a const void*: its C++ overloads for
// kernel pointers are declared only under nvcc, and this file is host C++.)
int resident_blocks(int device, const void* kernel, size_t smem, int max_smem) {
  const std::lock_guard<std::mutex> lock(facts_mutex);
  const ResidencyKey key(device, kernel, smem);
  const auto known = residency().find(key);
  if (known != residency().end()) return known->second;
  ++runtime_queries;
  int resident = 0;
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, max_smem) !=
          cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, kPersistentThreads,
                                                    smem) != cudaSuccess) {
    cudaGetLastError();
    resident = 0;
  }
  residency()[key] = resident;
  return resident;
}

}  // namespace

template <typename T>
PersistentPlan plan_persistent(int D, int64_t N, int64_t H, bool backward, int device) {
  PersistentPlan plan;
  plan.max_hidden = 32 * static_cast<int64_t>(persistent_max_kt<T>());
  if (N <= 0 || H <= 0 || H > plan.max_hidden) return plan;
  const DeviceFacts dev = facts_of(device);
  if (!dev.ok || !dev.cooperative) return plan;
  int kt = 2;  // the register tile: 32 kt >= H
  while (32 * static_cast<int64_t>(kt) < H) kt *= 2;
  // One block per multiprocessor at most, as many as give every warp one unit (pass 0 in
  // registers); where the multiprocessors run out, more units per block (passes >= 1 in shared
  // memory), spread evenly.
  const int64_t per_dir = dev.sms / D;
  if (per_dir < 1) return plan;
  int64_t units = kPersistentUnitsPerPass;
  int64_t blocks = (H + units - 1) / units;
  if (blocks > per_dir) {
    blocks = per_dir;
    units = (H + blocks - 1) / blocks;
    blocks = (H + units - 1) / units;
  }
  // The backward's pointwise pass counts a block's (row, unit) pairs in 32 bits.
  if (N * units >= (int64_t{1} << 31)) return plan;
  const int passes = static_cast<int>((units + kPersistentUnitsPerPass - 1) /
                                      kPersistentUnitsPerPass);
  // Rows staged per chunk: as many as shared memory holds, at most the batch.
  int chunk = static_cast<int>(std::min<int64_t>(N, 64));
  while (chunk > 0 && persistent_smem<T>(backward, kt, passes, chunk) >
                          static_cast<size_t>(dev.max_smem)) {
    --chunk;
  }
  if (chunk < 1) return plan;
  const size_t smem = persistent_smem<T>(backward, kt, passes, chunk);
  PersistentKernel<T> kernel = persistent_kernel<T>(backward, kt);
  if (kernel == nullptr ||
      static_cast<int64_t>(resident_blocks(device, reinterpret_cast<const void*>(kernel), smem,
                                           dev.max_smem)) * dev.sms <
          blocks * D) {
    return plan;
  }
  plan.fits = true;
  plan.threads = kPersistentThreads;
  plan.kt = kt;
  plan.smem = smem;
  plan.shape.blocks_per_direction = static_cast<int>(blocks);
  plan.shape.units = static_cast<int>(units);
  plan.shape.passes = passes;
  plan.shape.chunk = chunk;
  plan.shape.by_units = FastDivisor(static_cast<uint32_t>(units));
  return plan;
}

int64_t plan_queries() {
  const std::lock_guard<std::mutex> lock(facts_mutex);
  return runtime_queries;
}

void forget_devices() {
  const std::lock_guard<std::mutex> lock(facts_mutex);
  device_facts().clear();
  residency().clear();
}

template PersistentPlan plan_persistent<float>(int, int64_t, int64_t, bool, int);
template PersistentPlan plan_persistent<double>(int, int64_t, int64_t, bool, int);
template PersistentPlan plan_persistent<__half>(int, int64_t, int64_t, bool, int);
template PersistentPlan plan_persistent<__nv_bfloat16>(int, int64_t, int64_t, bool, int);

}  // namespace gru_native::cuda
