// gru_stack.h: the device-independent part of the fused ops. One forward op runs every layer and
// direction of the stack (input GEMMs, the recurrence kernels, dropout between layers); one
// backward op runs them in reverse (recurrence kernels, then one GEMM each for dW_ih, dW_hh and
// d(input), bias gradients as deterministic column sums). Each device supplies a Backend with its
// recurrence kernels. Shape legend: gru_cell.h.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>
#include <vector>

#include "gru_params.h"

namespace gru_native {

struct ForwardLayerTensors {
  at::Tensor gi[2];    // [R, 3H]
  at::Tensor w_hh[2];  // [3H, H]
  at::Tensor b_hh[2];  // [3H] or undefined
  at::Tensor h[2];     // [N, H] h0 in, h_n out
  at::Tensor ws[2];    // [R, 4H] or undefined
  at::Tensor out;      // [R, D*H]
};

struct BackwardLayerTensors {
  at::Tensor w_hh[2];  // [3H, H]
  at::Tensor h0[2];    // [N, H]
  at::Tensor ws[2];    // [R, 4H]
  at::Tensor out;      // [R, D*H]
  at::Tensor dout;     // [R, D*H]
  at::Tensor dh[2];    // [N, H] dh_n in, dh0 out
  at::Tensor dgi[2];   // [R, 3H] out
  at::Tensor dgh[2];   // [R, 3H] out
  at::Tensor hp[2];    // [R, H] out
};

struct Backend {
  const char* name;    // "CPU", "CUDA"
  const char* dtypes;  // the supported dtypes, for error messages
  // Dtypes the backend's kernels support; anything else is rejected with a message naming it.
  bool (*supports)(at::ScalarType);
  void (*forward_layer)(const StepSchedule&, int64_t H, int D, const ForwardLayerTensors&);
  void (*backward_layer)(const StepSchedule&, int64_t H, int D, const BackwardLayerTensors&);
  // dst[j] = sum_i src[i, j] for a [rows, cols] matrix, in an order that does not depend on
  // threads or timing (bitwise-reproducible bias gradients).
  void (*column_sum)(const at::Tensor& src, const at::Tensor& dst);
};

// gru_forward(input, hx, weights, batch_sizes, dropout_mask, has_biases, num_layers,
//             bidirectional, need_workspace) -> (output, h_n, workspace, layer_outputs)
//   input         [T, N, C] (dense) or [R, C] with batch_sizes [T] (packed, int64, CPU)
//   hx            [L*D, N, H]
//   weights       nn.GRU's _flat_weights: per (layer, direction) w_ih, w_hh[, b_ih, b_hh]
//   dropout_mask  [L-1, R, D*H] scaled keep-mask (0 or 1/(1-p)) applied to each layer's output
//                 before it feeds the next layer, or None
//   output        [T, N, D*H] or [R, D*H];  h_n [L*D, N, H]
//   workspace     [L, D, R, 4H] (need_workspace) else [0];
//   layer_outputs [L-1, R, D*H] outputs of the lower layers before dropout (need_workspace and
//                 L > 1) else [0]
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_forward(
    const Backend& backend, const at::Tensor& input, const at::Tensor& hx, at::TensorList weights,
    const std::optional<at::Tensor>& batch_sizes, const std::optional<at::Tensor>& dropout_mask,
    bool has_biases, int64_t num_layers, bool bidirectional, bool need_workspace);

// gru_backward(...) -> (grad_input, grad_hx, grad_weights); grad_input is [0] unless
// need_input_grad, grad_weights is empty unless need_weight_grad.
std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> gru_backward(
    const Backend& backend, const std::optional<at::Tensor>& grad_output,
    const std::optional<at::Tensor>& grad_hy, const at::Tensor& input, const at::Tensor& hx,
    at::TensorList weights, const std::optional<at::Tensor>& batch_sizes,
    const std::optional<at::Tensor>& dropout_mask, const at::Tensor& output,
    const at::Tensor& workspace, const at::Tensor& layer_outputs, bool has_biases,
    int64_t num_layers, bool bidirectional, bool need_input_grad, bool need_weight_grad);

}  // namespace gru_native
