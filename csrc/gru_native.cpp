// gru_native.cpp: the op schemas (declared once, here) and the table of the Python module
// gru_native._C.
//
// Each backend registers its kernels for the dispatch key of its tensors (backend.h:
// register_backend, called from cpu/gru_cpu.cpp, cuda/torch_cuda.cpp or
// cuda/emulation/torch_emulated.cpp); autograd.cpp registers the one Autograd kernel; the fake
// (meta) kernels are registered in Python, gru_native/_registration.py.
#include <torch/extension.h>
#include <torch/library.h>

#include "autograd.h"
#include "cpu/host_cache.h"
#include "introspect.h"

TORCH_LIBRARY(gru_native, m) {
  // The whole stack (all layers, both directions, dropout between layers) in one call.
  // Dense input [T, N, C] or packed data [R, C] with batch_sizes. See csrc/gru_stack.h.
  m.def(
      "gru_forward(Tensor input, Tensor? hx, Tensor[] weights, Tensor? batch_sizes, "
      "Tensor? dropout_mask, bool has_biases, int num_layers, bool bidirectional, "
      "bool need_workspace) -> (Tensor output, Tensor hy, Tensor workspace, "
      "Tensor layer_outputs)");
  m.def(
      "gru_backward(Tensor? grad_output, Tensor? grad_hy, Tensor input, Tensor? hx, "
      "Tensor[] weights, Tensor? batch_sizes, Tensor? dropout_mask, Tensor output, "
      "Tensor workspace, Tensor layer_outputs, bool has_biases, int num_layers, "
      "bool bidirectional, bool need_input_grad, bool need_weight_grad, bool need_hx_grad=True) -> "
      "(Tensor grad_input, Tensor grad_hx, Tensor[] grad_weights)");
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace gn = gru_native;
  // The entries run without the GIL, like ATen ops called from Python: other Python threads
  // (e.g. serving requests with one shared module) run meanwhile.
  const auto no_gil = pybind11::call_guard<pybind11::gil_scoped_release>();
  m.def("gru", &gn::gru_direct, no_gil,
        "The direct entry of the fused forward (autograd.h); None: weights it does not take");
  m.def("gru_cell", &gn::gru_cell_direct, no_gil,
        "The direct entry of one GRUCell step (autograd.h); None: arguments it does not take");
  m.def("_set_differentiable_backward", &gn::set_differentiable_backward,
        "Registers the Python backward used under create_graph=True");
  m.def("saved_fields", &gn::saved_fields, "The autograd node's saved layout, by name");
  m.def("build_info", &gn::build_info, "How this extension was built");
  m.def("backends", &gn::backends, "The registered backends: (device, name, dtypes, workspace)");
  m.def("_cpu_activations", &gn::cpu_activations,
        "The CPU kernels' (sigmoid, tanh) of a 1-D tensor, for accuracy tests");
  m.def("_empty_cache", &gn::cpu::release_cached_blocks,
        "Frees the cached host blocks no tensor uses; returns the bytes released");
  m.def("_cached_bytes", &gn::cpu::cached_bytes, "Bytes held by free cached blocks");
}
