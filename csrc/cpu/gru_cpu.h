// gru_cpu.h: the CPU implementations of the two ops, callable directly (without the
// dispatcher). The eager CPU path of gru_native.GRU uses these when nothing needs the
// dispatcher (no compile, functorch transform, dispatch mode, tracer or tensor subclass; see
// gru_native/ops.py): a call through torch.ops costs several microseconds of argument boxing,
// more than a whole small GRU. Same arguments and results as the ops (csrc/gru_native.cpp),
// except that an inference forward (need_workspace false) returns None for the two workspace
// tensors.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>
#include <vector>

namespace gru_native {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cpu_forward_direct(
    const at::Tensor& input, const std::optional<at::Tensor>& hx,
    const std::vector<at::Tensor>& weights, const std::optional<at::Tensor>& batch_sizes,
    const std::optional<at::Tensor>& dropout_mask, bool has_biases, int64_t num_layers,
    bool bidirectional, bool need_workspace);

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> cpu_backward_direct(
    const std::optional<at::Tensor>& grad_output, const std::optional<at::Tensor>& grad_hy,
    const at::Tensor& input, const std::optional<at::Tensor>& hx,
    const std::vector<at::Tensor>& weights, const std::optional<at::Tensor>& batch_sizes,
    const std::optional<at::Tensor>& dropout_mask, const at::Tensor& output,
    const at::Tensor& workspace, const at::Tensor& layer_outputs, bool has_biases,
    int64_t num_layers, bool bidirectional, bool need_input_grad, bool need_weight_grad,
    bool need_hx_grad = true);

}  // namespace gru_native
