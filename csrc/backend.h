// backend.h: a backend's entry points, written once over the backend, and the table of the
// backends this build has, by device type.
//
// A backend is a type the driver (gru_stack.h, Stack<Backend>) runs on: CpuBackend
// (cpu/gru_cpu.cpp) or CudaBackend (cuda/gru_cuda.cpp). It registers itself once, inside the
// TORCH_LIBRARY_IMPL of the dispatch key its tensors have, with register_backend<Backend>():
// that gives the dispatcher its kernels for gru_forward / gru_backward, and puts the same two
// functions in the table that the direct entries (autograd.cpp) look up by the input's device
// type. A call through the dispatcher and a direct call therefore reach the same code.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "gru_stack.h"

namespace gru_native {

// gru_forward's results: (output, h_n, workspace, layer_outputs); gru_backward's:
// (grad_input, grad_hx, grad_weights). See gru_stack.h for each tensor.
using ForwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using BackwardResult = std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>>;

using ForwardFn = ForwardResult (*)(const at::Tensor& input, const std::optional<at::Tensor>& hx,
                                    at::TensorList weights,
                                    const std::optional<at::Tensor>& batch_sizes,
                                    const std::optional<at::Tensor>& dropout_mask,
                                    bool has_biases, int64_t num_layers, bool bidirectional,
                                    bool need_workspace);
using BackwardFn = BackwardResult (*)(
    const std::optional<at::Tensor>& grad_output, const std::optional<at::Tensor>& grad_hy,
    const at::Tensor& input, const std::optional<at::Tensor>& hx, at::TensorList weights,
    const std::optional<at::Tensor>& batch_sizes, const std::optional<at::Tensor>& dropout_mask,
    const at::Tensor& output, const at::Tensor& workspace, const at::Tensor& layer_outputs,
    bool has_biases, int64_t num_layers, bool bidirectional, bool need_input_grad,
    bool need_weight_grad, bool need_hx_grad);

struct BackendEntry {
  const char* name;                                // "CPU", "CUDA"
  bool (*supports)(at::ScalarType);                // the input dtypes its kernels take
  at::ScalarType (*workspace_dtype)(at::ScalarType);  // the saved gates' dtype
  // The ops' implementations. forward leaves the workspace tensors undefined when
  // need_workspace is false (the op returns [0] tensors for them instead).
  ForwardFn forward;
  BackwardFn backward;
};

// The backend serving tensors of `type` in this build, or nullptr.
const BackendEntry* find_backend(c10::DeviceType type);

// Every registered backend with its device type, in registration order.
std::vector<std::pair<c10::DeviceType, const BackendEntry*>> registered_backends();

void add_backend(c10::DeviceType type, const BackendEntry* entry);

// The entry points of one backend: the driver inside the backend's device guard, whose finish()
// marks the point where the results are handed back to the caller.
template <typename Backend>
struct Entries {
  static ForwardResult forward(const at::Tensor& input, const std::optional<at::Tensor>& hx,
                               at::TensorList weights,
                               const std::optional<at::Tensor>& batch_sizes,
                               const std::optional<at::Tensor>& dropout_mask, bool has_biases,
                               int64_t num_layers, bool bidirectional, bool need_workspace) {
    const typename Backend::Guard guard(input);
    ForwardResult result = Stack<Backend>::forward(input, hx, weights, batch_sizes, dropout_mask,
                                                   has_biases, num_layers, bidirectional,
                                                   need_workspace);
    guard.finish();
    return result;
  }

  // The op's kernel: [0] tensors for the workspace tensors not kept (an op cannot return an
  // undefined tensor).
  static ForwardResult op_forward(const at::Tensor& input, const std::optional<at::Tensor>& hx,
                                  at::TensorList weights,
                                  const std::optional<at::Tensor>& batch_sizes,
                                  const std::optional<at::Tensor>& dropout_mask, bool has_biases,
                                  int64_t num_layers, bool bidirectional, bool need_workspace) {
    ForwardResult result = forward(input, hx, weights, batch_sizes, dropout_mask, has_biases,
                                   num_layers, bidirectional, need_workspace);
    for (at::Tensor* t : {&std::get<2>(result), &std::get<3>(result)}) {
      if (!t->defined()) *t = at::empty({0}, input.options());
    }
    return result;
  }

  static BackwardResult backward(
      const std::optional<at::Tensor>& grad_output, const std::optional<at::Tensor>& grad_hy,
      const at::Tensor& input, const std::optional<at::Tensor>& hx, at::TensorList weights,
      const std::optional<at::Tensor>& batch_sizes,
      const std::optional<at::Tensor>& dropout_mask, const at::Tensor& output,
      const at::Tensor& workspace, const at::Tensor& layer_outputs, bool has_biases,
      int64_t num_layers, bool bidirectional, bool need_input_grad, bool need_weight_grad,
      bool need_hx_grad) {
    const typename Backend::Guard guard(input);
    BackwardResult result = Stack<Backend>::backward(
        grad_output, grad_hy, input, hx, weights, batch_sizes, dropout_mask, output, workspace,
        layer_outputs, has_biases, num_layers, bidirectional, need_input_grad, need_weight_grad,
        need_hx_grad);
    guard.finish();
    return result;
  }

  static constexpr BackendEntry entry{Backend::kName, &Backend::supports,
                                      &Backend::workspace_dtype, &forward, &backward};
};

// Registers Backend for the tensors of device `type`: the ops' kernels on `m` (the
// TORCH_LIBRARY_IMPL of that device's dispatch key) and the table's entry.
template <typename Backend>
void register_backend(torch::Library& m, c10::DeviceType type) {
  m.impl("gru_forward", &Entries<Backend>::op_forward);
  m.impl("gru_backward", &Entries<Backend>::backward);
  add_backend(type, &Entries<Backend>::entry);
}

}  // namespace gru_native
