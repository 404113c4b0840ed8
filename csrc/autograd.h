// autograd.h: gru_native's one autograd node, and the entries that record it.
//
// GRUNativeBackward (autograd.cpp) is the backward of every gru_native forward that autograd
// records, on every device and backend, whichever way the call came:
//   - through the dispatcher: it is gru_forward's Autograd kernel (torch.compile, export,
//     dispatch modes, tensor subclasses: gru_native/_route.py's DISPATCHER route), and reaches
//     the backend through the dispatcher, below autograd;
//   - directly: gru_direct / gru_cell_direct below (gru_native._C.gru and _C.gru_cell, the
//     DIRECT route of plain eager calls), which reach the backend through backend.h's table,
//     without the dispatcher's per-call cost.
// Either way the same node runs the same backward op of the same backend.
#pragma once

#include <ATen/ATen.h>
#include <pybind11/pybind11.h>

#include <cstddef>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace gru_native {

// What the node saves for its backward, in this order; the weights, one per parameter, last.
// gru_native/_registration.py reads the same layout (it checks saved_fields() at import).
namespace saved {
enum : size_t {
  kInput,
  kHx,            // undefined when the forward had none (zeros)
  kOutput,
  kWorkspace,     // [L, D, R, 4H]; [0] when the forward kept none (the backward recomputes it)
  kLayerOutputs,  // [L - 1, R, D * H], or [0]
  kBatchSizes,    // undefined for dense input
  kDropoutMask,   // undefined without dropout
  kWeights,       // the first weight
};
}  // namespace saved

// The names of saved's fields, in order (the last, "weights", stands for every weight).
std::vector<std::string> saved_fields();

// gru_native._C.gru: the whole stack forward on the backend of the input's device, recording the
// node when autograd needs it (grad mode on, a tensor requires grad). Arguments as gru_forward's
// (gru_stack.h); returns (output, h_n), or nullopt when the weights are not what the kernels take
// (weights_fit, gru_stack.h): the caller then runs torch's own op.
std::optional<std::tuple<at::Tensor, at::Tensor>> gru_direct(
    const at::Tensor& input, const std::optional<at::Tensor>& hx,
    const std::vector<at::Tensor>& weights, const std::optional<at::Tensor>& batch_sizes,
    const std::optional<at::Tensor>& dropout_mask, bool has_biases, int64_t num_layers,
    bool bidirectional);

// gru_native._C.gru_cell: one GRUCell step, input [N, C], hx [N, H] -> h' [N, H], as a one-step,
// one-layer gru_direct; nullopt when any argument is not what nn.GRUCell's fused equivalent takes
// (shapes, dtypes, devices, one bias without the other): the caller then runs torch's cell,
// which raises nn.GRUCell's error or computes its result.
std::optional<at::Tensor> gru_cell_direct(const at::Tensor& input, const at::Tensor& hx,
                                          const at::Tensor& w_ih, const at::Tensor& w_hh,
                                          const std::optional<at::Tensor>& b_ih,
                                          const std::optional<at::Tensor>& b_hh);

// fn(saved, grad_output, grad_hy, has_biases, num_layers, bidirectional) ->
// (grad_input, grad_hx, grad_weights): the backward used under create_graph=True (a backward
// that must itself be differentiable), with `saved` in the layout above.
void set_differentiable_backward(pybind11::object fn);

}  // namespace gru_native
