// host_api.h: the CUDA runtime API as the emulation (runtime.h) gives it to host code: errors,
// device and function attributes, occupancy, streams, graph capture, pinned host memory, copies,
// memsets and launches, with CUDA's names and values. Included by runtime.h (after dim3); the
// implementations are in device_model.cpp, launch.cpp, streams.cpp and host_memory.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

// -- errors, streams, attributes (the values CUDA's headers give them) ---------------------------

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorIllegalState = 401,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorLaunchFailure = 719,
  cudaErrorCooperativeLaunchTooLarge = 720,
  cudaErrorNotSupported = 801,
  cudaErrorStreamCaptureUnsupported = 900,
  cudaErrorStreamCaptureInvalidated = 901,
};

struct CUstream_st;
typedef CUstream_st* cudaStream_t;
#define cudaStreamLegacy ((cudaStream_t)0x1)
#define cudaStreamPerThread ((cudaStream_t)0x2)
#define cudaStreamDefault 0x00
#define cudaStreamNonBlocking 0x01

struct CUgraph_st;
typedef CUgraph_st* cudaGraph_t;
struct CUgraphExec_st;
typedef CUgraphExec_st* cudaGraphExec_t;

enum cudaStreamCaptureStatus {
  cudaStreamCaptureStatusNone = 0,
  cudaStreamCaptureStatusActive = 1,
  cudaStreamCaptureStatusInvalidated = 2,
};
enum cudaStreamCaptureMode {
  cudaStreamCaptureModeGlobal = 0,
  cudaStreamCaptureModeThreadLocal = 1,
  cudaStreamCaptureModeRelaxed = 2,
};

typedef void (*cudaHostFn_t)(void* user_data);

#define cudaHostAllocDefault 0x00
#define cudaHostAllocPortable 0x01
#define cudaHostAllocMapped 0x02
#define cudaHostAllocWriteCombined 0x04

enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxBlockDimX = 2,
  cudaDevAttrMaxGridDimX = 5,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrWarpSize = 10,
  cudaDevAttrMaxRegistersPerBlock = 12,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrL2CacheSize = 38,
  cudaDevAttrMaxThreadsPerMultiProcessor = 39,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerMultiprocessor = 81,
  cudaDevAttrMaxRegistersPerMultiprocessor = 82,
  cudaDevAttrCooperativeLaunch = 95,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
  cudaDevAttrMaxBlocksPerMultiprocessor = 106,
  cudaDevAttrReservedSharedMemoryPerBlock = 111,
};

enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
  cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};

struct cudaFuncAttributes {
  size_t sharedSizeBytes, constSizeBytes, localSizeBytes;
  int maxThreadsPerBlock, numRegs, ptxVersion, binaryVersion, cacheModeCA;
  int maxDynamicSharedSizeBytes, preferredShmemCarveout;
};

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

namespace gru_emu {

// -- the device, its functions and errors (device_model.cpp) -------------------------------------

cudaError_t set_function_attribute(const void* func, cudaFuncAttribute attr, int value);
cudaError_t function_attributes(cudaFuncAttributes* attr, const void* func);
cudaError_t occupancy(int* blocks, const void* func, int threads, size_t smem);
cudaError_t device_attribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t get_last_error(bool reset);
void set_last_error(cudaError_t err);
// CUDA's text for err; for a failure the emulation found (a failed launch, a copy from freed
// memory), with what it found, the last such on this host thread.
const char* error_string(cudaError_t err);
const char* error_name(cudaError_t err);
// What made the last failure of queued work on this host thread fail ("" if none).
const char* last_failure();

// -- launches (launch.cpp) -----------------------------------------------------------------------

using Body = std::function<void()>;
// Checks the launch as CUDA does when it is made (errors are returned here), then queues it on
// `stream`: its threads run when the stream's work runs (streams.cpp).
cudaError_t launch(const void* func, dim3 grid, dim3 block, size_t smem, bool cooperative,
                   cudaStream_t stream, Body body);

// Packs a kernel's arguments (CUDA's void** convention) into copies of its parameters, as a
// launch copies them, and returns the body every thread runs.
template <typename... P, size_t... I>
Body bind(void (*func)(P...), void** args, std::index_sequence<I...>) {
  return [func, values = std::tuple<std::decay_t<P>...>(
                    *static_cast<std::decay_t<P>*>(args[I])...)]() mutable {
    func(std::get<I>(values)...);
  };
}

// -- streams, graphs, copies (streams.cpp) -------------------------------------------------------

cudaError_t stream_create(cudaStream_t* stream);
cudaError_t stream_destroy(cudaStream_t stream);
// Runs the work queued on `stream` (every stream: synchronize_all), in order.
cudaError_t synchronize(cudaStream_t stream);
cudaError_t synchronize_all();
cudaError_t begin_capture(cudaStream_t stream, cudaStreamCaptureMode mode);
cudaError_t end_capture(cudaStream_t stream, cudaGraph_t* graph);
cudaError_t capture_status(cudaStream_t stream, cudaStreamCaptureStatus* status);
cudaError_t graph_instantiate(cudaGraphExec_t* exec, cudaGraph_t graph);
cudaError_t graph_launch(cudaGraphExec_t exec, cudaStream_t stream);
cudaError_t graph_destroy(cudaGraph_t graph);
cudaError_t graph_exec_destroy(cudaGraphExec_t exec);
cudaError_t memcpy_async(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                         cudaStream_t stream);
cudaError_t memcpy_sync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t memset_2d_async(void* dst, size_t pitch, int value, size_t width, size_t height,
                            cudaStream_t stream);
cudaError_t launch_host_func(cudaStream_t stream, cudaHostFn_t fn, void* user_data);

// -- pinned host memory (host_memory.cpp) --------------------------------------------------------

cudaError_t host_alloc(void** ptr, size_t bytes, unsigned flags);
cudaError_t host_free(void* ptr);

}  // namespace gru_emu

// -- the runtime API -----------------------------------------------------------------------------

inline cudaError_t cudaGetLastError() { return gru_emu::get_last_error(true); }
inline cudaError_t cudaPeekAtLastError() { return gru_emu::get_last_error(false); }
inline const char* cudaGetErrorString(cudaError_t err) { return gru_emu::error_string(err); }
inline const char* cudaGetErrorName(cudaError_t err) { return gru_emu::error_name(err); }

inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  return gru_emu::device_attribute(value, attr, device);
}
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int device) {
  return device == 0 ? cudaSuccess : cudaErrorInvalidDevice;
}
inline cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}

inline cudaError_t cudaStreamCreate(cudaStream_t* stream) { return gru_emu::stream_create(stream); }
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned) {
  return gru_emu::stream_create(stream);
}
inline cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  return gru_emu::stream_destroy(stream);
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  return gru_emu::synchronize(stream);
}
inline cudaError_t cudaDeviceSynchronize() { return gru_emu::synchronize_all(); }
inline cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode) {
  return gru_emu::begin_capture(stream, mode);
}
inline cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
  return gru_emu::end_capture(stream, graph);
}
inline cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status) {
  return gru_emu::capture_status(stream, status);
}
inline cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph,
                                        unsigned long long = 0) {
  return gru_emu::graph_instantiate(exec, graph);
}
inline cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
  return gru_emu::graph_launch(exec, stream);
}
inline cudaError_t cudaGraphDestroy(cudaGraph_t graph) { return gru_emu::graph_destroy(graph); }
inline cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  return gru_emu::graph_exec_destroy(exec);
}
inline cudaError_t cudaLaunchHostFunc(cudaStream_t stream, cudaHostFn_t fn, void* user_data) {
  return gru_emu::launch_host_func(stream, fn, user_data);
}

inline cudaError_t cudaHostAlloc(void** ptr, size_t bytes, unsigned flags) {
  return gru_emu::host_alloc(ptr, bytes, flags);
}
inline cudaError_t cudaMallocHost(void** ptr, size_t bytes) {
  return gru_emu::host_alloc(ptr, bytes, cudaHostAllocDefault);
}
inline cudaError_t cudaFreeHost(void* ptr) { return gru_emu::host_free(ptr); }

inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                                   cudaStream_t stream = nullptr) {
  return gru_emu::memcpy_async(dst, src, bytes, kind, stream);
}
inline cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  return gru_emu::memcpy_sync(dst, src, bytes, kind);
}
inline cudaError_t cudaMemset2DAsync(void* dst, size_t pitch, int value, size_t width,
                                     size_t height, cudaStream_t stream = nullptr) {
  return gru_emu::memset_2d_async(dst, pitch, value, width, height, stream);
}
inline cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes,
                                   cudaStream_t stream = nullptr) {
  return gru_emu::memset_2d_async(dst, bytes, value, bytes, 1, stream);
}

template <typename F>
inline cudaError_t cudaFuncSetAttribute(F* func, cudaFuncAttribute attr, int value) {
  return gru_emu::set_function_attribute(reinterpret_cast<const void*>(func), attr, value);
}
template <typename F>
inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, F* func) {
  return gru_emu::function_attributes(attr, reinterpret_cast<const void*>(func));
}
template <typename F>
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, F* func,
                                                                 int threads, size_t smem) {
  return gru_emu::occupancy(blocks, reinterpret_cast<const void*>(func), threads, smem);
}

template <typename... P>
inline cudaError_t cudaLaunchKernel(void (*func)(P...), dim3 grid, dim3 block, void** args,
                                    size_t smem = 0, cudaStream_t stream = nullptr) {
  return gru_emu::launch(reinterpret_cast<const void*>(func), grid, block, smem, false, stream,
                         gru_emu::bind(func, args, std::index_sequence_for<P...>()));
}
template <typename... P>
inline cudaError_t cudaLaunchCooperativeKernel(void (*func)(P...), dim3 grid, dim3 block,
                                               void** args, size_t smem = 0,
                                               cudaStream_t stream = nullptr) {
  return gru_emu::launch(reinterpret_cast<const void*>(func), grid, block, smem, true, stream,
                         gru_emu::bind(func, args, std::index_sequence_for<P...>()));
}
