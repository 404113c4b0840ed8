// autograd.cpp: the one autograd node (GRUNativeBackward), gru_forward's Autograd kernel, and the
// direct entries. See autograd.h.
//
// The node is a C++ torch::autograd::Function: a Python autograd.Function, or torch.library's
// generic autograd wrapper, costs tens of microseconds per forward and per backward (argument
// tuples, ctx.saved_tensors, the GIL on the engine's thread), more than a whole small GRU.
// A backward that must itself be differentiable (create_graph=True) is computed by the Python
// callable registered with set_differentiable_backward (autograd through the plain-PyTorch
// reference, gru_native/_reference.py).
#include "autograd.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <type_traits>
#include <utility>

#include "backend.h"
#include "gru_stack.h"

namespace gru_native {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Never freed: a Python object must not be destroyed after the interpreter has finalised.
pybind11::object* differentiable_backward = nullptr;

std::optional<at::Tensor> defined_or_none(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// The ops through the dispatcher (the node's reach when it was recorded by the Autograd kernel).
using ForwardSig = ForwardResult(const at::Tensor&, const std::optional<at::Tensor>&,
                                 at::TensorList, const std::optional<at::Tensor>&,
                                 const std::optional<at::Tensor>&, bool, int64_t, bool, bool);
using BackwardSig = BackwardResult(const std::optional<at::Tensor>&,
                                   const std::optional<at::Tensor>&, const at::Tensor&,
                                   const std::optional<at::Tensor>&, at::TensorList,
                                   const std::optional<at::Tensor>&,
                                   const std::optional<at::Tensor>&, const at::Tensor&,
                                   const at::Tensor&, const at::Tensor&, bool, int64_t, bool,
                                   bool, bool, bool);

const c10::TypedOperatorHandle<ForwardSig>& forward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("gru_native::gru_forward", "")
                             .typed<ForwardSig>();
  return op;
}

const c10::TypedOperatorHandle<BackwardSig>& backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("gru_native::gru_backward", "")
                             .typed<BackwardSig>();
  return op;
}

// The forward on `backend`, or through the dispatcher when it is nullptr; the workspace tensors
// are [0] where not kept, as the op returns them.
ForwardResult run_forward(const BackendEntry* backend, const at::Tensor& input,
                          const std::optional<at::Tensor>& hx, at::TensorList weights,
                          const std::optional<at::Tensor>& batch_sizes,
                          const std::optional<at::Tensor>& dropout_mask, bool has_biases,
                          int64_t num_layers, bool bidirectional, bool need_workspace) {
  if (backend == nullptr) {
    return forward_op().call(input, hx, weights, batch_sizes, dropout_mask, has_biases,
                             num_layers, bidirectional, need_workspace);
  }
  ForwardResult result = backend->forward(input, hx, weights, batch_sizes, dropout_mask,
                                          has_biases, num_layers, bidirectional, need_workspace);
  for (at::Tensor* t : {&std::get<2>(result), &std::get<3>(result)}) {
    if (!t->defined()) *t = at::empty({0}, input.options());
  }
  return result;
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

// The gradients under create_graph=True, from the registered Python callable.
void differentiable_gradients(const variable_list& saved_vars, const variable_list& grads,
                              bool has_biases, int64_t num_layers, bool bidirectional,
                              at::Tensor& grad_input, at::Tensor& grad_hx,
                              std::vector<at::Tensor>& grad_weights) {
  TORCH_CHECK(differentiable_backward != nullptr,
              "gru_native: no differentiable backward registered");
  pybind11::gil_scoped_acquire gil;
  pybind11::list py_saved;
  for (const at::Tensor& t : saved_vars) py_saved.append(defined_or_none(t));
  const pybind11::tuple result = (*differentiable_backward)(
      pybind11::tuple(py_saved), defined_or_none(grads[0]), defined_or_none(grads[1]),
      has_biases, num_layers, bidirectional);
  grad_input = result[0].cast<std::optional<at::Tensor>>().value_or(at::Tensor());
  grad_hx = result[1].cast<std::optional<at::Tensor>>().value_or(at::Tensor());
  const auto gw = result[2].cast<std::vector<std::optional<at::Tensor>>>();
  for (size_t i = 0; i < grad_weights.size() && i < gw.size(); ++i) {
    grad_weights[i] = gw[i].value_or(at::Tensor());
  }
}

}  // namespace

std::vector<std::string> saved_fields() {
  return {"input", "hx", "output", "workspace", "layer_outputs", "batch_sizes", "dropout_mask",
          "weights"};
}

// Outside the anonymous namespace: its name is the node's name (grad_fn.name()).
struct GRUNativeBackward : public torch::autograd::Function<GRUNativeBackward> {
  // Arguments after `tensors` that are not tensors of it; the backward returns no gradient for
  // them (one slot each).
  static constexpr size_t kOtherArguments = 8;

  // `tensors` is [input, *weights, hx if given]: everything that can take a gradient, in one
  // list (an optional tensor argument is a variable only in some torch versions). `backend`:
  // the backend to call directly, or nullptr to go through the dispatcher. Returns (output, h_n)
  // for a direct call, and the op's four results through the dispatcher.
  static variable_list forward(AutogradContext* ctx, at::TensorList tensors,
                               const std::optional<at::Tensor>& batch_sizes,
                               const std::optional<at::Tensor>& dropout_mask, bool has_hx,
                               bool has_biases, int64_t num_layers, bool bidirectional,
                               bool need_workspace, const BackendEntry* backend) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    const at::Tensor& input = tensors[0];
    const at::TensorList w = tensors.slice(1, tensors.size() - 1 - (has_hx ? 1 : 0));
    const std::optional<at::Tensor> hx =
        has_hx ? std::optional<at::Tensor>(tensors.back()) : std::nullopt;
    auto [output, hy, workspace, layer_outputs] =
        run_forward(backend, input, hx, w, batch_sizes, dropout_mask, has_biases, num_layers,
                    bidirectional, need_workspace);
    ctx->set_materialize_grads(false);
    variable_list saved(saved::kWeights);
    saved[saved::kInput] = input;
    saved[saved::kHx] = hx.value_or(at::Tensor());
    saved[saved::kOutput] = output;
    saved[saved::kWorkspace] = workspace;
    saved[saved::kLayerOutputs] = layer_outputs;
    saved[saved::kBatchSizes] = batch_sizes.value_or(at::Tensor());
    saved[saved::kDropoutMask] = dropout_mask.value_or(at::Tensor());
    saved.insert(saved.end(), w.begin(), w.end());
    ctx->save_for_backward(std::move(saved));
    ctx->saved_data["has_biases"] = has_biases;
    ctx->saved_data["num_layers"] = num_layers;
    ctx->saved_data["bidirectional"] = bidirectional;
    ctx->saved_data["direct"] = backend != nullptr;
    if constexpr (!HasNeedsInputGrad<AutogradContext>::value) {
      bool weights_require_grad = false;
      for (const at::Tensor& t : w) weights_require_grad |= t.requires_grad();
      ctx->saved_data["input_requires_grad"] = input.requires_grad();
      ctx->saved_data["weights_require_grad"] = weights_require_grad;
      ctx->saved_data["hx_requires_grad"] = hx.has_value() && hx->requires_grad();
    }
    if (backend != nullptr) return {output, hy};
    ctx->mark_non_differentiable({workspace, layer_outputs});
    return {output, hy, workspace, layer_outputs};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved_vars = ctx->get_saved_variables();
    const bool has_biases = ctx->saved_data["has_biases"].toBool();
    const int64_t num_layers = ctx->saved_data["num_layers"].toInt();
    const bool bidirectional = ctx->saved_data["bidirectional"].toBool();
    const at::Tensor& input = saved_vars[saved::kInput];
    const at::Tensor& hx = saved_vars[saved::kHx];
    const std::vector<at::Tensor> weights(saved_vars.begin() + saved::kWeights,
                                          saved_vars.end());
    const size_t P = weights.size();

    at::Tensor grad_input, grad_hx;
    std::vector<at::Tensor> grad_weights(P);
    if (at::GradMode::is_enabled()) {  // create_graph=True
      differentiable_gradients(saved_vars, grads, has_biases, num_layers, bidirectional,
                               grad_input, grad_hx, grad_weights);
    } else {
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      const BackendEntry* backend =
          ctx->saved_data["direct"].toBool() ? find_backend(input.device().type()) : nullptr;
      bool need_weight_grad = false;
      for (size_t i = 0; i < P; ++i) {
        need_weight_grad |= needs_grad(ctx, 1 + i, "weights_require_grad");
      }
      const bool need_input_grad = needs_grad(ctx, 0, "input_requires_grad");
      const bool need_hx_grad = hx.defined() && needs_grad(ctx, 1 + P, "hx_requires_grad");
      const std::optional<at::Tensor> batch_sizes =
          defined_or_none(saved_vars[saved::kBatchSizes]);
      const std::optional<at::Tensor> mask = defined_or_none(saved_vars[saved::kDropoutMask]);
      at::Tensor output = saved_vars[saved::kOutput];
      at::Tensor workspace = saved_vars[saved::kWorkspace];
      at::Tensor layer_outputs = saved_vars[saved::kLayerOutputs];
      if (workspace.dim() != 4) {
        // The forward was asked to keep no workspace (need_workspace=False) and yet a gradient
        // is wanted: recompute it, as activation checkpointing would.
        std::tie(output, std::ignore, workspace, layer_outputs) =
            run_forward(backend, input, defined_or_none(hx), weights, batch_sizes, mask,
                        has_biases, num_layers, bidirectional, true);
      }
      BackwardResult result;
      if (backend != nullptr) {
        RECORD_FUNCTION("gru_native::gru_backward", c10::ArrayRef<c10::IValue>());
        result = backend->backward(defined_or_none(grads[0]), defined_or_none(grads[1]), input,
                                   defined_or_none(hx), weights, batch_sizes, mask, output,
                                   workspace, layer_outputs, has_biases, num_layers,
                                   bidirectional, need_input_grad, need_weight_grad,
                                   need_hx_grad);
      } else {
        result = backward_op().call(defined_or_none(grads[0]), defined_or_none(grads[1]), input,
                                    defined_or_none(hx), weights, batch_sizes, mask, output,
                                    workspace, layer_outputs, has_biases, num_layers,
                                    bidirectional, need_input_grad, need_weight_grad,
                                    need_hx_grad);
      }
      auto& [gi, gh, gw] = result;
      if (need_input_grad) grad_input = gi;
      if (need_hx_grad) grad_hx = gh;
      if (need_weight_grad) grad_weights = gw;
    }
    // One slot per element of `tensors` (input, the weights, hx if given), then one per other
    // argument: no gradient there.
    variable_list result;
    result.reserve(1 + P + 1 + kOtherArguments);
    result.push_back(grad_input);
    result.insert(result.end(), grad_weights.begin(), grad_weights.end());
    if (hx.defined()) result.push_back(grad_hx);
    result.resize(result.size() + kOtherArguments);
    return result;
  }

  // Records the node (when autograd needs it) around the forward.
  static variable_list record(const at::Tensor& input, const std::optional<at::Tensor>& hx,
                              at::TensorList weights,
                              const std::optional<at::Tensor>& batch_sizes,
                              const std::optional<at::Tensor>& dropout_mask, bool has_biases,
                              int64_t num_layers, bool bidirectional, bool need_workspace,
                              const BackendEntry* backend) {
    std::vector<at::Tensor> tensors;
    tensors.reserve(weights.size() + 2);
    tensors.push_back(input);
    tensors.insert(tensors.end(), weights.begin(), weights.end());
    const bool has_hx = hx.has_value() && hx->defined();
    if (has_hx) tensors.push_back(*hx);
    return apply(at::TensorList(tensors), batch_sizes, dropout_mask, has_hx, has_biases,
                 num_layers, bidirectional, need_workspace, backend);
  }
};

namespace {

// gru_forward's Autograd kernel: the node, reaching the backend through the dispatcher.
ForwardResult gru_forward_autograd(const at::Tensor& input, const std::optional<at::Tensor>& hx,
                                   at::TensorList weights,
                                   const std::optional<at::Tensor>& batch_sizes,
                                   const std::optional<at::Tensor>& dropout_mask,
                                   bool has_biases, int64_t num_layers, bool bidirectional,
                                   bool need_workspace) {
  variable_list out =
      GRUNativeBackward::record(input, hx, weights, batch_sizes, dropout_mask, has_biases,
                                num_layers, bidirectional, need_workspace, nullptr);
  return {out[0], out[1], out[2], out[3]};
}

bool any_requires_grad(const at::Tensor& input, const std::optional<at::Tensor>& hx,
                       at::TensorList weights) {
  if (!at::GradMode::is_enabled()) return false;
  if (input.requires_grad() || (hx.has_value() && hx->requires_grad())) return true;
  for (const at::Tensor& w : weights) {
    if (w.requires_grad()) return true;
  }
  return false;
}

}  // namespace

std::optional<std::tuple<at::Tensor, at::Tensor>> gru_direct(
    const at::Tensor& input, const std::optional<at::Tensor>& hx,
    const std::vector<at::Tensor>& weights, const std::optional<at::Tensor>& batch_sizes,
    const std::optional<at::Tensor>& dropout_mask, bool has_biases, int64_t num_layers,
    bool bidirectional) {
  const BackendEntry* backend = find_backend(input.device().type());
  if (backend == nullptr || !backend->supports(input.scalar_type()) ||
      !weights_fit(input, weights, has_biases, num_layers, bidirectional)) {
    return std::nullopt;
  }
  RECORD_FUNCTION("gru_native::gru_forward", c10::ArrayRef<c10::IValue>());
  if (any_requires_grad(input, hx, weights)) {
    variable_list out =
        GRUNativeBackward::record(input, hx, weights, batch_sizes, dropout_mask, has_biases,
                                  num_layers, bidirectional, true, backend);
    return std::make_tuple(out[0], out[1]);
  }
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  auto result = backend->forward(input, hx, weights, batch_sizes, dropout_mask, has_biases,
                                 num_layers, bidirectional, false);
  return std::make_tuple(std::get<0>(result), std::get<1>(result));
}

std::optional<at::Tensor> gru_cell_direct(const at::Tensor& input, const at::Tensor& hx,
                                          const at::Tensor& w_ih, const at::Tensor& w_hh,
                                          const std::optional<at::Tensor>& b_ih,
                                          const std::optional<at::Tensor>& b_hh) {
  const bool has_biases = b_ih.has_value();
  // nn.GRUCell's own checks (batch, sizes) and one device and dtype for all: anything else is
  // torch's cell's to judge. weights_fit checks the weights against the input.
  if (has_biases != b_hh.has_value() || input.dim() != 2 || hx.dim() != 2 ||
      input.size(0) != hx.size(0) || hx.device() != input.device() ||
      hx.scalar_type() != input.scalar_type() || w_hh.dim() != 2 ||
      hx.size(1) != w_hh.size(1)) {
    return std::nullopt;
  }
  std::vector<at::Tensor> weights{w_ih, w_hh};
  if (has_biases) {
    weights.push_back(*b_ih);
    weights.push_back(*b_hh);
  }
  auto result = gru_direct(input.unsqueeze(0), hx.unsqueeze(0), weights, std::nullopt,
                           std::nullopt, has_biases, 1, false);
  if (!result.has_value()) return std::nullopt;
  return std::get<1>(*result).squeeze(0);
}

void set_differentiable_backward(pybind11::object fn) {
  if (differentiable_backward == nullptr) {
    differentiable_backward = new pybind11::object(std::move(fn));
  } else {
    *differentiable_backward = std::move(fn);
  }
}

}  // namespace gru_native

TORCH_LIBRARY_IMPL(gru_native, Autograd, m) {
  m.impl("gru_forward", &gru_native::gru_forward_autograd);
}
