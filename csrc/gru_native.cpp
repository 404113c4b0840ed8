// gru_native.cpp: the op schemas (declared once, here) and the Python module gru_native._C.
//
// Each device registers its implementations where its kernels live: cpu/gru_cpu.cpp and
// cuda/gru_cuda.cpp (TORCH_LIBRARY_IMPL). Autograd and fake (meta) kernels are registered in
// Python, gru_native/ops.py.
#include <torch/extension.h>
#include <torch/library.h>
#include <torch/version.h>

#include <string>

#include "cpu/autograd.h"
#include "cpu/gru_cpu.h"
#include "cpu/host_cache.h"
#include "cpu/kernels.h"

// setup.py passes build facts as hex-encoded preprocessor numbers (0x<hex of the text>).
#define GRU_NATIVE_STR_(x) #x
#define GRU_NATIVE_STR(x) GRU_NATIVE_STR_(x)

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

namespace {

std::string decode_hex(const char* text) {
  std::string hex(text), out;
  if (hex.rfind("0x", 0) != 0) return out;
  for (size_t i = 2; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

pybind11::dict build_info() {
  pybind11::dict info;
  info["torch_version_built"] = std::to_string(TORCH_VERSION_MAJOR) + "." +
                                std::to_string(TORCH_VERSION_MINOR) + "." +
                                std::to_string(TORCH_VERSION_PATCH);
#ifdef GRU_NATIVE_WITH_CUDA
  info["cuda"] = true;
  info["cuda_arch_list"] = decode_hex(GRU_NATIVE_STR(GRU_NATIVE_CUDA_ARCH_LIST));
  info["nvcc_flags"] = decode_hex(GRU_NATIVE_STR(GRU_NATIVE_NVCC_FLAGS));
#else
  info["cuda"] = false;
  info["cuda_arch_list"] = std::string();
  info["nvcc_flags"] = std::string();
#endif
  // The CUDA backend built for the host on the CUDA emulation, serving CPU tensors (setup.py).
#ifdef GRU_NATIVE_CUDA_EMULATION
  info["cuda_emulation"] = true;
#else
  info["cuda_emulation"] = false;
#endif
#ifdef GRU_NATIVE_CXX_FLAGS
  info["cxx_flags"] = decode_hex(GRU_NATIVE_STR(GRU_NATIVE_CXX_FLAGS));
#else
  info["cxx_flags"] = std::string();
#endif
  info["cpu_vector_isa"] = std::string(gru_native::cpu::vector_isa());
  info["portable"] = static_cast<bool>(GRU_NATIVE_PORTABLE);
  info["debug"] =
#ifdef NDEBUG
      false;
#else
      true;
#endif
  return info;
}

// The CPU kernels' activation functions, for the accuracy tests: (sigmoid(x), tanh(x)).
std::tuple<at::Tensor, at::Tensor> cpu_activations(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 1, "cpu_activations: a 1-D CPU tensor");
  const at::Tensor xc = x.contiguous();
  at::Tensor sig = at::empty_like(xc), tanh = at::empty_like(xc);
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "cpu_activations", [&] {
    gru_native::cpu::activations<scalar_t>(xc.numel(), xc.data_ptr<scalar_t>(),
                                           sig.data_ptr<scalar_t>(), tanh.data_ptr<scalar_t>());
  });
  return {sig, tanh};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("build_info", &build_info, "How this extension was built");
  m.def("_cpu_activations", &cpu_activations,
        "The CPU kernels' (sigmoid, tanh) of a 1-D tensor, for accuracy tests");
  // Without the GIL while they run, like ATen ops called from Python: other Python threads
  // (e.g. serving requests with one shared module) run meanwhile.
  m.def("_empty_cache", &gru_native::cpu::release_cached_blocks,
        "Frees the cached host blocks no tensor uses; returns the bytes released");
  m.def("_cached_bytes", &gru_native::cpu::cached_bytes, "Bytes held by free cached blocks");
  m.def("_cpu_gru_forward", &gru_native::cpu_forward_direct,
        pybind11::call_guard<pybind11::gil_scoped_release>(),
        "gru_forward's CPU implementation, called without the dispatcher");
  m.def("_cpu_gru_backward", &gru_native::cpu_backward_direct,
        pybind11::call_guard<pybind11::gil_scoped_release>(),
        "gru_backward's CPU implementation, called without the dispatcher");
  m.def("_cpu_gru_train", &gru_native::cpu_gru_train,
        pybind11::call_guard<pybind11::gil_scoped_release>(),
        "The CPU forward recording a C++ autograd node whose backward is the CPU backward op");
  m.def("_cpu_gru_cell", &gru_native::cpu_gru_cell,
        pybind11::call_guard<pybind11::gil_scoped_release>(),
        "One GRUCell step on the CPU implementation (training node when train=True)");
  m.def("_set_differentiable_backward", &gru_native::set_differentiable_backward,
        "Registers the Python backward used under create_graph=True");
}
