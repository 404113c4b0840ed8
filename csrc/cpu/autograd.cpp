// autograd.cpp: the eager CPU training path as a C++ autograd Function.
//
// The same two CPU implementations as the ops (gru_cpu.h) and the same backward as the autograd
// formula registered in Python (gru_native/ops.py), with the graph node built and run in C++:
// a Python autograd.Function costs tens of microseconds per forward and per backward (argument
// tuples, ctx.saved_tensors, the GIL on the engine's thread), more than a whole small GRU.
// Used only in plain eager mode (see ops.py); compile, functorch transforms, dispatch modes and
// tracing go through the registered ops.
//
// A backward that must itself be differentiable (create_graph=True) is computed by the Python
// callable registered with set_differentiable_backward (autograd through the plain-PyTorch
// reference), as the Python path does.
#include "cpu/autograd.h"

#include <torch/csrc/autograd/custom_function.h>
#include <torch/extension.h>

#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/gru_cpu.h"

namespace gru_native {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Never freed: a Python object must not be destroyed after the interpreter has finalised.
pybind11::object* differentiable_backward = nullptr;

std::optional<at::Tensor> defined_or_none(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// ctx->needs_input_grad(edge) where this torch has it (it says what this backward pass needs);
// otherwise whether the tensor required a gradient at the forward, saved by the forward.
template <typename Ctx, typename = void>
struct HasNeedsInputGrad : std::false_type {};
template <typename Ctx>
struct HasNeedsInputGrad<
    Ctx, std::void_t<decltype(std::declval<const Ctx&>().needs_input_grad(size_t{0}))>>
    : std::true_type {};

// `key` names the flag the forward saved for torches without it.
template <typename Ctx>
bool needs_grad(Ctx* ctx, size_t edge, const char* key) {
  if constexpr (HasNeedsInputGrad<Ctx>::value) {
    return ctx->needs_input_grad(edge);
  } else {
    return ctx->saved_data[key].toBool();
  }
}

}  // namespace

// Outside the anonymous namespace: its name is the node's name (grad_fn.name()).
struct GRUNativeBackward : public torch::autograd::Function<GRUNativeBackward> {
  // `tensors` is [input, *weights, hx if given]: everything that can take a gradient, in one
  // list (an optional tensor argument is a variable only in some torch versions).
  static variable_list forward(AutogradContext* ctx, at::TensorList tensors,
                               const std::optional<at::Tensor>& batch_sizes,
                               const std::optional<at::Tensor>& dropout_mask, bool has_hx,
                               bool has_biases, int64_t num_layers, bool bidirectional) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    const at::Tensor& input = tensors[0];
    const std::vector<at::Tensor> w(tensors.begin() + 1, tensors.end() - (has_hx ? 1 : 0));
    const std::optional<at::Tensor> hx =
        has_hx ? std::optional<at::Tensor>(tensors.back()) : std::nullopt;
    auto [output, hy, workspace, layer_outputs] = cpu_forward_direct(
        input, hx, w, batch_sizes, dropout_mask, has_biases, num_layers, bidirectional, true);
    ctx->set_materialize_grads(false);
    variable_list saved{input,
                        hx.value_or(at::Tensor()),
                        output,
                        workspace,
                        layer_outputs,
                        batch_sizes.value_or(at::Tensor()),
                        dropout_mask.value_or(at::Tensor())};
    saved.insert(saved.end(), w.begin(), w.end());
    ctx->save_for_backward(std::move(saved));
    ctx->saved_data["has_biases"] = has_biases;
    ctx->saved_data["num_layers"] = num_layers;
    ctx->saved_data["bidirectional"] = bidirectional;
    if constexpr (!HasNeedsInputGrad<AutogradContext>::value) {
      bool weights_require_grad = false;
      for (const at::Tensor& t : w) weights_require_grad |= t.requires_grad();
      ctx->saved_data["input_requires_grad"] = input.requires_grad();
      ctx->saved_data["weights_require_grad"] = weights_require_grad;
      ctx->saved_data["hx_requires_grad"] = hx.has_value() && hx->requires_grad();
    }
    return {output, hy};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const bool has_biases = ctx->saved_data["has_biases"].toBool();
    const int64_t num_layers = ctx->saved_data["num_layers"].toInt();
    const bool bidirectional = ctx->saved_data["bidirectional"].toBool();
    const at::Tensor& input = saved[0];
    const at::Tensor& hx = saved[1];
    const std::vector<at::Tensor> weights(saved.begin() + 7, saved.end());
    const size_t P = weights.size();

    at::Tensor grad_input, grad_hx;
    std::vector<at::Tensor> grad_weights(P);
    if (at::GradMode::is_enabled()) {  // create_graph=True
      TORCH_CHECK(differentiable_backward != nullptr,
                  "gru_native: no differentiable backward registered");
      pybind11::gil_scoped_acquire gil;
      pybind11::list py_saved;
      for (const at::Tensor& t : saved) py_saved.append(defined_or_none(t));
      const pybind11::tuple result = (*differentiable_backward)(
          pybind11::tuple(py_saved), defined_or_none(grads[0]), defined_or_none(grads[1]),
          has_biases, num_layers, bidirectional);
      grad_input = result[0].cast<std::optional<at::Tensor>>().value_or(at::Tensor());
      grad_hx = result[1].cast<std::optional<at::Tensor>>().value_or(at::Tensor());
      const auto gw = result[2].cast<std::vector<std::optional<at::Tensor>>>();
      for (size_t i = 0; i < P && i < gw.size(); ++i) {
        grad_weights[i] = gw[i].value_or(at::Tensor());
      }
    } else {
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      bool need_weight_grad = false;
      for (size_t i = 0; i < P; ++i) {
        need_weight_grad |= needs_grad(ctx, 1 + i, "weights_require_grad");
      }
      const bool need_input_grad = needs_grad(ctx, 0, "input_requires_grad");
      const bool need_hx_grad = hx.defined() && needs_grad(ctx, 1 + P, "hx_requires_grad");
      auto [gi, gh, gw] = cpu_backward_direct(
          defined_or_none(grads[0]), defined_or_none(grads[1]), input, defined_or_none(hx),
          weights, defined_or_none(saved[5]), defined_or_none(saved[6]), saved[2], saved[3],
          saved[4], has_biases, num_layers, bidirectional, need_input_grad, need_weight_grad,
          need_hx_grad);
      if (need_input_grad) grad_input = gi;
      if (need_hx_grad) grad_hx = gh;
      if (need_weight_grad) grad_weights = gw;
    }
    // One slot per element of `tensors` (input, the weights, hx if given), then one per other
    // argument (batch_sizes, dropout_mask and four non-tensors): no gradient there.
    variable_list result;
    result.reserve(1 + P + 1 + 6);
    result.push_back(grad_input);
    result.insert(result.end(), grad_weights.begin(), grad_weights.end());
    if (hx.defined()) result.push_back(grad_hx);
    result.resize(result.size() + 6);
    return result;
  }
};

void set_differentiable_backward(pybind11::object fn) {
  if (differentiable_backward == nullptr) {
    differentiable_backward = new pybind11::object(std::move(fn));
  } else {
    *differentiable_backward = std::move(fn);
  }
}

std::tuple<at::Tensor, at::Tensor> cpu_gru_train(
    const at::Tensor& input, const std::vector<at::Tensor>& weights,
    const std::optional<at::Tensor>& hx, const std::optional<at::Tensor>& batch_sizes,
    const std::optional<at::Tensor>& dropout_mask, bool has_biases, int64_t num_layers,
    bool bidirectional) {
  std::vector<at::Tensor> tensors;
  tensors.reserve(weights.size() + 2);
  tensors.push_back(input);
  tensors.insert(tensors.end(), weights.begin(), weights.end());
  if (hx.has_value() && hx->defined()) tensors.push_back(*hx);
  auto out = GRUNativeBackward::apply(at::TensorList(tensors), batch_sizes, dropout_mask,
                                      tensors.size() > weights.size() + 1, has_biases,
                                      num_layers, bidirectional);
  return {out[0], out[1]};
}

at::Tensor cpu_gru_cell(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih,
                        const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                        const std::optional<at::Tensor>& b_hh, bool train) {
  const bool has_biases = b_ih.has_value();
  TORCH_CHECK(has_biases == b_hh.has_value(), "gru_native: b_ih and b_hh must both be given or "
              "both be None");
  std::vector<at::Tensor> weights{w_ih, w_hh};
  if (has_biases) {
    weights.push_back(*b_ih);
    weights.push_back(*b_hh);
  }
  const at::Tensor x = input.unsqueeze(0), h = hx.unsqueeze(0);
  at::Tensor hy = train ? std::get<1>(cpu_gru_train(x, weights, h, std::nullopt, std::nullopt,
                                                    has_biases, 1, false))
                        : std::get<1>(cpu_forward_direct(x, h, weights, std::nullopt,
                                                         std::nullopt, has_biases, 1, false,
                                                         false));
  return hy.squeeze(0);
}

}  // namespace gru_native
