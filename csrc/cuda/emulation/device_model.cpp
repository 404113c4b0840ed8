// device_model.cpp: the emulated device (runtime.h): its configuration from the environment,
// device and function attributes, the kernels' register counts, occupancy, and the runtime's
// errors.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>

#include "cuda/emulation/runtime_internal.h"

namespace gru_emu {

// -- configuration -------------------------------------------------------------------------------

int env_int(const char* name, int fallback) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return fallback;
  char* end = nullptr;
  const long v = std::strtol(value, &end, 10);
  if (end == value || *end != '\0' || v < 0 || v > (1L << 30)) {
    std::fprintf(stderr, "gru_native emulation: %s=%s is not a non-negative integer; using %d\n",
                 name, value, fallback);
    return fallback;
  }
  return static_cast<int>(v);
}

// CUDA's limits (compute capability 9.0).
namespace {
constexpr int kDefaultDynamicSmem = 48 * 1024;
constexpr int kReservedSmemPerBlock = 1024;
constexpr int kMaxThreadsPerSm = 2048;
constexpr int kMaxBlocksPerSm = 32;
constexpr int kRegistersPerSm = 65536;
}  // namespace

DeviceConfig config() {
  DeviceConfig c;
  c.sms = std::max(1, env_int("GRU_NATIVE_EMULATION_SMS", 8));
  c.smem_optin = env_int("GRU_NATIVE_EMULATION_SMEM", 232448);
  c.smem_per_sm = std::max(env_int("GRU_NATIVE_EMULATION_SMEM_PER_SM", 233472),
                           c.smem_optin + kReservedSmemPerBlock);
  c.cooperative = env_int("GRU_NATIVE_EMULATION_COOPERATIVE", 1) != 0;
  return c;
}

// -- errors --------------------------------------------------------------------------------------

namespace {
thread_local cudaError_t last_error = cudaSuccess;
thread_local std::string failure_text;
}  // namespace

cudaError_t get_last_error(bool reset) {
  const cudaError_t e = last_error;
  if (reset) last_error = cudaSuccess;
  return e;
}
void set_last_error(cudaError_t err) {
  if (err != cudaSuccess) last_error = err;
}
const char* last_failure() { return failure_text.c_str(); }
void set_last_failure(const std::string& why) { failure_text = why; }

namespace {
const char* base_error_string(cudaError_t err);
}  // namespace

const char* error_name(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDeviceFunction: return "cudaErrorInvalidDeviceFunction";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorIllegalState: return "cudaErrorIllegalState";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorCooperativeLaunchTooLarge: return "cudaErrorCooperativeLaunchTooLarge";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
  }
  return "cudaErrorUnknown";
}

const char* error_string(cudaError_t err) {
  if ((err != cudaErrorLaunchFailure && err != cudaErrorIllegalAddress) || failure_text.empty()) {
    return base_error_string(err);
  }
  thread_local std::string text;
  text = std::string(base_error_string(err)) + " (CUDA emulation: " + failure_text + ")";
  return text.c_str();
}

namespace {
const char* base_error_string(cudaError_t err) {
  switch (err) {  // CUDA's texts
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorIllegalState: return "the operation cannot be performed in the present state";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorCooperativeLaunchTooLarge:
      return "too many blocks in cooperative launch";
    case cudaErrorNotSupported: return "operation not supported";
    case cudaErrorStreamCaptureUnsupported:
      return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated:
      return "operation failed due to a previous error during capture";
  }
  return "unknown error";
}
}  // namespace

// -- the device ----------------------------------------------------------------------------------

namespace {
std::mutex attribute_mutex;
std::unordered_map<const void*, int>& max_dynamic_smem() {
  static auto* map = new std::unordered_map<const void*, int>();  // never destroyed
  return *map;
}
}  // namespace

int function_max_dynamic_smem(const void* func) {
  std::lock_guard<std::mutex> lock(attribute_mutex);
  auto it = max_dynamic_smem().find(func);
  return it == max_dynamic_smem().end() ? kDefaultDynamicSmem : it->second;
}

namespace {
struct KernelTable {
  std::mutex mutex;
  std::unordered_map<const void*, KernelInfo> kernels;
};
KernelTable& kernel_table() {
  static auto* table = new KernelTable();  // never destroyed
  return *table;
}
}  // namespace

bool register_kernels(const KernelInfo* kernels, size_t n) {
  KernelTable& t = kernel_table();
  std::lock_guard<std::mutex> lock(t.mutex);
  for (size_t i = 0; i < n; ++i) t.kernels[kernels[i].func] = kernels[i];
  return true;
}

int kernel_registers(const void* func) {
  KernelTable& t = kernel_table();
  std::lock_guard<std::mutex> lock(t.mutex);
  auto it = t.kernels.find(func);
  return it == t.kernels.end() ? kUnlistedRegisters : it->second.regs;
}

const char* kernel_name(const void* func) {
  KernelTable& t = kernel_table();
  std::lock_guard<std::mutex> lock(t.mutex);
  auto it = t.kernels.find(func);
  return it == t.kernels.end() ? "a kernel" : it->second.name;
}

int blocks_per_sm(const DeviceConfig& c, int regs, int threads, size_t smem) {
  const int warps = (threads + 31) / 32;
  const int by_threads = kMaxThreadsPerSm / (warps * 32);
  const int regs_per_warp = (regs * 32 + 255) / 256 * 256;
  const int by_regs = kRegistersPerSm / (regs_per_warp * warps);
  const int by_smem = static_cast<int>(static_cast<size_t>(c.smem_per_sm) /
                                       (smem + kReservedSmemPerBlock));
  return std::max(0, std::min({by_threads, by_regs, by_smem, kMaxBlocksPerSm}));
}

cudaError_t device_attribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return cudaErrorInvalidDevice;
  const DeviceConfig c = config();
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; break;
    case cudaDevAttrMaxBlockDimX: *value = 1024; break;
    case cudaDevAttrMaxGridDimX: *value = 2147483647; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = kDefaultDynamicSmem; break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrMaxRegistersPerBlock: *value = kRegistersPerSm; break;
    case cudaDevAttrMultiProcessorCount: *value = c.sms; break;
    case cudaDevAttrL2CacheSize: *value = 50 * 1024 * 1024; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = kMaxThreadsPerSm; break;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = c.smem_per_sm; break;
    case cudaDevAttrMaxRegistersPerMultiprocessor: *value = kRegistersPerSm; break;
    case cudaDevAttrCooperativeLaunch: *value = c.cooperative; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = c.smem_optin; break;
    case cudaDevAttrMaxBlocksPerMultiprocessor: *value = kMaxBlocksPerSm; break;
    case cudaDevAttrReservedSharedMemoryPerBlock: *value = kReservedSmemPerBlock; break;
    default: return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

cudaError_t set_function_attribute(const void* func, cudaFuncAttribute attr, int value) {
  cudaError_t err = cudaSuccess;
  if (func == nullptr) {
    err = cudaErrorInvalidDeviceFunction;
  } else if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || value > config().smem_optin) {
      err = cudaErrorInvalidValue;
    } else {
      std::lock_guard<std::mutex> lock(attribute_mutex);
      max_dynamic_smem()[func] = value;
    }
  } else if (attr == cudaFuncAttributePreferredSharedMemoryCarveout) {
    if (value < -1 || value > 100) err = cudaErrorInvalidValue;
  } else {
    err = cudaErrorInvalidValue;
  }
  set_last_error(err);
  return err;
}

cudaError_t function_attributes(cudaFuncAttributes* attr, const void* func) {
  if (func == nullptr) return cudaErrorInvalidDeviceFunction;
  std::memset(attr, 0, sizeof(*attr));
  attr->maxThreadsPerBlock = 1024;
  attr->numRegs = kernel_registers(func);
  attr->maxDynamicSharedSizeBytes = function_max_dynamic_smem(func);
  attr->ptxVersion = attr->binaryVersion = 90;
  return cudaSuccess;
}

cudaError_t occupancy(int* blocks, const void* func, int threads, size_t smem) {
  *blocks = 0;
  if (func == nullptr) return cudaErrorInvalidDeviceFunction;
  if (threads <= 0 || threads > 1024) return cudaErrorInvalidValue;
  if (smem > static_cast<size_t>(function_max_dynamic_smem(func))) return cudaSuccess;
  *blocks = blocks_per_sm(config(), kernel_registers(func), threads, smem);
  return cudaSuccess;
}

}  // namespace gru_emu
