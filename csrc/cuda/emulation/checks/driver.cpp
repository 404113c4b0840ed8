// driver.cpp: the racecheck and memcheck runs of the CUDA emulation (.ci/cuda_emulation builds it
// with ThreadSanitizer and with AddressSanitizer, every emulated CUDA thread an OS thread).
//
// It links the CUDA backend as the emulated Python build does (gru_cuda.cpp, gru_stack.cpp, the
// emulated device seam, kernels.cu on the emulation runtime) against libtorch, without Python,
// and runs small forward and backward cases of every kernel on both recurrence paths: dense and
// packed input, one and two directions, biases or not, h0 or not, dropout between layers,
// several hidden units per persistent block, float, double, float16 and bfloat16. The
// sanitizers report what they find; this program checks the results on top (the two paths
// agree, inference equals the training forward bitwise) and the emulation's own semantics
// (half conversions against c10's, barriers, cooperative launches, shuffles, launch errors).
//
//   driver [selftest] [cases] [gemm|persistent]   (default: everything)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "backend.h"
#include "cuda/emulation/runtime.h"

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what.c_str());
    ++failures;
  }
}

// -- the emulation's own semantics -----------------------------------------------------------

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
    const int v = buf[(id + 1) % total];
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

template <typename... P>
cudaError_t run(void (*kernel)(P...), bool cooperative, dim3 grid, dim3 block, size_t smem,
                P... args) {
  void* ptrs[] = {&args...};
  return cooperative ? cudaLaunchCooperativeKernel(kernel, grid, block, ptrs, smem, nullptr)
                     : cudaLaunchKernel(kernel, grid, block, ptrs, smem, nullptr);
}

void check_runtime() {
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

// -- the GRU cases -------------------------------------------------------------------------------

struct Case {
  const char* name;
  int64_t L;
  bool bi, bias, h0, dropout;
  std::vector<int64_t> lengths;  // packed when not empty (sorted, decreasing); else dense
  int64_t T, N, C, H;
  int sms;  // emulated multiprocessors (fewer: several units per persistent block)
};

struct Result {
  std::vector<at::Tensor> tensors;  // output, h_n, grad input, grad hx, grad weights
};

Result run_case(const Case& c, at::ScalarType dtype, const char* path) {
  setenv("GRU_NATIVE_CUDA_PATH", path, 1);
  setenv("GRU_NATIVE_EMULATION_SMS", std::to_string(c.sms).c_str(), 1);
  at::manual_seed(0);
  const auto opt = at::TensorOptions().dtype(at::kFloat);
  const int64_t D = c.bi ? 2 : 1, G = 3 * c.H;
  std::vector<at::Tensor> w;
  for (int64_t l = 0; l < c.L; ++l) {
    for (int64_t d = 0; d < D; ++d) {
      const int64_t cin = l == 0 ? c.C : D * c.H;
      w.push_back(at::randn({G, cin}, opt).mul_(0.4).to(dtype));
      w.push_back(at::randn({G, c.H}, opt).mul_(0.4).to(dtype));
      if (c.bias) {
        w.push_back(at::randn({G}, opt).mul_(0.4).to(dtype));
        w.push_back(at::randn({G}, opt).mul_(0.4).to(dtype));
      }
    }
  }
  std::optional<at::Tensor> batch_sizes;
  at::Tensor x;
  int64_t R = c.T * c.N, N = c.N;
  if (!c.lengths.empty()) {
    std::vector<int64_t> bs;
    for (int64_t t = 0; t < c.lengths[0]; ++t) {
      int64_t n = 0;
      for (int64_t len : c.lengths) n += len > t;
      bs.push_back(n);
    }
    batch_sizes = at::tensor(bs, at::kLong);
    R = 0;
    for (int64_t len : c.lengths) R += len;
    N = static_cast<int64_t>(c.lengths.size());
    x = at::randn({R, c.C}, opt).to(dtype);
  } else {
    x = at::randn({c.T, c.N, c.C}, opt).to(dtype);
  }
  std::optional<at::Tensor> hx;
  if (c.h0) hx = at::randn({c.L * D, N, c.H}, opt).to(dtype);
  std::optional<at::Tensor> mask;
  if (c.dropout && c.L > 1) {
    mask = at::bernoulli(at::full({c.L - 1, R, D * c.H}, 0.7, opt)).div_(0.7).to(dtype);
  }
  // The backend serving CPU tensors in this build: the CUDA backend (device_emulated.cpp).
  const gru_native::BackendEntry* backend = gru_native::find_backend(c10::DeviceType::CPU);
  auto [out, hy, ws, lower] =
      backend->forward(x, hx, w, batch_sizes, mask, c.bias, c.L, c.bi, true);
  if (!lower.defined()) lower = at::empty({0}, x.options());  // as the op returns it
  auto [out_inf, hy_inf, ws_inf, lower_inf] =
      backend->forward(x, hx, w, batch_sizes, mask, c.bias, c.L, c.bi, false);
  expect(at::equal(out, out_inf) && at::equal(hy, hy_inf),
         std::string(c.name) + " " + path + ": inference equals the training forward bitwise");
  const at::Tensor g_out = at::randn(out.sizes(), opt).to(dtype);
  const at::Tensor g_hy = at::randn(hy.sizes(), opt).to(dtype);
  auto [gx, ghx, gw] = backend->backward(g_out, g_hy, x, hx, w, batch_sizes, mask, out, ws,
                                         lower, c.bias, c.L, c.bi, true, true, true);
  Result r;
  r.tensors = {out, hy, gx, ghx};
  r.tensors.insert(r.tensors.end(), gw.begin(), gw.end());
  for (const at::Tensor& t : r.tensors) {
    expect(at::isfinite(t.to(at::kFloat)).all().item<bool>(),
           std::string(c.name) + " " + path + ": finite results");
  }
  return r;
}

void check_cases(const std::vector<std::string>& paths) {
  const std::vector<Case> cases = {
      // (Few multiprocessors: every emulated thread is an OS thread under the sanitizers.)
      {"dense-2L-bi-h0-dropout", 2, true, true, true, true, {}, 3, 2, 3, 5, 2},
      {"dense-1L-uni-nobias-3-blocks", 1, false, false, false, false, {}, 4, 3, 2, 6, 3},
      {"packed-2L-bi-2-blocks-per-direction", 2, true, true, true, false, {3, 2, 2, 1}, 0, 0, 3,
       4, 4},
      {"several-units-per-block", 1, true, true, true, false, {}, 3, 2, 3, 7, 2},
  };
  const at::ScalarType dtypes[] = {at::kDouble, at::kFloat, at::kHalf, at::kBFloat16};
  for (const Case& c : cases) {
    for (at::ScalarType dtype : dtypes) {
      std::vector<Result> results;
      for (const std::string& path : paths) {
        std::printf("+ %s %s %s\n", c.name, c10::toString(dtype), path.c_str());
        std::fflush(stdout);
        results.push_back(run_case(c, dtype, path.c_str()));
      }
      if (results.size() == 2) {  // the two paths agree (they sum in different orders)
        const double tol = dtype == at::kDouble ? 1e-10 : dtype == at::kFloat ? 1e-4 : 0.1;
        for (size_t i = 0; i < results[0].tensors.size(); ++i) {
          const double diff = (results[0].tensors[i].to(at::kDouble) -
                               results[1].tensors[i].to(at::kDouble)).abs().max().item<double>();
          expect(diff <= tol, std::string(c.name) + " " + c10::toString(dtype) +
                                  ": the paths differ by " + std::to_string(diff) + " in result " +
                                  std::to_string(i));
        }
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  at::set_num_threads(1);
  bool selftest = false, cases = false;
  std::vector<std::string> paths;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "selftest") selftest = true;
    else if (a == "cases") cases = true;
    else if (a == "gemm" || a == "persistent") paths.push_back(a);
    else {
      std::fprintf(stderr, "usage: driver [selftest] [cases] [gemm|persistent]\n");
      return 2;
    }
  }
  if (!selftest && !cases) selftest = cases = true;
  if (paths.empty()) paths = {"gemm", "persistent"};
  if (selftest) {
    std::printf("+ emulation self-test\n");
    check_conversions();
    check_runtime();
  }
  if (cases) check_cases(paths);
  if (failures) {
    std::fprintf(stderr, "%d checks failed\n", failures);
    return 1;
  }
  std::printf("+ all checks passed\n");
  return 0;
}
