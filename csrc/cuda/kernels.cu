// kernels.cu: the CUDA kernels (see kernels.cuh). ATen-free: compiles with nvcc alone, and with
// the host compiler against the CUDA emulation (csrc/cuda/emulation/runtime.h), unchanged: kernels
// are launched through the runtime API (cudaLaunchKernel, cudaLaunchCooperativeKernel) and
// dynamic shared memory is declared with GRU_DYNAMIC_SHARED.
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#include "cuda/kernels.cuh"
#include "gru_cell.h"

#ifndef GRU_DYNAMIC_SHARED  // the emulation defines its own
#define GRU_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace gru_native::cuda {
namespace {

constexpr int kThreads = 256;

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

// Loads that bypass L1 (ld.global.cg): for values other blocks of a persistent kernel wrote
// since the last grid synchronisation. CUDA's __ldcg overloads for float, double, unsigned short
// and the 16-byte vectors are volatile asm, which the compiler keeps below grid.sync(); its
// __half and __nv_bfloat16 overloads are not volatile, so the 16-bit types load their bits.
// (Off the GPU, in the emulation, __ldcg is a plain load: its barriers order memory.)
template <typename T>
__device__ __forceinline__ typename Acc<T>::type load_cg(const T* p) {
  return to_acc(__ldcg(p));
}
template <>
__device__ __forceinline__ float load_cg<__half>(const __half* p) {
  return __half2float(__ushort_as_half(__ldcg(reinterpret_cast<const unsigned short*>(p))));
}
template <>
__device__ __forceinline__ float load_cg<__nv_bfloat16>(const __nv_bfloat16* p) {
  return __bfloat162float(
      __ushort_as_bfloat16(__ldcg(reinterpret_cast<const unsigned short*>(p))));
}

// -- 16-byte vectors: kVec<T> elements of T, loaded at once into kVec<T> Acc values ------------

template <typename T>
constexpr int kVec = static_cast<int>(16 / sizeof(T));

__host__ __device__ inline bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// The kVec<T> elements at p (16-byte aligned), through L2 (kThroughL2) or an ordinary load.
template <bool kThroughL2, typename T>
__device__ __forceinline__ void load_vec(const T* p, typename Acc<T>::type* out) {
  const float4* q = reinterpret_cast<const float4*>(p);
  const float4 v = kThroughL2 ? __ldcg(q) : *q;
  if constexpr (sizeof(T) == 2) {
    unsigned short bits[8];
    memcpy(bits, &v, 16);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      if constexpr (std::is_same_v<T, __half>) {
        out[i] = __half2float(__ushort_as_half(bits[i]));
      } else {
        out[i] = __bfloat162float(__ushort_as_bfloat16(bits[i]));
      }
    }
  } else {
    memcpy(out, &v, 16);  // float or double: the values themselves
  }
}

// n values (a multiple of 16 bytes) to shared memory at dst (16-byte aligned), 16 bytes a store.
template <typename A>
__device__ __forceinline__ void store_vecs(A* dst, const A* v, int n) {
#pragma unroll
  for (int i = 0; i < n; i += kVec<A>) {
    float4 x;
    memcpy(&x, v + i, 16);
    *reinterpret_cast<float4*>(dst + i) = x;
  }
}

template <typename T>
__device__ __forceinline__ typename Acc<T>::type bias_at(const T* b, int64_t i) {
  return b ? to_acc(b[i]) : typename Acc<T>::type(0);
}

int blocks_for(int64_t total) {
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(blocks, 65535)));
}

template <typename T>
constexpr const char* dtype_name() {
  if constexpr (std::is_same_v<T, float>) return "float32";
  if constexpr (std::is_same_v<T, double>) return "float64";
  if constexpr (std::is_same_v<T, __half>) return "float16";
  return "bfloat16";
}

template <typename... P, size_t... I>
cudaError_t launch_with(void (*kernel)(P...), bool cooperative, dim3 grid, dim3 block,
                        size_t smem, cudaStream_t stream, std::tuple<P...>& values,
                        std::index_sequence<I...>) {
  void* args[] = {&std::get<I>(values)...};
  return cooperative ? cudaLaunchCooperativeKernel(kernel, grid, block, args, smem, stream)
                     : cudaLaunchKernel(kernel, grid, block, args, smem, stream);
}

// What a launch is, for the launch record (kernels.cuh).
LaunchRecord what(const char* kernel, const char* dtype, bool cooperative = false) {
  LaunchRecord r;
  r.kernel = kernel;
  r.dtype = dtype;
  r.cooperative = cooperative;
  return r;
}

// kernel<<<grid, block, smem, stream>>>(args...), or its cooperative launch; recorded.
template <typename... P, typename... A>
cudaError_t launch(LaunchRecord record, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem,
                   cudaStream_t stream, const A&... args) {
  std::tuple<P...> values(args...);
  const cudaError_t err = launch_with(kernel, record.cooperative, grid, block, smem, stream,
                                      values, std::index_sequence_for<P...>());
  if (recording_launches()) {
    record.grid[0] = grid.x, record.grid[1] = grid.y, record.grid[2] = grid.z;
    record.block[0] = block.x, record.block[1] = block.y, record.block[2] = block.z;
    record.smem = smem;
    record.result = err;
    record_launch(record);
  }
  return err;
}

// -- the GEMM path's pointwise kernels ---------------------------------------------------------
//
// One thread per (direction, row, unit) of a step: blockIdx.z is the direction, x (threads and
// blocks) the unit j, y the row b (grid-stride past 65535 blocks), so that no thread divides.

struct PointwiseGeometry {
  dim3 grid, block;
};
PointwiseGeometry pointwise_geometry(int64_t H, int64_t rows, int D) {
  const int64_t x = std::min<int64_t>(kThreads, (H + 31) / 32 * 32);
  const int64_t y = kThreads / x;
  const int64_t gx = (H + x - 1) / x;
  const int64_t gy = std::max<int64_t>(1, std::min<int64_t>((rows + y - 1) / y, 65535));
  return {dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy), static_cast<unsigned>(D)),
          dim3(static_cast<unsigned>(x), static_cast<unsigned>(y))};
}

__device__ __forceinline__ int64_t pointwise_unit() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t pointwise_first_row() {
  return static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y;
}
__device__ __forceinline__ int64_t pointwise_row_stride() {
  return static_cast<int64_t>(gridDim.y) * blockDim.y;
}

// The gates of unit j that the backward needs, into a workspace row [r | z | n | hn].
template <typename A>
__device__ __forceinline__ void save_gates(A* ws_row, int64_t H, int64_t j, A r, A z, A n,
                                           A hn) {
  ws_row[j] = r;
  ws_row[H + j] = z;
  ws_row[2 * H + j] = n;
  ws_row[3 * H + j] = hn;
}

template <typename T>
__global__ void forward_step_kernel(ForwardStep<T> a) {
  using A = typename Acc<T>::type;
  const int d = blockIdx.z;
  const int64_t H = a.H, G = kGates * H, j = pointwise_unit();
  if (j >= H) return;
  const T* bi = a.b_ih[d];
  const T* bh = a.b_hh[d];
  for (int64_t b = pointwise_first_row(); b < a.rows[d]; b += pointwise_row_stride()) {
    const T* gi = a.gi[d] + b * G;
    const T* gh = a.gh[d] + b * G;
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
    if (a.ws[d]) save_gates(a.ws[d] + b * kWorkspaceGates * H, H, j, r, z, n, hn);
  }
}

template <typename T>
__global__ void backward_step_kernel(BackwardStep<T> a) {
  using A = typename Acc<T>::type;
  const int d = blockIdx.z;
  const int64_t H = a.H, G = kGates * H, j = pointwise_unit();
  if (j >= H) return;
  for (int64_t b = pointwise_first_row(); b < a.N; b += pointwise_row_stride()) {
    T* dgs = a.dgs[d] + b * G;
    if (b >= a.rows[d]) {  // not live at this step: no contribution to the recurrent GEMM
      dgs[j] = dgs[H + j] = dgs[2 * H + j] = from_acc<T>(A(0));
      continue;
    }
    const A h_prev = b < a.n_from_out[d] ? to_acc(a.prev_out[d][b * a.ld + j])
                                         : (a.h0[d] ? to_acc(a.h0[d][b * H + j]) : A(0));
    const A* ws = a.ws[d] + b * kWorkspaceGates * H;
    A* dh = a.dh[d] + b * H + j;
    A d_r, d_z, d_n, d_hn, dh_prev;
    gru_cell_backward<A>(to_acc(a.dout[d][b * a.ld + j]) + *dh, ws[j], ws[H + j],
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
    *dh = dh_prev;
  }
}

// -- column sums -------------------------------------------------------------------------------
//
// A block sums kSumColumns columns over one part of the rows: thread (x, y) adds rows
// y, y + kSumLanes, ... of its part in order, then the kSumLanes lanes of a column are added in a
// fixed tree. With more than one part, a second launch adds the parts' sums the same way. The
// parts depend on rows alone, so the order of every addition is fixed by (rows, cols).
constexpr int kSumColumns = 32;
constexpr int kSumLanes = kThreads / kSumColumns;
constexpr int64_t kMinRowsPerPart = 256;
constexpr int64_t kMaxParts = 256;

int64_t column_sum_parts(int64_t rows) {
  return std::max<int64_t>(
      1, std::min<int64_t>((rows + kMinRowsPerPart - 1) / kMinRowsPerPart, kMaxParts));
}

// dst[part * cols + c] = sum of rows [part * per_part, (part + 1) * per_part) of column c.
template <typename In, typename Out>
__global__ void column_sum_kernel(int64_t rows, int64_t cols, const In* src, int64_t ld,
                                  int64_t per_part, Out* dst) {
  using A = typename Acc<In>::type;
  GRU_DYNAMIC_SHARED(smem);
  A* lanes = reinterpret_cast<A*>(smem);  // [kSumLanes][kSumColumns]
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kSumColumns + threadIdx.x;
  const int64_t first = static_cast<int64_t>(blockIdx.y) * per_part;
  const int64_t end = first + per_part < rows ? first + per_part : rows;
  A sum = A(0);
  if (c < cols) {
    for (int64_t r = first + threadIdx.y; r < end; r += kSumLanes) sum += to_acc(src[r * ld + c]);
  }
  lanes[threadIdx.y * kSumColumns + threadIdx.x] = sum;
  for (int half = kSumLanes / 2; half > 0; half /= 2) {
    __syncthreads();
    if (static_cast<int>(threadIdx.y) < half) {
      A* mine = lanes + threadIdx.y * kSumColumns + threadIdx.x;
      *mine = *mine + mine[half * kSumColumns];
    }
  }
  if (threadIdx.y == 0 && c < cols) dst[blockIdx.y * cols + c] = from_acc<Out>(lanes[threadIdx.x]);
}

// (The grid-stride loops below are not unrolled: unrolled, they would divide their trip count in
// 64 bits.)
template <typename S, typename D>
__global__ void convert_kernel(int64_t n, const S* src, D* dst) {
#pragma unroll 1
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dst[i] = from_acc<D>(to_acc(src[i]));
  }
}

template <typename T>
__global__ void multiply_kernel(int64_t n, const T* a, const T* b, T* out) {
#pragma unroll 1
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = from_acc<T>(to_acc(a[i]) * to_acc(b[i]));
  }
}

// -- the persistent path -------------------------------------------------------------------------
//
// One cooperative launch runs a layer's whole sequence; blocks [d * B, (d + 1) * B) serve
// direction d, and block q of a direction owns hidden units [q * U, q * U + U) (the last block
// fewer, or none), kWarps of them per pass (pass 0, 1, 2, ...). Pass 0's weights live in
// registers (compile-time KT, loops unrolled), later passes' in shared memory. Every thread does
// a short dot product, and the partial sums of an output are added in a fixed order (bitwise
// reproducible).
//   forward:  warp w owns the units w, w + kWarps, ...; its 32 lanes split the reduction: lane l
//             holds W_hh[g * H + j][k] of the three gates g of unit j for k = l + 32 i, i < KT
//             (32 KT >= H), so each h value it loads serves 3 FMAs. Per step: h_{t-1} of a chunk
//             of rows -> shared memory (as Acc); each lane's partial sums -> shared memory;
//             __syncwarp; lanes add them up (in lane order) for one (unit, row) each and run the
//             gate math; h_t -> the layer's output; after the last chunk, grid.sync().
//   backward: the warps form groups of kGroupWarps, each owning kLaneUnits units per pass; the
//             group's kGroupLanes threads split W_hh's 3H rows: thread gl holds W_hh[k][j] of
//             its group's units for k = gl + 128 i, i < backward_slots(KT), so each dG value it
//             loads serves kLaneUnits FMAs. Per step: the pointwise pass for the block's units
//             writes dG(t); grid.sync(); dG_h(t) of a chunk of rows -> shared memory; partial
//             sums -> shared memory; __syncwarp; lanes add up a warp's 32 in lane order for one
//             (unit, row) each; __syncthreads; one thread per (unit, row) adds the group's
//             kGroupWarps warp sums in order into dh_{t-1}.
// Shared memory: [pass >= 1 weights, T][rows chunk x staged row, Acc][partial sums, Acc],
// 16-byte aligned sections (block_smem).

constexpr int kWarps = kPersistentThreads / 32;
// Partial sums in shared memory: 32 per output (one per lane), 33 apart, so that when each lane
// adds up another output's 32 the lanes read 32 different banks (at 32 apart they would all
// read the same bank: 32-way conflicts).
constexpr int kPartialStride = 33;
// The backward: the block's warps form groups of kGroupWarps; a group owns kLaneUnits units per
// pass, and its kGroupLanes threads split W_hh's 3H rows, so that each thread holds the weights
// of kLaneUnits units at its rows and each dG value it loads serves that many units (a warp per
// unit, as in the forward, would load every dG value once per FMA).
constexpr int kGroupWarps = 4;
constexpr int kGroupLanes = 32 * kGroupWarps;
constexpr int kLaneUnits = 4;
constexpr int kUnitsPerPass = kWarps / kGroupWarps * kLaneUnits;  // = kWarps: 8 units per pass
static_assert(kUnitsPerPass == kWarps, "a pass covers kWarps units in both kernels");

// Backward slots per thread: kGroupLanes * slots >= 3 * 32 * KT >= 3H.
__host__ __device__ constexpr int backward_slots(int kt) {
  return (3 * 32 * kt + kGroupLanes - 1) / kGroupLanes;
}
// The backward's warp sums: [kGroupWarps][pair], pair = unit * chunk + row (the lanes' partial
// sums before them: [warp][unit slot][row][lane]).
__host__ __device__ inline int backward_red_stride(int passes, int chunk) {
  return passes * kUnitsPerPass * chunk;
}

__host__ __device__ inline size_t align16(size_t bytes) { return (bytes + 15) / 16 * 16; }

// The shared memory a persistent block needs: weights of passes >= 1, a chunk of `chunk` rows.
template <typename T>
size_t block_smem(bool backward, int kt, int passes, int chunk) {
  using A = typename Acc<T>::type;
  if (backward) {
    const size_t slots = static_cast<size_t>(kLaneUnits) * backward_slots(kt);  // per thread
    const size_t row = static_cast<size_t>(kGroupLanes) * backward_slots(kt);   // staged row
    return align16((passes - 1) * kPersistentThreads * slots * sizeof(T)) +
           align16(chunk * row * sizeof(A)) +
           align16(static_cast<size_t>(kWarps) * kLaneUnits * chunk * kPartialStride *
                   sizeof(A)) +
           align16(static_cast<size_t>(kGroupWarps) * backward_red_stride(passes, chunk) *
                   sizeof(A));
  }
  const size_t slots = static_cast<size_t>(3 * kt);  // per unit and lane
  const size_t row = static_cast<size_t>(kt) * 32;   // staged row length
  return align16((passes - 1) * kWarps * slots * 32 * sizeof(T)) +
         align16(chunk * row * sizeof(A)) +
         align16(static_cast<size_t>(kWarps) * passes * chunk * 3 * kPartialStride * sizeof(A));
}

// h_{t-1} of the rows [0, r.n_from_out) of a step (step_rows, gru_params.h), which continue
// from the direction's previous step: row b at prev + b * p.ld, in the layer's output.
template <typename T>
__device__ __forceinline__ const T* prev_rows(const PersistentLayer<T>& p, int d,
                                              const StepRows& r) {
  const T* out = p.out_in ? p.out_in : p.out;
  return r.prev_offset < 0 ? nullptr : out + r.prev_offset * p.ld + d * p.H;
}

// p[0] + ... + p[31] in a fixed order, four chains deep (a shorter dependency chain than one).
template <typename A>
__device__ __forceinline__ A sum32(const A* p) {
  A s[4] = {A(0), A(0), A(0), A(0)};
#pragma unroll
  for (int l = 0; l < 32; l += 4) {
#pragma unroll
    for (int c = 0; c < 4; ++c) s[c] += p[l + c];
  }
  return (s[0] + s[1]) + (s[2] + s[3]);
}

// What a thread of a persistent block works on.
struct PersistentThread {
  int d;              // direction
  int64_t j0, units;  // the block's first unit and how many it has (0 for a spare block)
  int warp, lane;
};
__device__ __forceinline__ PersistentThread persistent_thread(const PersistentShape& shape,
                                                              int64_t H) {
  PersistentThread t;
  t.d = blockIdx.x / shape.blocks_per_direction;
  t.j0 = static_cast<int64_t>(blockIdx.x % shape.blocks_per_direction) * shape.units;
  t.units = t.j0 < H ? (t.j0 + shape.units < H ? shape.units : H - t.j0) : 0;
  t.warp = threadIdx.x / 32;
  t.lane = threadIdx.x % 32;
  return t;
}

// n / f.d for 0 <= n < 2^31 (FastDivisor, kernels.cuh).
__device__ __forceinline__ int divide(int n, const FastDivisor& f) {
  const uint32_t u = static_cast<uint32_t>(n);
  const uint32_t high = static_cast<uint32_t>((static_cast<uint64_t>(u) * f.m) >> 32);
  return static_cast<int>((high + u) >> f.s);
}

// Rows [0, nb) of a chunk into shared memory as Acc, W values a row (zero from `valid` on):
// row b is source(b) = {pointer, through L2} (nullptr: zeros). With `vec` (every row 16-byte
// aligned, valid a multiple of kVec<T>) 16 bytes a load and a store.
template <int W, typename T, typename Source>
__device__ __forceinline__ void stage_rows(typename Acc<T>::type* dst, int nb, int64_t valid,
                                           bool vec, const Source& source) {
  using A = typename Acc<T>::type;
  if (vec) {
    constexpr int V = kVec<T>, WV = W / V;
    static_assert(W % V == 0, "a staged row holds whole vectors");
    for (int e = threadIdx.x; e < nb * WV; e += blockDim.x) {
      const int b = e / WV, k = (e % WV) * V;
      const auto src = source(b);
      A v[V];
      if (src.first == nullptr || k >= valid) {
#pragma unroll
        for (int c = 0; c < V; ++c) v[c] = A(0);
      } else if (src.second) {
        load_vec<true>(src.first + k, v);
      } else {
        load_vec<false>(src.first + k, v);
      }
      store_vecs(dst + b * W + k, v, V);
    }
    return;
  }
  for (int e = threadIdx.x; e < nb * W; e += blockDim.x) {
    const int b = e / W, k = e % W;
    const auto src = source(b);
    A v = A(0);
    if (src.first != nullptr && k < valid) {
      v = src.second ? load_cg(src.first + k) : to_acc(src.first[k]);
    }
    dst[e] = v;
  }
}

template <typename T>
using RowSource = std::pair<const T*, bool>;

template <typename T, int KT>
__global__ void __launch_bounds__(kPersistentThreads, 1)
    persistent_forward_kernel(PersistentLayer<T> p, PersistentShape shape) {
  using A = typename Acc<T>::type;
  constexpr int K32 = 32 * KT;  // a staged row: h_{t-1}, zero past H
  namespace cg = cooperative_groups;
  cg::grid_group grid = cg::this_grid();
  GRU_DYNAMIC_SHARED(smem);
  const int64_t H = p.H, G = kGates * H;
  const PersistentThread th = persistent_thread(shape, H);
  const int d = th.d, warp = th.warp, lane = th.lane, passes = shape.passes;
  const int chunk = shape.chunk;
  T* w_smem = reinterpret_cast<T*>(smem);  // [pass - 1][warp][gate][i][lane]
  A* hs = reinterpret_cast<A*>(
      smem + align16(static_cast<size_t>(passes - 1) * kWarps * 3 * KT * 32 * sizeof(T)));
  A* red = hs + align16(static_cast<size_t>(chunk) * K32 * sizeof(A)) / sizeof(A);
  const T* W = p.w_hh[d];
  const T* h0 = p.h0[d];
  const bool vec = H % kVec<T> == 0 && aligned16(p.out_in ? p.out_in : p.out) &&
                   (h0 == nullptr || aligned16(h0));

  // Weights: pass 0 into registers, the others into this lane's slots of shared memory (only
  // this lane reads them: no barrier needed).
  A wr[3][KT];
  for (int q = 0; q < passes; ++q) {
    const int64_t u = warp + static_cast<int64_t>(kWarps) * q, j = th.j0 + u;
#pragma unroll
    for (int g = 0; g < 3; ++g) {
#pragma unroll
      for (int i = 0; i < KT; ++i) {
        const int64_t k = lane + 32 * i;
        const T zero = from_acc<T>(A(0));
        const T v = (u < th.units && k < H) ? W[(g * H + j) * H + k] : zero;
        if (q == 0) {
          wr[g][i] = to_acc(v);
        } else {
          w_smem[((((q - 1) * kWarps + warp) * 3 + g) * KT + i) * 32 + lane] = v;
        }
      }
    }
  }
  for (int64_t step = 0; step < p.T_steps; ++step) {
    const int64_t t = d ? p.T_steps - 1 - step : step;
    const int64_t rows = p.batch_sizes[t], off = p.offsets[t];
    const StepRows sr = step_rows(p.batch_sizes, p.offsets, p.T_steps, d, t);
    const int64_t n_from_out = sr.n_from_out, finish_from = sr.finish_from;
    const T* prev = prev_rows(p, d, sr);
    for (int64_t b0 = 0; b0 < rows; b0 += chunk) {
      const int nb = static_cast<int>(rows - b0 < chunk ? rows - b0 : chunk);
      // h_{t-1}: the previous step's rows were written by other blocks (through L2).
      stage_rows<K32, T>(hs, nb, H, vec, [&](int b) {
        const int64_t row = b0 + b;
        return row < n_from_out ? RowSource<T>{prev + row * p.ld, true}
                                : RowSource<T>{h0 ? h0 + row * H : nullptr, false};
      });
      __syncthreads();
      // Partial sums of this lane's k for each of the warp's units, gates and rows; and the
      // lane holding h_{t-1}[b][j] of the unit puts it beside them (slot 32 of gate 0), where
      // the lane running the gate math reads it without the bank conflicts of a column of hs.
      for (int q = 0; q < passes; ++q) {
        if (warp + static_cast<int64_t>(kWarps) * q >= th.units) break;  // warp-uniform
        const int64_t j = th.j0 + warp + static_cast<int64_t>(kWarps) * q;
        for (int b = 0; b < nb; ++b) {
          const A* hb = hs + b * K32 + lane;
          A acc[3] = {A(0), A(0), A(0)};
          if (q == 0) {
#pragma unroll
            for (int i = 0; i < KT; ++i) {
              const A x = hb[32 * i];
#pragma unroll
              for (int g = 0; g < 3; ++g) acc[g] += wr[g][i] * x;
            }
          } else {
            const T* ws = w_smem + (((q - 1) * kWarps + warp) * 3) * KT * 32 + lane;
#pragma unroll
            for (int i = 0; i < KT; ++i) {
              const A x = hb[32 * i];
#pragma unroll
              for (int g = 0; g < 3; ++g) acc[g] += to_acc(ws[(g * KT + i) * 32]) * x;
            }
          }
          A* out = red + (((warp * passes + q) * chunk + b) * 3) * kPartialStride + lane;
#pragma unroll
          for (int g = 0; g < 3; ++g) out[g * kPartialStride] = acc[g];
          if (lane == static_cast<int>(j & 31)) out[32 - lane] = hb[j - lane];
        }
      }
      __syncwarp();
      // One (unit, row) per lane: the 32 partial sums of each gate in lane order, then the gates.
      for (int e = lane; e < passes * nb; e += 32) {
        const int q = e / nb, b = e % nb;
        const int64_t u = warp + static_cast<int64_t>(kWarps) * q;
        if (u >= th.units) continue;
        const int64_t j = th.j0 + u, row = off + b0 + b;
        const A* rp = red + (((warp * passes + q) * chunk + b) * 3) * kPartialStride;
        A gh[3];
#pragma unroll
        for (int g = 0; g < 3; ++g) gh[g] = sum32(rp + g * kPartialStride);
        const T* gi = p.gi[d] + row * G;
        A r, z, n, hn, h_new;
        gru_cell_forward<A, ScalarAct<A>>(
            to_acc(gi[j]) + bias_at(p.b_ih[d], j), to_acc(gi[H + j]) + bias_at(p.b_ih[d], H + j),
            to_acc(gi[2 * H + j]) + bias_at(p.b_ih[d], 2 * H + j), gh[0], gh[1], gh[2],
            bias_at(p.b_hh[d], j), bias_at(p.b_hh[d], H + j), bias_at(p.b_hh[d], 2 * H + j),
            rp[32], r, z, n, hn, h_new);
        const T h_t = from_acc<T>(h_new);
        p.out[row * p.ld + d * H + j] = h_t;
        if (b0 + b >= finish_from) p.hy[d][(b0 + b) * H + j] = h_t;
        if (p.ws_out[d]) save_gates(p.ws_out[d] + row * kWorkspaceGates * H, H, j, r, z, n, hn);
      }
      // The next chunk rewrites hs and the partial sums (after the last, grid.sync orders).
      if (b0 + chunk < rows) __syncthreads();
    }
    grid.sync();  // h_t of every unit is written before any block reads it
  }
}

template <typename T, int KT>
__global__ void __launch_bounds__(kPersistentThreads, 1)
    persistent_backward_kernel(PersistentLayer<T> p, PersistentShape shape) {
  using A = typename Acc<T>::type;
  constexpr int KG = backward_slots(KT);  // slots per thread: k = gl + 128 i over W_hh's 3H rows
  constexpr int KROW = kGroupLanes * KG;  // a staged row: dG_h, zero past 3H
  namespace cg = cooperative_groups;
  cg::grid_group grid = cg::this_grid();
  GRU_DYNAMIC_SHARED(smem);
  const int64_t H = p.H, G = kGates * H, ld = p.ld;
  const PersistentThread th = persistent_thread(shape, H);
  const int d = th.d, passes = shape.passes, chunk = shape.chunk;
  const int tid = threadIdx.x;
  const int group = th.warp / kGroupWarps;                          // 0 or 1
  const int wig = th.warp % kGroupWarps;                            // warp within the group
  const int gl = wig * 32 + th.lane;                                // thread within the group
  const int stride = backward_red_stride(passes, chunk);            // warp sums: [wig][pair]
  T* w_smem = reinterpret_cast<T*>(smem);  // [pass - 1][v][i][tid]
  A* dgs = reinterpret_cast<A*>(
      smem + align16(static_cast<size_t>(passes - 1) * kPersistentThreads * kLaneUnits * KG *
                     sizeof(T)));
  A* part = dgs + align16(static_cast<size_t>(chunk) * KROW * sizeof(A)) / sizeof(A);
  A* red = part + align16(static_cast<size_t>(kWarps) * kLaneUnits * chunk * kPartialStride *
                          sizeof(A)) / sizeof(A);
  const T* W = p.w_hh[d];
  const bool vec = H % kVec<T> == 0 && aligned16(p.dg[d]);
  // Unit of (pass q, slot v) of this thread's group, counted from the block's first unit.
  auto unit = [&](int q, int v) { return q * kUnitsPerPass + group * kLaneUnits + v; };

  // Weights W_hh[k][j] of the group's kLaneUnits units at this thread's k: pass 0 in
  // registers, the others in this thread's slots of shared memory (only it reads them).
  auto weight = [&](int q, int v, int i) {
    const int64_t u = unit(q, v), k = gl + static_cast<int64_t>(kGroupLanes) * i;
    return (u < th.units && k < G) ? W[k * H + th.j0 + u] : from_acc<T>(A(0));
  };
  // (Pass 0 in its own fully unrolled loop: written inside the loop over passes, the register
  // array cost ptxas 100 more registers and spilled at KT = 32.)
  A wr[kLaneUnits][KG];
#pragma unroll
  for (int v = 0; v < kLaneUnits; ++v) {
#pragma unroll
    for (int i = 0; i < KG; ++i) wr[v][i] = to_acc(weight(0, v, i));
  }
  for (int q = 1; q < passes; ++q) {
    for (int v = 0; v < kLaneUnits; ++v) {
      for (int i = 0; i < KG; ++i) {
        w_smem[((static_cast<int64_t>(q - 1) * kLaneUnits + v) * KG + i) * kPersistentThreads +
               tid] = weight(q, v, i);
      }
    }
  }
  for (int64_t step = 0; step < p.T_steps; ++step) {
    const int64_t t = d ? step : p.T_steps - 1 - step;
    const int64_t rows = p.batch_sizes[t], off = p.offsets[t];
    const StepRows sr = step_rows(p.batch_sizes, p.offsets, p.T_steps, d, t);
    const int64_t n_from_out = sr.n_from_out;
    const T* prev = prev_rows(p, d, sr);
    // The pointwise pass for this block's units (dh of these units is only touched here):
    // (row, unit slot) pairs, rows * units < 2^31 (plan_persistent).
    const int pairs = static_cast<int>(rows) * shape.units;
    for (int e = tid; e < pairs; e += blockDim.x) {
      const int b = divide(e, shape.by_units), u = e - b * shape.units;
      if (u >= th.units) continue;
      const int64_t j = th.j0 + u, row = off + b;
      const A h_prev = b < n_from_out ? to_acc(prev[b * ld + j])
                                      : (p.h0[d] ? to_acc(p.h0[d][b * H + j]) : A(0));
      const A* wsr = p.ws_in[d] + row * kWorkspaceGates * H;
      A* dh = p.dh[d] + b * H + j;
      A d_r, d_z, d_n, d_hn, dh_prev;
      gru_cell_backward<A>(to_acc(p.dout[row * ld + d * H + j]) + *dh, wsr[j], wsr[H + j],
                           wsr[2 * H + j], wsr[3 * H + j], h_prev, d_r, d_z, d_n, d_hn,
                           dh_prev);
      T* dg = p.dg[d] + row * kGradGates * H;
      dg[j] = from_acc<T>(d_r);
      dg[H + j] = from_acc<T>(d_z);
      dg[2 * H + j] = from_acc<T>(d_hn);
      dg[3 * H + j] = from_acc<T>(d_n);
      p.hp[d][row * H + j] = from_acc<T>(h_prev);
      *dh = dh_prev;
    }
    grid.sync();  // every unit's dG_h of step t is written
    // dh_{t-1}[b][j] += sum_k dG_h[b][k] W_hh[k][j] for this block's units.
    for (int64_t b0 = 0; b0 < rows; b0 += chunk) {
      const int nb = static_cast<int>(rows - b0 < chunk ? rows - b0 : chunk);
      // dG_h of the step's rows, written by other blocks (through L2).
      stage_rows<KROW, T>(dgs, nb, G, vec, [&](int b) {
        return RowSource<T>{p.dg[d] + (off + b0 + b) * kGradGates * H, true};
      });
      __syncthreads();
      // Each dG value loaded once serves kLaneUnits units.
      for (int q = 0; q < passes; ++q) {
        if (unit(q, 0) >= th.units) break;  // group-uniform (no barrier inside)
        for (int b = 0; b < nb; ++b) {
          const A* gb = dgs + b * KROW + gl;
          A acc[kLaneUnits];
#pragma unroll
          for (int v = 0; v < kLaneUnits; ++v) acc[v] = A(0);
          if (q == 0) {
#pragma unroll
            for (int i = 0; i < KG; ++i) {
              const A x = gb[kGroupLanes * i];
#pragma unroll
              for (int v = 0; v < kLaneUnits; ++v) acc[v] += wr[v][i] * x;
            }
          } else {
            const T* ws = w_smem + static_cast<int64_t>(q - 1) * kLaneUnits * KG *
                                       kPersistentThreads + tid;
#pragma unroll
            for (int i = 0; i < KG; ++i) {
              const A x = gb[kGroupLanes * i];
#pragma unroll
              for (int v = 0; v < kLaneUnits; ++v) {
                acc[v] += to_acc(ws[(v * KG + i) * kPersistentThreads]) * x;
              }
            }
          }
#pragma unroll
          for (int v = 0; v < kLaneUnits; ++v) {
            part[((th.warp * kLaneUnits + v) * chunk + b) * kPartialStride + th.lane] = acc[v];
          }
        }
        __syncwarp();
        // One (unit, row) per lane: the warp's 32 partial sums in lane order.
        for (int e = th.lane; e < kLaneUnits * nb; e += 32) {
          const int v = e / nb, b = e % nb;
          if (unit(q, v) >= th.units) continue;
          red[wig * stride + unit(q, v) * chunk + b] =
              sum32(part + ((th.warp * kLaneUnits + v) * chunk + b) * kPartialStride);
        }
        __syncwarp();  // the next pass rewrites part
      }
      __syncthreads();
      // One (unit, row) per thread: the group's kGroupWarps warp sums in warp order.
      for (int e = tid; e < passes * kUnitsPerPass * nb; e += blockDim.x) {
        const int u = e / nb, b = e % nb;
        if (u >= th.units) continue;
        const A* r = red + u * chunk + b;
        const A sum = (r[0] + r[stride]) + (r[2 * stride] + r[3 * stride]);
        A* dh = p.dh[d] + (b0 + b) * H + th.j0 + u;
        *dh = *dh + sum;
      }
      // The next chunk rewrites dgs and the partial sums; the next step's pointwise pass reads
      // dh written here by other threads of the block.
      __syncthreads();
    }
  }
}

}  // namespace

// -- host entry points -------------------------------------------------------------------------

template <typename T>
cudaError_t forward_step(const ForwardStep<T>& args, cudaStream_t stream) {
  const int64_t rows = std::max<int64_t>(args.rows[0], args.D > 1 ? args.rows[1] : 0);
  if (rows == 0 || args.H == 0) return cudaSuccess;
  const PointwiseGeometry g = pointwise_geometry(args.H, rows, args.D);
  return launch(what("forward_step", dtype_name<T>()), forward_step_kernel<T>, g.grid, g.block, 0,
                stream, args);
}

template <typename T>
cudaError_t backward_step(const BackwardStep<T>& args, cudaStream_t stream) {
  if (args.N == 0 || args.H == 0) return cudaSuccess;
  const PointwiseGeometry g = pointwise_geometry(args.H, args.N, args.D);
  return launch(what("backward_step", dtype_name<T>()), backward_step_kernel<T>, g.grid, g.block,
                0, stream, args);
}

int64_t column_sum_scratch(int64_t rows, int64_t cols) {
  const int64_t parts = column_sum_parts(rows);
  return parts > 1 ? parts * cols : 0;
}

template <typename T>
cudaError_t column_sum(int64_t rows, int64_t cols, const T* src, int64_t ld, T* dst,
                       typename Acc<T>::type* partials, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  if (cols == 0) return cudaSuccess;
  const int64_t parts = column_sum_parts(rows);
  const int64_t per_part = (rows + parts - 1) / parts;
  const dim3 block(kSumColumns, kSumLanes);
  const unsigned column_blocks = static_cast<unsigned>((cols + kSumColumns - 1) / kSumColumns);
  const size_t smem = kSumLanes * kSumColumns * sizeof(A);
  if (parts == 1) {
    return launch(what("column_sum", dtype_name<T>()), column_sum_kernel<T, T>,
                  dim3(column_blocks), block, smem, stream, rows, cols, src, ld, per_part, dst);
  }
  const cudaError_t err = launch(what("column_sum_partials", dtype_name<T>()),
                                 column_sum_kernel<T, A>,
                                 dim3(column_blocks, static_cast<unsigned>(parts)), block, smem,
                                 stream, rows, cols, src, ld, per_part, partials);
  if (err != cudaSuccess) return err;
  const A* sums = partials;
  return launch(what("column_sum", dtype_name<T>()), column_sum_kernel<A, T>, dim3(column_blocks),
                block, smem, stream, parts, cols, sums, cols, parts, dst);
}

template <typename S, typename D>
cudaError_t convert(int64_t n, const S* src, D* dst, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  return launch(what("convert", dtype_name<S>()), convert_kernel<S, D>, blocks_for(n), kThreads,
                0, stream, n, src, dst);
}

template <typename T>
cudaError_t multiply(int64_t n, const T* a, const T* b, T* out, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  return launch(what("multiply", dtype_name<T>()), multiply_kernel<T>, blocks_for(n), kThreads, 0,
                stream, n, a, b, out);
}

template <typename T>
PersistentKernel<T> persistent_kernel(bool backward, int kt) {
  switch (kt) {
#define GRU_NATIVE_KT(K)                                                                  \
  case K:                                                                                 \
    if constexpr (K <= persistent_max_kt<T>()) {                                          \
      return backward ? persistent_backward_kernel<T, K> : persistent_forward_kernel<T, K>; \
    }                                                                                     \
    break;
    GRU_NATIVE_KT(2)
    GRU_NATIVE_KT(4)
    GRU_NATIVE_KT(8)
    GRU_NATIVE_KT(16)
    GRU_NATIVE_KT(32)
#undef GRU_NATIVE_KT
  }
  return nullptr;
}

template <typename T>
size_t persistent_smem(bool backward, int kt, int passes, int chunk) {
  return block_smem<T>(backward, kt, passes, chunk);
}

template <typename T>
static cudaError_t launch_persistent(bool backward, const PersistentLayer<T>& layer,
                                     const PersistentPlan& plan, cudaStream_t stream) {
  PersistentKernel<T> kernel = plan.fits ? persistent_kernel<T>(backward, plan.kt) : nullptr;
  if (kernel == nullptr) return cudaErrorInvalidConfiguration;
  LaunchRecord record =
      what(backward ? "persistent_backward" : "persistent_forward", dtype_name<T>(), true);
  record.kt = plan.kt;
  record.shape = plan.shape;
  return launch(record, kernel, dim3(plan.shape.blocks_per_direction * layer.D),
                dim3(plan.threads), plan.smem, stream, layer, plan.shape);
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
  template cudaError_t column_sum<T>(int64_t, int64_t, const T*, int64_t, T*,                \
                                     typename Acc<T>::type*, cudaStream_t);                    \
  template cudaError_t multiply<T>(int64_t, const T*, const T*, T*, cudaStream_t);            \
  template PersistentKernel<T> persistent_kernel<T>(bool, int);                                 \
  template size_t persistent_smem<T>(bool, int, int, int);                                     \
  template cudaError_t persistent_forward<T>(const PersistentLayer<T>&, const PersistentPlan&, \
                                             cudaStream_t);                                     \
  template cudaError_t persistent_backward<T>(const PersistentLayer<T>&,                        \
                                              const PersistentPlan&, cudaStream_t);
GRU_NATIVE_INSTANTIATE(float)
GRU_NATIVE_INSTANTIATE(double)
GRU_NATIVE_INSTANTIATE(__half)
GRU_NATIVE_INSTANTIATE(__nv_bfloat16)
#undef GRU_NATIVE_INSTANTIATE
template cudaError_t convert<__half, float>(int64_t, const __half*, float*, cudaStream_t);
template cudaError_t convert<float, __half>(int64_t, const float*, __half*, cudaStream_t);
template cudaError_t convert<__nv_bfloat16, float>(int64_t, const __nv_bfloat16*, float*,
                                                   cudaStream_t);
template cudaError_t convert<float, __nv_bfloat16>(int64_t, const float*, __nv_bfloat16*,
                                                   cudaStream_t);

}  // namespace gru_native::cuda
