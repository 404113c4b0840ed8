// introspect.h: what the Python side and the tests read about this build: how it was built, the
// backends it has, the CPU kernels' activation functions, GEMM and last thread plans, and the
// per-phase times of the ops.
#pragma once

#include <ATen/ATen.h>
#include <pybind11/pybind11.h>

#include <optional>
#include <tuple>

namespace gru_native {

// Build facts: torch version built against, CUDA or not (architectures, nvcc flags), the CUDA
// emulation, compiler flags, CPU vector ISA, portable, debug.
pybind11::dict build_info();

// The registered backends (backend.h): [(device type, name, [dtype names], {dtype name: saved
// gates' dtype name})], e.g. [("cpu", "CPU", ["float32", "float64"], {...})].
pybind11::list backends();

// The CPU kernels' (sigmoid(x), tanh(x)) of a 1-D CPU tensor, for the accuracy tests.
std::tuple<at::Tensor, at::Tensor> cpu_activations(const at::Tensor& x);

// c = a b (+ c if accumulate) (+ bias) through the CPU backend's GEMM (cpu/gemm.h), for tests and
// the benchmarks' GEMM rates.
void cpu_gemm(const at::Tensor& a, const at::Tensor& b, at::Tensor& c, bool accumulate,
              const std::optional<at::Tensor>& bias);

// Phase timing (phases.h) on or off; either way the totals start again from zero.
void set_phase_timing(bool on);
// {phase name: (calls, seconds, multiply-adds)} since timing was last turned on or off, for the
// phases that ran.
pybind11::dict phase_totals();

// The CPU kernels' thread plan of the last layer the calling thread ran: {"forward": (groups,
// threads per group), "backward": (...)}, (0, 0) before any; and "gemm": how its last GEMM cut C
// over threads, (row parts, column parts).
pybind11::dict cpu_last_thread_plans();

}  // namespace gru_native
