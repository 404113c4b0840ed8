// gru_stack.cpp: the layer loop shared by every device. See gru_stack.h.
#include "gru_stack.h"

#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <string>

#include "gru_cell.h"

namespace gru_native {
namespace {

const char* const kParamKinds[4] = {"weight_ih", "weight_hh", "bias_ih", "bias_hh"};

// nn.GRU's name for _flat_weights[index], e.g. "bias_hh_l1_reverse".
std::string param_name(int64_t index, int64_t per_dir, int64_t D) {
  const int64_t layer_dir = index / per_dir;
  return std::string(kParamKinds[index % per_dir]) + "_l" + std::to_string(layer_dir / D) +
         (layer_dir % D ? "_reverse" : "");
}

// Everything the forward and backward derive from the arguments, validated once.
struct Geometry {
  int64_t L = 0, D = 1, H = 0, C = 0, P = 0;
  bool packed = false;
  std::vector<int64_t> batch_sizes, offsets;
  StepSchedule steps;

  const at::Tensor& w(at::TensorList weights, int64_t layer, int64_t dir, int64_t kind) const {
    return weights[(layer * D + dir) * P + kind];
  }
};

void check_same(const at::Tensor& input, const at::Tensor& t, const std::string& name) {
  TORCH_CHECK(t.device() == input.device(), "gru_native: ", name, " is on ", t.device(),
              " but input is on ", input.device());
  TORCH_CHECK(t.scalar_type() == input.scalar_type(), "gru_native: ", name, " has dtype ",
              t.scalar_type(), " but input has dtype ", input.scalar_type());
}

Geometry make_geometry(const Backend& backend, const at::Tensor& input, const at::Tensor& hx,
                       at::TensorList weights, const std::optional<at::Tensor>& batch_sizes,
                       const std::optional<at::Tensor>& dropout_mask, bool has_biases,
                       int64_t num_layers, bool bidirectional) {
  Geometry g;
  TORCH_CHECK(backend.supports(input.scalar_type()), "gru_native: the ", backend.name,
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
    TORCH_CHECK(input.size(0) > 0, "Expected sequence length to be larger than 0 in RNN");
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

  // Weights: nn.GRU's shapes, one dtype and device.
  const at::Tensor& w_hh0 = weights[1];
  TORCH_CHECK(w_hh0.dim() == 2 && w_hh0.size(0) == kGates * w_hh0.size(1) && w_hh0.size(1) > 0,
              "gru_native: weight_hh_l0 must have shape [3*hidden_size, hidden_size], got ",
              w_hh0.sizes());
  g.H = w_hh0.size(1);
  const int64_t G = kGates * g.H;
  for (int64_t i = 0; i < static_cast<int64_t>(weights.size()); ++i) {
    const std::string name = param_name(i, g.P, g.D);
    const at::Tensor& w = weights[i];
    TORCH_CHECK(w.defined(), "gru_native: ", name, " is undefined");
    check_same(input, w, name);
    const int64_t kind = i % g.P;
    const int64_t layer = i / g.P / g.D;
    std::vector<int64_t> expected;
    if (kind == 0) {
      expected = {G, layer == 0 ? g.C : g.D * g.H};
    } else if (kind == 1) {
      expected = {G, g.H};
    } else {
      expected = {G};
    }
    TORCH_CHECK(w.sizes() == at::IntArrayRef(expected), "gru_native: ", name,
                " must have shape ", at::IntArrayRef(expected), ", got ", w.sizes());
  }

  check_same(input, hx, "hx");
  TORCH_CHECK(hx.dim() == 3 && hx.size(0) == g.L * g.D && hx.size(1) == g.steps.N &&
                  hx.size(2) == g.H,
              "gru_native: hx must have shape [", g.L * g.D, ", ", g.steps.N, ", ", g.H, "], got ",
              hx.sizes());
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

at::Tensor input_2d(const at::Tensor& input, const Geometry& g) {
  return input.reshape({g.steps.R, g.C});
}

// The input of layer l >= 1: the lower layer's output, times the dropout mask in training.
at::Tensor next_layer_input(const at::Tensor& lower_output,
                            const std::optional<at::Tensor>& dropout_mask, int64_t lower_layer) {
  if (!dropout_mask.has_value()) return lower_output;
  return lower_output * dropout_mask->select(0, lower_layer);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_forward(
    const Backend& backend, const at::Tensor& input, const at::Tensor& hx, at::TensorList weights,
    const std::optional<at::Tensor>& batch_sizes, const std::optional<at::Tensor>& dropout_mask,
    bool has_biases, int64_t num_layers, bool bidirectional, bool need_workspace) {
  const Geometry g = make_geometry(backend, input, hx, weights, batch_sizes, dropout_mask,
                                   has_biases, num_layers, bidirectional);
  const int64_t R = g.steps.R, N = g.steps.N, H = g.H, D = g.D, L = g.L;
  const auto opts = input.options();

  at::Tensor output = g.packed ? at::empty({R, D * H}, opts)
                               : at::empty({g.steps.T, N, D * H}, opts);
  at::Tensor hy = at::empty({L * D, N, H}, opts);
  hy.copy_(hx);
  at::Tensor workspace = need_workspace ? at::empty({L, D, R, kWorkspaceGates * H}, opts)
                                        : at::empty({0}, opts);
  at::Tensor layer_outputs = (need_workspace && L > 1) ? at::empty({L - 1, R, D * H}, opts)
                                                       : at::empty({0}, opts);
  at::Tensor gi = at::empty({D, R, kGates * H}, opts);
  // Inference: two buffers for the lower layers' outputs, used in turn.
  at::Tensor scratch_out[2];

  at::Tensor x = input_2d(input, g);
  for (int64_t l = 0; l < L; ++l) {
    ForwardLayerTensors layer;
    for (int64_t d = 0; d < D; ++d) {
      const at::Tensor& w_ih = g.w(weights, l, d, 0);
      layer.gi[d] = gi.select(0, d);
      if (has_biases) {
        at::addmm_out(layer.gi[d], g.w(weights, l, d, 2), x, w_ih.t());
        layer.b_hh[d] = g.w(weights, l, d, 3).contiguous();
      } else {
        at::mm_out(layer.gi[d], x, w_ih.t());
      }
      layer.w_hh[d] = g.w(weights, l, d, 1).contiguous();
      layer.h[d] = hy.select(0, l * D + d);
      if (need_workspace) layer.ws[d] = workspace.select(0, l).select(0, d);
    }
    if (l == L - 1) {
      layer.out = output.view({R, D * H});
    } else if (need_workspace) {
      layer.out = layer_outputs.select(0, l);
    } else {
      at::Tensor& buf = scratch_out[l % 2];
      if (!buf.defined()) buf = at::empty({R, D * H}, opts);
      layer.out = buf;
    }
    backend.forward_layer(g.steps, H, static_cast<int>(D), layer);
    if (l < L - 1) x = next_layer_input(layer.out, dropout_mask, l);
  }
  return {output, hy, workspace, layer_outputs};
}

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> gru_backward(
    const Backend& backend, const std::optional<at::Tensor>& grad_output,
    const std::optional<at::Tensor>& grad_hy, const at::Tensor& input, const at::Tensor& hx,
    at::TensorList weights, const std::optional<at::Tensor>& batch_sizes,
    const std::optional<at::Tensor>& dropout_mask, const at::Tensor& output,
    const at::Tensor& workspace, const at::Tensor& layer_outputs, bool has_biases,
    int64_t num_layers, bool bidirectional, bool need_input_grad, bool need_weight_grad) {
  const Geometry g = make_geometry(backend, input, hx, weights, batch_sizes, dropout_mask,
                                   has_biases, num_layers, bidirectional);
  const int64_t R = g.steps.R, N = g.steps.N, H = g.H, D = g.D, L = g.L;
  const auto opts = input.options();
  TORCH_CHECK(workspace.dim() == 4 && workspace.size(0) == L && workspace.size(1) == D &&
                  workspace.size(2) == R && workspace.size(3) == kWorkspaceGates * H,
              "gru_native: the workspace has shape ", workspace.sizes(), ", expected [", L, ", ",
              D, ", ", R, ", ", kWorkspaceGates * H,
              "] (was the forward run with need_workspace=True?)");
  TORCH_CHECK(L == 1 || (layer_outputs.dim() == 3 && layer_outputs.size(0) == L - 1 &&
                         layer_outputs.size(1) == R && layer_outputs.size(2) == D * H),
              "gru_native: layer_outputs has shape ", layer_outputs.sizes(), ", expected [", L - 1,
              ", ", R, ", ", D * H, "]");
  check_same(input, workspace, "workspace");
  check_same(input, output, "output");
  TORCH_CHECK(output.numel() == R * D * H, "gru_native: output has shape ", output.sizes(),
              ", expected ", R * D * H, " elements");
  if (L > 1) check_same(input, layer_outputs, "layer_outputs");

  at::Tensor dout = (grad_output.has_value() && grad_output->defined())
                        ? grad_output->reshape({R, D * H}).contiguous()
                        : at::zeros({R, D * H}, opts);
  at::Tensor grad_hx = at::empty({L * D, N, H}, opts);
  if (grad_hy.has_value() && grad_hy->defined()) {
    grad_hx.copy_(*grad_hy);
  } else {
    grad_hx.zero_();
  }
  const at::Tensor hx_c = hx.contiguous();
  const at::Tensor output_2d = output.reshape({R, D * H}).contiguous();
  const at::Tensor ws_c = workspace.contiguous();
  const at::Tensor lower_outputs = layer_outputs.contiguous();
  at::Tensor dgi = at::empty({D, R, kGates * H}, opts);
  at::Tensor dgh = at::empty({D, R, kGates * H}, opts);
  at::Tensor hp = at::empty({D, R, H}, opts);
  std::vector<at::Tensor> grad_weights(need_weight_grad ? weights.size() : 0);
  at::Tensor grad_input = at::empty({0}, opts);

  for (int64_t l = L - 1; l >= 0; --l) {
    BackwardLayerTensors layer;
    layer.out = (l == L - 1) ? output_2d : lower_outputs.select(0, l);
    layer.dout = dout;
    for (int64_t d = 0; d < D; ++d) {
      layer.w_hh[d] = g.w(weights, l, d, 1).contiguous();
      layer.h0[d] = hx_c.select(0, l * D + d);
      layer.ws[d] = ws_c.select(0, l).select(0, d);
      layer.dh[d] = grad_hx.select(0, l * D + d);
      layer.dgi[d] = dgi.select(0, d);
      layer.dgh[d] = dgh.select(0, d);
      layer.hp[d] = hp.select(0, d);
    }
    backend.backward_layer(g.steps, H, static_cast<int>(D), layer);

    const bool need_dx = l > 0 || need_input_grad;
    if (!need_weight_grad && !need_dx) continue;
    const at::Tensor x = (l == 0) ? input_2d(input, g)
                                  : next_layer_input(lower_outputs.select(0, l - 1),
                                                     dropout_mask, l - 1);
    at::Tensor dx;
    for (int64_t d = 0; d < D; ++d) {
      const int64_t base = (l * D + d) * g.P;
      if (need_weight_grad) {
        grad_weights[base + 0] = at::mm(layer.dgi[d].t(), x);
        grad_weights[base + 1] = at::mm(layer.dgh[d].t(), layer.hp[d]);
        if (has_biases) {
          grad_weights[base + 2] = at::empty({kGates * H}, opts);
          grad_weights[base + 3] = at::empty({kGates * H}, opts);
          backend.column_sum(layer.dgi[d], grad_weights[base + 2]);
          backend.column_sum(layer.dgh[d], grad_weights[base + 3]);
        }
      }
      if (need_dx) {
        const at::Tensor& w_ih = g.w(weights, l, d, 0);
        if (d == 0) {
          dx = at::mm(layer.dgi[d], w_ih);
        } else {
          dx.addmm_(layer.dgi[d], w_ih);
        }
      }
    }
    if (l > 0) {
      dout = dropout_mask.has_value() ? dx * dropout_mask->select(0, l - 1) : dx;
    } else if (need_input_grad) {
      grad_input = dx.view(input.sizes());
    }
  }
  return {grad_input, grad_hx, grad_weights};
}

}  // namespace gru_native
