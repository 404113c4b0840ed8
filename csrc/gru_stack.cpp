// gru_stack.cpp: argument checks and the step schedule, shared by every device. See gru_stack.h.
#include "gru_stack.h"

#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <sstream>
#include <string>
#include <vector>

namespace gru_native {

std::string param_name(int64_t index, int64_t per_dir, int64_t D) {
  static const char* const kParamKinds[4] = {"weight_ih", "weight_hh", "bias_ih", "bias_hh"};
  const int64_t layer_dir = index / per_dir;
  return std::string(kParamKinds[index % per_dir]) + "_l" + std::to_string(layer_dir / D) +
         (layer_dir % D ? "_reverse" : "");
}

namespace {

void check_same(const at::Tensor& input, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device() == input.device(), "gru_native: ", name, " is on ", t.device(),
              " but input is on ", input.device());
  TORCH_CHECK(t.scalar_type() == input.scalar_type(), "gru_native: ", name, " has dtype ",
              t.scalar_type(), " but input has dtype ", input.scalar_type());
}

// nn.GRU's error for an h0 whose dtype is not the weights', on the input's device: on the CPU
// the mismatch first meets W_hh in the recurrent addmm (with biases) or mm (without), whose
// messages these are; on a GPU cuDNN checks it first.
[[noreturn]] void hidden_dtype_error(const at::Tensor& input, const at::Tensor& hx,
                                     const at::Tensor& w_hh, bool has_biases) {
  if (input.device().is_cuda()) {
    TORCH_CHECK(false, "Input and hidden tensors are not the same dtype, found input tensor with ",
                w_hh.scalar_type(), " and hidden tensor with ", hx.scalar_type());
  }
  TORCH_CHECK(!has_biases, "mat1 and mat2 must have the same dtype, but got ", hx.scalar_type(),
              " and ", w_hh.scalar_type());
  TORCH_CHECK(false, "expected m1 and m2 to have the same dtype, but got: ", hx.dtype(), " != ",
              w_hh.dtype());
}

// Why weights[i] is not what the kernels take ("" if it is); the text names nn.GRU's parameter.
std::string weight_misfit(const at::Tensor& input, const at::Tensor& w, int64_t i, int64_t L,
                          int64_t D, int64_t P, int64_t C, int64_t H) {
  if (!w.defined()) return param_name(i, P, D) + " is undefined";
  if (w.device() != input.device()) {
    return param_name(i, P, D) + " is on " + w.device().str() + " but input is on " +
           input.device().str();
  }
  if (w.scalar_type() != input.scalar_type()) {
    return param_name(i, P, D) + " has dtype " + c10::toString(w.scalar_type()) +
           " but input has dtype " + c10::toString(input.scalar_type());
  }
  const int64_t kind = i % P, G = kGates * H;
  const int64_t cols = kind == 1 ? H : (i / P / D == 0 ? C : D * H);
  const bool ok = kind < 2 ? (w.dim() == 2 && w.size(0) == G && w.size(1) == cols)
                           : (w.dim() == 1 && w.size(0) == G);
  if (ok) return std::string();
  std::ostringstream msg;
  msg << param_name(i, P, D) << " must have shape "
      << (kind < 2 ? std::vector<int64_t>{G, cols} : std::vector<int64_t>{G}) << ", got "
      << w.sizes();
  return msg.str();
}

// W_hh of layer 0 gives H; "" if it is of a usable shape.
std::string hidden_misfit(const at::Tensor& w_hh0) {
  if (w_hh0.defined() && w_hh0.dim() == 2 && w_hh0.size(0) == kGates * w_hh0.size(1) &&
      w_hh0.size(1) > 0) {
    return std::string();
  }
  std::ostringstream msg;
  msg << "weight_hh_l0 must have shape [3*hidden_size, hidden_size], got ";
  if (w_hh0.defined()) {
    msg << w_hh0.sizes();
  } else {
    msg << "an undefined tensor";
  }
  return msg.str();
}

}  // namespace

bool weights_fit(const at::Tensor& input, at::TensorList weights, bool has_biases,
                 int64_t num_layers, bool bidirectional) {
  const int64_t D = bidirectional ? 2 : 1, P = has_biases ? 4 : 2;
  if (num_layers < 1 || static_cast<int64_t>(weights.size()) != num_layers * D * P ||
      input.dim() < 1 || !hidden_misfit(weights[1]).empty()) {
    return false;
  }
  const int64_t H = weights[1].size(1), C = input.size(-1);
  for (int64_t i = 0; i < static_cast<int64_t>(weights.size()); ++i) {
    if (!weight_misfit(input, weights[i], i, num_layers, D, P, C, H).empty()) return false;
  }
  return true;
}

void make_schedule(Geometry& g, const at::Tensor& input,
                   const std::optional<at::Tensor>& batch_sizes) {
  g.packed = batch_sizes.has_value();
  TORCH_CHECK(input.dim() == (g.packed ? 2 : 3), "gru_native: input must have ",
              g.packed ? 2 : 3, " dimensions (", g.packed ? "[R, C] packed data" : "[T, N, C]",
              "), got ", input.dim());
  g.C = input.size(-1);

  // The step schedule.
  if (g.packed) {
    const at::Tensor& bs = *batch_sizes;
    TORCH_CHECK(bs.dim() == 1 && bs.scalar_type() == at::kLong && bs.device().is_cpu(),
                "gru_native: batch_sizes must be a 1-D int64 tensor on the CPU, got a ", bs.dim(),
                "-D ", bs.scalar_type(), " tensor on ", bs.device());
    TORCH_CHECK(bs.numel() > 0, "gru_native: batch_sizes must not be empty");
    const at::Tensor bsc = bs.contiguous();
    const int64_t* p = bsc.data_ptr<int64_t>();
    g.batch_sizes.assign(p, p + bsc.numel());
  } else {
    g.batch_sizes.assign(input.size(0), input.size(1));
  }
  g.offsets.resize(g.batch_sizes.size());
  int64_t rows = 0;
  for (size_t t = 0; t < g.batch_sizes.size(); ++t) {
    const int64_t b = g.batch_sizes[t];
    if (g.packed) {
      TORCH_CHECK(b > 0 && (t == 0 || b <= g.batch_sizes[t - 1]),
                  "gru_native: batch_sizes must be positive and non-increasing, got ", b,
                  " at step ", t);
    }
    g.offsets[t] = rows;
    rows += b;
  }
  if (g.packed) {
    TORCH_CHECK(rows == input.size(0), "gru_native: batch_sizes sum to ", rows,
                " but the packed input has ", input.size(0), " rows");
  }
  g.steps.T = static_cast<int64_t>(g.batch_sizes.size());
  g.steps.N = g.batch_sizes[0];
  g.steps.R = rows;
  g.steps.batch_sizes = g.batch_sizes.data();
  g.steps.offsets = g.offsets.data();
}

Geometry make_geometry(const BackendInfo& backend, const at::Tensor& input,
                       const std::optional<at::Tensor>& hx, at::TensorList weights,
                       const std::optional<at::Tensor>& batch_sizes,
                       const std::optional<at::Tensor>& dropout_mask, bool has_biases,
                       int64_t num_layers, bool bidirectional) {
  // First the checks nn.GRU makes past its Python layer, in its order, with its messages:
  // ATen's check_attributes, the empty-sequence check, the first recurrent GEMM's dtype check.
  for (const char* name : {"hidden", "parameter"}) {
    const bool hidden = name[0] == 'h';
    if (hidden && !hx.has_value()) continue;
    for (const at::Tensor& t : hidden ? at::TensorList(*hx) : weights) {
      TORCH_CHECK(!t.defined() || t.device() == input.device(), "Input and ", name,
                  " tensors are not at the same device, found input tensor at ", input.device(),
                  " and ", name, " tensor at ", t.device());
    }
  }
  if (!batch_sizes.has_value() && input.dim() == 3) {
    TORCH_CHECK(input.size(0) > 0, "Expected sequence length to be larger than 0 in RNN");
  }
  if (hx.has_value() && weights.size() >= 2 && weights[1].defined() &&
      hx->scalar_type() != weights[1].scalar_type()) {
    hidden_dtype_error(input, *hx, weights[1], has_biases);
  }

  Geometry g;
  TORCH_CHECK(backend.dtype_supported, "gru_native: the ", backend.name,
              " kernels do not support dtype torch.",
              std::string(c10::getDtypeNames(input.scalar_type()).first),
              " (supported: ", backend.dtypes, ")");
  TORCH_CHECK(num_layers >= 1, "gru_native: num_layers must be at least 1, got ", num_layers);
  g.L = num_layers;
  g.D = bidirectional ? 2 : 1;
  g.P = has_biases ? 4 : 2;
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == g.L * g.D * g.P,
              "gru_native: got an incorrect number of RNN parameters: expected ", g.L * g.D * g.P,
              " for num_layers=", g.L, ", bidirectional=", bidirectional,
              ", bias=", has_biases, ", got ", weights.size());
  make_schedule(g, input, batch_sizes);

  // Weights: nn.GRU's shapes, one dtype and device.
  const std::string hidden = hidden_misfit(weights[1]);
  TORCH_CHECK(hidden.empty(), "gru_native: ", hidden);
  g.H = weights[1].size(1);
  for (int64_t i = 0; i < static_cast<int64_t>(weights.size()); ++i) {
    const std::string why = weight_misfit(input, weights[i], i, g.L, g.D, g.P, g.C, g.H);
    TORCH_CHECK(why.empty(), "gru_native: ", why);
  }

  if (hx.has_value()) {
    check_same(input, *hx, "hx");
    TORCH_CHECK(hx->dim() == 3 && hx->size(0) == g.L * g.D && hx->size(1) == g.steps.N &&
                    hx->size(2) == g.H,
                "gru_native: hx must have shape [", g.L * g.D, ", ", g.steps.N, ", ", g.H,
                "], got ", hx->sizes());
  }
  if (dropout_mask.has_value()) {
    const at::Tensor& m = *dropout_mask;
    check_same(input, m, "dropout_mask");
    TORCH_CHECK(m.dim() == 3 && m.size(0) == g.L - 1 && m.size(1) == g.steps.R &&
                    m.size(2) == g.D * g.H,
                "gru_native: dropout_mask must have shape [", g.L - 1, ", ", g.steps.R, ", ",
                g.D * g.H, "], got ", m.sizes());
  }
  return g;
}

void check_backward_args(const Geometry& g, const at::Tensor& input, const at::Tensor& output,
                         const at::Tensor& workspace, const at::Tensor& layer_outputs,
                         at::ScalarType workspace_dtype) {
  const int64_t R = g.steps.R, H = g.H, D = g.D, L = g.L;
  TORCH_CHECK(workspace.dim() == 4 && workspace.size(0) == L && workspace.size(1) == D &&
                  workspace.size(2) == R && workspace.size(3) == kWorkspaceGates * H,
              "gru_native: the workspace has shape ", workspace.sizes(), ", expected [", L, ", ",
              D, ", ", R, ", ", kWorkspaceGates * H,
              "] (was the forward run with need_workspace=True?)");
  TORCH_CHECK(L == 1 || (layer_outputs.dim() == 3 && layer_outputs.size(0) == L - 1 &&
                         layer_outputs.size(1) == R && layer_outputs.size(2) == D * H),
              "gru_native: layer_outputs has shape ", layer_outputs.sizes(), ", expected [", L - 1,
              ", ", R, ", ", D * H, "]");
  TORCH_CHECK(workspace.device() == input.device() && workspace.scalar_type() == workspace_dtype,
              "gru_native: the workspace is a ", workspace.scalar_type(), " tensor on ",
              workspace.device(), ", expected ", workspace_dtype, " on ", input.device());
  check_same(input, output, "output");
  TORCH_CHECK(output.numel() == R * D * H, "gru_native: output has shape ", output.sizes(),
              ", expected ", R * D * H, " elements");
  if (L > 1) check_same(input, layer_outputs, "layer_outputs");
}

}  // namespace gru_native
