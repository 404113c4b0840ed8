// gru_cpu.cpp: the CPU implementations of the gru_native ops: the shared driver (gru_stack.cpp)
// with the CPU recurrence kernels (kernels.cpp).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "cpu/kernels.h"
#include "gru_stack.h"

namespace gru_native {
namespace {

template <typename scalar_t>
scalar_t* ptr(const at::Tensor& t) {
  if (!t.defined()) return nullptr;
  TORCH_CHECK(t.is_contiguous(), "gru_native: internal error: a kernel buffer is not contiguous");
  return t.data_ptr<scalar_t>();
}

bool cpu_supports(at::ScalarType t) { return t == at::kFloat || t == at::kDouble; }

void cpu_forward_layer(const StepSchedule& steps, int64_t H, int D,
                       const ForwardLayerTensors& t) {
  AT_DISPATCH_FLOATING_TYPES(t.out.scalar_type(), "gru_native_forward_layer", [&] {
    LayerForwardParams<scalar_t> p;
    p.steps = steps;
    p.H = H;
    p.D = D;
    for (int d = 0; d < D; ++d) {
      p.gi[d] = ptr<scalar_t>(t.gi[d]);
      p.w_hh[d] = ptr<scalar_t>(t.w_hh[d]);
      p.b_hh[d] = ptr<scalar_t>(t.b_hh[d]);
      p.h[d] = ptr<scalar_t>(t.h[d]);
      p.ws[d] = ptr<scalar_t>(t.ws[d]);
    }
    p.out = ptr<scalar_t>(t.out);
    cpu::forward_layer(p);
  });
}

void cpu_backward_layer(const StepSchedule& steps, int64_t H, int D,
                        const BackwardLayerTensors& t) {
  AT_DISPATCH_FLOATING_TYPES(t.out.scalar_type(), "gru_native_backward_layer", [&] {
    LayerBackwardParams<scalar_t> p;
    p.steps = steps;
    p.H = H;
    p.D = D;
    for (int d = 0; d < D; ++d) {
      p.w_hh[d] = ptr<scalar_t>(t.w_hh[d]);
      p.h0[d] = ptr<scalar_t>(t.h0[d]);
      p.ws[d] = ptr<scalar_t>(t.ws[d]);
      p.dh[d] = ptr<scalar_t>(t.dh[d]);
      p.dgi[d] = ptr<scalar_t>(t.dgi[d]);
      p.dgh[d] = ptr<scalar_t>(t.dgh[d]);
      p.hp[d] = ptr<scalar_t>(t.hp[d]);
    }
    p.out = ptr<scalar_t>(t.out);
    p.dout = ptr<scalar_t>(t.dout);
    cpu::backward_layer(p);
  });
}

void cpu_column_sum(const at::Tensor& src, const at::Tensor& dst) {
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "gru_native_column_sum", [&] {
    cpu::column_sum<scalar_t>(src.size(0), src.size(1), ptr<scalar_t>(src), src.size(1),
                              ptr<scalar_t>(dst));
  });
}

const Backend kCpuBackend{"CPU", "torch.float32, torch.float64", cpu_supports, cpu_forward_layer,
                          cpu_backward_layer, cpu_column_sum};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_forward_cpu(
    const at::Tensor& input, const at::Tensor& hx, at::TensorList weights,
    const std::optional<at::Tensor>& batch_sizes, const std::optional<at::Tensor>& dropout_mask,
    bool has_biases, int64_t num_layers, bool bidirectional, bool need_workspace) {
  return gru_forward(kCpuBackend, input, hx, weights, batch_sizes, dropout_mask, has_biases,
                     num_layers, bidirectional, need_workspace);
}

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> gru_backward_cpu(
    const std::optional<at::Tensor>& grad_output, const std::optional<at::Tensor>& grad_hy,
    const at::Tensor& input, const at::Tensor& hx, at::TensorList weights,
    const std::optional<at::Tensor>& batch_sizes, const std::optional<at::Tensor>& dropout_mask,
    const at::Tensor& output, const at::Tensor& workspace, const at::Tensor& layer_outputs,
    bool has_biases, int64_t num_layers, bool bidirectional, bool need_input_grad,
    bool need_weight_grad) {
  return gru_backward(kCpuBackend, grad_output, grad_hy, input, hx, weights, batch_sizes,
                      dropout_mask, output, workspace, layer_outputs, has_biases, num_layers,
                      bidirectional, need_input_grad, need_weight_grad);
}

}  // namespace
}  // namespace gru_native

TORCH_LIBRARY_IMPL(gru_native, CPU, m) {
  m.impl("gru_forward", &gru_native::gru_forward_cpu);
  m.impl("gru_backward", &gru_native::gru_backward_cpu);
}
