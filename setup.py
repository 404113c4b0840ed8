"""Build gru_native._C: the CPU kernels always, the CUDA kernels when torch has CUDA and nvcc.

Install with the torch you will run it with already installed:

    pip install --no-build-isolation -e .

(An isolated build would resolve `torch` from the registry afresh: several GB of CUDA wheels, and a
binary built against a torch other than yours.)

Environment switches:
    GRU_NATIVE_CUDA=0|1     force the CUDA kernels off / on (default: on when torch has CUDA and
                            nvcc is found; if that automatic CUDA build fails, the CPU kernels are
                            built alone, with the error and a notice printed, and build_info()
                            reports cuda=False; with GRU_NATIVE_CUDA=1 the failure is an error)
    GRU_NATIVE_PORTABLE=1   do not tune the CPU kernels for the build machine (no -march=native)
    GRU_NATIVE_CUDA_EMULATION=1
                            build the CUDA backend and kernels for the host, on the CUDA emulation
                            (csrc/cuda/emulation/runtime.h), in place of the CPU kernels: CPU
                            tensors then run the CUDA code (float16 and bfloat16 included), for
                            CI without a GPU; build_info()["cuda_emulation"] is True
    DEBUG=1                 -O0 -g
    TORCH_CUDA_ARCH_LIST    CUDA architectures (default: torch's choice, i.e. the visible GPU)
    MAX_JOBS                parallel compile jobs (ninja)
"""

import glob
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    if value not in ("0", "1"):
        raise ValueError(f"{name} must be 0 or 1, got {value!r}")
    return value == "1"


def _want_cuda():
    forced = _flag("GRU_NATIVE_CUDA")
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    available = torch.version.cuda is not None and CUDA_HOME is not None
    if forced is None:
        return available
    if forced and not available:
        raise RuntimeError(
            "GRU_NATIVE_CUDA=1 but this torch has no CUDA "
            f"(torch.version.cuda={torch.version.cuda}) or nvcc was not found (CUDA_HOME={CUDA_HOME})"
        )
    return forced


def _cuda_library_includes():
    """Include folders for the cuBLAS headers ATen's CUDA headers include (the binding calls
    cuBLAS through ATen/cuda/CUDABlas.h), where the CUDA toolkit lacks them: pip's nvidia-*
    packages (which a CUDA torch from pip depends on)."""
    import site

    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME and os.path.exists(os.path.join(CUDA_HOME, "include", "cublas_v2.h")):
        return []
    roots = site.getsitepackages() + [site.getusersitepackages()]
    return sorted(d for root in roots for d in glob.glob(os.path.join(root, "nvidia", "*", "include"))
                  if any(os.path.exists(os.path.join(d, h))
                         for h in ("cublas_v2.h", "cusparse.h", "cusolverDn.h")))


def _text_define(name, text):
    # Hex-encoded, so that the value is one preprocessor number: no shell or ninja quoting, and no
    # macro expansion of its words (build_info() decodes it).
    return f"-D{name}=0x{text.encode().hex()}"


def get_extensions():
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    debug = _flag("DEBUG") is True
    portable = _flag("GRU_NATIVE_PORTABLE") is True
    emulation = _flag("GRU_NATIVE_CUDA_EMULATION") is True
    with_cuda = not emulation and _want_cuda()

    opt = ["-O0", "-g"] if debug else ["-O3"]
    arch = [] if portable else ["-march=native"]
    # OpenMP: the CPU kernels run each layer in one parallel region. At run time this binds to
    # the libgomp torch has already loaded (same soname), so there is one thread pool.
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    cxx = opt + arch + openmp + ["-fno-math-errno", "-Wall", "-Wno-unknown-pragmas"]
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    sources += sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    define_macros = [("GRU_NATIVE_PORTABLE", "1" if portable else "0")]
    cpu_cxx = cxx + [_text_define("GRU_NATIVE_CXX_FLAGS", " ".join(cxx))]

    def common():  # fresh lists each time: the Extension constructors extend them in place
        return dict(name="gru_native._C", include_dirs=[os.path.join(ROOT, "csrc")],
                    extra_link_args=list(openmp))

    if emulation:
        # The CUDA backend on the host: gru_cuda.cpp, device_cuda.cpp and the .cu files (through
        # kernels_emulated.cpp) against the emulation's CUDA and cuBLAS headers, with the
        # emulation's torch seam (emulation/torch_emulated.cpp, registering it for CPU tensors)
        # instead of the GPU's (torch_cuda.cpp) and of the CPU backend (gru_cpu.cpp); the rest of
        # csrc/cpu stays (the kernels' activations, the host cache).
        emu = os.path.join("csrc", "cuda", "emulation")
        emu_sources = [s for s in sources if os.path.basename(s) != "gru_cpu.cpp"] + [
            s for s in sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
            if os.path.basename(s) != "torch_cuda.cpp"
        ] + sorted(glob.glob(os.path.join(emu, "*.cpp")))
        kwargs = common()
        kwargs["include_dirs"] = [os.path.join(ROOT, emu, "include")] + kwargs["include_dirs"]
        return [CppExtension(sources=emu_sources,
                             define_macros=define_macros + [("GRU_NATIVE_CUDA_EMULATION", "1")],
                             extra_compile_args={"cxx": list(cpu_cxx)}, **kwargs)]

    cpu_only = CppExtension(sources=list(sources), define_macros=list(define_macros),
                            extra_compile_args={"cxx": list(cpu_cxx)}, **common())
    if not with_cuda:
        return [cpu_only]

    try:  # the -gencode flags torch will use (TORCH_CUDA_ARCH_LIST, or the visible GPU)
        from torch.utils.cpp_extension import _get_cuda_arch_flags
        arch_list = " ".join(_get_cuda_arch_flags())
    except Exception:  # private helper: fall back to what the user asked for
        arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "") or "torch default"
    nvcc = opt[:1] + ["-lineinfo", "--expt-relaxed-constexpr"]
    cuda_cxx = cpu_cxx + [
        _text_define("GRU_NATIVE_NVCC_FLAGS", " ".join(nvcc)),
        _text_define("GRU_NATIVE_CUDA_ARCH_LIST", arch_list),
    ]
    kwargs = common()
    kwargs["include_dirs"] = kwargs["include_dirs"] + _cuda_library_includes()
    extension = CUDAExtension(
        sources=sources + sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
        + sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu"))),
        define_macros=define_macros + [("GRU_NATIVE_WITH_CUDA", "1")],
        extra_compile_args={"cxx": list(cuda_cxx), "nvcc": nvcc},
        **kwargs,
    )
    if _flag("GRU_NATIVE_CUDA") is None:
        # CUDA by default, not on request: if that build fails, the CPU kernels alone.
        extension.gru_native_fallback = (cpu_only, cuda_cxx)
    return [extension]


def _make_cpu_only(ext):
    """Turns the CUDA build of `ext` into the CPU-only one, in place, keeping the flags torch's
    BuildExtension has added to it since (extension name, ABI)."""
    cpu_only, cuda_cxx = ext.gru_native_fallback
    added = [f for f in ext.extra_compile_args["cxx"] if f not in cuda_cxx]
    for attr in ("sources", "define_macros", "include_dirs", "library_dirs", "libraries",
                 "runtime_library_dirs", "extra_link_args"):
        setattr(ext, attr, list(getattr(cpu_only, attr)))
    ext.extra_compile_args = {"cxx": cpu_only.extra_compile_args["cxx"] + added}


def main():
    from torch.utils.cpp_extension import BuildExtension

    class BuildExt(BuildExtension.with_options(use_ninja=True)):
        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception:
                if not hasattr(ext, "gru_native_fallback"):
                    raise
                import traceback

                traceback.print_exc()
                print("\n*** gru_native: the CUDA kernels failed to build (error above); building "
                      "the CPU kernels alone. On CUDA tensors the module will run torch's own GRU, "
                      "and gru_native.build_info()['cuda'] is False. GRU_NATIVE_CUDA=1 makes this "
                      "failure an error. ***\n", file=sys.stderr, flush=True)
                _make_cpu_only(ext)
                super().build_extension(ext)

    setup(ext_modules=get_extensions(), cmdclass={"build_ext": BuildExt})


if __name__ == "__main__":
    main()
