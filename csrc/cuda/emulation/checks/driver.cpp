// driver.cpp: the checks driver of the CUDA emulation: .ci/cuda_emulation builds it with
// ThreadSanitizer (racecheck) and AddressSanitizer (memcheck), every emulated CUDA thread an OS
// thread, and without a sanitizer but with its kernels instrumented for the coherence check
// (checks/tsan_hooks.cpp), where the mutations of the CUDA code must be caught.
//
// It links the CUDA backend as the emulated Python build does (gru_cuda.cpp, gru_stack.cpp,
// device_cuda.cpp, the emulated torch seam, the .cu files on the emulation runtime) against
// libtorch, without Python, and runs small forward and backward cases of every kernel on both
// recurrence paths: dense and packed input, one and two directions, biases or not, h0 or not,
// dropout between layers, several hidden units per persistent block, float, double, float16 and
// bfloat16. The sanitizers report what they find; this program checks the results on top (the
// two paths agree, inference equals the training forward bitwise, the results are finite: NaN
// guards surround every tensor), a persistent forward captured into a CUDA graph and replayed,
// and the emulation's own semantics (runtime_checks.cpp).
//
//   driver [selftest] [capture] [cases] [coherence] [gemm|persistent]
//   (default: selftest, capture and cases; coherence too in the instrumented build)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "backend.h"
#include "cuda/emulation/checks/checks.h"
#include "cuda/kernels.cuh"
#include "cuda/emulation/runtime.h"
#include "cuda/emulation/torch_emulated.h"

namespace gru_checks {

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what.c_str());
    ++failures;
  }
}

}  // namespace gru_checks

namespace {

using gru_checks::expect;

// -- the GRU cases -------------------------------------------------------------------------------

struct Case {
  const char* name;
  int64_t L;
  bool bi, bias, h0, dropout;
  std::vector<int64_t> lengths;  // packed when not empty (sorted, decreasing); else dense
  int64_t T, N, C, H;
  int sms;  // emulated multiprocessors (fewer: several units per persistent block)
  // The persistent kernels' layout the case is for: blocks per direction, passes of units.
  int blocks_per_direction, passes;
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
  // The backend serving CPU tensors in this build: the CUDA backend (torch_emulated.cpp).
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
      // (Few multiprocessors: every emulated thread is an OS thread under the sanitizers.
      // Several blocks a direction: each reads the others' h_t, or dG, after grid.sync.)
      {"dense-2L-bi-h0-dropout", 2, true, true, true, true, {}, 3, 2, 3, 5, 2, 1, 1},
      {"dense-1L-uni-nobias-3-blocks", 1, false, false, false, false, {}, 4, 3, 2, 20, 3, 3, 1},
      {"packed-2L-bi-2-blocks-per-direction", 2, true, true, true, false, {3, 2, 2, 1}, 0, 0, 3,
       12, 4, 2, 1},
      {"several-units-per-block", 1, true, true, true, false, {}, 3, 2, 3, 20, 4, 2, 2},
  };
  const at::ScalarType dtypes[] = {at::kDouble, at::kFloat, at::kHalf, at::kBFloat16};
  for (const Case& c : cases) {
    setenv("GRU_NATIVE_EMULATION_SMS", std::to_string(c.sms).c_str(), 1);
    const int D = c.bi ? 2 : 1;
    const int64_t N = c.lengths.empty() ? c.N : static_cast<int64_t>(c.lengths.size());
    for (bool backward : {false, true}) {
      const auto plan = gru_native::cuda::plan_persistent<float>(D, N, c.H, backward, 0);
      expect(plan.fits && plan.shape.blocks_per_direction == c.blocks_per_direction &&
                 plan.shape.passes == c.passes,
             std::string(c.name) + ": the persistent " + (backward ? "backward" : "forward") +
                 " has " + std::to_string(plan.shape.blocks_per_direction) +
                 " blocks a direction and " + std::to_string(plan.shape.passes) + " passes");
    }
    for (at::ScalarType dtype : dtypes) {
      std::vector<Result> results;
      for (const std::string& path : paths) {
        std::printf("+ %s %s %s\n", c.name, c10::toString(dtype), path.c_str());
        std::fflush(stdout);
        try {
          results.push_back(run_case(c, dtype, path.c_str()));
        } catch (const c10::Error& e) {
          expect(false, std::string(c.name) + " " + path + ": " + e.what_without_backtrace());
        }
      }
      if (results.size() == 2 && paths.size() == 2) {  // the two paths agree (they sum in different orders)
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

// The persistent forward captured into a CUDA graph on a side stream, then launched twice, after
// the pinned memory a copy made during the capture would have read has been handed out and freed
// again: both replays equal the direct run (the step schedule reaches the graph by value).
void check_capture() {
  std::printf("+ a persistent forward captured into a CUDA graph, replayed twice\n");
  std::fflush(stdout);
  setenv("GRU_NATIVE_CUDA_PATH", "persistent", 1);
  setenv("GRU_NATIVE_EMULATION_SMS", "4", 1);
  at::manual_seed(0);
  const auto opt = at::TensorOptions().dtype(at::kFloat);
  const int64_t T = 5, N = 3, C = 4, H = 6;
  std::vector<at::Tensor> w;
  for (int d = 0; d < 2; ++d) {
    w.push_back(at::randn({3 * H, C}, opt).mul_(0.4));
    w.push_back(at::randn({3 * H, H}, opt).mul_(0.4));
    w.push_back(at::randn({3 * H}, opt).mul_(0.4));
    w.push_back(at::randn({3 * H}, opt).mul_(0.4));
  }
  const at::Tensor x = at::randn({T, N, C}, opt);
  const std::optional<at::Tensor> hx = at::randn({2, N, H}, opt);
  const gru_native::BackendEntry* backend = gru_native::find_backend(c10::DeviceType::CPU);
  try {
    auto direct = backend->forward(x, hx, w, std::nullopt, std::nullopt, true, 1, true, false);
    cudaStream_t s = nullptr;
    cudaStreamCreate(&s);
    gru_native::torch_cuda::emulation::set_current_stream(s);
    cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal);
    auto captured = backend->forward(x, hx, w, std::nullopt, std::nullopt, true, 1, true, false);
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(s, &graph);
    gru_native::torch_cuda::emulation::set_current_stream(nullptr);
    expect(ended == cudaSuccess && cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess,
           "the forward can be captured");
    for (int i = 0; i < 4; ++i) {
      void* p = nullptr;
      cudaHostAlloc(&p, 4096, cudaHostAllocDefault);
      cudaFreeHost(p);
    }
    for (int replay = 0; replay < 2; ++replay) {
      std::get<0>(captured).fill_(std::numeric_limits<float>::quiet_NaN());
      std::get<1>(captured).fill_(std::numeric_limits<float>::quiet_NaN());
      const cudaError_t launched = cudaGraphLaunch(exec, s);
      const cudaError_t err = launched != cudaSuccess ? launched : cudaStreamSynchronize(s);
      expect(err == cudaSuccess, std::string("the graph replays: ") + cudaGetErrorString(err));
      (void)cudaGetLastError();
      expect(at::equal(std::get<0>(captured), std::get<0>(direct)) &&
                 at::equal(std::get<1>(captured), std::get<1>(direct)),
             "a replay of the captured forward equals the direct run (replay " +
                 std::to_string(replay) + ")");
    }
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    cudaStreamDestroy(s);
  } catch (const c10::Error& e) {
    gru_native::torch_cuda::emulation::set_current_stream(nullptr);
    expect(false, std::string("graph capture: ") + e.what_without_backtrace());
  }
}

}  // namespace

int main(int argc, char** argv) {
  at::set_num_threads(1);
  bool selftest = false, capture = false, cases = false, coherence = false;
  std::vector<std::string> paths;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "selftest") selftest = true;
    else if (a == "capture") capture = true;
    else if (a == "cases") cases = true;
    else if (a == "coherence") coherence = true;
    else if (a == "gemm" || a == "persistent") paths.push_back(a);
    else {
      std::fprintf(stderr,
                   "usage: driver [selftest] [capture] [cases] [coherence] [gemm|persistent]\n");
      return 2;
    }
  }
  if (!selftest && !capture && !cases && !coherence) {
    selftest = capture = cases = true;
#ifdef GRU_CHECKS_COHERENCE
    coherence = true;
#endif
  }
  if (paths.empty()) paths = {"gemm", "persistent"};
  if (selftest) {
    std::printf("+ emulation self-test\n");
    gru_checks::check_runtime();
  }
  if (coherence) {
    std::printf("+ the coherence check\n");
    gru_checks::check_coherence();
  }
  if (capture) check_capture();
  if (cases) check_cases(paths);
  if (gru_checks::failures) {
    std::fprintf(stderr, "%d checks failed\n", gru_checks::failures);
    return 1;
  }
  std::printf("+ all checks passed\n");
  return 0;
}
