// kernels.cu: the CUDA kernels (see kernels.cuh). ATen-free: compiles with nvcc alone, and with
// the host compiler against the CUDA emulation (csrc/cuda/emulation/runtime.h), unchanged: kernels
// are launched through the runtime API (cudaLaunchKernel, cudaLaunchCooperativeKernel), dynamic
// shared memory is declared with GRU_DYNAMIC_SHARED, and the one PTX instruction has a plain
// equivalent off the GPU.
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <utility>

#include "cuda/kernels.cuh"
#include "gru_cell.h"

#ifndef GRU_DYNAMIC_SHARED  // the emulation defines its own
#define GRU_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace gru_native::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kPersistentThreads = 256;

// -- element conversions ---------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ typename Acc<T>::type to_acc(T x) {
  return static_cast<typename Acc<T>::type>(x);
}
template <>
__device__ __forceinline__ float to_acc<__half>(__half x) {
  return __half2float(x);
}
template <>
__device__ __forceinline__ float to_acc<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

template <typename T>
__device__ __forceinline__ T from_acc(typename Acc<T>::type x) {
  return static_cast<T>(x);
}
template <>
__device__ __forceinline__ __half from_acc<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// A load that bypasses L1: for values other blocks of a persistent kernel wrote since the last
// grid synchronisation.
template <typename T>
__device__ __forceinline__ typename Acc<T>::type load_cg(const T* p) {
  return to_acc(__ldcg(p));  // float, double: CUDA's __ldcg is volatile asm
}
// CUDA's 16-bit __ldcg overloads are asm without volatile or a memory clobber, which the compiler
// may hoist above grid.sync(): this one is pinned in place. (Off the GPU, in the emulation, a plain
// load: its barriers order memory.)
__device__ __forceinline__ unsigned short load_cg_u16(const void* p) {
#ifdef __CUDA_ARCH__
  unsigned short u;
  asm volatile("ld.global.cg.b16 %0, [%1];" : "=h"(u) : "l"(p) : "memory");
  return u;
#else
  return *static_cast<const unsigned short*>(p);
#endif
}
template <>
__device__ __forceinline__ float load_cg<__half>(const __half* p) {
  return __half2float(__ushort_as_half(load_cg_u16(p)));
}
template <>
__device__ __forceinline__ float load_cg<__nv_bfloat16>(const __nv_bfloat16* p) {
  return __bfloat162float(__ushort_as_bfloat16(load_cg_u16(p)));
}

template <typename T>
__device__ __forceinline__ typename Acc<T>::type bias_at(const T* b, int64_t i) {
  return b ? to_acc(b[i]) : typename Acc<T>::type(0);
}

int blocks_for(int64_t total) {
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(blocks, 65535)));
}

template <typename... P, size_t... I>
cudaError_t launch_with(void (*kernel)(P...), bool cooperative, dim3 grid, dim3 block,
                        size_t smem, cudaStream_t stream, std::tuple<P...>& values,
                        std::index_sequence<I...>) {
  void* args[] = {&std::get<I>(values)...};
  return cooperative ? cudaLaunchCooperativeKernel(kernel, grid, block, args, smem, stream)
                     : cudaLaunchKernel(kernel, grid, block, args, smem, stream);
}

// kernel<<<grid, block, smem, stream>>>(args...), or its cooperative launch.
template <typename... P, typename... A>
cudaError_t launch(void (*kernel)(P...), bool cooperative, dim3 grid, dim3 block, size_t smem,
                   cudaStream_t stream, const A&... args) {
  std::tuple<P...> values(args...);
  return launch_with(kernel, cooperative, grid, block, smem, stream, values,
                     std::index_sequence_for<P...>());
}

// -- the GEMM path's pointwise kernels ---------------------------------------------------------

template <typename T>
__global__ void forward_step_kernel(ForwardStep<T> a) {
  using A = typename Acc<T>::type;
  const int64_t H = a.H, G = kGates * H;
  const int64_t total0 = a.rows[0] * H;
  const int64_t total = total0 + (a.D > 1 ? a.rows[1] * H : 0);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int d = i < total0 ? 0 : 1;
    const int64_t k = d ? i - total0 : i;
    const int64_t b = k / H, j = k % H;
    const T* gi = a.gi[d] + b * G;
    const T* gh = a.gh[d] + b * G;
    const T* bi = a.b_ih[d];
    const T* bh = a.b_hh[d];
    T* h = a.h[d] + b * H + j;
    A r, z, n, hn, h_new;
    gru_cell_forward<A, ScalarAct<A>>(
        to_acc(gi[j]) + bias_at(bi, j), to_acc(gi[H + j]) + bias_at(bi, H + j),
        to_acc(gi[2 * H + j]) + bias_at(bi, 2 * H + j), to_acc(gh[j]), to_acc(gh[H + j]),
        to_acc(gh[2 * H + j]), bias_at(bh, j), bias_at(bh, H + j), bias_at(bh, 2 * H + j),
        to_acc(*h), r, z, n, hn, h_new);
    const T h_t = from_acc<T>(h_new);
    *h = h_t;
    a.out[d][b * a.ld_out + j] = h_t;
    if (a.ws[d]) {
      A* ws = a.ws[d] + b * kWorkspaceGates * H;
      ws[j] = r;
      ws[H + j] = z;
      ws[2 * H + j] = n;
      ws[3 * H + j] = hn;
    }
  }
}

template <typename T>
__global__ void backward_step_kernel(BackwardStep<T> a) {
  using A = typename Acc<T>::type;
  const int64_t H = a.H, G = kGates * H, per_dir = a.N * H;
  const int64_t total = a.D * per_dir;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int d = static_cast<int>(i / per_dir);
    const int64_t k = i - d * per_dir;
    const int64_t b = k / H, j = k % H;
    T* dgs = a.dgs[d] + b * G;
    if (b >= a.rows[d]) {  // not live at this step: no contribution to the recurrent GEMM
      dgs[j] = dgs[H + j] = dgs[2 * H + j] = from_acc<T>(A(0));
      continue;
    }
    const A h_prev = b < a.n_from_out[d] ? to_acc(a.prev_out[d][b * a.ld + j])
                                         : (a.h0[d] ? to_acc(a.h0[d][b * H + j]) : A(0));
    const A* ws = a.ws[d] + b * kWorkspaceGates * H;
    T* dh = a.dh[d] + b * H + j;
    A d_r, d_z, d_n, d_hn, dh_prev;
    gru_cell_backward<A>(to_acc(a.dout[d][b * a.ld + j]) + to_acc(*dh), ws[j], ws[H + j],
                         ws[2 * H + j], ws[3 * H + j], h_prev, d_r, d_z, d_n, d_hn, dh_prev);
    T* dg = a.dg[d] + b * kGradGates * H;
    dg[j] = from_acc<T>(d_r);
    dg[H + j] = from_acc<T>(d_z);
    dg[2 * H + j] = from_acc<T>(d_hn);
    dg[3 * H + j] = from_acc<T>(d_n);
    dgs[j] = dg[j];
    dgs[H + j] = dg[H + j];
    dgs[2 * H + j] = dg[2 * H + j];
    a.hp[d][b * H + j] = from_acc<T>(h_prev);
    *dh = from_acc<T>(dh_prev);
  }
}

template <typename T>
__global__ void column_sum_kernel(int64_t rows, int64_t cols, const T* src, int64_t ld,
                                  T* dst) {
  using A = typename Acc<T>::type;
  // Sequential sums over blocks of rows, then the sum of the block sums, in row order: the
  // same order on every run; rounding grows with rows / 256 + 256 rather than with rows.
  constexpr int64_t kBlock = 256;
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < cols;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    A total = 0;
    for (int64_t r0 = 0; r0 < rows; r0 += kBlock) {
      const int64_t r1 = r0 + kBlock < rows ? r0 + kBlock : rows;
      A part = 0;
      for (int64_t r = r0; r < r1; ++r) part += to_acc(src[r * ld + c]);
      total += part;
    }
    dst[c] = from_acc<T>(total);
  }
}

template <typename T>
__global__ void multiply_kernel(int64_t n, const T* a, const T* b, T* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = from_acc<T>(to_acc(a[i]) * to_acc(b[i]));
  }
}

// -- the persistent path -------------------------------------------------------------------------
//
// Block b serves direction d = b / blocks_per_direction and hidden units [j0, j0 + w) of it.
// Shared memory: its slice of W_hh, k-major so that neighbouring threads read neighbouring words
// (forward: Ws[k][g * slice + jj] = W_hh[g*H + j0 + jj][k], k < H; backward: Ws[k][jj] =
// W_hh[k][j0 + jj], k < 3H), then Acc scratch.

__host__ __device__ inline size_t align16(size_t bytes) { return (bytes + 15) / 16 * 16; }

template <typename T>
__host__ __device__ inline size_t forward_smem(int64_t N, int64_t H, int64_t slice) {
  using A = typename Acc<T>::type;
  return align16(H * kGates * slice * sizeof(T)) + align16(N * H * sizeof(A)) +
         align16(N * kGates * slice * sizeof(A));
}

template <typename T>
__host__ __device__ inline size_t backward_smem(int64_t N, int64_t H, int64_t slice) {
  return align16(kGates * H * slice * sizeof(T));
}

// h_{t-1} of the rows of step t in direction d: rows [0, n_from_out) continue from the
// direction's previous step (rows of the layer's output), the others start here from h0.
template <typename T>
__device__ __forceinline__ void prev_rows(const PersistentLayer<T>& p, int d, int64_t t,
                                          int64_t rows, const T*& prev, int64_t& n_from_out) {
  const T* out = p.out_in ? p.out_in : p.out;
  n_from_out = 0;
  prev = nullptr;
  if (d == 0 && t > 0) {
    prev = out + p.offsets[t - 1] * p.ld;
    n_from_out = rows;
  } else if (d == 1 && t + 1 < p.T_steps) {
    prev = out + p.offsets[t + 1] * p.ld + p.H;
    n_from_out = rows < p.batch_sizes[t + 1] ? rows : p.batch_sizes[t + 1];
  }
}

// The hidden units a persistent block owns: direction d, units [j0, j0 + w) (the last block of a
// direction may own fewer than `slice`, or none).
struct BlockUnits {
  int d;
  int64_t j0, w;
};
__device__ __forceinline__ BlockUnits block_units(int blocks_per_direction, int64_t slice,
                                                  int64_t H) {
  BlockUnits u;
  u.d = blockIdx.x / blocks_per_direction;
  u.j0 = (blockIdx.x % blocks_per_direction) * slice;
  u.w = u.j0 < H ? (u.j0 + slice < H ? slice : H - u.j0) : 0;
  return u;
}

template <typename T>
__global__ void __launch_bounds__(kPersistentThreads)
    persistent_forward_kernel(PersistentLayer<T> p, int blocks_per_direction, int64_t slice) {
  using A = typename Acc<T>::type;
  namespace cg = cooperative_groups;
  cg::grid_group grid = cg::this_grid();
  GRU_DYNAMIC_SHARED(smem);
  const int64_t H = p.H, G = kGates * H, N = p.N;
  const BlockUnits u = block_units(blocks_per_direction, slice, H);
  const int d = u.d;
  const int64_t j0 = u.j0, w = u.w;
  const int64_t S = kGates * slice;  // row length of the shared W slice
  T* ws_w = reinterpret_cast<T*>(smem);
  A* hs = reinterpret_cast<A*>(smem + align16(H * S * sizeof(T)));
  A* ghs = reinterpret_cast<A*>(reinterpret_cast<unsigned char*>(hs) + align16(N * H * sizeof(A)));
  const T* W = p.w_hh[d];
  for (int64_t e = threadIdx.x; e < H * kGates * w; e += blockDim.x) {
    const int64_t k = e % H, c = e / H, g = c / w, jj = c % w;
    ws_w[k * S + g * slice + jj] = W[(g * H + j0 + jj) * H + k];
  }
  __syncthreads();
  for (int64_t i = 0; i < p.T_steps; ++i) {
    const int64_t t = d ? p.T_steps - 1 - i : i;
    const int64_t rows = p.batch_sizes[t], off = p.offsets[t];
    int64_t n_from_out = 0;
    const T* prev = nullptr;
    prev_rows(p, d, t, rows, prev, n_from_out);
    for (int64_t e = threadIdx.x; e < rows * H; e += blockDim.x) {
      const int64_t b = e / H, k = e % H;
      hs[e] = b < n_from_out ? load_cg(prev + b * p.ld + k)
                             : (p.h0[d] ? to_acc(p.h0[d][e]) : A(0));
    }
    __syncthreads();
    // Rows whose last step (in this direction's order) this is also write h_n.
    const int64_t finish_from =
        d == 0 ? (t + 1 < p.T_steps ? p.batch_sizes[t + 1] : 0) : (t == 0 ? 0 : rows);
    // gh[b][g][jj] = h[b] . W_hh[g*H + j0 + jj]
    for (int64_t e = threadIdx.x; e < rows * kGates * w; e += blockDim.x) {
      const int64_t b = e / (kGates * w), c = e % (kGates * w), g = c / w, jj = c % w;
      const A* hb = hs + b * H;
      const T* wc = ws_w + g * slice + jj;
      A acc = 0;
      for (int64_t k = 0; k < H; ++k) acc += hb[k] * to_acc(wc[k * S]);
      ghs[b * S + g * slice + jj] = acc;
    }
    __syncthreads();
    for (int64_t e = threadIdx.x; e < rows * w; e += blockDim.x) {
      const int64_t b = e / w, jj = e % w, j = j0 + jj;
      const T* gi = p.gi[d] + (off + b) * G;
      const A* gh = ghs + b * S;
      A r, z, n, hn, h_new;
      gru_cell_forward<A, ScalarAct<A>>(
          to_acc(gi[j]) + bias_at(p.b_ih[d], j), to_acc(gi[H + j]) + bias_at(p.b_ih[d], H + j),
          to_acc(gi[2 * H + j]) + bias_at(p.b_ih[d], 2 * H + j), gh[jj], gh[slice + jj],
          gh[2 * slice + jj], bias_at(p.b_hh[d], j), bias_at(p.b_hh[d], H + j),
          bias_at(p.b_hh[d], 2 * H + j), hs[b * H + j], r, z, n, hn, h_new);
      const T h_t = from_acc<T>(h_new);
      p.out[(off + b) * p.ld + d * H + j] = h_t;
      if (b >= finish_from) p.hy[d][b * H + j] = h_t;
      if (p.ws_out[d]) {
        A* wsr = p.ws_out[d] + (off + b) * kWorkspaceGates * H;
        wsr[j] = r;
        wsr[H + j] = z;
        wsr[2 * H + j] = n;
        wsr[3 * H + j] = hn;
      }
    }
    grid.sync();  // h_t of every slice is written before any block reads it
  }
}

template <typename T>
__global__ void __launch_bounds__(kPersistentThreads)
    persistent_backward_kernel(PersistentLayer<T> p, int blocks_per_direction, int64_t slice) {
  using A = typename Acc<T>::type;
  namespace cg = cooperative_groups;
  cg::grid_group grid = cg::this_grid();
  GRU_DYNAMIC_SHARED(smem);
  const int64_t H = p.H, G = kGates * H, ld = p.ld;
  const BlockUnits u = block_units(blocks_per_direction, slice, H);
  const int d = u.d;
  const int64_t j0 = u.j0, w = u.w;
  T* ws_w = reinterpret_cast<T*>(smem);  // [3H][slice]: W_hh[k][j0 + jj]
  const T* W = p.w_hh[d];
  for (int64_t e = threadIdx.x; e < G * w; e += blockDim.x) {
    const int64_t k = e / w, jj = e % w;
    ws_w[k * slice + jj] = W[k * H + j0 + jj];
  }
  __syncthreads();
  for (int64_t i = 0; i < p.T_steps; ++i) {
    const int64_t t = d ? i : p.T_steps - 1 - i;
    const int64_t rows = p.batch_sizes[t], off = p.offsets[t];
    int64_t n_from_out = 0;
    const T* prev = nullptr;
    prev_rows(p, d, t, rows, prev, n_from_out);
    // The pointwise pass for this block's units (dh of these units is only touched here).
    for (int64_t e = threadIdx.x; e < rows * w; e += blockDim.x) {
      const int64_t b = e / w, j = j0 + e % w, row = off + b;
      const A h_prev = b < n_from_out ? to_acc(prev[b * ld + j])
                                      : (p.h0[d] ? to_acc(p.h0[d][b * H + j]) : A(0));
      const A* wsr = p.ws_in[d] + row * kWorkspaceGates * H;
      T* dh = p.dh[d] + b * H + j;
      A d_r, d_z, d_n, d_hn, dh_prev;
      gru_cell_backward<A>(to_acc(p.dout[row * ld + d * H + j]) + to_acc(*dh), wsr[j],
                           wsr[H + j], wsr[2 * H + j], wsr[3 * H + j], h_prev, d_r, d_z, d_n,
                           d_hn, dh_prev);
      T* dg = p.dg[d] + row * kGradGates * H;
      dg[j] = from_acc<T>(d_r);
      dg[H + j] = from_acc<T>(d_z);
      dg[2 * H + j] = from_acc<T>(d_hn);
      dg[3 * H + j] = from_acc<T>(d_n);
      p.hp[d][row * H + j] = from_acc<T>(h_prev);
      *dh = from_acc<T>(dh_prev);
    }
    grid.sync();  // every slice's dG_h of step t is written
    // dh_{t-1}[b][j] += sum_k dG_h[b][k] W_hh[k][j] for this block's units.
    for (int64_t e = threadIdx.x; e < rows * w; e += blockDim.x) {
      const int64_t b = e / w, jj = e % w;
      const T* dg = p.dg[d] + (off + b) * kGradGates * H;
      A acc = 0;
      for (int64_t k = 0; k < G; ++k) acc += load_cg(dg + k) * to_acc(ws_w[k * slice + jj]);
      T* dh = p.dh[d] + b * H + j0 + jj;
      *dh = from_acc<T>(to_acc(*dh) + acc);
    }
    // The next step's pointwise pass reads and writes only this block's units of dh, and
    // writes dG rows of another step: a block barrier is enough. (Both loops give element
    // e = b * w + jj to the same thread today; the barrier keeps that from being a hidden
    // requirement.)
    __syncthreads();
  }
}

}  // namespace

// -- host entry points -------------------------------------------------------------------------

template <typename T>
cudaError_t forward_step(const ForwardStep<T>& args, cudaStream_t stream) {
  const int64_t total = (args.rows[0] + (args.D > 1 ? args.rows[1] : 0)) * args.H;
  if (total == 0) return cudaSuccess;
  return launch(forward_step_kernel<T>, false, blocks_for(total), kThreads, 0, stream, args);
}

template <typename T>
cudaError_t backward_step(const BackwardStep<T>& args, cudaStream_t stream) {
  const int64_t total = args.D * args.N * args.H;
  if (total == 0) return cudaSuccess;
  return launch(backward_step_kernel<T>, false, blocks_for(total), kThreads, 0, stream, args);
}

template <typename T>
cudaError_t column_sum(int64_t rows, int64_t cols, const T* src, int64_t ld, T* dst,
                       cudaStream_t stream) {
  if (cols == 0) return cudaSuccess;
  return launch(column_sum_kernel<T>, false, blocks_for(cols), kThreads, 0, stream, rows, cols,
                src, ld, dst);
}

template <typename T>
cudaError_t multiply(int64_t n, const T* a, const T* b, T* out, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  return launch(multiply_kernel<T>, false, blocks_for(n), kThreads, 0, stream, n, a, b, out);
}

template <typename T>
PersistentPlan plan_persistent(int D, int64_t N, int64_t H, bool backward, int device) {
  PersistentPlan plan;
  int sms = 0, coop = 0, max_smem = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) !=
          cudaSuccess) {
    cudaGetLastError();  // clear the failed query's error
    return plan;
  }
  if (!coop || N <= 0 || H <= 0) return plan;
  // One block per SM, the SMs shared by the directions; the units split evenly.
  const int per_dir = static_cast<int>(std::min<int64_t>(sms / D, H));
  if (per_dir < 1) return plan;
  const int64_t slice = (H + per_dir - 1) / per_dir;
  const int blocks_per_direction = static_cast<int>((H + slice - 1) / slice);
  const size_t smem = backward ? backward_smem<T>(N, H, slice) : forward_smem<T>(N, H, slice);
  if (smem > static_cast<size_t>(max_smem)) return plan;
  auto kernel = backward ? persistent_backward_kernel<T> : persistent_forward_kernel<T>;
  // The device's opt-in maximum, the same value on every call: a per-call size could be
  // lowered by another host thread between this plan and its launch.
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, max_smem) !=
      cudaSuccess) {
    cudaGetLastError();
    return plan;
  }
  int resident = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, kPersistentThreads,
                                                    smem) != cudaSuccess ||
      static_cast<int64_t>(resident) * sms < static_cast<int64_t>(blocks_per_direction) * D) {
    cudaGetLastError();
    return plan;
  }
  plan.fits = true;
  plan.blocks_per_direction = blocks_per_direction;
  plan.threads = kPersistentThreads;
  plan.slice = slice;
  plan.smem = smem;
  return plan;
}

template <typename T>
static cudaError_t launch_persistent(bool backward, const PersistentLayer<T>& layer,
                                     const PersistentPlan& plan, cudaStream_t stream) {
  if (!plan.fits) return cudaErrorInvalidConfiguration;
  auto kernel = backward ? persistent_backward_kernel<T> : persistent_forward_kernel<T>;
  return launch(kernel, true, dim3(plan.blocks_per_direction * layer.D), dim3(plan.threads),
                plan.smem, stream, layer, plan.blocks_per_direction, plan.slice);
}

template <typename T>
cudaError_t persistent_forward(const PersistentLayer<T>& layer, const PersistentPlan& plan,
                               cudaStream_t stream) {
  return launch_persistent<T>(false, layer, plan, stream);
}

template <typename T>
cudaError_t persistent_backward(const PersistentLayer<T>& layer, const PersistentPlan& plan,
                                cudaStream_t stream) {
  return launch_persistent<T>(true, layer, plan, stream);
}

// One explicit instantiation per element type.
#define GRU_NATIVE_INSTANTIATE(T)                                                               \
  template cudaError_t forward_step<T>(const ForwardStep<T>&, cudaStream_t);                  \
  template cudaError_t backward_step<T>(const BackwardStep<T>&, cudaStream_t);                \
  template cudaError_t column_sum<T>(int64_t, int64_t, const T*, int64_t, T*, cudaStream_t);  \
  template cudaError_t multiply<T>(int64_t, const T*, const T*, T*, cudaStream_t);            \
  template PersistentPlan plan_persistent<T>(int, int64_t, int64_t, bool, int);                \
  template cudaError_t persistent_forward<T>(const PersistentLayer<T>&, const PersistentPlan&, \
                                             cudaStream_t);                                     \
  template cudaError_t persistent_backward<T>(const PersistentLayer<T>&,                        \
                                              const PersistentPlan&, cudaStream_t);
GRU_NATIVE_INSTANTIATE(float)
GRU_NATIVE_INSTANTIATE(double)
GRU_NATIVE_INSTANTIATE(__half)
GRU_NATIVE_INSTANTIATE(__nv_bfloat16)
#undef GRU_NATIVE_INSTANTIATE

}  // namespace gru_native::cuda
