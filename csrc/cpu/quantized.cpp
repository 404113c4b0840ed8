// quantized.cpp: the quantized GRU op on the CPU (quantized.h): argument checks, the input
// projections (int8: activations quantized per row, qdot.h; bfloat16: the weights read in place
// up to kWRowsMaxRows rows, project_rows, else the float GEMM on the weights converted once), and
// the layers' recurrence (kernels.cpp, forward_layer<float, W>). Inference only: nothing is saved.

// First: it chooses at::vec's instruction set, for every ATen header after it.
#include "cpu/vec.h"

#include "cpu/quantized.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cpu/bf16_pairs.h"
#include "cpu/gemm.h"
#include "cpu/host_cache.h"
#include "cpu/kernels.h"
#include "cpu/qdot.h"
#include "gru_stack.h"

namespace gru_native::cpu {
namespace {

// The int8 projection reads a block of W's rows (about this many bytes) from L2 for every few
// rows of a block of kRowBlock rows of X.
constexpr int64_t kWeightBlockBytes = 96 * 1024;
constexpr int64_t kRowBlock = 64;
// Below this many multiply-adds a projection runs on one thread.
constexpr int64_t kParallelWork = 64 * 1024;

// C[m, n] = (quantized row m of X) x (int8 row n of W [3H, X.K], scale sw[n]), in blocks of
// (W rows of one gate) x (X rows) spread over torch's threads; the sums are exact, so the bits
// do not depend on the split.
void project_int8(const QuantizedView& X, int64_t H, const int8_t* W, bool panels,
                  const float* sw, float* C, int64_t ldc) {
  const int64_t K = X.K;
  // Whole panels of W, about kWeightBlockBytes of them.
  const int64_t w_rows =
      std::max<int64_t>(kPanelRows,
                        kWeightBlockBytes / std::max<int64_t>(K, 1) / kPanelRows * kPanelRows);
  const int64_t w_blocks = (H + w_rows - 1) / w_rows;
  const int64_t x_blocks = (X.M + kRowBlock - 1) / kRowBlock;
  const int64_t items = kGates * w_blocks * x_blocks;
  // Items in W-block order: a thread's contiguous share reuses each W block over the rows of X.
  const int64_t grain = X.M * kGates * H * K < kParallelWork ? items : 1;
  at::parallel_for(0, items, grain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t g = i / (w_blocks * x_blocks), wb = i / x_blocks % w_blocks;
      const int64_t n0 = wb * w_rows, n1 = std::min(H, n0 + w_rows);
      const int64_t m0 = (i % x_blocks) * kRowBlock, m1 = std::min(X.M, m0 + kRowBlock);
      const QuantizedView rows = X.rows(m0, m1);
      const Int8Weights w = panels
          ? Int8Weights{W + g * int8_panels_size(1, H, K), 0}.from_row(n0, K)
          : Int8Weights{W + (g * H + n0) * K, K};
      qdot(rows, n1 - n0, w, sw + g * H + n0, C + m0 * ldc + g * H + n0, ldc);
    }
  });
}

// C[m, n] = x row m times bfloat16 row n of W [N, K].
void project_bf16(int64_t M, int64_t N, int64_t K, const float* x, const c10::BFloat16* W,
                  float* C, int64_t ldc) {
  // Up to kWRowsMaxRows rows (or a small product) read the weights in place (dot products, or
  // the packed GEMM's sums), as the float backend does: the float module's sums on the same
  // (converted) weights.
  if (M <= kWRowsMaxRows || M * N * K <= kSmallGemmMadds) {
    return project_rows(M, N, K, x, K, W, C, ldc);
  }
  const at::Tensor w_float = cached_empty({N * K}, at::kFloat);
  float* wf = w_float.data_ptr<float>();
  at::parallel_for(0, N * K, 64 * 1024, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) wf[i] = static_cast<float>(W[i]);
  });
  gemm<float>(M, N, K, MatRef<float>{x, K, 1}, MatRef<float>{wf, 1, K}, 0.0f, C, ldc, nullptr);
}

// `name()`: the argument's name, made only for the message.
template <typename Name>
void check_tensor(const at::Tensor& t, at::ScalarType dtype, at::IntArrayRef shape,
                  const Name& name) {
  TORCH_CHECK(t.defined() && t.device().is_cpu() && t.scalar_type() == dtype &&
                  t.sizes() == shape,
              "gru_native: quantized_gru: ", name(), " must be a ", dtype, " CPU tensor of shape ",
              shape, ", got ",
              t.defined() ? c10::str(t.scalar_type(), " on ", t.device(), " of shape ", t.sizes())
                          : std::string("an undefined tensor"));
}

template <typename W>
void run_layers(const Geometry& g, const at::Tensor& input, const at::Tensor& h0,
                const std::vector<at::Tensor>& w, at::TensorList scales, at::TensorList panels,
                bool has_biases, at::Tensor& output, at::Tensor& hy) {
  constexpr bool kInt8 = std::is_same_v<W, int8_t>;
  const int64_t R = g.steps.R, N = g.steps.N, H = g.H, D = g.D, L = g.L, G = kGates * H;
  const at::Tensor gi_all = cached_empty({D * R * G}, at::kFloat);
  const int64_t n_lower = L > 1 ? std::min<int64_t>(L - 1, 2) : 0;
  const at::Tensor lower_all = cached_empty({n_lower * R * D * H}, at::kFloat);
  // int8: each layer's input quantized per row, once for both directions.
  const int64_t ld = quant_padded(std::max(g.C, D * H));
  const at::Tensor xq = cached_empty({kInt8 ? R * ld : 0}, at::kChar);
  const at::Tensor xs = cached_empty({kInt8 ? R : 0}, at::kFloat);
  const at::Tensor xsum = cached_empty({kInt8 ? R : 0}, at::kInt);
  const float* x = input.data_ptr<float>();
  for (int64_t l = 0; l < L; ++l) {
    const int64_t Cl = g.layer_input_size(l);
    if constexpr (kInt8) {
      quantize_rows(R, Cl, x, Cl, xq.data_ptr<int8_t>(), ld, xs.data_ptr<float>(),
                    xsum.data_ptr<int32_t>());
    }
    ForwardParams<float, W> p;
    p.steps = g.steps;
    p.H = H;
    p.D = static_cast<int>(D);
    for (int64_t d = 0; d < D; ++d) {
      float* gi = gi_all.data_ptr<float>() + d * R * G;
      const W* w_ih = static_cast<const W*>(w[g.index(l, d, 0)].data_ptr());
      const W* w_hh = static_cast<const W*>(w[g.index(l, d, 1)].data_ptr());
      if constexpr (kInt8) {
        const QuantizedView rows{xq.data_ptr<int8_t>(), xs.data_ptr<float>(),
                                 xsum.data_ptr<int32_t>(), R, Cl, ld};
        const bool packed = !panels.empty();
        if (packed) {
          w_ih = panels[(l * D + d) * 2].data_ptr<int8_t>();
          w_hh = panels[(l * D + d) * 2 + 1].data_ptr<int8_t>();
        }
        project_int8(rows, H, w_ih, packed, scales[(l * D + d) * 2].data_ptr<float>(), gi, G);
        p.w_hh_scale[d] = scales[(l * D + d) * 2 + 1].data_ptr<float>();
        p.w_hh_panels = packed;
      } else {
        project_bf16(R, G, Cl, x, w_ih, gi, G);
      }
      p.gi[d] = gi;
      p.w_hh[d] = w_hh;
      p.b_ih[d] = has_biases ? w[g.index(l, d, 2)].data_ptr<float>() : nullptr;
      p.b_hh[d] = has_biases ? w[g.index(l, d, 3)].data_ptr<float>() : nullptr;
      p.h0[d] = h0.defined() ? h0.data_ptr<float>() + (l * D + d) * N * H : nullptr;
      p.hy[d] = hy.data_ptr<float>() + (l * D + d) * N * H;
    }
    p.out = l == L - 1 ? output.data_ptr<float>()
                       : lower_all.data_ptr<float>() + (l % 2) * R * D * H;
    forward_layer<float, W>(p);
    x = p.out;
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> quantized_gru(const at::Tensor& input,
                                                 const std::optional<at::Tensor>& hx,
                                                 at::TensorList weights, at::TensorList scales,
                                                 const std::optional<at::Tensor>& batch_sizes,
                                                 bool has_biases, int64_t num_layers,
                                                 bool bidirectional,
                                                 std::optional<at::TensorList> panels) {
  TORCH_CHECK(input.device().is_cpu() && input.scalar_type() == at::kFloat,
              "gru_native: quantized_gru takes a float32 CPU input, got ", input.scalar_type(),
              " on ", input.device());
  if (!batch_sizes.has_value() && input.dim() == 3) {
    TORCH_CHECK(input.size(0) > 0, "Expected sequence length to be larger than 0 in RNN");
  }
  TORCH_CHECK(num_layers >= 1, "gru_native: num_layers must be at least 1, got ", num_layers);
  Geometry g;
  g.L = num_layers;
  g.D = bidirectional ? 2 : 1;
  g.P = has_biases ? 4 : 2;
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == g.L * g.D * g.P,
              "gru_native: quantized_gru: expected ", g.L * g.D * g.P, " weights, got ",
              weights.size());
  make_schedule(g, input, batch_sizes);
  const at::Tensor& w_hh0 = weights[1];
  TORCH_CHECK(w_hh0.dim() == 2 && w_hh0.size(1) > 0 && w_hh0.size(0) == kGates * w_hh0.size(1),
              "gru_native: quantized_gru: weight_hh_l0 must have shape [3*hidden_size, "
              "hidden_size], got ", w_hh0.sizes());
  g.H = w_hh0.size(1);
  const at::ScalarType wt = w_hh0.scalar_type();
  TORCH_CHECK(wt == at::kChar || wt == at::kBFloat16,
              "gru_native: quantized_gru: the weights must be int8 or bfloat16, got ", wt);
  const bool int8 = wt == at::kChar;
  const int64_t G = kGates * g.H;
  std::vector<at::Tensor> w(weights.size());
  for (int64_t i = 0; i < static_cast<int64_t>(weights.size()); ++i) {
    const int64_t kind = i % g.P, cols = kind == 1 ? g.H : g.layer_input_size(i / g.P / g.D);
    const auto name = [&] { return param_name(i, g.P, g.D); };
    if (kind < 2) {
      check_tensor(weights[i], wt, {G, cols}, name);
    } else {
      check_tensor(weights[i], at::kFloat, {G}, name);
    }
    w[i] = weights[i].contiguous();
  }
  const int64_t n_scales = int8 ? g.L * g.D * 2 : 0;
  TORCH_CHECK(static_cast<int64_t>(scales.size()) == n_scales, "gru_native: quantized_gru: ",
              int8 ? "int8" : "bfloat16", " weights take ", n_scales, " scale tensors, got ",
              scales.size());
  for (int64_t i = 0; i < n_scales; ++i) {
    check_tensor(scales[i], at::kFloat, {G},
                 [&] { return param_name((i / 2) * g.P + i % 2, g.P, g.D) + "'s scale"; });
    TORCH_CHECK(scales[i].is_contiguous(), "gru_native: quantized_gru: scales must be contiguous");
  }
  const at::TensorList panel_list = panels.value_or(at::TensorList());
  TORCH_CHECK(panel_list.empty() || (int8 && static_cast<int64_t>(panel_list.size()) == n_scales),
              "gru_native: quantized_gru: panels are none or, for int8 weights, one per weight "
              "matrix (", n_scales, "), got ", panel_list.size());
  for (int64_t i = 0; i < static_cast<int64_t>(panel_list.size()); ++i) {
    const int64_t cols = i % 2 == 1 ? g.H : g.layer_input_size(i / 2 / g.D);
    check_tensor(panel_list[i], at::kChar, {int8_panels_size(kGates, g.H, cols)},
                 [&] { return param_name((i / 2) * g.P + i % 2, g.P, g.D) + "'s panels"; });
    TORCH_CHECK(panel_list[i].is_contiguous(),
                "gru_native: quantized_gru: panels must be contiguous");
  }
  const int64_t N = g.steps.N, R = g.steps.R, H = g.H, D = g.D;
  at::Tensor h0;
  if (hx.has_value()) {
    check_tensor(*hx, at::kFloat, {g.L * D, N, H}, [] { return std::string("hx"); });
    h0 = hx->contiguous();
  }
  at::Tensor output = g.packed ? at::empty({R, D * H}, input.options())
                               : at::empty({g.steps.T, N, D * H}, input.options());
  at::Tensor hy = at::empty({g.L * D, N, H}, input.options());
  if (N == 0) return {output, hy};
  const at::Tensor x = input.contiguous();
  if (int8) {
    run_layers<int8_t>(g, x, h0, w, scales, panel_list, has_biases, output, hy);
  } else {
    run_layers<c10::BFloat16>(g, x, h0, w, scales, panel_list, has_biases, output, hy);
  }
  return {output, hy};
}

at::Tensor int8_panels(const at::Tensor& weight) {
  TORCH_CHECK(weight.device().is_cpu() && weight.scalar_type() == at::kChar && weight.dim() == 2 &&
                  weight.size(0) % kGates == 0,
              "gru_native: int8_panels: expected an int8 CPU matrix of 3 * H rows, got ",
              weight.scalar_type(), " on ", weight.device(), " of shape ", weight.sizes());
  const at::Tensor w = weight.contiguous();
  const int64_t H = w.size(0) / kGates, K = w.size(1);
  at::Tensor out = at::empty({int8_panels_size(kGates, H, K)}, w.options());
  pack_int8_panels(kGates, H, K, w.data_ptr<int8_t>(), K, out.data_ptr<int8_t>());
  return out;
}

namespace {

// What gru_native/quantized.py's forwards raise for or hand elsewhere before their op call:
// not a float32 CPU tensor, or a gradient wanted.
bool plain_float(const at::Tensor& t) {
  return t.device().is_cpu() && t.scalar_type() == at::kFloat &&
         !(t.requires_grad() && at::GradMode::is_enabled());
}

}  // namespace

std::optional<at::Tensor> quantized_cell_direct(const at::Tensor& input,
                                                const std::optional<at::Tensor>& hx,
                                                at::TensorList weights, at::TensorList scales,
                                                at::TensorList panels, bool has_biases,
                                                int64_t input_size, int64_t hidden_size) {
  // QuantizedGRUCell.forward's checks (and cell_call's, and _run's): input [N, C] or [C] with
  // hx of the same rank, or none.
  const int64_t dim = input.dim();
  if ((dim != 1 && dim != 2) || !plain_float(input) || input.size(-1) != input_size) {
    return std::nullopt;
  }
  const int64_t N = dim == 2 ? input.size(0) : 1;
  if (hx.has_value() &&
      (hx->dim() != dim || !plain_float(*hx) || hx->size(-1) != hidden_size ||
       (dim == 2 && hx->size(0) != N))) {
    return std::nullopt;
  }
  // The Python path's tensors: [1, N, C] and [1, N, H] (zeros for no hx), h' = hy[0].
  const at::Tensor x = dim == 2 ? input.unsqueeze(0) : input.unsqueeze(0).unsqueeze(0);
  const at::Tensor h = !hx.has_value() ? at::zeros({1, N, hidden_size}, input.options())
                       : dim == 2      ? hx->unsqueeze(0)
                                       : hx->unsqueeze(0).unsqueeze(0);
  const at::Tensor hy = std::get<1>(quantized_gru(x, h, weights, scales, std::nullopt,
                                                  has_biases, 1, false, panels));
  return dim == 2 ? hy.select(0, 0) : hy.view({hidden_size});
}

std::optional<std::tuple<at::Tensor, at::Tensor>> quantized_gru_direct(
    const at::Tensor& input, const std::optional<at::Tensor>& hx, at::TensorList weights,
    at::TensorList scales, at::TensorList panels, bool has_biases, int64_t num_layers,
    bool bidirectional, bool batch_first, int64_t input_size, int64_t hidden_size) {
  // QuantizedGRU.forward's checks for a dense batched input (sequence_call, check_input,
  // check_forward_args): [T, N, C] ([N, T, C] batch first), T > 0; hx [L * D, N, H] or none.
  if (input.dim() != 3 || !plain_float(input) || input.size(-1) != input_size ||
      input.size(batch_first ? 1 : 0) == 0) {
    return std::nullopt;
  }
  const int64_t N = input.size(batch_first ? 0 : 1);
  if (hx.has_value() &&
      (!plain_float(*hx) ||
       hx->sizes() != at::IntArrayRef{num_layers * (bidirectional ? 2 : 1), N, hidden_size})) {
    return std::nullopt;
  }
  auto [output, hy] =
      quantized_gru(batch_first ? input.transpose(0, 1) : input, hx, weights, scales,
                    std::nullopt, has_biases, num_layers, bidirectional, panels);
  return std::make_tuple(batch_first ? output.transpose(0, 1) : output, hy);
}

std::tuple<std::string, std::string, std::string> lowp_paths() {
#if defined(CPU_CAPABILITY_AVX512)
  const char* isa = "AVX512";
#elif defined(CPU_CAPABILITY_AVX2)
  const char* isa = "AVX2";
#else
  const char* isa = nullptr;
#endif
  if (isa == nullptr) {
    return {"converted to float elementwise, float math", "converted to float elementwise, float math",
            qdot_isa()};
  }
#if defined(GRU_NATIVE_BF16_PAIRS)
  const char* bf16 = "-BF16 vdpbf16ps: the forward's products and the GEMMs in pairs of "
                     "bfloat16 (the backward's recurrence, and bfloat16 weights under float "
                     "activations: converted to float as loaded (vpmovzxwd, vpslld), float FMA)";
#elif defined(CPU_CAPABILITY_AVX512)
  const char* bf16 = ": converted to float as loaded (vpmovzxwd, vpslld), float FMA";
#else
  const char* bf16 = ": converted to float as loaded (vbroadcasti128, vpshufb), float FMA";
#endif
  return {std::string(isa) + bf16,
          std::string(isa) + " + F16C: vcvtph2ps / vcvtps2ph, float FMA", qdot_isa()};
}

}  // namespace gru_native::cpu

TORCH_LIBRARY_IMPL(gru_native, CPU, m) {
  m.impl("quantized_gru", &gru_native::cpu::quantized_gru);
}
