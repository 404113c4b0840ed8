// runtime_checks.cpp: the checks driver's checks of the emulation's own semantics (checks.h):
// half conversions against c10's, barriers, cooperative launches, shuffles, launch errors; the
// stream order, pinned memory, graph capture; the emulated cuBLAS; the grid barrier's exits;
// ordinary launches' interleaved blocks; and, in the instrumented build, the coherence check.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cooperative_groups.h>
#include <cublas_v2.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "cuda/emulation/checks/checks.h"
#include "cuda/emulation/runtime.h"

namespace gru_checks {
namespace {

void check_conversions() {
  int bad = 0;
  for (uint32_t h = 0; h < 65536; ++h) {  // every half, every bfloat16
    const float ours = gru_emu::half_to_float(static_cast<unsigned short>(h));
    const float theirs = static_cast<float>(c10::Half(static_cast<uint16_t>(h), c10::Half::from_bits()));
    bad += !(std::memcmp(&ours, &theirs, 4) == 0 || (std::isnan(ours) && std::isnan(theirs)));
    const float b = gru_emu::bfloat16_to_float(static_cast<unsigned short>(h));
    const float bt = static_cast<float>(c10::BFloat16(static_cast<uint16_t>(h), c10::BFloat16::from_bits()));
    bad += !(std::memcmp(&b, &bt, 4) == 0 || (std::isnan(b) && std::isnan(bt)));
  }
  // Floats: every sign, exponent and top mantissa bits, with low bits around every rounding
  // boundary (half: bit 13, bfloat16: bit 16) and a few others.
  const uint32_t lows[] = {0x0000, 0x0001, 0x0fff, 0x1000, 0x1001, 0x1fff, 0x2000, 0x2001,
                           0x7fff, 0x8000, 0x8001, 0xffff, 0x3456, 0xa5a5, 0xedcb, 0x5000};
  for (uint32_t hi = 0; hi < 65536; ++hi) {
    for (uint32_t lo : lows) {
      const uint32_t u = (hi << 16) | lo;
      float f;
      std::memcpy(&f, &u, 4);
      const unsigned short h = gru_emu::half_from_float(f);
      const c10::Half ch(f);
      const bool nan = std::isnan(f);
      bad += nan ? !((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) : h != ch.x;
      const unsigned short b = gru_emu::bfloat16_from_float(f);
      bad += nan ? !std::isnan(gru_emu::bfloat16_to_float(b))
                 : b != c10::detail::round_to_nearest_even(f);
    }
  }
  expect(bad == 0, "half and bfloat16 conversions equal c10's (" + std::to_string(bad) + " differ)");
}

__global__ void reverse_in_shared(int* out) {
  GRU_DYNAMIC_SHARED(smem);
  int* s = reinterpret_cast<int*>(smem);
  const int n = blockDim.x;
  s[threadIdx.x] = static_cast<int>(threadIdx.x + blockIdx.x * n);
  __syncthreads();
  out[blockIdx.x * n + threadIdx.x] = s[n - 1 - threadIdx.x];
}

__global__ void rotate_through_grid(int* buf, int* out, int steps) {
  auto grid = cooperative_groups::this_grid();
  const int id = blockIdx.x * blockDim.x + threadIdx.x;
  const int total = gridDim.x * blockDim.x;
  buf[id] = id;
  for (int s = 0; s < steps; ++s) {
    grid.sync();
    const int v = __ldcg(&buf[(id + 1) % total]);  // another block's write
    grid.sync();
    buf[id] = v + 1;
  }
  out[id] = buf[id];
}

__global__ void warp_sum(float* out) {
  float v = static_cast<float>(threadIdx.x);
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  out[threadIdx.x] = v + __shfl_down_sync(0xffffffffu, 0.0f, 1);
}

__global__ void divergent_barriers(int*) {
  if (threadIdx.x == 0) {
    __syncthreads();
  } else {
    cooperative_groups::this_grid().sync();
  }
}

void check_launches() {
  std::vector<int> out(3 * 64);
  expect(run(reverse_in_shared, false, 3, 64, 64 * sizeof(int), out.data()) == cudaSuccess,
         "a launch with dynamic shared memory");
  bool ok = true;
  for (int b = 0; b < 3; ++b) {
    for (int t = 0; t < 64; ++t) ok &= out[b * 64 + t] == b * 64 + 63 - t;
  }
  expect(ok, "__syncthreads orders shared memory");

  const int blocks = 3, threads = 32, total = blocks * threads;
  std::vector<int> buf(total), rotated(total);
  expect(run(rotate_through_grid, true, blocks, threads, 0, buf.data(), rotated.data(), 4) ==
             cudaSuccess, "a cooperative launch");
  ok = true;
  for (int i = 0; i < total; ++i) ok &= rotated[i] == (i + 4) % total + 4;
  expect(ok, "grid.sync orders global memory across blocks");

  std::vector<float> sums(64);
  expect(run(warp_sum, false, 1, 64, 0, sums.data()) == cudaSuccess, "shuffles");
  expect(sums[0] == 496.0f && sums[40] == 1520.0f, "__shfl_xor_sync sums each warp");

  expect(run(rotate_through_grid, true, 100000, 256, 0, buf.data(), rotated.data(), 1) ==
             cudaErrorCooperativeLaunchTooLarge, "a cooperative launch too large fails");
  (void)cudaGetLastError();
  expect(run(rotate_through_grid, false, 2, 32, 0, buf.data(), rotated.data(), 1) ==
             cudaErrorLaunchFailure, "grid.sync outside a cooperative launch fails");
  (void)cudaGetLastError();
  expect(run(divergent_barriers, true, 1, 64, 0, out.data()) == cudaErrorLaunchFailure &&
             std::strstr(gru_emu::last_failure(), "deadlock") != nullptr,
         "threads at different barriers fail the launch");
  (void)cudaGetLastError();
  expect(run(reverse_in_shared, false, 1, 64, 64 * 1024, out.data()) == cudaErrorInvalidValue,
         "more than 48 KiB of dynamic shared memory without the attribute fails");
  (void)cudaGetLastError();
  expect(cudaFuncSetAttribute(reverse_in_shared, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              64 * 1024) == cudaSuccess &&
             run(reverse_in_shared, false, 1, 64, 64 * 1024, out.data()) == cudaSuccess,
         "with the attribute it runs");
}

// -- streams: queued work, copies, pinned memory, capture ----------------------------------------

__global__ void fill(int* out, int value) { out[blockIdx.x * blockDim.x + threadIdx.x] = value; }

void check_streams() {
  std::vector<int> a(64, 0);
  int* ap = a.data();
  int seven = 7;
  void* args[] = {&ap, &seven};
  expect(cudaLaunchKernel(fill, 1, 64, args, 0, nullptr) == cudaSuccess && a[0] == 0,
         "a launch is queued: its kernel has not run when the launch returns");
  expect(cudaStreamSynchronize(nullptr) == cudaSuccess && a[0] == 7 && a[63] == 7,
         "the queued kernel runs at cudaStreamSynchronize");

  std::vector<int> src(64, 1), dst(64, 0);
  cudaMemcpyAsync(dst.data(), src.data(), 64 * sizeof(int), cudaMemcpyHostToDevice, nullptr);
  src[0] = 5;
  expect(cudaDeviceSynchronize() == cudaSuccess && dst[0] == 1,
         "a copy from pageable memory is staged before cudaMemcpyAsync returns");

  int* pinned = nullptr;
  cudaHostAlloc(reinterpret_cast<void**>(&pinned), 64 * sizeof(int), cudaHostAllocDefault);
  for (int i = 0; i < 64; ++i) pinned[i] = 3;
  cudaMemcpyAsync(dst.data(), pinned, 64 * sizeof(int), cudaMemcpyHostToDevice, nullptr);
  cudaFreeHost(pinned);
  const cudaError_t freed = cudaStreamSynchronize(nullptr);
  expect(freed == cudaErrorIllegalAddress &&
             std::strstr(cudaGetErrorString(freed), "freed with cudaFreeHost") != nullptr,
         "a queued copy from pinned memory freed before it runs fails");
  (void)cudaGetLastError();

  cudaHostAlloc(reinterpret_cast<void**>(&pinned), 64 * sizeof(int), cudaHostAllocDefault);
  for (int i = 0; i < 64; ++i) pinned[i] = 4;
  cudaMemcpyAsync(dst.data(), pinned, 64 * sizeof(int), cudaMemcpyHostToDevice, nullptr);
  cudaLaunchHostFunc(nullptr, [](void* p) { cudaFreeHost(p); }, pinned);
  expect(cudaStreamSynchronize(nullptr) == cudaSuccess && dst[0] == 4,
         "pinned memory freed in stream order, after its copy");

  // Capture: the work goes into a graph, runs at each launch of it; a synchronisation inside
  // the capture invalidates it.
  cudaStream_t s = nullptr;
  cudaStreamCreate(&s);
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  int nine = 9;
  void* args9[] = {&ap, &nine};
  cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal);
  cudaStreamIsCapturing(s, &status);
  cudaLaunchKernel(fill, 1, 64, args9, 0, s);
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  expect(status == cudaStreamCaptureStatusActive &&
             cudaStreamEndCapture(s, &graph) == cudaSuccess && a[0] == 7 &&
             cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess,
         "captured work does not run");
  expect(cudaGraphLaunch(exec, s) == cudaSuccess && cudaStreamSynchronize(s) == cudaSuccess &&
             a[0] == 9,
         "a graph launch runs the captured work");
  a[0] = 0;
  expect(cudaGraphLaunch(exec, s) == cudaSuccess && cudaStreamSynchronize(s) == cudaSuccess &&
             a[0] == 9,
         "and again at the next launch");
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal);
  expect(cudaStreamSynchronize(s) == cudaErrorStreamCaptureUnsupported &&
             cudaStreamEndCapture(s, &graph) == cudaErrorStreamCaptureInvalidated,
         "a synchronisation inside a capture invalidates it");
  (void)cudaGetLastError();
  cudaStreamDestroy(s);
}

// -- cuBLAS --------------------------------------------------------------------------------------

cublasStatus_t sgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                     int k, const float* A, int lda, const float* B, int ldb, float* C, int ldc,
                     long long stride_c = 0, int batch = 1,
                     cublasComputeType_t compute = CUBLAS_COMPUTE_32F) {
  const float alpha = 1, beta = 0;
  return cublasGemmStridedBatchedEx(h, ta, tb, m, n, k, &alpha, A, CUDA_R_32F, lda, 0, B,
                                    CUDA_R_32F, ldb, 0, &beta, C, CUDA_R_32F, ldc, stride_c,
                                    batch, compute, CUBLAS_GEMM_DEFAULT);
}

void check_cublas() {
  cublasHandle_t h = nullptr;
  cublasCreate(&h);
  // C[2, 3] = A^T B with A stored [4, 2] and B [4, 3], column-major; C starts as NaN (beta = 0
  // must not read it).
  std::vector<float> A(8), B(12), C(6, std::numeric_limits<float>::quiet_NaN());
  for (int i = 0; i < 8; ++i) A[i] = 0.5f * i - 1.0f;
  for (int i = 0; i < 12; ++i) B[i] = 0.25f * i + 0.5f;
  expect(sgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, 2, 3, 4, A.data(), 4, B.data(), 4, C.data(), 2) ==
             CUBLAS_STATUS_SUCCESS && cudaDeviceSynchronize() == cudaSuccess,
         "cublasGemmStridedBatchedEx runs");
  bool ok = true;
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 3; ++j) {
      float want = 0;
      for (int k = 0; k < 4; ++k) want += A[k + 4 * i] * B[k + 4 * j];
      ok &= std::fabs(C[i + 2 * j] - want) < 1e-5f;
    }
  }
  expect(ok, "the emulated GEMM is cuBLAS's column-major op(A) op(B), beta = 0 not reading C");
  // cuBLAS's argument errors for the same product (m = 2, n = 3, k = 4).
  struct Bad {
    cublasOperation_t ta, tb;
    int lda, ldb, ldc;
    long long stride_c;
    int batch;
    const char* what;
  };
  const Bad bad[] = {
      {CUBLAS_OP_T, CUBLAS_OP_N, 3, 4, 2, 0, 1, "lda < k for op T"},
      {CUBLAS_OP_N, CUBLAS_OP_N, 1, 4, 2, 0, 1, "lda < m for op N"},
      {CUBLAS_OP_T, CUBLAS_OP_T, 4, 2, 2, 0, 1, "ldb < n for op T"},
      {CUBLAS_OP_T, CUBLAS_OP_N, 4, 4, 1, 0, 1, "ldc < m"},
      {CUBLAS_OP_T, CUBLAS_OP_N, 4, 4, 2, 3, 2, "overlapping output batches"},
  };
  for (const Bad& c : bad) {
    expect(sgemm(h, c.ta, c.tb, 2, 3, 4, A.data(), c.lda, B.data(), c.ldb, C.data(), c.ldc,
                 c.stride_c, c.batch) == CUBLAS_STATUS_INVALID_VALUE,
           std::string(c.what) + ": CUBLAS_STATUS_INVALID_VALUE");
  }
  const float one = 1, zero = 0;
  expect(cublasGemmStridedBatchedEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 1, &one, A.data(),
                                    CUDA_R_16F, 1, 0, B.data(), CUDA_R_32F, 1, 0, &zero,
                                    C.data(), CUDA_R_32F, 1, 0, 1, CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_NOT_SUPPORTED,
         "mixed element types: CUBLAS_STATUS_NOT_SUPPORTED");

  // TF32: 1 + 2^-20 times 1 is 1 when the inputs are rounded to a 10-bit mantissa.
  const float x = 1.0f + 0x1.0p-20f, y = 1.0f;
  float z = 0;
  sgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 1, &x, 1, &y, 1, &z, 1, 0, 1,
        CUBLAS_COMPUTE_32F_FAST_TF32);
  cudaDeviceSynchronize();
  const float tf32 = z;
  sgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 1, &x, 1, &y, 1, &z, 1);
  cudaDeviceSynchronize();
  expect(tf32 == 1.0f && z == x, "CUBLAS_COMPUTE_32F_FAST_TF32 rounds the inputs to TF32");

  // Reduced-precision reduction (16-bit output, K above the split): 2048 + 1 in the first part
  // rounds to 2048 in half, + 1 from the second gives 2049 -> 2048; kept in float, 2050.
  std::vector<c10::Half> ones(512, c10::Half(1.0f)), b(512, c10::Half(0.0f));
  b[0] = c10::Half(2048.0f);
  b[1] = c10::Half(1.0f);
  b[256] = c10::Half(1.0f);
  c10::Half out[2];
  for (int disallow = 0; disallow < 2; ++disallow) {
    cublasSetMathMode(h, disallow ? CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION
                                  : CUBLAS_DEFAULT_MATH);
    cublasGemmStridedBatchedEx(h, CUBLAS_OP_T, CUBLAS_OP_N, 1, 1, 512, &one, ones.data(),
                               CUDA_R_16F, 512, 0, b.data(), CUDA_R_16F, 512, 0, &zero,
                               &out[disallow], CUDA_R_16F, 1, 0, 1, CUBLAS_COMPUTE_32F,
                               CUBLAS_GEMM_DEFAULT);
    cudaDeviceSynchronize();
  }
  expect(static_cast<float>(out[0]) == 2048.0f && static_cast<float>(out[1]) == 2050.0f,
         "16-bit GEMMs reduce in the output type unless the math mode disallows it");
  cublasDestroy(h);
}

// -- the grid barrier and ordinary launches ------------------------------------------------------

__global__ void exit_before_grid_sync(int* out) {
  if (blockIdx.x == 1) return;
  cooperative_groups::this_grid().sync();
  out[blockIdx.x * blockDim.x + threadIdx.x] = 1;
}

// Every block reads x, waits at a barrier, then writes what it read plus one.
__global__ void read_barrier_write(int* x) {
  const int v = x[0];
  __syncthreads();
  if (threadIdx.x == 0) x[0] = v + 1;
}

void check_grid_and_blocks() {
  std::vector<int> out(3 * 32, 0);
  expect(run(exit_before_grid_sync, true, 3, 32, 0, out.data()) == cudaErrorLaunchFailure &&
             std::strstr(gru_emu::last_failure(), "exited") != nullptr,
         "a block that exits before a grid.sync() the others reach fails the launch");
  (void)cudaGetLastError();
// (Fibers only: OS threads need not interleave so; the coherence check reports the race itself.)
#if !defined(GRU_CHECKS_COHERENCE) && !defined(__SANITIZE_THREAD__) && \
    !defined(__SANITIZE_ADDRESS__)
  int x = 0;
  expect(run(read_barrier_write, false, 2, 32, 0, &x) == cudaSuccess && x == 1,
         "the blocks of an ordinary launch interleave at their barriers (the second block "
         "reads x before the first writes it)");
#endif
}

}  // namespace

void check_runtime() {
  check_conversions();
  check_launches();
  check_streams();
  check_cublas();
  check_grid_and_blocks();
}

// -- the coherence check (instrumented kernels only) ---------------------------------------------

namespace {

// Every block's thread 0 adds one to *counter.
__global__ void shared_counter(int* counter) {
  if (threadIdx.x == 0) atomicAdd(counter, 1);
}

// Each block publishes a value, then reads its neighbour's: how = 0 with __ldcg after grid.sync,
// 1 with a plain load after it, 2 before it.
__global__ void publish_then_read(int* buf, int* out, int how) {
  const int id = blockIdx.x, next = (blockIdx.x + 1) % gridDim.x;
  if (threadIdx.x == 0) buf[id] = id + 1;
  if (how == 2 && threadIdx.x == 0) out[id] = buf[next];
  cooperative_groups::this_grid().sync();
  if (threadIdx.x == 0 && how != 2) out[id] = how == 0 ? __ldcg(&buf[next]) : buf[next];
}

}  // namespace

void check_coherence() {
  int counter = 0;
  cudaError_t err = run(shared_counter, false, 4, 32, 0, &counter);
  expect(err == cudaSuccess && counter == 4,
         std::string("blocks of an ordinary launch updating one counter with atomics: ") +
             gru_emu::last_failure());
  (void)cudaGetLastError();
  std::vector<int> buf(4), out(4);
  err = run(publish_then_read, true, 4, 32, 0, buf.data(), out.data(), 0);
  expect(err == cudaSuccess && out[0] == 2 && out[3] == 1,
         std::string("__ldcg of another block's write after grid.sync: ") +
             gru_emu::last_failure());
  (void)cudaGetLastError();
  expect(run(publish_then_read, true, 4, 32, 0, buf.data(), out.data(), 1) ==
                 cudaErrorLaunchFailure &&
             std::strstr(gru_emu::last_failure(), "stale L1") != nullptr,
         "a plain load of another block's write after grid.sync fails the launch");
  (void)cudaGetLastError();
  expect(run(publish_then_read, true, 4, 32, 0, buf.data(), out.data(), 2) ==
                 cudaErrorLaunchFailure &&
             std::strstr(gru_emu::last_failure(), "no grid.sync() orders") != nullptr,
         "a load of another block's write before grid.sync fails the launch");
  (void)cudaGetLastError();
}

}  // namespace gru_checks
