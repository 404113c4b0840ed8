// autograd.h: the eager CPU training entry (forward with its backward node built in C++).
// See autograd.cpp.
#pragma once

#include <ATen/ATen.h>
#include <pybind11/pybind11.h>

#include <optional>
#include <tuple>
#include <vector>

namespace gru_native {

// Forward of the whole stack recording one C++ autograd node whose backward is the CPU
// backward op: gru_native.ops.gru's plain eager CPU path when a gradient is wanted.
std::tuple<at::Tensor, at::Tensor> cpu_gru_train(
    const at::Tensor& input, const std::vector<at::Tensor>& weights,
    const std::optional<at::Tensor>& hx, const std::optional<at::Tensor>& batch_sizes,
    const std::optional<at::Tensor>& dropout_mask, bool has_biases, int64_t num_layers,
    bool bidirectional);

// One GRUCell step, input [N, C], hx [N, H] -> h' [N, H]: a one-step, one-layer run of the stack
// (cpu_forward_direct, or cpu_gru_train when `train`), for gru_native.ops.gru_cell's plain eager
// CPU path (one call from Python with the tensors as they are).
at::Tensor cpu_gru_cell(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih,
                        const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                        const std::optional<at::Tensor>& b_hh, bool train);

// fn(saved, grad_output, grad_hy, has_biases, num_layers, bidirectional) ->
// (grad_input, grad_hx, grad_weights): the backward used under create_graph=True, where
// saved = (input, hx, output, workspace, layer_outputs, batch_sizes, dropout_mask, *weights).
void set_differentiable_backward(pybind11::object fn);

}  // namespace gru_native
