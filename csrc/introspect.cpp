// introspect.cpp: build facts, the registered backends, the CPU activations and thread plans
// (introspect.h).
#include "introspect.h"

#include <ATen/Dispatch.h>
#include <torch/version.h>

#include <string>

#include "backend.h"
#include "cpu/gemm.h"
#include "cpu/kernels.h"
#include "phases.h"

// setup.py passes build facts as hex-encoded preprocessor numbers (0x<hex of the text>).
#define GRU_NATIVE_STR_(x) #x
#define GRU_NATIVE_STR(x) GRU_NATIVE_STR_(x)

namespace gru_native {
namespace {

std::string decode_hex(const char* text) {
  std::string hex(text), out;
  if (hex.rfind("0x", 0) != 0) return out;
  for (size_t i = 2; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

// torch's name of a dtype ("float32", as in torch.float32).
std::string dtype_name(at::ScalarType t) { return std::string(c10::getDtypeNames(t).first); }

}  // namespace

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
  info["cpu_vector_isa"] = std::string(cpu::vector_isa());
  info["portable"] = static_cast<bool>(GRU_NATIVE_PORTABLE);
  info["debug"] =
#ifdef NDEBUG
      false;
#else
      true;
#endif
  return info;
}

pybind11::list backends() {
  pybind11::list out;
  for (const auto& [type, entry] : registered_backends()) {
    pybind11::list dtypes;
    pybind11::dict workspace;
    for (at::ScalarType t : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}) {
      if (!entry->supports(t)) continue;
      dtypes.append(dtype_name(t));
      workspace[pybind11::str(dtype_name(t))] = dtype_name(entry->workspace_dtype(t));
    }
    out.append(pybind11::make_tuple(c10::DeviceTypeName(type, /*lower_case=*/true),
                                    entry->name, dtypes, workspace));
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor> cpu_activations(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 1, "cpu_activations: a 1-D CPU tensor");
  const at::Tensor xc = x.contiguous();
  at::Tensor sig = at::empty_like(xc), tanh = at::empty_like(xc);
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "cpu_activations", [&] {
    cpu::activations<scalar_t>(xc.numel(), xc.data_ptr<scalar_t>(), sig.data_ptr<scalar_t>(),
                               tanh.data_ptr<scalar_t>());
  });
  return {sig, tanh};
}

void cpu_gemm(const at::Tensor& a, const at::Tensor& b, at::Tensor& c, bool accumulate,
              const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(a.device().is_cpu() && a.dim() == 2 && b.dim() == 2 && c.dim() == 2 &&
                  a.size(1) == b.size(0) && c.size(0) == a.size(0) && c.size(1) == b.size(1) &&
                  (c.size(1) <= 1 || c.stride(1) == 1) && a.scalar_type() == b.scalar_type() &&
                  c.scalar_type() == a.scalar_type(),
              "cpu_gemm: C [M, N] (rows of unit stride) = A [M, K] B [K, N], one dtype, CPU");
  TORCH_CHECK(!bias.has_value() || (bias->dim() == 1 && bias->size(0) == c.size(1) &&
                                    bias->is_contiguous() &&
                                    bias->scalar_type() == a.scalar_type()),
              "cpu_gemm: bias [N], contiguous");
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "cpu_gemm", [&] {
    cpu::gemm<scalar_t>(a.size(0), b.size(1), a.size(1),
                        MatRef<scalar_t>{a.data_ptr<scalar_t>(), a.stride(0), a.stride(1)},
                        MatRef<scalar_t>{b.data_ptr<scalar_t>(), b.stride(0), b.stride(1)},
                        accumulate ? scalar_t(1) : scalar_t(0), c.data_ptr<scalar_t>(),
                        c.stride(0), bias.has_value() ? bias->data_ptr<scalar_t>() : nullptr);
  });
}

void set_phase_timing(bool on) {
  phases::reset();
  phases::set_enabled(on);
}

pybind11::dict phase_totals() {
  pybind11::dict out;
  for (int i = 0; i < phases::kCount; ++i) {
    const auto p = static_cast<phases::Phase>(i);
    const phases::Total t = phases::total(p);
    if (t.calls == 0) continue;
    out[pybind11::str(phases::name(p))] = pybind11::make_tuple(t.calls, t.seconds, t.multiply_adds);
  }
  return out;
}

pybind11::dict cpu_last_thread_plans() {
  const cpu::ThreadPlanRecord r = cpu::last_thread_plans();
  pybind11::dict out;
  out["forward"] = pybind11::make_tuple(r.forward_groups, r.forward_per_group);
  out["backward"] = pybind11::make_tuple(r.backward_groups, r.backward_per_group);
  const auto [tm, tn] = cpu::last_gemm_grid();
  out["gemm"] = pybind11::make_tuple(tm, tn);
  return out;
}

}  // namespace gru_native
