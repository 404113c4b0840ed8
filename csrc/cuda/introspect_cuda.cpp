// introspect_cuda.cpp: what tests and benchmarks read about the CUDA backend (gru_native._C):
// the persistent kernels' plan for a layer on the current device, the record of the kernels'
// launches, and the planner's runtime queries. In the CUDA build and the emulated one.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "cuda/gru_cuda.h"
#include "cuda/kernels.cuh"

namespace gru_native {
namespace {

namespace py = pybind11;

py::dict shape_dict(const cuda::PersistentShape& s) {
  py::dict d;
  d["blocks_per_direction"] = s.blocks_per_direction;
  d["units"] = s.units;
  d["passes"] = s.passes;
  d["chunk"] = s.chunk;
  return d;
}

template <typename T>
cuda::PersistentPlan plan_for(int D, int64_t N, int64_t H, bool backward) {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    cudaGetLastError();
    throw std::runtime_error("gru_native: no current CUDA device");
  }
  return cuda::plan_persistent<T>(D, N, H, backward, device);
}

// dtype: "float32", "float64", "float16" or "bfloat16".
py::dict persistent_plan(const std::string& dtype, int D, int64_t N, int64_t H, bool backward) {
  cuda::PersistentPlan p;
  if (dtype == "float32") {
    p = plan_for<float>(D, N, H, backward);
  } else if (dtype == "float64") {
    p = plan_for<double>(D, N, H, backward);
  } else if (dtype == "float16") {
    p = plan_for<__half>(D, N, H, backward);
  } else if (dtype == "bfloat16") {
    p = plan_for<__nv_bfloat16>(D, N, H, backward);
  } else {
    throw py::value_error("gru_native: no CUDA kernels for dtype " + dtype);
  }
  py::dict d = shape_dict(p.shape);
  d["fits"] = p.fits;
  d["threads"] = p.threads;
  d["kt"] = p.kt;
  d["smem"] = p.smem;
  d["max_hidden"] = p.max_hidden;
  // Units past the first kPersistentUnitsPerPass of a block keep their weights in shared memory.
  d["weights_in_shared_memory"] = p.fits && p.shape.passes > 1;
  return d;
}

py::list stop_launch_record() {
  py::list out;
  for (const cuda::LaunchRecord& r : cuda::stop_launch_record()) {
    py::dict d = shape_dict(r.shape);
    d["kernel"] = r.kernel;
    d["dtype"] = r.dtype;
    d["grid"] = py::make_tuple(r.grid[0], r.grid[1], r.grid[2]);
    d["block"] = py::make_tuple(r.block[0], r.block[1], r.block[2]);
    d["smem"] = r.smem;
    d["cooperative"] = r.cooperative;
    d["kt"] = r.kt;
    d["result"] = cudaGetErrorName(r.result);
    out.append(d);
  }
  return out;
}

}  // namespace

void add_cuda_introspection(pybind11::module_& m) {
  m.def("_cuda_persistent_plan", &persistent_plan, py::arg("dtype"), py::arg("D"), py::arg("N"),
        py::arg("H"), py::arg("backward"),
        "The persistent kernels' plan for a layer on the current device (kernels.cuh)");
  m.def("_cuda_start_launch_record", &cuda::start_launch_record,
        "Starts recording the CUDA kernels' launches (process-wide), clearing the record");
  m.def("_cuda_stop_launch_record", &stop_launch_record,
        "Stops recording; returns the launches recorded, in order");
  m.def("_cuda_dropped_launches", &cuda::dropped_launches,
        "Launches not kept by the last record (past its limit)");
  m.def("_cuda_plan_queries", &cuda::plan_queries,
        "How many times the persistent planner has queried the CUDA runtime");
  m.def("_cuda_forget_devices", &cuda::forget_devices,
        "Forgets what the planner learnt of the devices (for an emulated device that changes)");
}

}  // namespace gru_native
