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
#include "cpu/quantized.h"
#include "introspect.h"
#if defined(GRU_NATIVE_WITH_CUDA) || defined(GRU_NATIVE_CUDA_EMULATION)
#include "cuda/gru_cuda.h"
#endif

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
  // The quantized stack (inference only; int8 or bfloat16 weights, float32 activations): the
  // forward of gru_native.QuantizedGRU. CPU only. See csrc/cpu/quantized.h.
  m.def(
      "quantized_gru(Tensor input, Tensor? hx, Tensor[] weights, Tensor[] scales, "
      "Tensor? batch_sizes, bool has_biases, int num_layers, bool bidirectional, "
      "Tensor[]? panels=None) -> (Tensor output, Tensor hy)");
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
  m.def(
      "quantized_gru",
      [](const at::Tensor& input, const std::optional<at::Tensor>& hx,
         const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& scales,
         const std::optional<at::Tensor>& batch_sizes, bool has_biases, int64_t num_layers,
         bool bidirectional, const std::vector<at::Tensor>& panels) {
        return gn::cpu::quantized_gru(input, hx, weights, scales, batch_sizes, has_biases,
                                      num_layers, bidirectional, at::TensorList(panels));
      },
      no_gil, "The direct entry of the quantized GRU op (cpu/quantized.h), for plain eager calls");
  m.def("int8_panels", &gn::cpu::int8_panels, no_gil,
        "An int8 GRU weight [3H, K] in the panel layout of the quantized products (cpu/qdot.h)");
  m.def(
      "quantized_cell_direct",
      [](const at::Tensor& input, const std::optional<at::Tensor>& hx,
         const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& scales,
         const std::vector<at::Tensor>& panels, bool has_biases, int64_t input_size,
         int64_t hidden_size) {
        return gn::cpu::quantized_cell_direct(input, hx, weights, scales, panels, has_biases,
                                              input_size, hidden_size);
      },
      no_gil, "QuantizedGRUCell's plain eager call (cpu/quantized.h); None: the Python path's");
  m.def(
      "quantized_gru_direct",
      [](const at::Tensor& input, const std::optional<at::Tensor>& hx,
         const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& scales,
         const std::vector<at::Tensor>& panels, bool has_biases, int64_t num_layers,
         bool bidirectional, bool batch_first, int64_t input_size, int64_t hidden_size) {
        return gn::cpu::quantized_gru_direct(input, hx, weights, scales, panels, has_biases,
                                             num_layers, bidirectional, batch_first, input_size,
                                             hidden_size);
      },
      no_gil, "QuantizedGRU's plain eager call for a dense batched input (cpu/quantized.h); "
      "None: the Python path's");
  m.def("_set_differentiable_backward", &gn::set_differentiable_backward,
        "Registers the Python backward used under create_graph=True");
  m.def("saved_fields", &gn::saved_fields, "The autograd node's saved layout, by name");
  m.def("build_info", &gn::build_info, "How this extension was built");
  m.def("backends", &gn::backends, "The registered backends: (device, name, dtypes, workspace)");
  m.def("_cpu_activations", &gn::cpu_activations,
        "The CPU kernels' (sigmoid, tanh) of a 1-D tensor, for accuracy tests");
  m.def("_cpu_last_thread_plans", &gn::cpu_last_thread_plans,
        "The CPU kernels' thread plan of the calling thread's last layer, for tests");
  m.def("_cpu_gemm", &gn::cpu_gemm, no_gil, pybind11::arg("a"), pybind11::arg("b"),
        pybind11::arg("c"), pybind11::arg("accumulate") = false,
        pybind11::arg("bias") = std::nullopt,
        "c = a b (+ c) (+ bias) through the CPU backend's GEMM, for tests and benchmarks");
  m.def("_set_phase_timing", &gn::set_phase_timing,
        "Per-phase timing of the ops on or off (csrc/phases.h); the totals restart");
  m.def("_phase_totals", &gn::phase_totals,
        "{phase: (calls, seconds, multiply-adds)} since the timing was last switched");
  m.def("_empty_cache", &gn::cpu::release_cached_blocks,
        "Frees the cached host blocks no tensor uses; returns the bytes released");
  m.def("_cached_bytes", &gn::cpu::cached_bytes, "Bytes held by free cached blocks");
#if defined(GRU_NATIVE_WITH_CUDA) || defined(GRU_NATIVE_CUDA_EMULATION)
  gn::add_cuda_introspection(m);
#endif
}
